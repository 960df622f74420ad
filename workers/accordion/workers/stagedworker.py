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
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch

from accordion.workers.batching import make_policy
from accordion.workers.cellular import CellularScheduler
from accordion.workers.config import BatchingConfig
from accordion.workers.lazy import NodeScheduler
from accordion.workers.protocol import InferenceError
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
        latency = StageLatency(stage_profiles_s, margin_s=margin_s / model.nominal_steps)
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
                        runs.append(time.perf_counter() - start)
                out[0][b] = runs[len(runs) // (repeats + 1) :]  # the first pass warms up
                continue
            states = [model.begin(s) for s in samples]
            for k in range(model.stages):
                times = []
                for _ in range(repeats + 1):
                    start = time.perf_counter()
                    after = model.run(k, states)
                    times.append(time.perf_counter() - start)
                out[k][b] = times[1:]
                states = after
    return out


def stage_profile_s(
    measured: list[dict[int, list[float]]], quantile: float = 0.75
) -> list[dict[int, float]]:
    """One latency per stage and batch size from `profile_stages`' runs (a high quantile)."""
    return [
        {b: sorted(runs)[min(len(runs) - 1, int(quantile * len(runs)))] for b, runs in st.items()}
        for st in measured
    ]


class StagedDroppedError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class _Slot:
    state: Any
    future: asyncio.Future[Row] = field(repr=False)
    output: npt.NDArray[np.generic] | None = None


class StagedEngine:
    """Drives a `StageScheduler` with the event loop's clock; stages run on one model thread.

    `on_stage(size, latency_s, predicted_s)` is told of every stage run (the worker's batch
    metrics)."""

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
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="accordion-stages")
        self._executor.submit(torch.set_num_threads, torch_threads).result()
        self._ids = itertools.count()
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._step: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="accordion-staged-loop")

    async def stop(self) -> None:
        for task in (self._task, self._step):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def depth(self) -> int:
        return self.scheduler.queue_depth + len(self.scheduler.inflight)

    async def submit(self, samples: npt.NDArray[np.generic], deadline_s: float) -> list[Row]:
        """Serve the N samples of a request as N jobs with its deadline; their rows. Raises
        `InferenceError`: 400 for a malformed sample, 503 when shed or dropped."""
        n = samples.shape[0]
        if self.depth + n > self.max_queue:
            raise InferenceError(503, f"overloaded: queue is full ({self.max_queue} requests)")
        loop = asyncio.get_running_loop()
        now = loop.time()
        jobs = []
        for sample in samples:
            try:
                steps = self.model.steps(sample)
                state_bytes = self.model.state_bytes(sample)
            except ValueError as exc:
                raise InferenceError(400, str(exc)) from None
            jobs.append((sample, steps, state_bytes))
        futures = []
        for sample, steps, state_bytes in jobs:
            future: asyncio.Future[Row] = loop.create_future()
            slot = _Slot(self.model.begin(sample), future)
            job = Job(next(self._ids), now, deadline_s, steps, state_bytes, payload=slot)
            self.scheduler.enqueue(job, now)
            futures.append(future)
        self._kick.set()
        results = await asyncio.gather(*futures, return_exceptions=True)
        rows: list[Row] = []
        for result in results:
            if isinstance(result, StagedDroppedError):
                raise InferenceError(503, f"dropped: {result.reason}", "dropped")
            if isinstance(result, BaseException):
                raise InferenceError(500, f"model execution failed: {result}", "error")
            rows.append(result)
        if len({row.shape for row, _ in rows}) > 1:
            raise InferenceError(
                400,
                "the samples of one request gave answers of different "
                "shapes: send them as separate requests",
            )
        return rows

    def _run_sync(self, stage: int, jobs: tuple[Job, ...]) -> float:
        """Run one stage for `jobs` (model thread); the answers of those it finishes."""
        start = time.perf_counter()
        with torch.inference_mode():
            states = self.model.run(stage, [j.payload.state for j in jobs])
            for job, state in zip(jobs, states, strict=True):
                job.payload.state = state
                if job.done + 1 >= job.steps:
                    job.payload.output = self.model.finish(state)
        return time.perf_counter() - start

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._kick.clear()
            decision = self.scheduler.decide(loop.time())
            for job, reason in decision.dropped:
                if not job.payload.future.done():
                    job.payload.future.set_exception(StagedDroppedError(reason))
            if decision.run:
                self._step = asyncio.create_task(
                    self._execute(decision.stage, decision.run, decision.predicted_latency_s)
                )
            timeout = None
            if decision.wake_at_s is not None:
                timeout = max(0.0, decision.wake_at_s - loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), timeout)

    async def _execute(self, stage: int, jobs: tuple[Job, ...], predicted_s: float | None) -> None:
        loop = asyncio.get_running_loop()
        try:
            latency_s = await loop.run_in_executor(self._executor, self._run_sync, stage, jobs)
        except Exception as exc:  # the model failed: answer its jobs, keep serving the rest
            for job in self.scheduler.abort(loop.time()):
                if not job.payload.future.done():
                    job.payload.future.set_exception(exc)
            self._kick.set()
            return
        now = loop.time()
        for job in self.scheduler.complete(latency_s, now):
            slot = job.payload
            if not slot.future.done() and slot.output is not None:
                outcome = "ok" if now <= job.deadline_s else "late"
                slot.future.set_result((slot.output[None], outcome))
        if self.on_stage is not None:
            self.on_stage(len(jobs), latency_s, predicted_s)
        self._kick.set()


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
    sizes = worker._batch_sizes()
    loop = asyncio.get_running_loop()
    threads = config.torch_threads

    def measure() -> list[dict[int, list[float]]]:
        torch.set_num_threads(threads)
        return profile_stages(staged, sizes, repeats=2)

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
