"""The worker server: one model variant behind the KServe Open Inference Protocol v2.

REST endpoints: ``GET /v2`` (server metadata), ``/v2/health/live``, ``/v2/health/ready``,
``/v2/models/{name}`` (model metadata: inputs and outputs), ``/v2/models/{name}/ready``,
``POST /v2/models/{name}/infer``, each model path also under
``/v2/models/{name}/versions/1/...``, and ``GET /metrics``. With ``grpc_port`` set, the same
over gRPC (`accordion.workers.grpcserver`). Requests are validated by `accordion.workers.protocol`
(the same checks for both transports) within the bounds of `accordion.workers.edge` (body size,
slow clients, bulk bodies): every refusal is a 4xx with a reason, ``{"error": "..."}``.

Every request carries a deadline: the remaining budget in milliseconds in the
``x-accordion-deadline-ms`` header (default: the worker's SLO). A request of N samples (input
shape ``[N, *sample]``) becomes N items of the batching policy of `accordion.workers.batching`,
all with the request's deadline, answered together as one ``[N, ...]`` output. A single asyncio
task (`Worker._loop`) drives that policy with the event loop's monotonic clock, exactly as the
simulator drives it on simulated time. Batches execute on the model thread of
`accordion.workers.models.ModelRunner`, so the loop keeps accepting and dropping requests while
the device is busy.

Tensors travel as JSON (``data`` lists) or, with the binary tensor data extension of KServe v2
(as Triton implements it), as raw little-endian bytes after the JSON header: the request sets
``Inference-Header-Content-Length`` to the JSON header's length and the input's
``parameters.binary_data_size``; a request asking for binary output (request parameter
``binary_data_output`` or an output's ``parameters.binary_data``) gets its output the same way.
JSON parsing of a few thousand numbers costs more CPU than a small model's inference, hence the
extension.

Outcomes (metric label, counted per sample, and the ``x-accordion-outcome`` response header):
``ok`` (answered within the deadline), ``late`` (answered after it), ``dropped`` (the policy gave
up on a sample: 503 with the reason), ``rejected`` (bad input: 4xx; or shed at admission because
the queue is full: 503 with the reason).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import socket
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from accordion.workers import drain
from accordion.workers.batching import (
    BatchingPolicy,
    Request,
    SlowdownMeter,
    make_policy,
)
from accordion.workers.config import (
    BINARY_HEADER,
    DEADLINE_HEADER,
    OUTCOME_HEADER,
    REPLICA_HEADER,
    SLOWDOWN_HEADER,
    SLOWDOWN_MEDIAN_HEADER,
    WorkerConfig,
)
from accordion.workers.edge import EdgeLimits, edge_app, error_response, read_request
from accordion.workers.grpcserver import V2Endpoint, parse_grpc, render_grpc
from accordion.workers.models import LoadedModel, ModelRunner, load_model
from accordion.workers.pipeline import NextStage, stage_model
from accordion.workers.protocol import (
    MODEL_VERSION,
    DroppedError,
    InferenceError,
    InferRequest,
    InferResponse,
    Signature,
    TensorSpec,
    answered_rows,
    parse_deadline_ms,
    render_rest,
    server_metadata_doc,
)
from accordion.workers.served import (
    SERVED_COUNT_METRIC,
    SERVED_METRIC,
    SERVED_QUANTILES,
    ServedProfile,
)
from accordion.workers.stagedworker import StagedEngine, start_engine

if TYPE_CHECKING:
    from grpc import aio as grpc_aio

    from accordion.workers import grpc_predict_v2_pb2 as pb

    GrpcServer = grpc_aio.Server

LATENCY_BUCKETS_S = (
    0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class WorkerMetrics:
    """The worker's Prometheus metrics, in a registry of its own (one per app)."""

    def __init__(self, model_name: str) -> None:
        self.registry = CollectorRegistry()
        self.model_name = model_name
        self.requests = Counter(
            "accordion_worker_requests_total",
            "Inference requests by outcome (ok, late, dropped, rejected).",
            ["model", "outcome"],
            registry=self.registry,
        )
        for outcome in ("ok", "late", "dropped", "rejected"):
            self.requests.labels(model_name, outcome)
        self.request_latency = Histogram(
            "accordion_worker_request_latency_seconds",
            "Time from arrival to response of answered requests.",
            ["model"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.execution_latency = Histogram(
            "accordion_worker_execution_latency_seconds",
            "Execution time of one batch on the device.",
            ["model"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "accordion_worker_batch_size",
            "Requests per executed batch.",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "accordion_worker_queue_depth",
            "Requests waiting for a batch.",
            ["model"],
            registry=self.registry,
        )
        self.predicted_latency = Gauge(
            "accordion_worker_predicted_latency_seconds",
            "The batcher's predicted execution latency per batch size.",
            ["model", "batch_size"],
            registry=self.registry,
        )
        self.observed_latency = Gauge(
            "accordion_worker_observed_latency_seconds",
            "Moving average of observed execution latency per batch size.",
            ["model", "batch_size"],
            registry=self.registry,
        )
        self.served_latency = Gauge(
            SERVED_METRIC,
            "Percentiles of the last executions of each batch size while serving (the profile "
            "as served, `accordion.workers.served`).",
            ["model", "batch_size", "quantile"],
            registry=self.registry,
        )
        self.served_batches = Gauge(
            SERVED_COUNT_METRIC,
            "Executions of each batch size behind its served percentiles.",
            ["model", "batch_size"],
            registry=self.registry,
        )
        self.served = ServedProfile()
        self._observed_avg: dict[int, float] = {}

    def observe_batch(self, size: int, latency_s: float, predicted_s: float | None) -> None:
        self.execution_latency.labels(self.model_name).observe(latency_s)
        self.batch_size.labels(self.model_name).observe(size)
        self.served.observe(size, latency_s)
        self.served_batches.labels(self.model_name, str(size)).set(self.served.samples(size))
        point = self.served.point(size)
        if point is not None:
            for q, value in zip(SERVED_QUANTILES, point, strict=True):
                self.served_latency.labels(self.model_name, str(size), str(q)).set(value)
        previous = self._observed_avg.get(size)
        avg = latency_s if previous is None else 0.9 * previous + 0.1 * latency_s
        self._observed_avg[size] = avg
        self.observed_latency.labels(self.model_name, str(size)).set(avg)
        if predicted_s is not None:
            self.predicted_latency.labels(self.model_name, str(size)).set(predicted_s)


@dataclass
class _Pending:
    sample: npt.NDArray[np.generic]
    future: asyncio.Future[tuple[npt.NDArray[np.generic], str]] = field(repr=False)


class Worker:
    """A model, its batching policy and the loop that drives the policy with real time."""

    def __init__(
        self, config: WorkerConfig, model: LoadedModel | None = None, *, warm_up: bool = True
    ) -> None:
        self.config = config
        self.model = model or load_model(config.model, config.input_shape, config.input_datatype)
        self.next_stage: NextStage | None = None
        self._downstream_s = 0.0
        """A pipeline stage batches against the deadline less the later stages' share."""
        if config.pipeline is not None:  # one stage of a pipeline (`pipeline`)
            self._downstream_s = config.pipeline.downstream_ms / 1000.0
            self.model = stage_model(self.model, config.pipeline)
            if config.pipeline.next_url is not None:
                self.next_stage = NextStage(config.pipeline)
        self.runner = ModelRunner(self.model, config.device, config.torch_threads)
        self.metrics = WorkerMetrics(config.model_name)
        self.accuracy = config.accuracy if config.accuracy is not None else self.model.accuracy
        self._warm_up = warm_up
        self.policy: BatchingPolicy | None = None
        self.meter: SlowdownMeter | None = None
        self._open_cycle: tuple[float, int, float] | None = None
        """(started, size, execution) of the last batch, while it may have a successor."""
        self.grpc_port: int | None = None
        """The gRPC endpoint's port once it listens (`config.grpc_port`, or the one bound for 0)."""
        self.replica = f"{socket.gethostname()}:{config.port}"
        """This replica's name in its answers (`REPLICA_HEADER`): unique per pod and port."""
        self.ready = False
        self.draining = False
        """Terminating (`accordion.workers.drain`): still serving, and still ready."""
        self._ids = itertools.count()
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._batch_task: asyncio.Task[None] | None = None
        self.engine: StagedEngine | None = None
        """Staged execution (`batching.mode` cellular or node, or a ragged model): it serves
        requests instead of the request batcher (`accordion.workers.stagedworker`)."""

    # -- lifecycle ---------------------------------------------------------------------------
    def _batch_sizes(self) -> list[int]:
        cap = self.config.batching.max_batch_size
        sizes = [1 << k for k in range(int(math.log2(cap)) + 1)]
        return sorted({*sizes, cap})

    async def start(self) -> None:
        if self.config.batching.mode != "request" or (
            self.model.staged is not None and self.model.staged.ragged
        ):
            self.engine = await start_engine(self)
            self.ready = True
            return
        profile_s = self.config.profile_s
        sizes = self._batch_sizes()
        if self._warm_up or not profile_s:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, self.runner.warm_up, sizes, 2)
            if not profile_s:
                # No profile given: measure one now; the predictor corrects it online anyway.
                measured: dict[int, float] = {}
                for b in sizes:
                    runs = await loop.run_in_executor(None, self.runner.measure, b, 5)
                    measured[b] = sorted(runs)[-2]
                profile_s = measured
        self.policy = make_policy(self.config.batching, profile_s, self.config.slo_s)
        self.meter = SlowdownMeter(profile_s)
        for b in sizes:
            predicted = self.policy.predicted_latency_s(b)
            if predicted is not None:
                self.metrics.predicted_latency.labels(self.config.model_name, str(b)).set(predicted)
        self._task = asyncio.create_task(self._loop(), name="accordion-batching-loop")
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        if self.engine is not None:
            await self.engine.stop()
        for task in (self._task, self._batch_task):
            if task is not None:
                task.cancel()
        for task in (self._task, self._batch_task):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.next_stage is not None:
            await self.next_stage.close()
        self.runner.close()

    # -- the batching loop -------------------------------------------------------------------
    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._kick.clear()
            wake_at_s = self._step(loop.time())
            timeout = None if wake_at_s is None else max(0.0, wake_at_s - loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), timeout)

    def _step(self, now_s: float) -> float | None:
        """One decision of the policy, acted on: its drops failed, its batch handed to the model
        thread before this returns (`_start`); when to decide again (None: on the next kick)."""
        policy = self.policy
        assert policy is not None
        decision = policy.decide(now_s)
        for dropped in decision.dropped:
            pending = dropped.request.payload
            assert isinstance(pending, _Pending)
            if not pending.future.done():
                pending.future.set_exception(DroppedError(dropped.reason))
        self._close_cycle(now_s, bool(decision.batch))
        if decision.batch:
            self._start(decision.batch, decision.predicted_latency_s, now_s)
        self.metrics.queue_depth.labels(self.config.model_name).set(policy.queue_depth)
        return decision.wake_at_s

    def _start(
        self, batch: tuple[Request, ...], predicted_s: float | None, started_s: float
    ) -> None:
        """Hand a batch to the model thread now, and answer it when it is done (`_finish`)."""
        try:
            stacked = np.stack([r.payload.sample for r in batch if isinstance(r.payload, _Pending)])
            running = self.runner.submit(stacked)
        except Exception as exc:  # answered by `_finish`, as a failed run
            running = asyncio.get_running_loop().create_future()
            running.set_exception(exc)
        self._batch_task = asyncio.create_task(self._finish(batch, running, predicted_s, started_s))

    def _close_cycle(self, now_s: float, started_another: bool) -> None:
        """The first decision after a batch that ended with requests waiting: if it starts the
        next batch, the two ran back to back, and the time from one start to the next (the
        execution, and whatever delayed the next batch's start: what the worker can serve) is
        the sample; else (the batcher waits or dropped them) the execution alone."""
        cycle, self._open_cycle = self._open_cycle, None
        if cycle is None or self.meter is None:
            return
        started_s, size, execution_s = cycle
        self.meter.observe(size, now_s - started_s if started_another else execution_s, now_s)

    async def _finish(
        self,
        batch: tuple[Request, ...],
        running: asyncio.Future[tuple[npt.NDArray[np.generic], float]],
        predicted_s: float | None,
        started_s: float,
    ) -> None:
        """Wait for a batch's execution, start the next batch, then answer this one.

        The next batch starts before the answers are built: answering a batch of b (the
        requests' handlers build and write their responses on this event loop) kept the
        device idle 0.34-0.36 ms per request between a saturated demo-xl worker's batches of 8
        on 2 cores (258-259 req/s; the device alone runs 302). Started first, the model thread
        runs the next batch while this thread answers (`SWITCH_INTERVAL_MS`: the two share the
        interpreter lock finely): 0.14 ms idle per request, 275-283 req/s."""
        loop = asyncio.get_running_loop()
        policy = self.policy
        assert policy is not None
        try:
            output, latency_s = await running
        except Exception as exc:  # the model failed: answer every member, keep serving
            policy.complete(len(batch), 0.0, loop.time())
            for request in batch:
                pending = request.payload
                if isinstance(pending, _Pending) and not pending.future.done():
                    pending.future.set_exception(exc)
            self._kick.set()
            return
        now = loop.time()
        policy.complete(len(batch), latency_s, now)
        if policy.queue_depth:  # the next batch may follow at once: see `_close_cycle`
            self._open_cycle = (started_s, len(batch), latency_s)
            self._step(now)
        elif self.meter is not None:
            self.meter.observe(len(batch), latency_s, now)
        self.metrics.observe_batch(len(batch), latency_s, predicted_s)
        for row, request in enumerate(batch):
            pending = request.payload
            assert isinstance(pending, _Pending)
            outcome = "ok" if now <= request.deadline_s else "late"
            if not pending.future.done():
                pending.future.set_result((output[row : row + 1], outcome))
        self._kick.set()

    def report_headers(self, now_s: float) -> dict[str, str]:
        """What every answer tells the router: this replica, and its slowdown when known."""
        headers = {REPLICA_HEADER: self.replica}
        if self.meter is None:
            return headers
        slowdown = self.meter.value(now_s)
        if slowdown is not None:
            headers[SLOWDOWN_HEADER] = f"{slowdown:.4g}"  # never 0: a fast worker too
            median = self.meter.value(now_s, 0.5)
            headers[SLOWDOWN_MEDIAN_HEADER] = f"{median:.4g}"
        return headers

    # -- one request -------------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        """The model's v2 metadata (``GET /v2/models/{name}``; gRPC ModelMetadata)."""
        signature = self.signature
        return {
            "name": self.config.model_name,
            "versions": [MODEL_VERSION],
            "platform": "pytorch",
            "inputs": [t.to_json() for t in signature.inputs],
            "outputs": [t.to_json() for t in signature.outputs],
            "parameters": {
                "slo_ms": self.config.slo_ms,
                "max_batch_size": self.config.batching.max_batch_size,
                "policy": self.config.batching.policy,
                "mode": self.config.batching.mode,
                "accuracy": self.accuracy,
            },
        }

    @property
    def signature(self) -> Signature:
        """The model's v2 signature: one input of `[N, *sample_shape]`, one output."""
        return Signature(
            inputs=(
                TensorSpec(
                    self.config.input_name, self.model.datatype, (-1, *self.model.input_shape)
                ),
            ),
            outputs=(TensorSpec(self.config.output_name, "FP32", (-1, -1)),),
        )

    async def infer(
        self, request: InferRequest, budget_s: float, arrival_s: float
    ) -> tuple[InferResponse, str]:
        """Serve a validated request of N samples as N items of the batcher, all with the
        request's deadline, and answer them as one response; (response, outcome). Raises
        `InferenceError`: 503 when shed or dropped (a sample the batcher gave up on fails the
        request), 400 for a batch larger than the admission bound could ever take."""
        name = self.config.model_name
        counter = self.metrics.requests
        samples = request.inputs[self.config.input_name]
        n = samples.shape[0]
        try:
            if n > self.config.batching.max_queue:
                raise InferenceError(
                    400,
                    f"a batch of {n} samples exceeds this worker's queue bound of "
                    f"{self.config.batching.max_queue}; send at most that many per request",
                )
            rows = await self._submit(samples, arrival_s + budget_s - self._downstream_s)
        except InferenceError as exc:
            counter.labels(name, exc.outcome).inc(n)
            raise
        loop = asyncio.get_running_loop()
        outcomes = {outcome for _, outcome in rows}
        outcome = "late" if "late" in outcomes or loop.time() > arrival_s + budget_s else "ok"
        # (ok for its batch, late when the answer leaves: the answers of a large batch are built
        # one after another, measured at ~290/s with batches of ~32, up to 10 ms later.)
        counter.labels(name, outcome).inc(n)
        self.metrics.request_latency.labels(name).observe(loop.time() - arrival_s)
        output = np.concatenate([row for row, _ in rows]).astype(np.float32, copy=False)
        if self.next_stage is not None:  # hand the rest of the work on (`pipeline`)
            remaining_s = arrival_s + budget_s - loop.time()
            handed = await self.next_stage.forward(output, remaining_s, request.id)
            output = handed.astype(np.float32, copy=False)
        response = InferResponse(
            name, MODEL_VERSION, {self.config.output_name: output}, id=request.id
        )
        return response, outcome

    async def _submit(
        self, samples: npt.NDArray[np.generic], deadline_s: float
    ) -> list[tuple[npt.NDArray[np.generic], str]]:
        if self.engine is not None:
            return await self.engine.submit(samples, deadline_s)
        policy = self.policy
        if policy is None:
            raise InferenceError(503, "model is not ready")
        n = samples.shape[0]
        if policy.queue_depth + n > self.config.batching.max_queue:
            raise InferenceError(
                503,
                f"overloaded: queue is full ({self.config.batching.max_queue} requests)",
            )
        loop = asyncio.get_running_loop()
        now = loop.time()
        futures = []
        for sample in samples:
            future: asyncio.Future[tuple[npt.NDArray[np.generic], str]] = loop.create_future()
            policy.enqueue(Request(next(self._ids), now, deadline_s, _Pending(sample, future)), now)
            futures.append(future)
        self._kick.set()
        results = await asyncio.gather(*futures, return_exceptions=True)
        return answered_rows(results)


WORKER_KEY = web.AppKey("worker", Worker)


class WorkerEndpoint(V2Endpoint):
    """The worker behind the gRPC endpoint."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.default_budget_s = worker.config.slo_s

    def _check(self, name: str, version: str) -> None:
        served = self.worker.config.model_name
        if name != served:
            raise InferenceError(404, f"unknown model {name!r}; this worker serves {served!r}")
        if version not in ("", MODEL_VERSION):
            raise InferenceError(404, f"unknown version {version!r} of model {served!r}")

    def ready(self) -> bool:
        return self.worker.ready

    def server_metadata(self) -> dict[str, Any]:
        return server_metadata_doc()

    async def model_metadata(self, name: str, version: str) -> dict[str, Any]:
        self._check(name, version)
        return self.worker.metadata()

    def model_ready(self, name: str, version: str) -> bool:
        self._check(name, version)
        return self.worker.ready

    async def infer(
        self, message: pb.ModelInferRequest, budget_s: float, arrival_s: float
    ) -> tuple[pb.ModelInferResponse, str]:
        worker = self.worker
        try:
            self._check(message.model_name, message.model_version)
            request = parse_grpc(message, worker.signature)
        except InferenceError:
            worker.metrics.requests.labels(worker.config.model_name, "rejected").inc()
            raise
        response, outcome = await worker.infer(request, budget_s, arrival_s)
        return render_grpc(response, request), outcome


async def start_worker_grpc(worker: Worker, host: str, port: int) -> GrpcServer:
    from accordion.workers.grpcserver import start_grpc

    server, worker.grpc_port = await start_grpc(
        WorkerEndpoint(worker), host, port, worker.config.max_body_bytes
    )
    return server


def edge_limits(config: WorkerConfig) -> EdgeLimits:
    return EdgeLimits(
        max_body_bytes=config.max_body_bytes,
        header_timeout_s=config.client_header_timeout_ms / 1000.0,
        body_timeout_s=config.client_body_timeout_ms / 1000.0,
    )


def create_app(worker: Worker) -> web.Application:
    """The aiohttp application of one worker; starts and stops the batching loop with it, and
    the gRPC endpoint when the configuration names its port."""
    config = worker.config
    name = config.model_name
    app = edge_app(edge_limits(config))
    app[WORKER_KEY] = worker
    metrics = worker.metrics

    def model_or_404(request: web.Request) -> None:
        requested = request.match_info["name"]
        version = request.match_info.get("version")
        if requested != name:
            raise InferenceError(404, f"unknown model {requested!r}; this worker serves {name!r}")
        if version is not None and version != MODEL_VERSION:
            raise InferenceError(
                404, f"unknown version {version!r} of model {name!r}; it has {MODEL_VERSION!r}"
            )

    async def live(_: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def ready(_: web.Request) -> web.Response:
        # Still ready while draining: routers check a group's readiness through its Service,
        # so a terminating pod's 503 would take its healthy siblings out of their split too
        # (Kubernetes takes a terminating pod out of the endpoints whatever its readiness).
        return web.json_response({"ready": worker.ready}, status=200 if worker.ready else 503)

    async def server_metadata(_: web.Request) -> web.Response:
        return web.json_response(server_metadata_doc())

    async def model_metadata(request: web.Request) -> web.Response:
        model_or_404(request)
        return web.json_response(worker.metadata())

    async def model_ready(request: web.Request) -> web.Response:
        model_or_404(request)
        return web.json_response(
            {"name": name, "ready": worker.ready}, status=200 if worker.ready else 503
        )

    async def infer(request: web.Request) -> web.Response:
        arrival = asyncio.get_running_loop().time()
        try:
            model_or_404(request)
            budget_s = parse_deadline_ms(request.headers.get(DEADLINE_HEADER), config.slo_s)
            parsed = await read_request(request, worker.signature)
        except InferenceError as exc:
            metrics.requests.labels(name, "rejected").inc()
            return error_response(exc.status, exc.reason, exc.outcome)
        try:
            response, outcome = await worker.infer(parsed, budget_s, arrival)
        except InferenceError as exc:
            return error_response(exc.status, exc.reason, exc.outcome)
        payload, json_length = render_rest(response, parsed)
        headers = {
            OUTCOME_HEADER: outcome,
            **worker.report_headers(asyncio.get_running_loop().time()),
        }
        if json_length is None:
            return web.Response(body=payload, content_type="application/json", headers=headers)
        headers[BINARY_HEADER] = str(json_length)
        return web.Response(body=payload, content_type="application/octet-stream", headers=headers)

    async def prometheus(_: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    grpc_server: list[GrpcServer] = []

    async def on_startup(_: web.Application) -> None:
        await worker.start()
        if config.grpc_port is not None:
            grpc_server.append(await start_worker_grpc(worker, config.host, config.grpc_port))

    async def on_cleanup(_: web.Application) -> None:
        for server in grpc_server:
            await server.stop(grace=1.0)
        await worker.stop()

    app.router.add_get("/v2", server_metadata)
    app.router.add_get("/v2/health/live", live)
    app.router.add_get("/v2/health/ready", ready)
    for model in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        app.router.add_get(model, model_metadata)
        app.router.add_get(f"{model}/ready", model_ready)
        app.router.add_post(f"{model}/infer", infer)
    app.router.add_get("/metrics", prometheus)
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


def serve(config: WorkerConfig) -> None:
    """Run a worker until interrupted (this process's switch interval set to the config's:
    `accordion.workers.config.SWITCH_INTERVAL_MS` says why); SIGTERM drains it for at most
    `config.drain_s` first (`accordion.workers.drain`)."""
    sys.setswitchinterval(config.switch_interval_ms / 1000.0)
    worker = Worker(config)
    app = create_app(worker)
    drain.install(app, worker, config.drain_s)
    web.run_app(app, host=config.host, port=config.port, print=None)
