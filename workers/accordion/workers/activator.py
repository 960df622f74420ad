"""The activator: requests that arrive while a service has no ready replica wait for one.

Why: a service with `minReplicas: 0` runs no worker while idle (scale to zero), and any service
has none while its only workers restart. Shedding every request then (the router's answer
before this module) loses the very request that should start a replica. Knative's activator
buffers such requests and tells its autoscaler at once; so does this one, inside the router:

* a request that finds no ready backend is *held* in a bounded queue (`max_queued` samples)
  until a backend becomes ready (the router calls `ready` from its health checks, which probe
  a backend out of the split every tenth of a second, and when it adopts a table), then goes
  on through the ordinary routing, with what is left of its deadline;
* the first request of a cold start (and one every `wake_interval_s` after, while requests
  wait) calls `on_hold`: the router makes its next report to the operator immediate
  (`Reporter.wake`), and the operator plans at least one replica for a service with demand
  (`accordion.operator.control.idle`);
* a request that cannot meet its deadline even if a replica is ready when the expected cold
  start ends (its own latency included) is rejected at once, with the reason, rather than held
  to fail later; one whose deadline passes while it waits is rejected then. No held request
  is ever dropped silently: each is either sent on or answered with 503 and a reason;
* the cold start is measured, from the first request held at zero ready replicas to the first
  ready one (``accordion_router_cold_start_seconds``), and the expected cold start is the
  mean of those measured so far (`expected_s`), none before the first: until then a request
  waits for as long as its deadline allows.

Pure asyncio on the event loop's clock; the router owns one per service.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_MAX_QUEUED = 1000
"""Samples held at most: beyond it a request is rejected at once (a queue without a bound would
hold the memory of a flood until the first replica is ready)."""
WAKE_INTERVAL_S = 0.25
"""How often, at most, held requests ask for an immediate report."""
SMOOTHING = 0.5
"""Weight of the newest cold start in the expected one (an EWMA: the last few count)."""
STALE_S = 60.0
"""A cold start nobody has waited for this long (its requests expired, none came since) is
forgotten: the next request starts a new one, and a replica that comes later is no measurement
(a replica that arrives hours later, after a pool freed up, is not what a request waits)."""


@dataclass(frozen=True)
class Hold:
    """What became of a held request: None for `reason` means a replica is ready, go on."""

    reason: str | None
    waited_s: float
    result: str
    """released, rejected-deadline, rejected-full or expired (the metric's label)."""


class Activator:
    """Holds requests while no backend is ready (see the module docstring)."""

    def __init__(
        self,
        *,
        max_queued: int = DEFAULT_MAX_QUEUED,
        on_hold: Callable[[], None] = lambda: None,
        on_cold_start: Callable[[float], None] = lambda seconds: None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.max_queued = max_queued
        self.on_hold = on_hold
        self.on_cold_start = on_cold_start
        self._clock = clock
        self.queued = 0
        """Samples held now."""
        self.began_s: float | None = None
        """When the cold start in progress began (its first held request); None: none."""
        self.expected_s: float | None = None
        """The expected cold start (EWMA of measured ones); None before the first."""
        self.last_s: float | None = None
        """The last cold start measured."""
        self._event = asyncio.Event()
        self._woke_s = -math.inf
        self._last_hold_s = -math.inf

    def now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    def remaining_s(self, now_s: float) -> float | None:
        """How long the cold start in progress is still expected to take; None: unknown."""
        if self.expected_s is None:
            return None
        began = now_s if self.began_s is None else self.began_s
        return max(0.0, began + self.expected_s - now_s)

    def admit(self, deadline_s: float, samples: int, own_latency_s: float) -> Hold | None:
        """The synchronous half of `hold`: start (or join) the cold start, wake the operator
        (at most every `WAKE_INTERVAL_S`), and reject at once a request that cannot wait (its
        `Hold`); None: it may wait until ``deadline_s - own_latency_s`` (`enter` ... `leave`).
        The simulator's routers (`accordion.sim.activator`) run the same rules on simulated
        time."""
        now = self.now()
        if self.began_s is None or self._stale(now):
            self.began_s = now
        self._last_hold_s = now
        if now - self._woke_s >= WAKE_INTERVAL_S:
            self._woke_s = now
            self.on_hold()
        remaining = self.remaining_s(now)
        latest = deadline_s - own_latency_s  # the last moment a replica may become ready
        if remaining is not None and now + remaining > latest:
            return Hold(
                f"cold start: no replica is ready; one is expected in {remaining:.3f} s, and "
                f"the request's deadline allows {max(0.0, latest - now):.3f} s",
                0.0,
                "rejected-deadline",
            )
        if self.queued + samples > self.max_queued:
            return Hold(
                f"cold start: no replica is ready and {self.queued} samples wait already "
                f"(at most {self.max_queued})",
                0.0,
                "rejected-full",
            )
        return None

    def enter(self, samples: int) -> None:
        """`samples` begin to wait (after `admit` let them)."""
        self.queued += samples

    def leave(self, samples: int) -> None:
        """`samples` stop waiting (released, or their deadline passed)."""
        self.queued -= samples
        self._last_hold_s = self.now()

    async def hold(self, deadline_s: float, samples: int, own_latency_s: float) -> Hold:
        """Wait until a backend is ready (`ready`) or `deadline_s` minus `own_latency_s`."""
        now = self.now()
        refused = self.admit(deadline_s, samples, own_latency_s)
        if refused is not None:
            return refused
        latest = deadline_s - own_latency_s
        event = self._event
        self.enter(samples)
        try:
            await asyncio.wait_for(event.wait(), max(0.0, latest - now))
        except TimeoutError:
            return Hold(
                f"cold start: no replica became ready within the request's deadline "
                f"(waited {self.now() - now:.3f} s)",
                self.now() - now,
                "expired",
            )
        finally:
            self.leave(samples)
        return Hold(None, self.now() - now, "released")

    def _stale(self, now_s: float) -> bool:
        """Nobody waits for the cold start in progress, nor has for `STALE_S`."""
        return self.queued == 0 and now_s - self._last_hold_s > STALE_S

    def ready(self) -> None:
        """A backend is ready: end the cold start (measured) and release every held request."""
        if self.began_s is None:
            return
        now = self.now()
        seconds = max(0.0, now - self.began_s)
        self.began_s = None
        if self._stale(now):
            return
        self.last_s = seconds
        self.expected_s = (
            seconds
            if self.expected_s is None
            else SMOOTHING * seconds + (1 - SMOOTHING) * self.expected_s
        )
        self.on_cold_start(seconds)
        event, self._event = self._event, asyncio.Event()
        event.set()
