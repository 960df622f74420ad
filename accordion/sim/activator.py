"""The router's activator on simulated time: requests at zero ready replicas wait for one.

Why: in a cluster a request that reaches a router while its service has no ready replica (scaled
to zero, or all restarting) is held by the router's activator (`accordion.workers.activator`),
which wakes the operator at once (the router's next report is immediate) and releases the
request when a backend passes its health check. A simulator that dropped such requests until
the operator's next periodic demand measurement would count cold starts as longer, and
costlier, than the product makes them (issue 17's sparse-trace bench compares exactly that
against the Knative KPA, whose activator the baseline models).

`HeldRequests` keeps, per service, the product's own `Activator` on the simulator's clock (the
same admission rules: reject at once what cannot meet its deadline after the expected cold
start, bound the queue, measure the cold start) and the requests it lets wait; the driver
(`accordion.sim.driver.LoopControl`) calls `hold` when a request finds no ready replica,
`release` when one becomes ready, and every held request whose deadline (less its own latency)
passes first is dropped at that moment, as the router answers it 503.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from accordion.sim.metrics import DROPPED
from accordion.workers.activator import Activator
from accordion.workers.batching import Request

if TYPE_CHECKING:
    from accordion.sim.engine import Simulator


@dataclass
class _Service:
    activator: Activator
    held: dict[int, Request] = field(default_factory=dict)
    """Held requests by id, in arrival order."""


class HeldRequests:
    """Every service's activator and held requests (see the module docstring)."""

    def __init__(self, sim: Simulator, on_hold: Callable[[str], None]) -> None:
        self.sim = sim
        self.on_hold = on_hold
        """Called with the service when a held request wakes the operator."""
        self.services: dict[str, _Service] = {}
        self.cold_starts: list[tuple[str, float]] = []
        """(service, seconds) of every cold start measured, as the router's metric."""

    def activator(self, service: str) -> Activator:
        entry = self.services.get(service)
        if entry is None:
            activator = Activator(
                on_hold=lambda: self.on_hold(service),
                on_cold_start=lambda s: self.cold_starts.append((service, s)),
                clock=lambda: self.sim.now_s,
            )
            entry = self.services[service] = _Service(activator)
        return entry.activator

    def hold(self, service: str, request: Request, own_latency_s: float) -> bool:
        """Hold `request` until `release`; False: the activator rejects it now (dropped)."""
        activator = self.activator(service)
        if activator.admit(request.deadline_s, 1, own_latency_s) is not None:
            return False
        activator.enter(1)
        self.services[service].held[request.request_id] = request
        latest = request.deadline_s - own_latency_s
        self.sim.call_at(latest, lambda: self._expire(service, request.request_id), after_end=True)
        return True

    def last_cold_starts(self) -> dict[str, float]:
        """Each service's last measured cold start (what its router reports)."""
        return {
            k: e.activator.last_s
            for k, e in self.services.items()
            if e.activator.last_s is not None
        }

    def waiting(self, service: str) -> int:
        entry = self.services.get(service)
        return len(entry.held) if entry is not None else 0

    def release(self, service: str) -> list[Request]:
        """A backend of `service` is ready: end its cold start; the requests to route now."""
        entry = self.services.get(service)
        if entry is None:
            return []
        entry.activator.ready()
        out = list(entry.held.values())
        entry.held.clear()
        for _ in out:
            entry.activator.leave(1)
        return out

    def _expire(self, service: str, request_id: int) -> None:
        entry = self.services[service]
        request = entry.held.pop(request_id, None)
        if request is None:
            return  # released before its deadline
        entry.activator.leave(1)
        self.sim.recorder.finish(request.request_id, request.arrival_s, DROPPED)
