"""Router on loopback in front of real workers (torch on CPU): split, reload, health, metrics."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import torch
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import generate_latest

from accordion.workers.config import (
    BINARY_HEADER,
    DEADLINE_HEADER,
    OUTCOME_HEADER,
    SLOWDOWN_HEADER,
    Backend,
    BatchingConfig,
    RoutingTable,
)
from accordion.workers.fastloop import Outcome, Report
from accordion.workers.models import build_demo
from accordion.workers.router import (
    VARIANT_HEADER,
    Router,
    create_router_app,
)
from accordion.workers.server import Worker, create_app

from .conftest import sample_body, worker_config

Client = TestClient[web.Request, web.Application]


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while not await predicate():
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.02)


def write_table(path: Path, urls: dict[str, str], weights: dict[str, float]) -> None:
    table = RoutingTable(
        service="classifier",
        slo_ms=2000.0,
        backends=[
            Backend(name=n, url=urls[n], model_name="demo-xs", weight=weights[n], accuracy=acc)
            for n, acc in (("big", 0.8), ("small", 0.7))
        ],
    )
    tmp = path.with_suffix(".tmp")
    tmp.write_text(table.model_dump_json())
    tmp.replace(path)  # atomic, like a ConfigMap symlink swap


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[tuple[Client, Router, Path, dict[str, str]]]:
    async with AsyncExitStack() as stack:
        urls: dict[str, str] = {}
        for name in ("big", "small"):
            # A 50 ms safety margin: the worker drops a request with less than ~51 ms left, one
            # the router (which takes well under that) forwards: see test_router_edges.
            config = worker_config(
                batching=BatchingConfig(max_batch_size=8, max_queue=64, margin_ms=50.0)
            )
            server = TestServer(create_app(Worker(config, warm_up=False)))
            await stack.enter_async_context(server)
            urls[name] = str(server.make_url("")).rstrip("/")
        path = tmp_path / "routing.json"
        write_table(path, urls, {"big": 1.0, "small": 0.0})
        router = Router(path, health_interval_s=0.1, reload_interval_s=0.05)
        client = await stack.enter_async_context(TestClient(TestServer(create_router_app(router))))
        yield client, router, path, urls


async def send(client: Client, n: int, **headers: str) -> list[tuple[int, str, str]]:
    async def one() -> tuple[int, str, str]:
        resp = await client.post("/v2/models/classifier/infer", json=sample_body(), headers=headers)
        await resp.read()
        return resp.status, resp.headers.get(VARIANT_HEADER, ""), resp.headers[OUTCOME_HEADER]

    return list(await asyncio.gather(*(one() for _ in range(n))))


def metric(text: str, prefix: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))


async def test_end_to_end_split_reload_and_metrics(
    stack: tuple[Client, Router, Path, dict[str, str]],
) -> None:
    client, router, path, urls = stack
    results = await send(client, 20)
    assert set(results) == {(200, "big", "ok")}
    body: Any = await (await client.post("/v2/models/classifier/infer", json=sample_body())).json()
    assert body["outputs"][0]["shape"] == [1, 100]

    # A table change is followed without restarting (and without dropping requests).
    write_table(path, urls, {"big": 0.0, "small": 1.0})

    async def switched() -> bool:
        return router.decider.plan_weights().get("small") == 1.0

    in_flight = asyncio.create_task(send(client, 30))
    await wait_for(switched)
    assert all(status == 200 for status, _, _ in await in_flight)
    assert {v for _, v, _ in await send(client, 20)} == {"small"}

    write_table(path, urls, {"big": 0.5, "small": 0.5})
    await wait_for(lambda: _async(router.decider.plan_weights().get("big") == 0.5))
    variants = [v for _, v, _ in await send(client, 200)]
    assert 60 <= variants.count("big") <= 140  # binomial(200, 0.5): far beyond 4 sigma

    text = await (await client.get("/metrics")).text()
    total = metric(text, 'accordion_router_requests_total{service="classifier"}')
    assert total == 20 + 1 + 30 + 20 + 200
    ok = metric(text, 'accordion_router_outcomes_total{outcome="ok",service="classifier"')
    assert ok == total
    served = metric(text, 'accordion_router_accuracy_served_total{service="classifier"')
    assert 0.7 * total <= served <= 0.8 * total
    assert metric(text, 'accordion_router_table_reloads_total{result="ok"') == 2


async def _async(value: bool) -> bool:
    return value


async def test_invalid_table_is_ignored(stack: tuple[Client, Router, Path, dict[str, str]]) -> None:
    client, _, path, _ = stack
    path.write_text(json.dumps({"service": "classifier", "backends": []}))

    async def reported() -> bool:
        text = await (await client.get("/metrics")).text()
        return metric(text, 'accordion_router_table_reloads_total{result="invalid"') == 1

    await wait_for(reported)
    assert {v for _, v, _ in await send(client, 5)} == {"big"}


async def test_unhealthy_backend_is_skipped(
    stack: tuple[Client, Router, Path, dict[str, str]], tmp_path: Path
) -> None:
    client, router, path, urls = stack
    dead = {"big": "http://127.0.0.1:9", "small": urls["small"]}  # port 9: nothing listens
    write_table(path, dead, {"big": 0.9, "small": 0.1})

    async def skipped() -> bool:
        return router.decider.plan_weights() == {"small": 1.0}

    await wait_for(skipped)
    assert {v for _, v, _ in await send(client, 10)} == {"small"}


async def test_router_edges(stack: tuple[Client, Router, Path, dict[str, str]]) -> None:
    client, _, _, _ = stack
    assert (await client.get("/v2/health/live")).status == 200
    assert (await client.get("/v2/health/ready")).status == 200
    meta = await (await client.get("/v2/models/classifier")).json()
    assert meta["parameters"]["variants"] == ["big", "small"]
    assert (await client.get("/v2/models/other")).status == 404
    assert (await client.post("/v2/models/other/infer", json=sample_body())).status == 404
    bad = await client.post(
        "/v2/models/classifier/infer", json=sample_body(), headers={DEADLINE_HEADER: "x"}
    )
    assert bad.status == 400
    # Worker errors pass through with their precise reason.
    resp = await client.post("/v2/models/classifier/infer", data=b"{oops")
    assert resp.status == 400
    assert "malformed JSON" in (await resp.json())["error"]
    # A deadline already past at the router is shed there; one the worker cannot meet (30 ms:
    # its profile says 1 ms a batch, plus its 50 ms margin) is dropped by the worker.
    results = await send(client, 1, **{DEADLINE_HEADER: "0.001"})
    assert (results[0][0], results[0][2]) == (503, "shed")
    results = await send(client, 1, **{DEADLINE_HEADER: "30"})
    assert (results[0][0], results[0][2]) == (503, "dropped")


def test_yaml_table_reload_survives_malformed_yaml(tmp_path: Path) -> None:
    path = tmp_path / "routing.yaml"
    backend = {"name": "big", "url": "http://127.0.0.1:9", "weight": 1.0, "accuracy": 0.8}
    path.write_text(yaml.safe_dump({"service": "classifier", "slo_ms": 100, "backends": [backend]}))
    router = Router(path)
    path.write_text("service: [")  # a YAML syntax error, not a validation error
    assert router.reload() is False
    assert router.table.slo_ms == 100
    path.write_text(yaml.safe_dump({"service": "classifier", "slo_ms": 50, "backends": [backend]}))
    assert router.reload() is True
    assert router.table.slo_ms == 50
    text = generate_latest(router.metrics.registry).decode()
    assert metric(text, 'accordion_router_table_reloads_total{result="invalid"') == 1
    assert metric(text, 'accordion_router_table_reloads_total{result="ok"') == 1
    path.write_text("service: [")
    with pytest.raises(ValueError, match="malformed YAML"):
        Router(path)


async def test_non_finite_deadline_is_rejected(
    stack: tuple[Client, Router, Path, dict[str, str]],
) -> None:
    client, _, _, _ = stack
    for value in ("inf", "nan", "-5"):
        resp = await client.post(
            "/v2/models/classifier/infer", json=sample_body(), headers={DEADLINE_HEADER: value}
        )
        assert resp.status == 400, value


async def test_health_needs_consecutive_failures_unless_refused(tmp_path: Path) -> None:
    status = {"code": 200}

    async def ready(_: web.Request) -> web.Response:
        return web.json_response({}, status=status["code"])

    app = web.Application()
    app.router.add_get("/v2/health/ready", ready)
    async with TestServer(app) as server:
        path = tmp_path / "routing.json"
        urls = {"big": str(server.make_url("")).rstrip("/"), "small": "http://127.0.0.1:9"}
        write_table(path, urls, {"big": 0.5, "small": 0.5})
        router = Router(path, health_interval_s=60.0, unhealthy_after=2)
        await router.start()  # one round of checks
        try:
            assert router.decider.healthy("big")
            assert not router.decider.healthy("small")  # nothing listens: out at once
            status["code"] = 503
            await router.check_health()
            assert router.decider.healthy("big")  # one failed check is not enough
            await router.check_health()
            assert not router.decider.healthy("big")
            assert router.decider.plan_weights() == {}
            status["code"] = 200
            await router.check_health()
            assert router.decider.healthy("big")  # back at the first passed check
        finally:
            await router.stop()


async def test_binary_tensor_bodies_pass_through_the_router(
    stack: tuple[Client, Router, Path, dict[str, str]],
) -> None:
    """KServe v2 binary tensor extension, end to end: the JSON header's length travels in
    Inference-Header-Content-Length, the raw bytes after it; the answer comes back the same way."""
    client, _, _, _ = stack
    values = np.linspace(-1, 1, 256, dtype=np.float32)
    data = values.astype("<f4").tobytes()
    header = json.dumps(
        {
            "id": "bin-1",
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 256],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(data)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    resp = await client.post(
        "/v2/models/classifier/infer",
        data=header + data,
        headers={
            BINARY_HEADER: str(len(header)),
            "Content-Type": "application/octet-stream",
        },
    )
    assert resp.status == 200, await resp.text()
    assert resp.headers[OUTCOME_HEADER] == "ok"
    assert resp.headers["Content-Type"] == "application/octet-stream"
    raw = await resp.read()
    length = int(resp.headers[BINARY_HEADER])
    meta = json.loads(raw[:length])
    assert meta["id"] == "bin-1"
    out = meta["outputs"][0]
    assert out["shape"] == [1, 100]
    assert out["parameters"]["binary_data_size"] == 400 == len(raw) - length
    got = np.frombuffer(raw[length:], dtype="<f4")
    with torch.inference_mode():
        expected = build_demo("demo-xs")(torch.from_numpy(values[None])).numpy().ravel()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    # A JSON request on the same router still gets JSON.
    plain = await client.post("/v2/models/classifier/infer", json=sample_body())
    assert plain.headers["Content-Type"].startswith("application/json")
    assert BINARY_HEADER not in plain.headers


async def test_answers_feed_the_capacity_correction(
    stack: tuple[Client, Router, Path, dict[str, str]],
) -> None:
    client, router, _, _ = stack
    seen: list[str] = []
    reports: list[Report | None] = []
    finished = router.decider.finished

    def record(
        name: str,
        now_s: float | None = None,
        outcome: Outcome = "answered",
        report: Report | None = None,
    ) -> None:
        seen.append(outcome)
        reports.append(report)
        finished(name, now_s, outcome, report)

    router.decider.finished = record  # type: ignore[method-assign]
    for _ in range(4):  # one batch each
        await send(client, 1)
    await send(client, 1, **{DEADLINE_HEADER: "30"})  # dropped by the worker (test_router_edges)
    # A 400 is refused by the router itself: it never reaches a backend nor the fast loop.
    await client.post("/v2/models/classifier/infer", data=b"{oops")
    # Dropped by big, sent on to small (`fast_loop.drop_retries`), dropped there too.
    assert seen == ["answered"] * 4 + ["dropped"] * 2
    assert router.decider.inflight("big") == 0
    assert router.decider.inflight("small") == 0
    # The worker tells its speed from its third batch on (thin data before), and its name.
    assert reports[:2] == [None, None]
    assert reports[4:] == [None, None]
    replica = f"{socket.gethostname()}:{worker_config().port}"  # the port it is configured on
    for report in reports[2:4]:
        assert report is not None
        assert report[0] == replica
        assert report[1] > 0
        assert len(report) == 3
        median = report[2]
        assert median is not None
        assert 0 < median <= report[1]  # the median slowdown, never above the quantile
    text = await (await client.get("/metrics")).text()
    assert (
        metric(text, 'accordion_router_backend_slowdown{service="classifier",variant="big"}') == 1
    )


def one_backend_table(directory: Path, url: str, capacity_qps: float) -> Path:
    """A routing table with one backend, "big", planned at `capacity_qps` (2 us a batch)."""
    path = directory / "routing.json"
    big = Backend(
        name="big",
        url=url,
        model_name="demo-xs",
        weight=1.0,
        accuracy=0.8,
        capacity_qps=capacity_qps,
        max_batch_size=8,
        batch_latency_ms=0.002,
    )
    path.write_text(
        RoutingTable(service="classifier", slo_ms=2000.0, backends=[big]).model_dump_json()
    )
    return path


async def test_a_worker_slower_than_its_profile_lowers_the_routers_capacity(
    tmp_path: Path,
) -> None:
    """A worker whose profile promises far more than it runs (1 us a batch) reports it in its
    answers, and the router counts on that much less capacity: to the correction's cap."""
    async with AsyncExitStack() as stack:
        worker = Worker(worker_config(profile_ms={1: 0.001, 8: 0.002}), warm_up=False)
        server = TestServer(create_app(worker))
        await stack.enter_async_context(server)
        path = one_backend_table(tmp_path, str(server.make_url("")).rstrip("/"), 1000.0)
        router = Router(path, health_interval_s=0.1)
        client = await stack.enter_async_context(TestClient(TestServer(create_router_app(router))))
        for _ in range(2):
            resp = await client.post("/v2/models/classifier/infer", json=sample_body())
            assert resp.status == 200
            assert SLOWDOWN_HEADER not in resp.headers
        assert router.decider.slowdown("big") == 1.0
        resp = await client.post("/v2/models/classifier/infer", json=sample_body())
        assert resp.status == 200
        assert router.decider.slowdown("big") == router.decider.max_slowdown == 4.0
        assert router.decider.effective_capacity_qps("big") == pytest.approx(250.0)
        text = await (await client.get("/metrics")).text()
        gauge = 'accordion_router_backend_slowdown{service="classifier",variant="big"}'
        assert metric(text, gauge) == 4.0


def round_robin_proxy(upstreams: list[str]) -> web.Application:
    """What a Kubernetes Service does for the router: each request to one address goes to the
    next of several worker replicas (headers and bodies passed through)."""
    replicas = itertools.cycle(upstreams)
    session = web.AppKey("session", aiohttp.ClientSession)

    async def client(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession() as app[session]:
            yield

    async def forward(request: web.Request) -> web.Response:
        url = next(replicas) + request.path_qs
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        upstream = request.app[session]
        async with upstream.request(request.method, url, data=body, headers=headers) as resp:
            data = await resp.read()
            out = {k: v for k, v in resp.headers.items() if k.lower() not in _HOP_HEADERS}
            return web.Response(body=data, status=resp.status, headers=out)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    app.cleanup_ctx.append(client)
    return app


_HOP_HEADERS = {"content-length", "transfer-encoding", "connection", "content-encoding"}


async def test_several_replicas_behind_one_address_are_corrected_together(
    tmp_path: Path,
) -> None:
    """Two worker replicas behind one Service address: one far slower than the profile (1 us a
    batch), one faster (1 s a batch). The router tells their reports apart and counts on their
    capacity together: 2 / (1 / s0 + 1 / 1), between 1.6x and 2x slower than planned."""
    async with AsyncExitStack() as stack:
        urls: list[str] = []
        for profile in ({1: 0.001, 8: 0.002}, {1: 1000.0, 8: 2000.0}):
            worker = Worker(worker_config(profile_ms=profile), warm_up=False)
            worker.replica = f"replica-{len(urls)}"
            server = TestServer(create_app(worker))
            await stack.enter_async_context(server)
            urls.append(str(server.make_url("")).rstrip("/"))
        proxy = TestServer(round_robin_proxy(urls))
        await stack.enter_async_context(proxy)
        path = one_backend_table(tmp_path, str(proxy.make_url("")).rstrip("/"), 2000.0)  # 2 x
        router = Router(path, health_interval_s=0.1)
        client = await stack.enter_async_context(TestClient(TestServer(create_router_app(router))))
        for _ in range(8):  # 4 batches each: both replicas report
            resp = await client.post("/v2/models/classifier/infer", json=sample_body())
            assert resp.status == 200
        reports = router.decider._states["big"].reports
        assert set(reports) == {"replica-0", "replica-1"}
        assert reports["replica-0"][1] > 4.0
        assert reports["replica-1"][1] < 1.0
        # Together: 2 / (1 / s0 + 1 / 1), the fast one counting as planned (no credit).
        together = 2 / (1 / reports["replica-0"][1] + 1.0)
        assert 1.6 < together < 2.0
        assert router.decider.slowdown("big") == pytest.approx(together)
        assert router.decider.effective_capacity_qps("big") == pytest.approx(2000 / together)


async def test_a_backend_that_starts_late_rejoins_quickly(tmp_path: Path) -> None:
    """At startup the router may check a worker before it listens (refused: out of the split);
    it is checked again every recheck_s, not only at the next round a second later."""
    port = unused_port()
    path = tmp_path / "routing.json"
    urls = {"big": f"http://127.0.0.1:{port}", "small": "http://127.0.0.1:9"}
    write_table(path, urls, {"big": 1.0, "small": 0.0})
    router = Router(path, health_interval_s=30.0, recheck_s=0.05)
    await router.start()
    try:
        assert not router.decider.healthy("big")
        app = web.Application()
        app.router.add_get("/v2/health/ready", _ready)
        async with TestServer(app, port=port):
            loop = asyncio.get_running_loop()
            began = loop.time()
            await wait_for(lambda: _async(router.decider.healthy("big")), timeout_s=2.0)
            assert loop.time() - began < 1.0
            assert not router.decider.healthy("small")
    finally:
        await router.stop()


async def _ready(_: web.Request) -> web.Response:
    return web.json_response({"ready": True})
