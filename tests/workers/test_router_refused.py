"""A backend that refuses the connection: the request is sent again, never answered 502.

The health loop notices a dead worker only at its next round (a second by default), and a
cold start's new table may list a worker still loading its model. A request sent to such a
backend reached nothing, so the router takes the backend out of the split and sends the
request elsewhere, or holds it in the activator until a backend passes its check.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from accordion.workers.config import Backend, BatchingConfig, RoutingTable
from accordion.workers.router import VARIANT_HEADER, Router, create_router_app
from accordion.workers.server import Worker, create_app

from .conftest import sample_body, worker_config
from .test_router import metric, unused_port, wait_for


def table(
    path: Path, backends: dict[str, int], revision: int = 0, pending: frozenset[str] = frozenset()
) -> None:
    path.write_text(
        RoutingTable(
            service="classifier",
            slo_ms=30_000.0,
            revision=revision,
            backends=[
                Backend(
                    name=name,
                    url=f"http://127.0.0.1:{port}",
                    model_name="demo-xs",
                    weight=1.0,
                    accuracy=0.8,
                    pending=name in pending,
                )
                for name, port in backends.items()
            ],
        ).model_dump_json()
    )


def worker_server(port: int) -> TestServer:
    config = worker_config(batching=BatchingConfig(max_batch_size=8, max_queue=64))
    return TestServer(create_app(Worker(config, warm_up=False)), port=port)


async def _is(value: bool) -> bool:
    return value


async def test_a_dead_backend_the_health_loop_has_not_seen_is_not_a_502(tmp_path: Path) -> None:
    port = unused_port()
    path = tmp_path / "routing.json"
    table(path, {"a": port})
    # No health round during the test: only the refused connection can tell the router.
    router = Router(path, health_interval_s=600.0, recheck_s=0.05)
    worker = worker_server(port)
    await worker.start_server()
    async with TestClient(TestServer(create_router_app(router))) as client:
        assert router.decider.healthy("a")  # checked at the router's start
        await worker.close()  # the replica goes; the health loop has not seen it
        sent = asyncio.create_task(client.post("/v2/models/classifier/infer", json=sample_body()))
        # Refused: out of the split, the request waits in the activator.
        await wait_for(lambda: _is(router.activator.queued == 1), timeout_s=5.0)
        assert not router.decider.healthy("a")
        async with worker_server(port):  # the replica comes back at the same address
            resp = await asyncio.wait_for(sent, 20.0)
            assert resp.status == 200, await resp.text()
            metrics = await (await client.get("/metrics")).text()
    assert metric(metrics, 'accordion_router_outcomes_total{outcome="error"') == 0
    assert metric(metrics, "accordion_router_cold_start_seconds_count") == 1


async def test_at_a_cold_start_a_new_backend_is_trusted_after_its_check(tmp_path: Path) -> None:
    path = tmp_path / "routing.json"
    table(path, {"gone": unused_port()})
    router = Router(path, health_interval_s=600.0, recheck_s=0.05, reload_interval_s=600.0)
    async with TestClient(TestServer(create_router_app(router))):
        assert not router.ready()  # scaled to zero
        port = unused_port()
        table(path, {"new": port}, revision=1)
        router.reload()
        # Listed, but not listening yet (loading its model): not ready, nothing released.
        assert not router.ready()
        async with worker_server(port):
            await wait_for(lambda: _is(router.ready()), timeout_s=5.0)


async def test_a_pending_backend_joins_at_its_first_check_without_a_new_table(
    tmp_path: Path,
) -> None:
    """A table names a worker group that is still loading as pending: the router sends it
    nothing (no connection to refuse) and takes it into its split at its first passed check
    (the recheck loop), with no newer table."""
    a_port, b_port = unused_port(), unused_port()
    path = tmp_path / "routing.json"
    table(path, {"a": a_port})
    router = Router(path, health_interval_s=600.0, recheck_s=0.05, reload_interval_s=600.0)
    async with (
        worker_server(a_port),
        TestClient(TestServer(create_router_app(router))) as client,
    ):
        table(path, {"a": a_port, "b": b_port}, revision=1, pending=frozenset({"b"}))
        router.reload()
        assert router.decider.healthy("a")
        assert not router.decider.healthy("b")  # named, not trusted before its check

        async def served(n: int) -> list[str]:
            out = []
            for _ in range(n):
                resp = await client.post("/v2/models/classifier/infer", json=sample_body())
                assert resp.status == 200, await resp.text()
                out.append(resp.headers[VARIANT_HEADER])
            return out

        assert set(await served(4)) == {"a"}
        async with worker_server(b_port):  # b's model is loaded: it starts listening
            await wait_for(lambda: _is(router.decider.healthy("b")), timeout_s=5.0)
            assert set(await served(8)) == {"a", "b"}
        assert router.table.revision == 1  # the same table all along
