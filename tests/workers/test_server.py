"""The worker server's endpoints on loopback with a real torch model, every bad-input case."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import numpy as np
import pytest
import torch
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from accordion.workers.config import (
    BINARY_HEADER,
    DEADLINE_HEADER,
    OUTCOME_HEADER,
    SLOWDOWN_HEADER,
    SLOWDOWN_MEDIAN_HEADER,
    BatchingConfig,
)
from accordion.workers.models import LoadedModel, build_demo
from accordion.workers.server import Worker, create_app

from .conftest import DEVICES, sample_body, worker_config

Client = TestClient[web.Request, web.Application]


async def test_health_and_metadata(worker_client: Client) -> None:
    assert (await worker_client.get("/v2/health/live")).status == 200
    ready = await worker_client.get("/v2/health/ready")
    assert ready.status == 200
    assert (await ready.json())["ready"] is True
    meta = await worker_client.get("/v2/models/demo-xs")
    assert meta.status == 200
    body = await meta.json()
    assert body["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 256]}]
    assert body["parameters"]["accuracy"] == pytest.approx(0.70)
    assert (await worker_client.get("/v2/models/demo-xs/ready")).status == 200
    for path in ("/v2/models/nope", "/v2/models/nope/ready"):
        resp = await worker_client.get(path)
        assert resp.status == 404
        assert "unknown model 'nope'" in (await resp.json())["error"]


async def test_infer_matches_the_model(worker_client: Client) -> None:
    resp = await worker_client.post("/v2/models/demo-xs/infer", json=sample_body())
    assert resp.status == 200, await resp.text()
    assert resp.headers[OUTCOME_HEADER] == "ok"
    body = await resp.json()
    assert body["id"] == "r1"
    out = body["outputs"][0]
    assert out["name"] == "output"
    assert out["shape"] == [1, 100]
    with torch.inference_mode():
        expected = build_demo("demo-xs")(torch.full((1, 256), 0.5)).numpy().ravel()
    np.testing.assert_allclose(out["data"], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
async def test_batches_on_each_device_match_the_model(device: str) -> None:
    """The request batcher's path on the worker's device (CUDA: pinned copies in and out):
    concurrent requests batched there answer what the model gives each alone on the CPU."""
    config = worker_config(model_name="demo-m", model="builtin:demo-m", device=device)
    worker = Worker(config, warm_up=False)
    values = [0.25 * k for k in range(12)]
    async with TestClient(TestServer(create_app(worker))) as client:
        resps = await asyncio.gather(
            *(client.post("/v2/models/demo-m/infer", json=sample_body(value=v)) for v in values)
        )
        outs = [(await r.json())["outputs"][0]["data"] for r in resps]
        metrics = await client.get("/metrics")
        count = _metric(await metrics.text(), 'accordion_worker_batch_size_count{model="demo-m"}')
    assert count < len(values)  # batched
    model = build_demo("demo-m")
    with torch.inference_mode():
        for v, out in zip(values, outs, strict=True):
            expected = model(torch.full((1, 256), v)).numpy().ravel()
            np.testing.assert_allclose(out, expected, rtol=1e-3, atol=1e-4)


async def test_concurrent_requests_are_batched(worker_client: Client) -> None:
    bodies = [sample_body(value=float(k)) for k in range(24)]
    resps = await asyncio.gather(
        *(worker_client.post("/v2/models/demo-xs/infer", json=b) for b in bodies)
    )
    assert all(r.status == 200 for r in resps)
    metrics = await (await worker_client.get("/metrics")).text()
    assert 'accordion_worker_requests_total{model="demo-xs",outcome="ok"} 24.0' in metrics
    count = _metric(metrics, 'accordion_worker_batch_size_count{model="demo-xs"}')
    assert count < 24  # at least one batch held more than one request
    assert "accordion_worker_predicted_latency_seconds" in metrics
    assert "accordion_worker_observed_latency_seconds" in metrics
    assert "accordion_worker_queue_depth" in metrics
    assert "accordion_worker_execution_latency_seconds_bucket" in metrics
    assert "accordion_worker_request_latency_seconds_bucket" in metrics


def _metric(text: str, prefix: str) -> float:
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    raise AssertionError(f"{prefix} not in metrics")


def _with(**changes: Any) -> dict[str, Any]:
    body = sample_body()
    tensor = body["inputs"][0]  # type: ignore[index]
    tensor.update(changes)
    return body


BAD_BODIES: list[tuple[str, Any, int, str]] = [
    ("not an object", [1, 2], 400, "JSON object"),
    ("no inputs", {"inputs": []}, 400, "non-empty list"),
    ("wrong tensor name", _with(name="x"), 400, "unknown input tensor 'x'"),
    ("wrong dtype", _with(datatype="INT64"), 400, "datatype 'INT64'"),
    ("wrong shape", _with(shape=[1, 255]), 400, "has shape [1, 255]"),
    ("batch short of data", _with(shape=[2, 256]), 400, "shape [2, 256] needs 512"),
    ("shape not ints", _with(shape=["a"]), 400, "list of integers"),
    ("data size", _with(data=[0.0] * 10), 400, "has 10 elements"),
    ("data not numbers", _with(data=["x"] * 256), 400, "not FP32"),
    ("data not a list", _with(data="abc"), 400, "'data' must be a list"),
    ("NaN", _with(data=[float("nan")] * 256), 400, "NaN"),
    ("two inputs", {"inputs": [sample_body()["inputs"][0]] * 2}, 400, "appears twice"),  # type: ignore[index]
    ("unknown output", {**sample_body(), "outputs": [{"name": "logits"}]}, 400, "output"),
]


@pytest.mark.parametrize(("case", "body", "status", "reason"), BAD_BODIES)
async def test_bad_input_gets_a_precise_4xx(
    worker_client: Client, case: str, body: Any, status: int, reason: str
) -> None:
    resp = await worker_client.post(
        "/v2/models/demo-xs/infer",
        data=json.dumps(body, allow_nan=True),
        headers={"Content-Type": "application/json"},
    )
    assert resp.status == status, case
    assert reason in (await resp.json())["error"], case
    assert resp.headers[OUTCOME_HEADER] == "rejected"
    # ...and the server keeps serving.
    ok = await worker_client.post("/v2/models/demo-xs/infer", json=sample_body())
    assert ok.status == 200


async def test_malformed_json_unknown_model_bad_deadline(worker_client: Client) -> None:
    resp = await worker_client.post("/v2/models/demo-xs/infer", data=b"{not json")
    assert resp.status == 400
    assert "malformed JSON" in (await resp.json())["error"]
    resp = await worker_client.post("/v2/models/other/infer", json=sample_body())
    assert resp.status == 404
    for bad in ("soon", "-5", "0", "nan"):
        resp = await worker_client.post(
            "/v2/models/demo-xs/infer", json=sample_body(), headers={DEADLINE_HEADER: bad}
        )
        assert resp.status == 400, bad
        assert DEADLINE_HEADER in (await resp.json())["error"]
    metrics = await (await worker_client.get("/metrics")).text()
    assert (
        _metric(metrics, 'accordion_worker_requests_total{model="demo-xs",outcome="rejected"}') == 6
    )


async def test_oversized_body_is_413() -> None:
    worker = Worker(worker_config(max_body_bytes=4096), warm_up=False)
    async with TestClient(TestServer(create_app(worker))) as client:
        resp = await client.post("/v2/models/demo-xs/infer", data=b"x" * 10_000)
        assert resp.status == 413
        assert "exceeds the limit of 4096 bytes" in (await resp.json())["error"]
        ok = await client.post("/v2/models/demo-xs/infer", json=sample_body())
        assert ok.status == 200


async def test_hopeless_deadline_is_dropped_with_reason(worker_client: Client) -> None:
    resp = await worker_client.post(
        "/v2/models/demo-xs/infer", json=sample_body(), headers={DEADLINE_HEADER: "0.001"}
    )
    assert resp.status == 503
    assert resp.headers[OUTCOME_HEADER] == "dropped"
    assert "even alone" in (await resp.json())["error"]


async def test_overload_is_shed_early_with_503() -> None:
    # A slow baseline that never drops (no batching) and a tiny admission bound.
    config = worker_config(batching=BatchingConfig(policy="none", max_queue=2))
    worker = Worker(config, warm_up=False)
    async with TestClient(TestServer(create_app(worker))) as client:
        resps = await asyncio.gather(
            *(client.post("/v2/models/demo-xs/infer", json=sample_body()) for _ in range(40))
        )
        statuses = [r.status for r in resps]
        assert 503 in statuses
        assert 200 in statuses
        shed = [r for r in resps if r.status == 503]
        assert "queue is full" in (await shed[0].json())["error"]
        assert shed[0].headers[OUTCOME_HEADER] == "rejected"


class _GatedModel(torch.nn.Module):
    """Holds its thread on the first batch until the test opens the gate (or 10 s pass), as a
    big model on a busy CPU does, and counts the batches it finished."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.finished = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.finished == 0:
            self.gate.wait(timeout=10.0)
        self.finished += 1
        return torch.zeros(x.shape[0], 100)


async def test_readiness_is_answered_while_a_batch_runs_and_the_queue_is_full() -> None:
    """A worker whose model is busy and whose queue is full (it sheds what comes on top) still
    answers its readiness probes while that batch runs: the model runs on its own thread, and
    health never waits on the batch queue. Ordinal, not timed: the batch is held until every
    probe has its answer, so a probe that waited on the batch would come back only after the
    model's 10-s safety release, with the batch finished."""
    config = worker_config(
        slo_ms=60_000.0,
        profile_ms={1: 300.0},
        batching=BatchingConfig(max_batch_size=1, max_queue=16),
    )
    gated = _GatedModel()
    model = LoadedModel(gated, (256,), "FP32", 0.5)
    worker = Worker(config, model, warm_up=False)
    async with TestClient(TestServer(create_app(worker))) as client:
        stop = asyncio.Event()
        statuses: list[int] = []

        async def flood() -> None:  # keeps the queue full and the edge busy rejecting
            while not stop.is_set():
                resp = await client.post("/v2/models/demo-xs/infer", json=sample_body())
                statuses.append(resp.status)
                await resp.read()

        floods = [asyncio.create_task(flood()) for _ in range(24)]
        try:
            for _ in range(200):  # the first batch is held, the queue fills, the rest is shed
                await asyncio.sleep(0.05)
                assert worker.policy is not None
                if worker.policy.queue_depth >= 8 and 503 in statuses:
                    break
            assert worker.policy is not None
            assert worker.policy.queue_depth >= 8
            assert 503 in statuses  # saturated: what came on top of the full queue was shed
            answered_during_batch = []
            for _ in range(8):
                resp = await client.get("/v2/health/ready")
                answered_during_batch.append(gated.finished == 0)
                assert resp.status == 200
                await asyncio.sleep(0.05)
            assert all(answered_during_batch), answered_during_batch
        finally:
            gated.gate.set()
            stop.set()
            for task in floods:
                task.cancel()
            await asyncio.gather(*floods, return_exceptions=True)


def _binary_request(
    values: np.ndarray[Any, Any], parameters: dict[str, Any] | None = None
) -> tuple[bytes, dict[str, str]]:
    data = values.astype("<f4").tobytes()
    tensor: dict[str, Any] = {"name": "input", "shape": [1, 256], "datatype": "FP32"}
    tensor["parameters"] = {"binary_data_size": len(data)} if parameters is None else parameters
    header = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}}).encode()
    return header + data, {BINARY_HEADER: str(len(header))}


async def test_binary_tensor_extension_round_trip(worker_client: Client) -> None:
    values = np.linspace(-1, 1, 256, dtype=np.float32)
    body, headers = _binary_request(values)
    resp = await worker_client.post("/v2/models/demo-xs/infer", data=body, headers=headers)
    assert resp.status == 200, await resp.text()
    raw = await resp.read()
    length = int(resp.headers[BINARY_HEADER])
    meta = json.loads(raw[:length])
    out = meta["outputs"][0]
    assert out["shape"] == [1, 100]
    assert out["parameters"]["binary_data_size"] == 400
    got = np.frombuffer(raw[length:], dtype="<f4")
    with torch.inference_mode():
        expected = build_demo("demo-xs")(torch.from_numpy(values[None])).numpy().ravel()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


# (case, input parameters (None: the right ones), binary bytes kept (None: all), header, reason)
BAD_BINARY: list[tuple[str, dict[str, Any] | None, int | None, str | None, str]] = [
    ("size mismatch", {"binary_data_size": 100}, None, None, "100 bytes of binary data"),
    ("wrong byte count", {"binary_data_size": 8}, 8, None, "needs 1024"),
    ("size not an int", {"binary_data_size": "x"}, None, None, "non-negative integer"),
    ("undeclared bytes", {}, None, None, "neither 'data' nor"),
    ("header beyond body", None, None, "99999", "within the body"),
    ("header not a number", None, None, "abc", "byte count"),
]


@pytest.mark.parametrize(("case", "params", "keep", "header", "reason"), BAD_BINARY)
async def test_bad_binary_input_gets_a_precise_400(
    worker_client: Client,
    case: str,
    params: dict[str, Any] | None,
    keep: int | None,
    header: str | None,
    reason: str,
) -> None:
    body, headers = _binary_request(np.zeros(256, dtype=np.float32), params)
    if keep is not None:
        body = body[: int(headers[BINARY_HEADER]) + keep]
    if header is not None:
        headers[BINARY_HEADER] = header
    resp = await worker_client.post("/v2/models/demo-xs/infer", data=body, headers=headers)
    assert resp.status == 400, case
    assert reason in (await resp.json())["error"], case
    ok = await worker_client.post("/v2/models/demo-xs/infer", json=sample_body())
    assert ok.status == 200


async def test_slowdown_counts_what_the_worker_adds_between_back_to_back_batches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The model runs 10 ms a batch but says 5 ms (its execution alone); the profile says 10 ms.
    Batches that follow one another at once are sampled start to start (>= 10 ms: 1x the
    profile and more), a batch after which the queue is empty by its execution (0.5x)."""
    config = worker_config(
        profile_ms={1: 10.0, 8: 10.0},
        batching=BatchingConfig(policy="triton", max_batch_size=1, max_queue_delay_ms=0.0),
    )
    worker = Worker(config, warm_up=False)

    async def run(batch: Any) -> tuple[Any, float]:
        await asyncio.sleep(0.01)
        return np.zeros((len(batch), 100), dtype=np.float32), 0.005

    monkeypatch.setattr(worker.runner, "submit", lambda batch: asyncio.ensure_future(run(batch)))
    async with TestClient(TestServer(create_app(worker))) as client:
        loop = asyncio.get_running_loop()
        for _ in range(4):  # one at a time: each batch ends with an empty queue
            assert (await client.post("/v2/models/demo-xs/infer", json=sample_body())).status == 200
        assert worker.meter is not None
        assert worker.meter.value(loop.time()) == pytest.approx(0.5)
        # Twelve at once: batches of one, back to back (the last ends with an empty queue).
        answers = await asyncio.gather(
            *(client.post("/v2/models/demo-xs/infer", json=sample_body()) for _ in range(12))
        )
        assert [a.status for a in answers] == [200] * 12
        value = worker.meter.value(loop.time())
        assert value is not None
        assert value >= 1.0
        assert float(answers[-1].headers[SLOWDOWN_HEADER]) >= 1.0
        # The median of the same batches beside it: the typical batch, never above the tail.
        median = float(answers[-1].headers[SLOWDOWN_MEDIAN_HEADER])
        assert median == pytest.approx(worker.meter.value(loop.time(), 0.5), rel=1e-3)
        assert 0 < median <= float(answers[-1].headers[SLOWDOWN_HEADER])


async def test_the_next_batch_starts_before_the_last_one_is_answered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three requests at once, batches of one: when the first batch ends with two waiting, the
    second goes to the model thread before the first request's answer is built, so that the
    device does not idle while the event loop answers (`Worker._finish`)."""
    from accordion.workers import server

    config = worker_config(
        profile_ms={1: 10.0, 8: 10.0},
        batching=BatchingConfig(policy="triton", max_batch_size=1, max_queue_delay_ms=0.0),
    )
    worker = Worker(config, warm_up=False)
    events: list[str] = []

    async def run(batch: Any) -> tuple[Any, float]:
        await asyncio.sleep(0.01)
        return np.zeros((len(batch), 100), dtype=np.float32), 0.01

    def submit(batch: Any) -> asyncio.Future[tuple[Any, float]]:
        events.append("start")
        return asyncio.ensure_future(run(batch))

    render = server.render_rest  # type: ignore[attr-defined]

    def answer(*args: Any) -> Any:
        events.append("answer")
        return render(*args)

    observe = worker.metrics.observe_batch

    def done(*args: Any) -> None:  # when the batch is counted, before its answers are released
        events.append("done")
        observe(*args)

    monkeypatch.setattr(worker.runner, "submit", submit)
    monkeypatch.setattr(worker.metrics, "observe_batch", done)
    monkeypatch.setattr(server, "render_rest", answer)
    async with TestClient(TestServer(create_app(worker))) as client:
        answers = await asyncio.gather(
            *(client.post("/v2/models/demo-xs/infer", json=sample_body()) for _ in range(3))
        )
    assert [a.status for a in answers] == [200] * 3
    assert events == [
        *("start", "start", "done", "answer"),  # the second batch runs before the first answer
        *("start", "done", "answer", "done", "answer"),
    ]


async def test_an_answer_built_after_its_deadline_is_late(monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch met the deadline, but the answer was built after it (the answers of a large
    batch are built one after another): the worker counts and says "late", not "ok"."""
    worker = Worker(worker_config(), warm_up=False)
    async with TestClient(TestServer(create_app(worker))) as client:
        submit = worker._submit

        async def in_time_then_delayed(samples: Any, deadline_s: float) -> list[tuple[Any, str]]:
            rows = await submit(samples, deadline_s)
            loop = asyncio.get_running_loop()
            await asyncio.sleep(deadline_s - loop.time() + 0.05)  # the answer waits past it
            return rows

        monkeypatch.setattr(worker, "_submit", in_time_then_delayed)
        resp = await client.post(
            "/v2/models/demo-xs/infer", json=sample_body(), headers={DEADLINE_HEADER: "200"}
        )
        assert resp.status == 200
        assert resp.headers[OUTCOME_HEADER] == "late"
        metrics = await (await client.get("/metrics")).text()
        assert 'accordion_worker_requests_total{model="demo-xs",outcome="late"} 1.0' in metrics
        assert 'outcome="ok"} 1.0' not in metrics
