"""Router on loopback in front of real workers (torch on CPU): split, reload, health, metrics."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import generate_latest

from accordion.workers.config import DEADLINE_HEADER, Backend, RoutingTable
from accordion.workers.router import OUTCOME_HEADER, VARIANT_HEADER, Router, create_router_app
from accordion.workers.server import Worker, create_app

from .conftest import sample_body, worker_config

Client = TestClient[web.Request, web.Application]


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
            server = TestServer(create_app(Worker(worker_config(), warm_up=False)))
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
    # A hopeless deadline is dropped by the worker and counted as dropped.
    results = await send(client, 1, **{DEADLINE_HEADER: "0.001"})
    assert results[0][0] == 503
    assert results[0][2] == "dropped"


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
