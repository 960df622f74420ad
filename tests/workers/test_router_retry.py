"""A request a worker drops is sent again to another backend while one can still answer it.

A worker's batcher drops a request it can no longer answer in time (503, outcome ``dropped``);
nothing was answered, so the router sends it on to a backend that the fast loop predicts
answers in time, spare (zero-weight) ones included, at most ``fast_loop.drop_retries`` times.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from accordion.workers.config import (
    OUTCOME_HEADER,
    Backend,
    BatchingConfig,
    FastLoopBounds,
    RoutingTable,
)
from accordion.workers.router import VARIANT_HEADER, Router, create_router_app
from accordion.workers.server import Worker, create_app

from .conftest import sample_body, worker_config
from .test_router import metric, unused_port

SLO_MS = 30_000.0


def dropping_worker(port: int) -> TestServer:
    """A worker whose profile says a batch of one takes longer than the SLO: its batcher drops
    every request it is sent ("deadline cannot be met even alone")."""
    config = worker_config(
        slo_ms=SLO_MS,
        profile_ms={1: 2 * SLO_MS, 8: 2 * SLO_MS},
        batching=BatchingConfig(max_batch_size=8, max_queue=64),
    )
    return TestServer(create_app(Worker(config, warm_up=False)), port=port)


def serving_worker(port: int) -> TestServer:
    config = worker_config(slo_ms=SLO_MS, batching=BatchingConfig(max_batch_size=8, max_queue=64))
    return TestServer(create_app(Worker(config, warm_up=False)), port=port)


def table(path: Path, ports: dict[str, int], weights: dict[str, float], retries: int) -> None:
    path.write_text(
        RoutingTable(
            service="classifier",
            slo_ms=SLO_MS,
            backends=[
                Backend(
                    name=name,
                    url=f"http://127.0.0.1:{port}",
                    model_name="demo-xs",
                    weight=weights[name],
                    accuracy=0.9 if name == "planned" else 0.7,
                    capacity_qps=100.0,
                    max_batch_size=8,
                    batch_latency_ms=2.0,
                )
                for name, port in ports.items()
            ],
            fast_loop=FastLoopBounds(drop_retries=retries),
        ).model_dump_json()
    )


Result = tuple[int, str, str, str]
"""(status, variant header, outcome header, body) of one answer at the client."""


async def _served(
    tmp_path: Path, retries: int, spare_drops: bool, n: int
) -> tuple[list[Result], str]:
    """`n` requests, one at a time, through a router whose planned backend drops every request
    and whose spare one serves them (or drops them too); the answers and the router's metrics."""
    ports = {"planned": unused_port(), "spare": unused_port()}
    path = tmp_path / "routing.json"
    table(path, ports, {"planned": 1.0, "spare": 0.0}, retries)
    spare = dropping_worker if spare_drops else serving_worker
    servers = [dropping_worker(ports["planned"]), spare(ports["spare"])]
    router = Router(path, health_interval_s=600.0, reload_interval_s=600.0)
    for server in servers:
        await server.start_server()
    results: list[Result] = []
    try:
        async with TestClient(TestServer(create_router_app(router))) as client:
            for _ in range(n):
                resp = await client.post("/v2/models/classifier/infer", json=sample_body())
                body = await resp.text()
                headers = resp.headers
                results.append(
                    (resp.status, headers.get(VARIANT_HEADER, ""), headers[OUTCOME_HEADER], body)
                )
            metrics = await (await client.get("/metrics")).text()
    finally:
        for server in servers:
            await server.close()
    for name in ports:
        assert router.decider.inflight(name) == 0  # every attempt's backlog came back
    return results, metrics


async def test_a_dropped_request_is_answered_by_the_spare_backend(tmp_path: Path) -> None:
    results, metrics = await _served(tmp_path, retries=1, spare_drops=False, n=6)
    assert [r[:3] for r in results] == [(200, "spare", "ok")] * 6
    retried = (
        "accordion_router_retried_total"
        '{from_variant="planned",service="classifier",to_variant="spare"}'
    )
    assert metric(metrics, retried) == 6
    # One outcome per request, the final one: no drop counted for the retried ones.
    assert metric(metrics, 'accordion_router_outcomes_total{outcome="dropped"') == 0
    assert metric(metrics, 'accordion_router_outcomes_total{outcome="ok"') == 6


async def test_without_retries_the_workers_drop_is_the_answer(tmp_path: Path) -> None:
    results, metrics = await _served(tmp_path, retries=0, spare_drops=False, n=3)
    assert [r[:3] for r in results] == [(503, "planned", "dropped")] * 3
    assert metric(metrics, "accordion_router_retried_total{") == 0


async def test_when_every_backend_drops_it_the_last_drop_is_the_answer(tmp_path: Path) -> None:
    """Each backend is tried once at most (two retries allowed, one other backend): the client
    gets the worker's 503 with its reason, counted once as dropped."""
    results, metrics = await _served(tmp_path, retries=2, spare_drops=True, n=1)
    [(status, variant, outcome, body)] = results
    assert (status, variant, outcome) == (503, "spare", "dropped")
    assert "deadline" in body
    assert metric(metrics, "accordion_router_retried_total{") == 1
    assert metric(metrics, 'accordion_router_outcomes_total{outcome="dropped"') == 1
