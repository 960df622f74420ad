"""Staged execution: a model runs as a sequence of stages, and batches form per stage.

A request-level batcher (`accordion.workers.batching`) hands the device whole requests: a batch
runs the whole model, and a request that arrives just after it started waits for all of it.
Here a model is a `StagedModel`: its stages (an ``nn.Sequential``'s children, a scripted or
exported model's top-level blocks) or its cell (the step of a recurrent or decoder model, run
once per element of a request, with per-request state: a hidden state, a KV cache). A
`StageScheduler` decides at every stage boundary which requests run the next stage together,
so new requests enter at stage boundaries and finished ones leave. Schedulers:

* `accordion.workers.cellular.CellularScheduler` (BatchMaker's cellular batching): requests join
  and leave the running batch at every step of the cell, memory bounded;
* `accordion.workers.lazy.NodeScheduler` (LazyBatching): a late request runs the early stages
  alone and merges into the batch in flight when it catches up, when that keeps every deadline;
* `RequestLevelScheduler`: the request-level baseline on the same machinery (a batch formed by
  a request batcher, our `SloBatcher` or Triton's, runs until its last member finishes and
  nobody joins it), for models whose requests cannot be stacked (sequences of any length).

Like the batching policies, schedulers are pure objects with the clock passed in, driven by
the same protocol (enqueue / decide / complete): `replay_staged` drives them on simulated time
(tests, bench), `accordion.workers.stagedworker.StagedEngine` on real time inside the worker.
This module imports no torch: the models implement `StagedModel` in
`accordion.workers.seqmodels`.
"""

from __future__ import annotations

import math
import statistics
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from accordion.workers.batching import BatchingPolicy, ReplayOutcome, Request
from accordion.workers.config import interpolate_profile


class StagedModel(ABC):
    """A model as stages, and how one request's state moves through them.

    `stages` is the number of distinct stages (1 for a cell that every step reruns); a request
    takes `steps(sample)` steps: the stages in order, or as many cell steps as its length."""

    stages: int = 1
    ragged: bool = False
    """Requests cannot be stacked into one tensor (sequences of different lengths)."""
    nominal_steps: int = 64
    """Steps of a typical request, for profiling a cell."""
    input_shape: tuple[int, ...] = ()
    datatype: str = "FP32"

    @abstractmethod
    def steps(self, sample: npt.NDArray[np.generic]) -> int:
        """How many steps `sample` takes; ValueError with a reason for a malformed sample."""

    @abstractmethod
    def state_bytes(self, sample: npt.NDArray[np.generic]) -> int:
        """The largest state the request holds while in flight."""

    @abstractmethod
    def begin(self, sample: npt.NDArray[np.generic]) -> Any:
        """The request's state before its first step (cheap: no model computation)."""

    @abstractmethod
    def run(self, stage: int, states: Sequence[Any]) -> list[Any]:
        """Run `stage` once for all `states` together, batched; their states after it."""

    @abstractmethod
    def finish(self, state: Any) -> npt.NDArray[np.generic]:
        """The answer of a request whose last step has run."""

    @abstractmethod
    def alone(self, sample: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
        """The answer computed the plain way, the request alone (the reference of the tests)."""

    @abstractmethod
    def example(self, steps: int, seed: int = 0) -> npt.NDArray[np.generic]:
        """A valid sample of about `steps` steps."""

    def to(self, device: str) -> None:
        """Run on `device` (``cpu``, ``cuda``, ``cuda:N``) from now on: weights and every
        state made after this call live there; samples come in and answers go out as host
        arrays whatever the device. A model that runs on the CPU alone refuses any other."""
        if device != "cpu":
            raise ValueError(f"{type(self).__name__} runs on the CPU only, not on {device}")

    def synchronize(self) -> None:  # noqa: B027 (a no-op unless the model runs elsewhere)
        """Wait until the stage last run has finished on the device (an accelerator runs
        asynchronously: a step's latency is measured to this point). The CPU: at once."""


@dataclass(eq=False)
class Job:
    """One request in staged execution: `done` of its `steps` have run; `payload` is the
    driver's (state, answer channel), opaque to the scheduler."""

    request_id: int
    arrival_s: float
    deadline_s: float
    steps: int
    state_bytes: int = 0
    done: int = 0
    payload: Any = None

    @property
    def remaining(self) -> int:
        return self.steps - self.done


@dataclass(frozen=True)
class StepDecision:
    """Run `stage` for the jobs of `run` together now (none: wait); drop `dropped` (with a
    reason); call again at `wake_at_s` at the latest (None: on the next arrival or completion)."""

    run: tuple[Job, ...] = ()
    stage: int = 0
    dropped: tuple[tuple[Job, str], ...] = ()
    wake_at_s: float | None = None
    predicted_latency_s: float | None = None


CLIP = 4.0
"""`StepModel`: an observation moves the speed window by at most this factor (a 400-ms stall
of a 1-ms step is one sample of 4x, not of 400x)."""


class StepModel:
    """Predicted latency of one stage (or of a cell's step) per batch size, corrected online
    from observations that are recent.

    A step takes about a millisecond, and the machine it shares runs at changing speeds (other
    jobs' phases of seconds, stalls of 10-400 ms). A window of observations per size (the
    request batcher's `LatencyPredictor`) went stale: a size seen during a slow phase and
    rarely after kept its slow estimate for thousands of steps, and, predictions being made
    non-decreasing, held every larger size up with it (measured on simulated time: after a
    2-s phase at 3x, the batch-32 step still predicted at 3x 6 s later), so joins were refused
    and requests dropped long after the machine had recovered. Here:

    * a size with at least `min_samples` observations among the last `fresh` steps (of any
      size) predicts the median of its last `keep` of those (as of its last observation);
    * any other size predicts its profile times the machine's current speed: the median of the
      last `window` observed / profile ratios, every size together, each clipped to `CLIP`
      times the current speed either way (a few dozen milliseconds of steps: it follows a
      phase both ways at once, and a single stall moves the median nothing); 1 until
      `min_samples` observations.

    Predictions are non-decreasing in the batch size."""

    def __init__(
        self,
        profile_s: Mapping[int, float],
        *,
        window: int = 64,
        fresh: int = 512,
        keep: int = 128,
        min_samples: int = 16,
    ) -> None:
        if not profile_s or any(b < 1 or v <= 0 for b, v in profile_s.items()):
            raise ValueError("a stage profile needs batch sizes >= 1 with latencies > 0")
        self._profile = dict(profile_s)
        self._base: dict[int, float] = {}
        self._speeds: deque[float] = deque(maxlen=window)
        self._speed = 1.0
        self._samples: dict[int, deque[tuple[int, float]]] = {}  # (observation number, s)
        self._own: dict[int, float] = {}  # per size: the median of its window
        self._keep = keep
        self._fresh = fresh
        self._seen = 0
        self._min_samples = min_samples
        self._curve: list[float] = []
        self._base_list: list[float] = []  # the profile at sizes 1, 2, ...

    def _base_s(self, size: int) -> float:
        base = self._base.get(size)
        if base is None:
            base = self._base[size] = interpolate_profile(self._profile, size)
        return base

    @property
    def speed(self) -> float:
        """How many times slower than its profile the machine runs now."""
        return self._speed

    def _own_s(self, size: int) -> float | None:
        """The size's median as of its last observation, while it has `min_samples` fresh
        observations (O(1): the step loop asks for every size at every step)."""
        window = self._samples.get(size)
        if window is None or len(window) < self._min_samples:
            return None
        if window[-self._min_samples][0] <= self._seen - self._fresh:
            return None  # stale: too few among the last `fresh` steps
        return self._own[size]

    def predict_s(self, size: int) -> float:
        curve = self._curve
        if len(curve) < size:
            self._rebuild(size)
        return curve[size - 1]

    def _rebuild(self, size: int) -> None:
        """The predictions of sizes 1 .. `size` (at least as many as asked before): every
        size's profile times the speed, the sizes with fresh observations their own, made
        non-decreasing. Once per observation at most (the cellular scheduler asks for sizes up
        to its batch at every step: rebuilt size by size in Python that cost ~30 us a step at
        batch 64), with numpy."""
        n = max(size, len(self._curve))
        while len(self._base_list) < n:
            self._base_list.append(self._base_s(len(self._base_list) + 1))
        values = np.asarray(self._base_list[:n]) * self._speed
        for b in self._samples:
            if b <= n:
                own = self._own_s(b)
                if own is not None:
                    values[b - 1] = own
        self._curve[:] = np.maximum.accumulate(values).tolist()

    def observe(self, size: int, latency_s: float) -> None:
        if size < 1 or latency_s <= 0 or not math.isfinite(latency_s):
            return
        self._seen += 1
        speed = latency_s / self._base_s(size)
        self._speeds.append(min(max(speed, self._speed / CLIP), self._speed * CLIP))
        if len(self._speeds) >= self._min_samples:
            self._speed = statistics.median(self._speeds)
        window = self._samples.setdefault(size, deque(maxlen=self._keep))
        current = self.predict_s(size)
        window.append((self._seen, min(max(latency_s, current / CLIP), current * CLIP)))
        oldest = self._seen - self._fresh
        while window[0][0] <= oldest:
            window.popleft()
        self._own[size] = statistics.median(v for _, v in window)
        self._curve.clear()


class StageLatency:
    """Predicted latency of each stage per batch size: one `StepModel` per stage (the
    profile, corrected online from observed steps).

    Deadlines are fit with spans: the predictions (typical ones, the median) summed over the
    steps or stages a request still has, plus `margin_s` once per request. Not the request
    batcher's per-batch tail (`LatencyPredictor.safe_s`): over a span of many steps the noise
    of single steps averages out, and multiplying every step by the tail of one step would
    refuse nearly every join (measured: it halved the simulated sustainable rate of cellular
    batching on this machine's noisy step profile)."""

    def __init__(self, profiles_s: Sequence[Mapping[int, float]], *, margin_s: float = 0.0):
        if not profiles_s:
            raise ValueError("a staged model needs a latency profile per stage")
        self.predictors = [StepModel(p) for p in profiles_s]
        self.margin_s = margin_s

    def step_s(self, stage: int, size: int) -> float:
        return self.predictors[stage % len(self.predictors)].predict_s(max(1, size))

    def span_s(self, first: int, last: int, size: int, *, margin: bool = True) -> float:
        """Latency of stages `first` .. `last - 1` at batch `size` (cells: steps), plus the
        margin (unless `margin` is false: a piece of a longer plan)."""
        if last <= first:
            return 0.0
        if len(self.predictors) == 1:  # a cell: every step is the same stage
            body = (last - first) * self.step_s(0, size)
        else:
            body = sum(self.step_s(k, size) for k in range(first, last))
        return body + (self.margin_s if margin else 0.0)

    def observe(self, stage: int, size: int, latency_s: float) -> None:
        self.predictors[stage % len(self.predictors)].observe(size, latency_s)


class StageScheduler(ABC):
    """The protocol every staged scheduler offers its driver (see the module docstring):
    ``enqueue`` each arrival; ``decide`` after every event; ``complete`` when the stage it
    started has run, which returns the jobs that finished with it (they leave)."""

    name = "staged"

    def __init__(self) -> None:
        self.busy = False
        self._running: tuple[Job, ...] = ()
        self._stage = 0

    @abstractmethod
    def enqueue(self, job: Job, now_s: float) -> None: ...

    @abstractmethod
    def decide(self, now_s: float) -> StepDecision: ...

    @property
    @abstractmethod
    def queue_depth(self) -> int:
        """Jobs waiting to start."""

    @property
    @abstractmethod
    def inflight(self) -> tuple[Job, ...]:
        """Jobs started and not finished (they hold state)."""

    def _start(self, run: tuple[Job, ...], stage: int) -> None:
        self.busy = True
        self._running = run
        self._stage = stage

    def complete(self, latency_s: float, now_s: float) -> list[Job]:
        """The stage started last ran in `latency_s`: its jobs advance one step."""
        self.busy = False
        run, self._running = self._running, ()
        for job in run:
            job.done += 1
        self._observe(self._stage, len(run), latency_s)
        finished = [j for j in run if j.remaining <= 0]
        self._leave(finished, now_s)
        return finished

    @abstractmethod
    def _observe(self, stage: int, size: int, latency_s: float) -> None:
        """Record a stage's observed latency (the online correction)."""

    @abstractmethod
    def _leave(self, jobs: list[Job], now_s: float) -> None:
        """Forget jobs that finished (or failed)."""

    def abort(self, now_s: float) -> tuple[Job, ...]:
        """The stage started last failed: its jobs leave unanswered by the model."""
        self.busy = False
        run, self._running = self._running, ()
        self._leave(list(run), now_s)
        return run


class RequestLevelScheduler(StageScheduler):
    """The request-level baseline: a `BatchingPolicy` (SloBatcher, Triton's...) forms a batch
    of whole requests; the batch runs step after step until its last member finishes; nobody
    joins it meanwhile. Members that finish early leave and are answered at once (kinder to the
    baseline than padding them to the longest). The policy sees the batch as one execution."""

    def __init__(self, policy: BatchingPolicy, stages: int = 1) -> None:
        super().__init__()
        self.policy = policy
        self.stages = stages
        self.name = f"request-{policy.name}"
        self._batch: list[Job] = []
        self._batch_size = 0
        self._batch_latency_s = 0.0

    def enqueue(self, job: Job, now_s: float) -> None:
        self.policy.enqueue(Request(job.request_id, job.arrival_s, job.deadline_s, job), now_s)

    @property
    def queue_depth(self) -> int:
        return self.policy.queue_depth

    @property
    def inflight(self) -> tuple[Job, ...]:
        return tuple(self._batch)

    def decide(self, now_s: float) -> StepDecision:
        if self.busy:
            return StepDecision()
        dropped: tuple[tuple[Job, str], ...] = ()
        if not self._batch:
            decision = self.policy.decide(now_s)
            dropped = tuple((cast(Job, d.request.payload), d.reason) for d in decision.dropped)
            if not decision.batch:
                return StepDecision(dropped=dropped, wake_at_s=decision.wake_at_s)
            self._batch = [cast(Job, r.payload) for r in decision.batch]
            self._batch_size, self._batch_latency_s = len(self._batch), 0.0
        run = tuple(self._batch)  # all members start together: they are at the same stage
        stage = run[0].done % self.stages
        self._start(run, stage)
        return StepDecision(run=run, stage=stage, dropped=dropped)

    def _observe(self, stage: int, size: int, latency_s: float) -> None:
        self._batch_latency_s += latency_s

    def _leave(self, jobs: list[Job], now_s: float) -> None:
        gone = set(map(id, jobs))
        self._batch = [j for j in self._batch if id(j) not in gone]
        if not self._batch and self._batch_size:
            self.policy.complete(self._batch_size, self._batch_latency_s, now_s)
            self._batch_size = 0


def hopeless(jobs: Iterable[Job], start_s: float, latency: StageLatency) -> list[Job]:
    """Jobs that would miss their deadline even running alone from `start_s` on."""
    alone = [latency.step_s(k, 1) for k in range(len(latency.predictors))]
    start_s += latency.margin_s
    if len(alone) == 1:  # a cell: every step costs the same
        step = alone[0]
        return [j for j in jobs if start_s + (j.steps - j.done) * step > j.deadline_s]
    suffix = [sum(alone[k:]) for k in range(len(alone))] + [0.0]
    last = len(alone)
    return [
        j
        for j in jobs
        if start_s + suffix[min(j.done, last)] - suffix[min(j.steps, last)] > j.deadline_s
    ]


@dataclass
class StagedOutcome(ReplayOutcome):
    """What `replay_staged` saw: `ReplayOutcome` plus the peaks of jobs in flight and of their
    state bytes, and the order in which jobs finished (request ids)."""

    peak_inflight: int = 0
    peak_state_bytes: int = 0
    finish_order: list[int] = field(default_factory=list)
    stage_sizes: list[int] = field(default_factory=list)


def replay_staged(
    scheduler: StageScheduler,
    jobs: Iterable[Job],
    latency_s: Callable[[int, int], float],
    *,
    on_step: Callable[[StepDecision, float], None] | None = None,
) -> StagedOutcome:
    """Drive `scheduler` on simulated time as the worker drives it on real time.

    `jobs` in arrival order; `latency_s(stage, batch_size)` is each stage's execution time.
    Pure: no I/O, no wall clock. A job finishing at its deadline counts as within it."""
    out = StagedOutcome()
    pending = list(jobs)
    i, now = 0, 0.0
    running: tuple[StepDecision, float] | None = None  # decision, end
    wake: float | None = None
    while i < len(pending) or running is not None or scheduler.queue_depth or scheduler.inflight:
        candidates = [pending[i].arrival_s] if i < len(pending) else []
        if running is not None:
            candidates.append(running[1])
        if wake is not None:
            candidates.append(max(wake, now))
        if not candidates:
            break  # the scheduler holds jobs without asking to be woken
        now = min(candidates)
        if running is not None and running[1] <= now:
            decision, end = running
            for job in scheduler.complete(latency_s(decision.stage, len(decision.run)), now):
                out.response_s.append(end - job.arrival_s)
                out.finish_order.append(job.request_id)
                if end <= job.deadline_s + 1e-12:
                    out.ok += 1
                else:
                    out.late += 1
            running = None
        while i < len(pending) and pending[i].arrival_s <= now:
            scheduler.enqueue(pending[i], now)
            i += 1
        decision = scheduler.decide(now)
        for _job, reason in decision.dropped:
            out.dropped += 1
            out.reasons.append(reason)
        wake = decision.wake_at_s
        inflight = scheduler.inflight
        out.peak_inflight = max(out.peak_inflight, len(inflight))
        out.peak_state_bytes = max(out.peak_state_bytes, sum(j.state_bytes for j in inflight))
        if decision.run:
            if running is not None:
                raise RuntimeError("scheduler started a stage while the device was busy")
            if on_step is not None:
                on_step(decision, now)
            out.stage_sizes.append(len(decision.run))
            running = (decision, now + latency_s(decision.stage, len(decision.run)))
            wake = None
    stranded = len(pending) - out.total
    if stranded:
        out.dropped += stranded
        out.reasons += ["left in the queue: the scheduler never served it"] * stranded
    return out
