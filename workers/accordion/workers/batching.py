"""Batching policies as pure objects: no I/O, no wall clock, time is always passed in.

The same objects run inside the worker pods (driven by the event loop in
`accordion.workers.server`) and inside the discrete-event simulator (driven on simulated time),
so what the tests and the simulator measure is what the pods do.

The protocol a driver follows, for one device that runs one batch at a time:

1. ``policy.enqueue(request, now_s)`` for every arrival;
2. ``decision = policy.decide(now_s)`` after every event (arrival, completion, wake-up). The
   decision says which requests to drop now (with a reason), which batch to start now (empty
   when none: the device is busy or the policy prefers to wait) and when to call again at the
   latest (``wake_at_s``; ``None``: only on the next arrival or completion);
3. ``policy.complete(batch_size, latency_s, now_s)`` when the batch started by a decision ends,
   with the observed execution latency.

Between ``decide`` returning a batch and ``complete``, the policy counts the device as busy and
returns no other batch.

Policies: `SloBatcher` (ours: EDF, largest batch that meets every member's deadline, lazy
waiting, early drop, online-corrected latency prediction) and the baselines `NoBatching`,
`TritonDynamicBatcher` and `ClipperAimd`, faithful to what those systems do.

`replay` is that protocol's driver on simulated time (one device, execution latency from a
function of the batch size): the tests and `bench/batching/policy_sim.py` share it.
"""

from __future__ import annotations

import bisect
import itertools
import math
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from accordion.workers.config import BatchingConfig, interpolate_profile


@dataclass(eq=False)
class Request:
    """One queued inference request. `payload` is opaque to the policy."""

    request_id: int
    arrival_s: float
    deadline_s: float
    payload: object = None


@dataclass(frozen=True)
class Dropped:
    """A request the policy gave up on, and why."""

    request: Request
    reason: str


@dataclass(frozen=True)
class Decision:
    """What the driver must do now; see the module docstring."""

    batch: tuple[Request, ...] = ()
    dropped: tuple[Dropped, ...] = ()
    wake_at_s: float | None = None
    predicted_latency_s: float | None = None


class LatencyPredictor:
    """Predicted execution latency per batch size: the profile, corrected online.

    The profile gives a base curve (linearly interpolated between profiled sizes, extrapolated
    with the last slope). Observations per batch size are kept in a sliding window; once a size
    has `min_samples`, its prediction is the window's `quantile` (a high one: the batcher must
    be right for nearly every batch). Sizes not observed yet get the base curve scaled by the
    median correction of the observed sizes, so one miscalibrated profile is fixed everywhere
    after a few batches. Each observation is clipped to [1/clip, clip] x the current prediction
    before it enters the window, so a single stall (GC, page fault) cannot poison it.
    Predictions are made non-decreasing in the batch size.

    `safe_s` adds the tail: the prediction times the `tail_quantile` of recent
    observed / predicted ratios (all sizes, last `window` x 2 batches; at least 1). The batcher
    fits batches to deadlines with it: when a batch is sized to its earliest deadline (always the
    case under overload), the typical prediction would make every batch slower than predicted
    late as a whole.
    """

    def __init__(
        self,
        profile_s: Mapping[int, float],
        *,
        window: int = 64,
        quantile: float = 0.75,
        min_samples: int = 4,
        clip: float = 4.0,
        tail_quantile: float = 0.9,
    ) -> None:
        if not profile_s:
            raise ValueError("a latency profile needs at least one batch size")
        if any(b < 1 or lat <= 0 for b, lat in profile_s.items()):
            raise ValueError("profile batch sizes must be >= 1 and latencies > 0")
        self._profile = dict(profile_s)
        self._base: dict[int, float] = {}
        self._window = window
        self._quantile = quantile
        self._min_samples = min_samples
        self._clip = clip
        self._samples: dict[int, deque[float]] = {}
        self._estimates: dict[int, float] = {}
        self._curve: list[float] = []  # predictions for batch sizes 1, 2, ...
        self._correction: float | None = None
        self._tail_quantile = tail_quantile
        self._ratios: deque[float] = deque(maxlen=2 * window)
        self._tail = 1.0

    def base_s(self, batch_size: int) -> float:
        """The profile's latency for `batch_size` (`config.interpolate_profile`)."""
        base = self._base.get(batch_size)
        if base is None:  # the profile never changes: each size is interpolated once
            base = self._base[batch_size] = interpolate_profile(self._profile, batch_size)
        return base

    def _own_estimate(self, batch_size: int) -> float | None:
        return self._estimates.get(batch_size)

    def _update_estimate(self, batch_size: int) -> None:
        window = self._samples[batch_size]
        if len(window) < self._min_samples:
            return
        ordered = sorted(window)
        rank = min(len(ordered) - 1, math.ceil(self._quantile * len(ordered)) - 1)
        self._estimates[batch_size] = ordered[max(0, rank)]

    def _global_correction(self) -> float:
        ratios = [own / self.base_s(b) for b, own in self._estimates.items()]
        if not ratios:
            return 1.0
        ratios.sort()
        return ratios[len(ratios) // 2]

    def predict_s(self, batch_size: int) -> float:
        """Predicted latency of a batch of `batch_size` (seconds)."""
        curve = self._curve
        if batch_size <= len(curve):
            return curve[batch_size - 1]
        if self._correction is None:
            self._correction = self._global_correction()
        best = curve[-1] if curve else 0.0
        for b in range(len(curve) + 1, batch_size + 1):
            own = self._own_estimate(b)
            value = own if own is not None else self.base_s(b) * self._correction
            best = max(best, value)
            curve.append(best)
        return curve[batch_size - 1]

    def safe_s(self, batch_size: int) -> float:
        """The prediction with the recent tail of the prediction error (see the class doc)."""
        return self.predict_s(batch_size) * self._tail

    def observe(self, batch_size: int, latency_s: float) -> None:
        """Record one observed execution latency."""
        if batch_size < 1 or latency_s <= 0 or not math.isfinite(latency_s):
            return
        current = self.predict_s(batch_size)
        clipped = min(max(latency_s, current / self._clip), current * self._clip)
        self._samples.setdefault(batch_size, deque(maxlen=self._window)).append(clipped)
        self._ratios.append(clipped / current)
        if len(self._ratios) >= 2 * self._min_samples:
            ordered = sorted(self._ratios)
            rank = min(len(ordered) - 1, math.ceil(self._tail_quantile * len(ordered)) - 1)
            self._tail = max(1.0, ordered[max(0, rank)])
        self._update_estimate(batch_size)
        self._curve.clear()
        self._correction = None


def robust_quantile(values: Iterable[float], quantile: float) -> float:
    """The `quantile` of `values` by nearest rank, never their largest alone (one outlier moves
    nothing) unless there is only one."""
    ordered = sorted(values)
    rank = round(quantile * (len(ordered) - 1))
    return ordered[min(rank, max(0, len(ordered) - 2))]


class SlowdownMeter:
    """How many times slower than its profile a worker runs now, for the router's fast loop.

    Each batch gives one sample, the time it took / the profiled execution latency at its size
    (`profile_s`, read as the batcher reads it). The driver says what "took" means: the worker
    passes, for a batch followed at once by the next one, the time from its start to the next
    one's (what the worker adds per batch, taking requests in and answering them, is capacity
    lost as much as a slower model), and otherwise the execution alone (an idle spell after it
    is no slowness). The value is the `robust_quantile` of the last `window` samples younger
    than `horizon_s` (the router must be right for nearly every batch); None with fewer than
    `min_samples` (thin data: the plan stands). The median of the same samples says how a
    typical batch runs (the router's last check before it sheds a request).
    """

    def __init__(
        self,
        profile_s: Mapping[int, float],
        *,
        window: int = 15,
        quantile: float = 0.9,
        min_samples: int = 3,
        horizon_s: float = 10.0,
    ) -> None:
        self._profile = dict(profile_s)
        self._samples: deque[tuple[float, float]] = deque(maxlen=max(1, window))
        self._quantile = quantile
        self._min_samples = max(1, min_samples)
        self._horizon_s = horizon_s

    def observe(self, batch_size: int, latency_s: float, now_s: float) -> None:
        base = interpolate_profile(self._profile, batch_size)
        if batch_size >= 1 and base > 0 and latency_s > 0 and math.isfinite(latency_s):
            self._samples.append((now_s, latency_s / base))

    def value(self, now_s: float, quantile: float | None = None) -> float | None:
        """The slowdown at the meter's quantile, or at `quantile` (0.5: the median)."""
        samples = self._samples
        while samples and samples[0][0] < now_s - self._horizon_s:
            samples.popleft()
        if len(samples) < self._min_samples:
            return None
        q = self._quantile if quantile is None else quantile
        return robust_quantile((r for _, r in samples), q)


class BatchingPolicy(ABC):
    """The interface every policy offers to its driver (worker loop or simulator)."""

    name: str = "policy"

    def __init__(self, max_batch_size: int) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self.max_batch_size = max_batch_size
        self.busy = False
        self._inflight = 0

    @abstractmethod
    def enqueue(self, request: Request, now_s: float) -> None:
        """Add an arrival to the queue."""

    @abstractmethod
    def decide(self, now_s: float) -> Decision:
        """What to do now: drops, a batch to start, when to be called again."""

    @property
    @abstractmethod
    def queue_depth(self) -> int:
        """Requests waiting (not running)."""

    def complete(self, batch_size: int, latency_s: float, now_s: float) -> None:
        """The running batch ended after `latency_s` of execution."""
        self.busy = False
        self._inflight = 0

    def predicted_latency_s(self, batch_size: int) -> float | None:
        """The policy's latency prediction, if it keeps one."""
        return None

    def _start(self, batch: tuple[Request, ...]) -> None:
        self.busy = True
        self._inflight = len(batch)


class _FifoPolicy(BatchingPolicy):
    """Shared queue handling of the deadline-unaware baselines: arrival order."""

    def __init__(self, max_batch_size: int) -> None:
        super().__init__(max_batch_size)
        self._queue: deque[Request] = deque()

    def enqueue(self, request: Request, now_s: float) -> None:
        self._queue.append(request)

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def _take(self, n: int) -> tuple[Request, ...]:
        batch = tuple(self._queue.popleft() for _ in range(min(n, len(self._queue))))
        self._start(batch)
        return batch


class NoBatching(_FifoPolicy):
    """One request at a time, in arrival order, as soon as the device is free."""

    name = "none"

    def __init__(self) -> None:
        super().__init__(1)

    def decide(self, now_s: float) -> Decision:
        if self.busy or not self._queue:
            return Decision()
        return Decision(batch=self._take(1))


class TritonDynamicBatcher(_FifoPolicy):
    """Triton's dynamic batcher: preferred sizes, `max_queue_delay`, `max_batch_size`.

    When the device is free: if the queue holds a preferred size (or the maximum), the largest
    such batch goes at once; otherwise the batch waits until the oldest request has been queued
    for `max_queue_delay`, then whatever is there (up to the maximum) goes. Without preferred
    sizes, only a full batch goes early. Deadlines are not looked at (Triton's default queue
    policy has no timeout).
    """

    name = "triton"

    def __init__(
        self,
        max_batch_size: int,
        max_queue_delay_s: float,
        preferred_batch_sizes: Iterable[int] = (),
    ) -> None:
        super().__init__(max_batch_size)
        self.max_queue_delay_s = max_queue_delay_s
        self.preferred_batch_sizes = sorted(
            {b for b in preferred_batch_sizes if 1 <= b <= max_batch_size}
        )

    def decide(self, now_s: float) -> Decision:
        if self.busy or not self._queue:
            return Decision()
        n = len(self._queue)
        if n >= self.max_batch_size:
            return Decision(batch=self._take(self.max_batch_size))
        fitting = [b for b in self.preferred_batch_sizes if b <= n]
        if fitting and fitting[-1] == n:
            return Decision(batch=self._take(n))
        oldest_deadline = self._queue[0].arrival_s + self.max_queue_delay_s
        if now_s >= oldest_deadline - 1e-9:
            return Decision(batch=self._take(n))
        return Decision(wake_at_s=oldest_deadline)


class ClipperAimd(_FifoPolicy):
    """Clipper's adaptive batching: additive increase, multiplicative decrease of the cap.

    Whenever the device is free, up to `cap` queued requests go at once (no waiting). After each
    batch, if its latency was within the latency objective the cap grows by `additive_step`;
    otherwise it shrinks by `backoff` (Clipper backs off by 10%).
    """

    name = "clipper"

    def __init__(
        self,
        max_batch_size: int,
        latency_objective_s: float,
        *,
        additive_step: int = 1,
        backoff: float = 0.9,
    ) -> None:
        super().__init__(max_batch_size)
        self.latency_objective_s = latency_objective_s
        self.additive_step = additive_step
        self.backoff = backoff
        self.cap = 1.0

    def decide(self, now_s: float) -> Decision:
        if self.busy or not self._queue:
            return Decision()
        return Decision(batch=self._take(max(1, int(self.cap))))

    def complete(self, batch_size: int, latency_s: float, now_s: float) -> None:
        super().complete(batch_size, latency_s, now_s)
        if latency_s <= self.latency_objective_s:
            if batch_size >= int(self.cap):
                self.cap = min(float(self.max_batch_size), self.cap + self.additive_step)
        else:
            self.cap = max(1.0, math.floor(self.cap * self.backoff))


@dataclass(order=True)
class _Entry:
    deadline_s: float
    seq: int
    request: Request = field(compare=False)


class SloBatcher(BatchingPolicy):
    """Ours: deadline-aware, lazy, largest feasible batch, early drop, calibrated online.

    When the device is free:

    * requests that would miss their deadline even alone (now + L(1) > deadline) are dropped;
    * of the EDF queue, the largest prefix (up to the cap) whose predicted latency L(b) still
      lands before its earliest deadline is the candidate batch;
    * (only with `lazy`, off by default) if the whole queue fits in the candidate, the cap is
      not reached and the batch is smaller
      than the one that keeps up with the recent arrival rate (`target_batch`), the batcher
      waits (LazyBatching) at most until the last moment at which one more request could still
      join without the earliest deadline being missed, less a reserve (`lazy_reserve` of the
      request's budget) for what a real machine adds: deadline_0 - L(n + 1) - reserve. At low
      load it does not wait at all: waiting would only add latency. Off by default because,
      measured (bench/batching/policy_sim.py), it buys no throughput once batches form under
      load, and it spends the slack that absorbs latency noise on a real machine;
    * under backlog (more queued than that batch takes), front requests whose slack would
      force a batch smaller than the load needs (`needed_batch`) are dropped early (Nexus),
      provided enough requests remain to fill the needed batch: serving them would shrink
      every later batch and spiral into missing everyone's deadline.

    While the device is busy, requests that cannot make it even if they ran alone right after
    the running batch are dropped at once (they would only steal capacity).
    """

    name = "slo"

    def __init__(
        self,
        max_batch_size: int,
        predictor: LatencyPredictor,
        *,
        margin_s: float = 0.0,
        lazy: bool = False,
        keepup: float = 1.5,
        rate_window_s: float = 1.0,
        lazy_reserve: float = 0.25,
    ) -> None:
        super().__init__(max_batch_size)
        self.predictor = predictor
        self.margin_s = margin_s
        self.lazy = lazy
        self.keepup = keepup
        self.lazy_reserve = lazy_reserve
        self.rate_window_s = rate_window_s
        self._arrivals: deque[float] = deque()
        self._queue: list[_Entry] = []
        self._seq = itertools.count()
        self._busy_until_s = 0.0

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def predicted_latency_s(self, batch_size: int) -> float:
        return self.predictor.predict_s(batch_size)

    def enqueue(self, request: Request, now_s: float) -> None:
        bisect.insort(self._queue, _Entry(request.deadline_s, next(self._seq), request))
        self._arrivals.append(now_s)

    def arrival_rate(self, now_s: float) -> float:
        """Arrivals per second over the last `rate_window_s`."""
        horizon = now_s - self.rate_window_s
        while self._arrivals and self._arrivals[0] < horizon:
            self._arrivals.popleft()
        return len(self._arrivals) / self.rate_window_s

    def target_batch(self, now_s: float) -> int:
        """The smallest batch that keeps up with the arrival rate (with `keepup` to spare).

        Waiting for a batch larger than this buys no throughput, only latency; below it, the
        device would fall behind, so the batcher waits (lazily) for more requests.
        """
        rate = self.arrival_rate(now_s)
        for b in range(1, self.max_batch_size + 1):
            if b >= rate * self._lat(b) * self.keepup:
                return b
        return self.max_batch_size

    def complete(self, batch_size: int, latency_s: float, now_s: float) -> None:
        super().complete(batch_size, latency_s, now_s)
        self.predictor.observe(batch_size, latency_s)

    def _lat(self, batch_size: int) -> float:
        return self.predictor.predict_s(batch_size) + self.margin_s

    def _fit(self, batch_size: int) -> float:
        """Latency to fit a batch to its earliest deadline with: the prediction's tail."""
        return self.predictor.safe_s(batch_size) + self.margin_s

    def _drop_hopeless(self, start_s: float, reason: str) -> tuple[Dropped, ...]:
        # The queue is in deadline order: the hopeless requests are a prefix of it.
        cut = bisect.bisect_left(self._queue, start_s + self._lat(1), key=lambda e: e.deadline_s)
        if not cut:
            return ()
        dropped = tuple(Dropped(e.request, reason) for e in self._queue[:cut])
        del self._queue[:cut]
        return dropped

    def decide(self, now_s: float) -> Decision:
        if self.busy:
            # The device frees at the earliest at the predicted end of the running batch.
            free_at = max(now_s, self._busy_until_s)
            dropped = self._drop_hopeless(
                free_at, "deadline cannot be met even alone after the running batch"
            )
            return Decision(dropped=dropped)
        dropped = self._drop_hopeless(now_s, "deadline cannot be met even alone")
        if not self._queue:
            return Decision(dropped=dropped)
        n = len(self._queue)
        cap = min(n, self.slo_batch(now_s))
        slack = self._queue[0].deadline_s - now_s
        prefix = 1
        for b in range(cap, 0, -1):
            if self._fit(b) <= slack:
                prefix = b
                break

        if prefix == n and n < self.max_batch_size and self.lazy and n < self.target_batch(now_s):
            head = self._queue[0].request
            reserve_s = self.lazy_reserve * (head.deadline_s - head.arrival_s)
            latest_start = head.deadline_s - self._lat(n + 1) - reserve_s
            if latest_start > now_s:
                return Decision(dropped=dropped, wake_at_s=latest_start)

        if n > prefix:
            early = self._early_drop(now_s)
            if early is not None:
                skipped, batch = early
                reason = "early drop: too little slack left for the batch size the load needs"
                dropped += tuple(Dropped(e.request, reason) for e in skipped)
                del self._queue[: len(skipped) + len(batch)]
                return self._dispatch(now_s, batch, dropped)
        chosen = self._queue[:prefix]
        del self._queue[:prefix]
        return self._dispatch(now_s, chosen, dropped)

    def slo_batch(self, now_s: float) -> int:
        """The largest batch whose worst case fits the requests' budget (the queue head's):
        running it plus waiting for the previous batch or for its members to arrive, whichever
        is shorter (no limit while no arrival is expected during the batch). Larger batches would
        make the requests behind them late; with calibrated predictions this is the planner's
        capacity rule, applied online."""
        head = self._queue[0].request
        budget_s = head.deadline_s - head.arrival_s
        rate = self.arrival_rate(now_s)
        best = 1
        for b in range(1, self.max_batch_size + 1):
            latency_s = self._lat(b)
            collect_s = b / rate if rate > 0 else math.inf
            # Nobody is expected to arrive during the batch: nobody to make late.
            if rate * latency_s < 1.0 or latency_s + min(latency_s, collect_s) <= budget_s:
                best = b
            else:
                break
        return best

    def needed_batch(self, now_s: float) -> int:
        """The batch size the load needs: the smallest that keeps up with the arrival rate, at
        most the largest whose worst case (waiting for the previous batch or for its members to
        arrive, then running) fits the requests' latency budget (the queue head's)."""
        rate = self.arrival_rate(now_s)
        slo_batch = self.slo_batch(now_s)
        keep_batch = self.max_batch_size
        for b in range(1, self.max_batch_size + 1):
            if b >= rate * self._lat(b):
                keep_batch = b
                break
        return min(slo_batch, keep_batch)

    def _early_drop(self, now_s: float) -> tuple[list[_Entry], list[_Entry]] | None:
        """Nexus-style early drop under backlog.

        If the head's slack forces a batch smaller than the load needs, the device falls
        behind and every later request waits longer: a spiral into tiny batches. Instead, the
        head requests without slack for the needed batch (or the largest batch the queue can
        still form, if smaller) are dropped; the batch is the largest feasible EDF prefix of
        the rest.
        """
        deadlines = [e.deadline_s for e in self._queue]
        n = len(deadlines)
        # The largest batch that some requests of the queue can all still make.
        largest = 1
        limit = self.slo_batch(now_s)
        for b in range(min(n, limit), 0, -1):
            if n - bisect.bisect_left(deadlines, now_s + self._fit(b)) >= b:
                largest = b
                break
        need = min(self.needed_batch(now_s), largest)
        slack = deadlines[0] - now_s
        if self._fit(need) <= slack:
            return None
        first = bisect.bisect_left(deadlines, now_s + self._fit(need))
        rest = n - first
        if first == 0 or rest < need:
            return None
        rest_slack = self._queue[first].deadline_s - now_s
        size = need
        for b in range(min(rest, limit), need, -1):
            if self._fit(b) <= rest_slack:
                size = b
                break
        return self._queue[:first], self._queue[first : first + size]

    def _dispatch(
        self, now_s: float, entries: list[_Entry], dropped: tuple[Dropped, ...]
    ) -> Decision:
        batch = tuple(e.request for e in entries)
        predicted = self.predictor.predict_s(len(batch))
        self._busy_until_s = now_s + predicted
        self._start(batch)
        return Decision(batch=batch, dropped=dropped, predicted_latency_s=predicted)


@dataclass
class ReplayOutcome:
    """What `replay` observed: outcomes per request, batch sizes, drop reasons, and the
    response time (arrival to completion) of every answered request."""

    ok: int = 0
    late: int = 0
    dropped: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    response_s: list[float] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.ok + self.late + self.dropped

    @property
    def attainment(self) -> float:
        """Share of requests answered within their deadline."""
        return self.ok / self.total if self.total else 1.0


def replay(
    policy: BatchingPolicy,
    requests: Iterable[Request],
    latency_s: Callable[[int], float],
) -> ReplayOutcome:
    """Drive `policy` on simulated time exactly as the worker loop drives it on real time.

    `requests` in arrival order; `latency_s(batch_size)` is the execution latency of each batch
    the policy starts (the caller may add noise). Pure: no I/O, no wall clock. A request
    finishing at its deadline counts as within it.
    """
    out = ReplayOutcome()
    pending = list(requests)
    i, now = 0, 0.0
    running: tuple[tuple[Request, ...], float, float] | None = None  # batch, start, end
    wake: float | None = None
    while i < len(pending) or running is not None or policy.queue_depth:
        candidates = [pending[i].arrival_s] if i < len(pending) else []
        if running is not None:
            candidates.append(running[2])
        if wake is not None:
            candidates.append(max(wake, now))
        if not candidates:
            break  # the policy holds requests without asking to be woken
        now = min(candidates)
        if running is not None and running[2] <= now:
            batch, start, end = running
            policy.complete(len(batch), end - start, now)
            for r in batch:
                out.response_s.append(end - r.arrival_s)
                if end <= r.deadline_s + 1e-12:
                    out.ok += 1
                else:
                    out.late += 1
            running = None
        while i < len(pending) and pending[i].arrival_s <= now:
            policy.enqueue(pending[i], now)
            i += 1
        decision = policy.decide(now)
        for d in decision.dropped:
            out.dropped += 1
            out.reasons.append(d.reason)
        wake = decision.wake_at_s
        if decision.batch:
            if running is not None:
                raise RuntimeError("policy started a batch while the device was busy")
            size = len(decision.batch)
            running = (decision.batch, now, now + latency_s(size))
            out.batch_sizes.append(size)
            wake = None
    stranded = len(pending) - out.total
    if stranded:
        out.dropped += stranded
        out.reasons += ["left in the queue: the policy never served it"] * stranded
    return out


def make_policy(
    config: BatchingConfig, profile_s: Mapping[int, float], slo_s: float
) -> BatchingPolicy:
    """Build the policy a worker's configuration names."""
    if config.policy == "none":
        return NoBatching()
    if config.policy == "triton":
        return TritonDynamicBatcher(
            config.max_batch_size,
            config.max_queue_delay_ms / 1000.0,
            config.preferred_batch_sizes,
        )
    if config.policy == "clipper":
        return ClipperAimd(config.max_batch_size, slo_s)
    predictor = LatencyPredictor(
        profile_s or {1: slo_s / 4},
        window=config.predictor_window,
        quantile=config.predictor_quantile,
    )
    return SloBatcher(
        config.max_batch_size, predictor, margin_s=config.margin_ms / 1000.0, lazy=config.lazy
    )
