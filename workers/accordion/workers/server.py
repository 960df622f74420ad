"""The worker server: one model variant behind the KServe Open Inference Protocol v2 (HTTP/JSON).

Endpoints: ``GET /v2/health/live``, ``/v2/health/ready``, ``/v2/models/{name}``,
``/v2/models/{name}/ready``, ``POST /v2/models/{name}/infer`` and ``GET /metrics``.

Every request carries a deadline: the remaining budget in milliseconds in the
``x-accordion-deadline-ms`` header (default: the worker's SLO). The request is validated at the
edge (precise 4xx), queued into the batching policy of `accordion.workers.batching`, and a
single asyncio task (`Worker._loop`) drives that policy with the event loop's monotonic clock,
exactly as the simulator drives it on simulated time. Batches execute on the model thread of
`accordion.workers.models.ModelRunner`, so the loop keeps accepting and dropping requests while
the device is busy.

Tensors travel as JSON (``data`` lists) or, with the binary tensor data extension of KServe v2
(as Triton implements it), as raw little-endian bytes after the JSON header: the request sets
``Inference-Header-Content-Length`` to the JSON header's length and the input's
``parameters.binary_data_size``; a request asking for binary output (request parameter
``binary_data_output`` or an output's ``parameters.binary_data``) gets its output the same way.
JSON parsing of a few thousand numbers costs more CPU than a small model's inference, hence the
extension.

Outcomes (metric label and the ``x-accordion-outcome`` response header): ``ok`` (answered
within the deadline), ``late`` (answered after it), ``dropped`` (the policy gave up on it: 503
with the reason), ``rejected`` (bad input: 4xx; or shed at admission because the queue is full:
503 with the reason).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import socket
from dataclasses import dataclass, field
from typing import Any

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
    WorkerConfig,
)
from accordion.workers.models import LoadedModel, ModelRunner, load_model

LATENCY_BUCKETS_S = (
    0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_NUMPY_DTYPES = {
    "FP32": np.float32,
    "FP16": np.float16,
    "FP64": np.float64,
    "INT64": np.int64,
    "INT32": np.int32,
}


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
        self._observed_avg: dict[int, float] = {}

    def observe_batch(self, size: int, latency_s: float, predicted_s: float | None) -> None:
        self.execution_latency.labels(self.model_name).observe(latency_s)
        self.batch_size.labels(self.model_name).observe(size)
        previous = self._observed_avg.get(size)
        avg = latency_s if previous is None else 0.9 * previous + 0.1 * latency_s
        self._observed_avg[size] = avg
        self.observed_latency.labels(self.model_name, str(size)).set(avg)
        if predicted_s is not None:
            self.predicted_latency.labels(self.model_name, str(size)).set(predicted_s)


class BadRequestError(Exception):
    """Input the worker refuses, with the HTTP status and a precise reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


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
        self.runner = ModelRunner(self.model, config.device, config.torch_threads)
        self.metrics = WorkerMetrics(config.model_name)
        self.accuracy = config.accuracy if config.accuracy is not None else self.model.accuracy
        self._warm_up = warm_up
        self.policy: BatchingPolicy | None = None
        self.meter: SlowdownMeter | None = None
        self._open_cycle: tuple[float, int, float] | None = None
        """(started, size, execution) of the last batch, while it may have a successor."""
        self.replica = f"{socket.gethostname()}:{config.port}"
        """This replica's name in its answers (`REPLICA_HEADER`): unique per pod and port."""
        self.ready = False
        self._ids = itertools.count()
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._batch_task: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def _batch_sizes(self) -> list[int]:
        cap = self.config.batching.max_batch_size
        sizes = [1 << k for k in range(int(math.log2(cap)) + 1)]
        return sorted({*sizes, cap})

    async def start(self) -> None:
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
        for task in (self._task, self._batch_task):
            if task is not None:
                task.cancel()
        for task in (self._task, self._batch_task):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self.runner.close()

    # -- the batching loop -------------------------------------------------------------------
    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        policy = self.policy
        assert policy is not None
        while True:
            self._kick.clear()
            now = loop.time()
            decision = policy.decide(now)
            for dropped in decision.dropped:
                pending = dropped.request.payload
                assert isinstance(pending, _Pending)
                if not pending.future.done():
                    pending.future.set_exception(_DroppedError(dropped.reason))
            self._close_cycle(now, bool(decision.batch))
            if decision.batch:
                self._batch_task = asyncio.create_task(
                    self._execute(decision.batch, decision.predicted_latency_s, now)
                )
            self.metrics.queue_depth.labels(self.config.model_name).set(policy.queue_depth)
            timeout = None
            if decision.wake_at_s is not None:
                timeout = max(0.0, decision.wake_at_s - loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), timeout)

    def _close_cycle(self, now_s: float, started_another: bool) -> None:
        """The first decision after a batch that ended with requests waiting: if it starts the
        next batch, the two ran back to back, and the time from one start to the next (the
        execution, answering the batch, taking the arrivals in: what the worker can serve) is
        the sample; else (the batcher waits or dropped them) the execution alone."""
        cycle, self._open_cycle = self._open_cycle, None
        if cycle is None or self.meter is None:
            return
        started_s, size, execution_s = cycle
        self.meter.observe(size, now_s - started_s if started_another else execution_s, now_s)

    async def _execute(
        self, batch: tuple[Request, ...], predicted_s: float | None, started_s: float
    ) -> None:
        loop = asyncio.get_running_loop()
        policy = self.policy
        assert policy is not None
        pendings = [r.payload for r in batch]
        try:
            stacked = np.stack([p.sample for p in pendings if isinstance(p, _Pending)])
            output, latency_s = await self.runner.run(stacked)
        except Exception as exc:  # the model failed: answer every member, keep serving
            policy.complete(len(batch), 0.0, loop.time())
            for p in pendings:
                if isinstance(p, _Pending) and not p.future.done():
                    p.future.set_exception(exc)
            self._kick.set()
            return
        now = loop.time()
        policy.complete(len(batch), latency_s, now)
        if policy.queue_depth:  # the next batch may follow at once: see `_close_cycle`
            self._open_cycle = (started_s, len(batch), latency_s)
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
        slowdown = self.meter.value(now_s) if self.meter is not None else None
        if slowdown is not None:
            headers[SLOWDOWN_HEADER] = f"{slowdown:.4g}"  # never 0: a fast worker too
        return headers

    async def submit(
        self, sample: npt.NDArray[np.generic], budget_s: float
    ) -> tuple[npt.NDArray[np.generic], str]:
        """Queue one sample; return (output row, outcome); raise `_DroppedError` if given up."""
        policy = self.policy
        if policy is None:
            raise _ShedError("model is not ready")
        if policy.queue_depth >= self.config.batching.max_queue:
            raise _ShedError(
                f"overloaded: queue is full ({self.config.batching.max_queue} requests)"
            )
        loop = asyncio.get_running_loop()
        now = loop.time()
        future: asyncio.Future[tuple[npt.NDArray[np.generic], str]] = loop.create_future()
        policy.enqueue(Request(next(self._ids), now, now + budget_s, _Pending(sample, future)), now)
        self._kick.set()
        return await future

    # -- input validation --------------------------------------------------------------------
    def parse_infer(
        self, body: Any, binary: bytes = b""
    ) -> tuple[npt.NDArray[np.generic], str | None, str, bool]:
        """Validate an OIP v2 infer request body (and the binary data after its JSON header, if
        any); return the sample, its id, the output name and whether the output goes binary."""
        if not isinstance(body, dict):
            raise BadRequestError(400, "request body must be a JSON object")
        inputs = body.get("inputs")
        if not isinstance(inputs, list) or not inputs:
            raise BadRequestError(400, "'inputs' must be a non-empty list of tensors")
        if len(inputs) != 1:
            raise BadRequestError(
                400, f"model {self.config.model_name} takes 1 input tensor, got {len(inputs)}"
            )
        tensor = inputs[0]
        if not isinstance(tensor, dict):
            raise BadRequestError(400, "inputs[0] must be an object")
        name = tensor.get("name")
        if name != self.config.input_name:
            raise BadRequestError(
                400, f"unknown input tensor {name!r}; expected {self.config.input_name!r}"
            )
        datatype = tensor.get("datatype")
        if datatype != self.model.datatype:
            raise BadRequestError(
                400, f"input {name!r} has datatype {datatype!r}; expected {self.model.datatype!r}"
            )
        shape = tensor.get("shape")
        sample_shape = list(self.model.input_shape)
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) for d in shape
        ):
            raise BadRequestError(400, f"input {name!r}: 'shape' must be a list of integers")
        if shape not in (sample_shape, [1, *sample_shape]):
            raise BadRequestError(
                400,
                f"input {name!r} has shape {shape}; expected {[1, *sample_shape]} "
                "(one sample per request: the server forms the batches)",
            )
        dtype = np.dtype(_NUMPY_DTYPES[self.model.datatype])
        expected = math.prod(sample_shape)
        binary_size = _parameters(tensor, f"input {name!r}").get("binary_data_size")
        if binary_size is not None:
            array = self._binary_input(name, tensor, binary_size, binary, dtype, expected)
        else:
            if binary:
                raise BadRequestError(
                    400,
                    f"{len(binary)} bytes follow the JSON header but no input declares "
                    "parameters.binary_data_size",
                )
            data = tensor.get("data")
            if not isinstance(data, list):
                raise BadRequestError(400, f"input {name!r}: 'data' must be a list")
            try:
                array = np.asarray(data, dtype=dtype)
            except (ValueError, TypeError) as exc:
                raise BadRequestError(
                    400, f"input {name!r}: data is not {datatype}: {exc}"
                ) from exc
            if array.size != expected:
                raise BadRequestError(
                    400, f"input {name!r}: data has {array.size} elements; shape needs {expected}"
                )
        if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
            raise BadRequestError(400, f"input {name!r}: data contains NaN or infinity")
        outputs = body.get("outputs")
        output_name = self.config.output_name
        if outputs is not None and (
            not isinstance(outputs, list)
            or any(not isinstance(o, dict) or o.get("name") != output_name for o in outputs)
        ):
            raise BadRequestError(400, f"unknown requested output; this model has {output_name!r}")
        binary_out = _parameters(body, "request").get("binary_data_output") is True or any(
            _parameters(o, f"output {output_name!r}").get("binary_data") is True
            for o in outputs or ()
        )
        request_id = body.get("id")
        return (
            array.reshape(sample_shape),
            None if request_id is None else str(request_id),
            output_name,
            binary_out,
        )

    @staticmethod
    def _binary_input(
        name: object,
        tensor: dict[str, Any],
        size: object,
        binary: bytes,
        dtype: np.dtype[Any],
        expected: int,
    ) -> npt.NDArray[np.generic]:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BadRequestError(
                400, f"input {name!r}: binary_data_size must be a non-negative integer"
            )
        if "data" in tensor:
            raise BadRequestError(
                400, f"input {name!r} has both 'data' and parameters.binary_data_size"
            )
        if size != len(binary):
            raise BadRequestError(
                400,
                f"input {name!r}: binary_data_size is {size} but {len(binary)} bytes follow "
                "the JSON header",
            )
        if size != expected * dtype.itemsize:
            raise BadRequestError(
                400,
                f"input {name!r}: {size} bytes of binary data; shape needs "
                f"{expected * dtype.itemsize}",
            )
        return np.frombuffer(binary, dtype=dtype.newbyteorder("<"))


def _parameters(obj: dict[str, Any], what: str) -> dict[str, Any]:
    params = obj.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise BadRequestError(400, f"{what}: 'parameters' must be an object")
    return params


class _DroppedError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _ShedError(_DroppedError):
    pass


def parse_deadline_ms(value: str | None, default_s: float) -> float:
    """The remaining budget (seconds) from the deadline header; BadRequestError if malformed."""
    if value is None:
        return default_s
    try:
        budget_ms = float(value)
    except ValueError:
        raise BadRequestError(400, f"{DEADLINE_HEADER} must be a number of milliseconds") from None
    if not math.isfinite(budget_ms) or budget_ms <= 0:
        raise BadRequestError(400, f"{DEADLINE_HEADER} must be a positive number of milliseconds")
    return budget_ms / 1000.0


def _error(status: int, reason: str, outcome: str) -> web.Response:
    return web.json_response({"error": reason}, status=status, headers={OUTCOME_HEADER: outcome})


WORKER_KEY = web.AppKey("worker", Worker)


def create_app(worker: Worker) -> web.Application:
    """The aiohttp application of one worker; starts and stops the batching loop with it."""
    config = worker.config
    name = config.model_name
    app = web.Application(client_max_size=config.max_body_bytes)
    app[WORKER_KEY] = worker
    metrics = worker.metrics

    def model_or_404(request: web.Request) -> None:
        requested = request.match_info["name"]
        if requested != name:
            raise BadRequestError(404, f"unknown model {requested!r}; this worker serves {name!r}")

    async def live(_: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def ready(_: web.Request) -> web.Response:
        return web.json_response({"ready": worker.ready}, status=200 if worker.ready else 503)

    async def model_metadata(request: web.Request) -> web.Response:
        try:
            model_or_404(request)
        except BadRequestError as exc:
            return _error(exc.status, exc.reason, "rejected")
        return web.json_response(
            {
                "name": name,
                "versions": ["1"],
                "platform": "pytorch",
                "inputs": [
                    {
                        "name": config.input_name,
                        "datatype": worker.model.datatype,
                        "shape": [-1, *worker.model.input_shape],
                    }
                ],
                "outputs": [{"name": config.output_name, "datatype": "FP32", "shape": [-1, -1]}],
                "parameters": {
                    "slo_ms": config.slo_ms,
                    "max_batch_size": config.batching.max_batch_size,
                    "policy": config.batching.policy,
                    "accuracy": worker.accuracy,
                },
            }
        )

    async def model_ready(request: web.Request) -> web.Response:
        try:
            model_or_404(request)
        except BadRequestError as exc:
            return _error(exc.status, exc.reason, "rejected")
        return web.json_response(
            {"name": name, "ready": worker.ready}, status=200 if worker.ready else 503
        )

    async def infer(request: web.Request) -> web.Response:
        loop = asyncio.get_running_loop()
        arrival = loop.time()
        counter = metrics.requests
        try:
            model_or_404(request)
            budget_s = parse_deadline_ms(request.headers.get(DEADLINE_HEADER), config.slo_s)
            if (
                request.content_length is not None
                and request.content_length > config.max_body_bytes
            ):
                raise BadRequestError(
                    413,
                    f"request body of {request.content_length} bytes exceeds the limit of "
                    f"{config.max_body_bytes} bytes",
                )
            try:
                raw = await request.read()
            except web.HTTPRequestEntityTooLarge:
                raise BadRequestError(
                    413, f"request body exceeds the limit of {config.max_body_bytes} bytes"
                ) from None
            binary = b""
            header_length = request.headers.get(BINARY_HEADER)
            if header_length is not None:
                if not header_length.isdigit() or int(header_length) > len(raw):
                    raise BadRequestError(
                        400,
                        f"{BINARY_HEADER} must be a byte count within the body of "
                        f"{len(raw)} bytes, not {header_length!r}",
                    )
                raw, binary = raw[: int(header_length)], raw[int(header_length) :]
            try:
                body = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise BadRequestError(400, f"malformed JSON: {exc}") from exc
            sample, request_id, output_name, binary_out = worker.parse_infer(body, binary)
        except BadRequestError as exc:
            counter.labels(name, "rejected").inc()
            return _error(exc.status, exc.reason, "rejected")
        deadline = arrival + budget_s
        budget_s -= loop.time() - arrival
        try:
            output, outcome = await worker.submit(sample, budget_s)
        except _ShedError as exc:
            counter.labels(name, "rejected").inc()
            return _error(503, exc.reason, "rejected")
        except _DroppedError as exc:
            counter.labels(name, "dropped").inc()
            return _error(503, f"dropped: {exc.reason}", "dropped")
        except Exception as exc:
            counter.labels(name, "rejected").inc()
            return _error(500, f"model execution failed: {exc}", "rejected")
        if outcome == "ok" and loop.time() > deadline:
            # Answered in time by its batch, late by the time this answer is on its way: the
            # answers of a large batch are built one after another (measured at ~290/s with
            # batches of ~32: 2 ms later at the median, up to 10 ms).
            outcome = "late"
        counter.labels(name, outcome).inc()
        metrics.request_latency.labels(name).observe(loop.time() - arrival)
        headers = {OUTCOME_HEADER: outcome, **worker.report_headers(loop.time())}
        tensor: dict[str, Any] = {
            "name": output_name,
            "shape": list(output.shape),
            "datatype": "FP32",
        }
        response: dict[str, Any] = {"model_name": name, "model_version": "1", "outputs": [tensor]}
        if request_id is not None:
            response["id"] = request_id
        if not binary_out:
            tensor["data"] = output.astype(np.float32).ravel().tolist()
            return web.json_response(response, headers=headers)
        data = output.astype("<f4").tobytes()
        tensor["parameters"] = {"binary_data_size": len(data)}
        header = json.dumps(response).encode()
        return web.Response(
            body=header + data,
            content_type="application/octet-stream",
            headers={**headers, BINARY_HEADER: str(len(header))},
        )

    async def prometheus(_: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def on_startup(_: web.Application) -> None:
        await worker.start()

    async def on_cleanup(_: web.Application) -> None:
        await worker.stop()

    app.router.add_get("/v2/health/live", live)
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_get("/v2/models/{name}", model_metadata)
    app.router.add_get("/v2/models/{name}/ready", model_ready)
    app.router.add_post("/v2/models/{name}/infer", infer)
    app.router.add_get("/metrics", prometheus)
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


def serve(config: WorkerConfig) -> None:
    """Run a worker until interrupted."""
    worker = Worker(config)
    web.run_app(create_app(worker), host=config.host, port=config.port, print=None)
