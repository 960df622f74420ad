"""The worker's driver of staged execution: `StagedEngine` runs a `StageScheduler` with real
time and a `StagedModel` on the model thread, as `Worker._loop` runs a batching policy.

`make_scheduler` builds the scheduler a worker configuration names (``batching.mode``:
``cellular``, ``node``, or ``request`` for models whose requests cannot be stacked), and
`profile_stages` measures the latency of every stage (or of the cell's step) per batch size: the
worker starts from it, and ``accordion profile --stages`` prints it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch

from accordion.workers.batching import make_policy
from accordion.workers.cellular import CellularScheduler
from accordion.workers.config import BatchingConfig
from accordion.workers.lazy import NodeScheduler
from accordion.workers.protocol import DroppedError, InferenceError, answered_rows
from accordion.workers.staged import (
    Job,
    RequestLevelScheduler,
    StagedModel,
    StageLatency,
    StageScheduler,
)

if TYPE_CHECKING:
    from accordion.workers.server import Worker

Row = tuple[npt.NDArray[np.generic], str]

STAGE_FLUSH_S = 0.05
"""A step that answers nobody hands its figures (batch size, latency) to the event loop with
the next step that answers someone, or once this much time has passed: every hand-off wakes
the loop through its self-pipe (a system call on the model thread). py-spy on a gru-seq worker
at 250 req/s on this project's CPU put 7.8% of the process's samples in that wake-up, and at
the bench's rates most steps answer nobody (0.45 answers a step on this CPU, 0.23 on an H200)."""


def make_scheduler(
    config: BatchingConfig,
    model: StagedModel,
    stage_profiles_s: Sequence[Mapping[int, float]],
    slo_s: float,
    request_profile_s: Mapping[int, float] | None = None,
) -> StageScheduler:
    """The scheduler of ``config.mode`` for `model`, starting from its stage profiles.

    ``request`` mode (for ragged models) batches whole requests with the configured policy
    (``slo``, ``triton``, ...); its per-request profile is `request_profile_s` when given (the
    equivalent profile `accordion profile` derives), else the cell's at the model's nominal
    length."""
    margin_s = config.margin_ms / 1000.0
    if config.mode == "cellular":
        if model.stages != 1:
            raise ValueError("batching mode cellular needs a cell model (gru-seq, decoder-tiny)")
        latency = StageLatency(stage_profiles_s, margin_s=margin_s)
        max_bytes = None if config.max_state_mb is None else int(config.max_state_mb * 2**20)
        return CellularScheduler(
            latency,
            max_batch_size=config.max_batch_size,
            max_inflight=config.max_inflight,
            max_state_bytes=max_bytes,
        )
    if config.mode == "node":
        if model.stages < 2:
            raise ValueError("batching mode node needs a model of several stages")
        return NodeScheduler(
            StageLatency(stage_profiles_s, margin_s=margin_s),
            model.stages,
            max_batch_size=config.max_batch_size,
        )
    if request_profile_s is None:
        steps = model.nominal_steps if model.stages == 1 else model.stages
        request_profile_s = {
            b: sum(StageLatency(stage_profiles_s).step_s(k, b) for k in range(steps))
            for b in stage_profiles_s[0]
        }
    return RequestLevelScheduler(make_policy(config, request_profile_s, slo_s), model.stages)


def profile_stages(
    model: StagedModel, batch_sizes: Sequence[int], repeats: int = 5, seed: int = 0
) -> list[dict[int, list[float]]]:
    """Latencies (s) of every stage per batch size: for a cell, of each step of requests of
    the model's nominal length (`repeats` passes over them); for stages, `repeats` runs of each
    stage on the activations the stages before it produced. Run on the calling thread."""
    out: list[dict[int, list[float]]] = [{} for _ in range(model.stages)]
    with torch.inference_mode():
        for b in batch_sizes:
            samples = [model.example(model.nominal_steps, seed + i) for i in range(b)]
            if model.stages == 1:
                runs: list[float] = []
                for _ in range(repeats + 1):
                    states = [model.begin(s) for s in samples]
                    for _step in range(min(model.steps(s) for s in samples)):
                        start = time.perf_counter()
                        states = model.run(0, states)
                        model.synchronize()
                        runs.append(time.perf_counter() - start)
                out[0][b] = runs[len(runs) // (repeats + 1) :]  # the first pass warms up
                continue
            states = [model.begin(s) for s in samples]
            for k in range(model.stages):
                times = []
                for _ in range(repeats + 1):
                    start = time.perf_counter()
                    after = model.run(k, states)
                    model.synchronize()
                    times.append(time.perf_counter() - start)
                out[k][b] = times[1:]
                states = after
    return out


def stage_profile_s(
    measured: list[dict[int, list[float]]], quantile: float = 0.5
) -> list[dict[int, float]]:
    """One latency per stage and batch size from `profile_stages`' runs: their median (a stall
    of the machine during the measurement must not become the prediction)."""
    return [
        {b: sorted(runs)[min(len(runs) - 1, int(quantile * len(runs)))] for b, runs in st.items()}
        for st in measured
    ]


@dataclass
class _Slot:
    state: Any
    future: asyncio.Future[Row] = field(repr=False)
    output: npt.NDArray[np.generic] | None = None


class StagedEngine:
    """Drives a `StageScheduler` on a dedicated model thread, with the monotonic clock (the
    event loop's).

    The whole step loop (decide, run the stage, complete) runs on the model thread, so that a
    step hands nothing to another thread: under CPU contention every wake-up of a thread can
    cost milliseconds, measured at 3-6 ms per step on this project's shared 2-core machine when
    each step went through the event loop (a 1 ms GRU step took 4 ms). The event loop only
    enqueues arrivals (under a lock) and receives answers (`call_soon_threadsafe`).

    `on_stage(size, latency_s, predicted_s)` is told of every stage run, on the event loop (the
    worker's batch metrics)."""

    def __init__(
        self,
        model: StagedModel,
        scheduler: StageScheduler,
        *,
        torch_threads: int = 1,
        max_queue: int = 1024,
        on_stage: Callable[[int, float, float | None], None] | None = None,
    ) -> None:
        self.model = model
        self.scheduler = scheduler
        self.max_queue = max_queue
        self.on_stage = on_stage
        self.torch_threads = torch_threads
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stages: list[tuple[int, float, float | None]] = []  # not handed over yet
        self._handed_s = 0.0  # when stage figures were last handed over

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="accordion-stages", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 10.0)

    @property
    def depth(self) -> int:
        with self._lock:
            return self.scheduler.queue_depth + len(self.scheduler.inflight)

    async def submit(self, samples: npt.NDArray[np.generic], deadline_s: float) -> list[Row]:
        """Serve the N samples of a request as N jobs with its deadline; their rows. Raises
        `InferenceError`: 400 for a malformed sample, 503 when shed or dropped."""
        n = samples.shape[0]
        if self.depth + n > self.max_queue:
            raise InferenceError(503, f"overloaded: queue is full ({self.max_queue} requests)")
        loop = asyncio.get_running_loop()
        jobs = []
        for sample in samples:
            try:
                steps = self.model.steps(sample)
                state_bytes = self.model.state_bytes(sample)
            except ValueError as exc:
                raise InferenceError(400, str(exc)) from None
            jobs.append((sample, steps, state_bytes))
        futures = []
        now = loop.time()
        with self._lock:
            for sample, steps, state_bytes in jobs:
                future: asyncio.Future[Row] = loop.create_future()
                slot = _Slot(self.model.begin(sample), future)
                job = Job(next(self._ids), now, deadline_s, steps, state_bytes, payload=slot)
                self.scheduler.enqueue(job, now)
                futures.append(future)
        self._wake.set()
        results = await asyncio.gather(*futures, return_exceptions=True)
        rows = answered_rows(results)
        if len({row.shape for row, _ in rows}) > 1:
            raise InferenceError(
                400,
                "the samples of one request gave answers of different shapes: send them as "
                "separate requests",
            )
        return rows

    # -- the model thread ---------------------------------------------------------------------
    def _run(self) -> None:
        torch.set_num_threads(self.torch_threads)
        clock = time.monotonic  # the event loop's clock (asyncio's loop.time())
        with torch.inference_mode():
            while not self._stopping:
                self._wake.clear()
                with self._lock:
                    decision = self.scheduler.decide(clock())
                if decision.dropped:
                    self._answer([(j, DroppedError(reason)) for j, reason in decision.dropped])
                if decision.run:
                    self._step(decision.stage, decision.run, decision.predicted_latency_s)
                    continue
                timeout = None
                if decision.wake_at_s is not None:
                    timeout = max(0.0, decision.wake_at_s - clock())
                self._wake.wait(timeout)

    def _step(self, stage: int, jobs: tuple[Job, ...], predicted_s: float | None) -> None:
        start = time.perf_counter()
        try:
            states = self.model.run(stage, [j.payload.state for j in jobs])
            self.model.synchronize()  # an accelerator's step is done when its kernels are
            for job, state in zip(jobs, states, strict=True):
                job.payload.state = state
                if job.done + 1 >= job.steps:
                    job.payload.output = self.model.finish(state)
        except Exception as exc:  # the model failed: answer its jobs, keep serving the rest
            with self._lock:
                failed = self.scheduler.abort(time.monotonic())
            self._answer([(j, exc) for j in failed])
            return
        latency_s = time.perf_counter() - start
        now = time.monotonic()
        with self._lock:
            finished = self.scheduler.complete(latency_s, now)
        answers: list[tuple[Job, Row | Exception]] = []
        for job in finished:
            if job.payload.output is not None:
                outcome = "ok" if now <= job.deadline_s else "late"
                answers.append((job, (job.payload.output[None], outcome)))
        self._answer(answers, (len(jobs), latency_s, predicted_s))

    def _answer(
        self,
        answers: list[tuple[Job, Row | Exception]],
        stage: tuple[int, float, float | None] | None = None,
    ) -> None:
        """Hand answers and the stages' figures to the event loop, in one call: the figures
        of steps that answered nobody wait for the next answers or `STAGE_FLUSH_S`. Called on
        the model thread only."""
        if stage is not None:
            self._stages.append(stage)
        now = time.monotonic()
        if not answers and now - self._handed_s < STAGE_FLUSH_S:
            return
        stages, self._stages, self._handed_s = self._stages, [], now
        loop = self._loop
        if loop is None or loop.is_closed():
            return

        def deliver() -> None:
            for job, answer in answers:
                future = job.payload.future
                if future.done():
                    continue
                if isinstance(answer, Exception):
                    future.set_exception(answer)
                else:
                    future.set_result(answer)
            if self.on_stage is not None:
                for figures in stages:
                    self.on_stage(*figures)

        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(deliver)


async def start_engine(worker: Worker) -> StagedEngine:
    """The staged engine of a worker whose configuration asks for it: its model as stages, its
    stage profiles measured now (a few seconds, on the model thread's settings), its
    scheduler."""
    from accordion.workers.seqmodels import staged_model

    config = worker.config
    staged = worker.model.staged
    if staged is None:
        if config.batching.mode == "cellular":
            raise ValueError(
                "batching mode cellular needs a cell model (builtin:gru-seq, builtin:decoder-tiny)"
            )
        staged = staged_model(worker.model.module, worker.model.input_shape, worker.model.datatype)
    staged.to(config.device)  # weights and state where the worker runs (`device`)
    sizes = worker._batch_sizes()
    loop = asyncio.get_running_loop()
    threads = config.torch_threads

    def measure() -> list[dict[int, list[float]]]:
        torch.set_num_threads(threads)
        return profile_stages(staged, sizes, repeats=4)

    profiles = stage_profile_s(await loop.run_in_executor(None, measure))
    scheduler = make_scheduler(
        config.batching, staged, profiles, config.slo_s, config.profile_s or None
    )
    metrics = worker.metrics

    def observe(size: int, latency_s: float, predicted_s: float | None) -> None:
        metrics.observe_batch(size, latency_s, predicted_s)
        metrics.queue_depth.labels(config.model_name).set(scheduler.queue_depth)

    engine = StagedEngine(
        staged,
        scheduler,
        torch_threads=threads,
        max_queue=config.batching.max_queue,
        on_stage=observe,
    )
    await engine.start()
    return engine
