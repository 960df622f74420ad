"""Reports end to end: a real router process (`accordion-worker route --report-url`) in front
of a real worker process, posting to the operator's real report server (`ReportServer` and
`RouterDemand`, in this test's event loop, with a test lookup in place of the driver's cache).

(a) A load step (10 -> 120 req/s, beyond the table's planned capacity of 30) is in the
operator's estimate within about two report intervals. (b) A routing table changed on the
operator's side reaches the running router in the answer to its next report, within about one
interval, without its file changing; the router confirms it, and the drain then counts from
that confirmation. (c) A steady router within capacity stays quiet (heartbeat).

The default report interval (1 s) is used: what is measured is what a user gets.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from accordion.operator.api import InferenceService, parse_resource
from accordion.operator.control.desired import Routing
from accordion.operator.control.loop import AppliedRouting
from accordion.operator.reports import ReportServer, RouterDemand, ServiceRouting
from accordion.workers.config import REPORT_PATH, Backend, RoutingTable
from accordion.workers.reporting import DEFAULT_INTERVAL_S
from tests.workers.conftest import sample_body
from tests.workers.test_processes import free_port, start, wait_ready

pytestmark = pytest.mark.timeout(120)

KEY = "team-a/classifier"
INTERVAL_S = DEFAULT_INTERVAL_S


def table(
    worker_url: str, revision: int, variants: dict[str, float], capacity: float
) -> RoutingTable:
    return RoutingTable(
        service="classifier",
        namespace="team-a",
        slo_ms=2000.0,
        backends=[
            Backend(
                name=v,
                url=worker_url,
                model_name="demo-xs",
                weight=w,
                accuracy=0.8,
                capacity_qps=capacity / len(variants),
            )
            for v, w in variants.items()
        ],
        version=f"v{revision}",
        revision=revision,
    )


def inference_service() -> InferenceService:
    svc = parse_resource(
        {
            "apiVersion": "accordion.dev/v1alpha1",
            "kind": "InferenceService",
            "metadata": {"name": "classifier", "namespace": "team-a"},
            "spec": {
                "slo": {"latencyMs": 2000},
                "variants": [
                    {
                        "name": "a",
                        "accuracy": 80,
                        "model": {"storageUri": "/models/a.pt"},
                        "profiles": [{"pool": "cpu", "batches": [{"batchSize": 1, "p50Ms": 5}]}],
                    }
                ],
            },
        }
    )
    assert isinstance(svc, InferenceService)
    assert svc.spec.demand.source == "Router"  # the default
    return svc


@dataclass
class Operator:
    """The operator's side as the driver runs it: the report server, and a fold per interval."""

    demand: RouterDemand
    server: ReportServer
    routing: dict[str, ServiceRouting]
    """What the operator applied, by service (the driver reads it from the ConfigMaps)."""
    services: dict[str, InferenceService]
    estimates: list[tuple[float, float]] = field(default_factory=list)

    def fold(self) -> None:
        self.demand.fold(self.services)
        if KEY in self.demand.published:
            self.estimates.append((time.monotonic(), self.demand.published[KEY]))


@dataclass
class Stack:
    operator: Operator
    router_url: str
    worker_url: str
    table_path: Path
    session: aiohttp.ClientSession


@pytest.fixture
async def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Stack]:
    wport, rport = free_port(), free_port()
    worker_url, router_url = f"http://127.0.0.1:{wport}", f"http://127.0.0.1:{rport}"
    first = table(worker_url, 1_000, {"a": 1.0}, capacity=30.0)
    path = tmp_path / "routing.json"
    path.write_text(first.model_dump_json())
    routing = {KEY: ServiceRouting(first, None)}
    demand = RouterDemand(routing.get, time.time, interval_s=INTERVAL_S)
    server = ReportServer(demand, leading=lambda: True)
    port = await server.start("127.0.0.1", 0)
    operator = Operator(demand, server, routing, {KEY: inference_service()})
    worker = start(
        [
            *("serve", "--model", "builtin:demo-xs", "--port", str(wport)),
            *("--slo-ms", "2000", "--max-batch-size", "8", "--threads", "1"),
        ]
    )
    monkeypatch.setenv("POD_NAME", "classifier-router-0")
    router = start(
        [
            *("route", "--table", str(path), "--port", str(rport)),
            *("--report-url", f"http://127.0.0.1:{port}{REPORT_PATH}"),
        ]
    )
    folding = asyncio.create_task(demand.run(operator.fold))
    try:
        await asyncio.to_thread(wait_ready, worker, worker_url)
        await asyncio.to_thread(wait_ready, router, router_url)
        async with aiohttp.ClientSession() as session:
            yield Stack(operator, router_url, worker_url, path, session)
    finally:
        folding.cancel()
        for proc in (router, worker):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        await server.stop()


async def load(stack: Stack, rate_qps: float, stop: asyncio.Event, statuses: list[int]) -> None:
    """Open-loop load at `rate_qps` (evenly spaced) until `stop` is set."""
    url = f"{stack.router_url}/v2/models/classifier/infer"
    body: dict[str, Any] = sample_body()

    async def one() -> None:
        async with stack.session.post(url, json=body) as resp:
            await resp.read()
            statuses.append(resp.status)

    tasks: set[asyncio.Task[None]] = set()
    loop = asyncio.get_running_loop()
    next_s = loop.time()
    while not stop.is_set():
        task = asyncio.create_task(one())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        next_s += 1.0 / rate_qps
        await asyncio.sleep(max(0.0, next_s - loop.time()))
    await asyncio.gather(*tasks, return_exceptions=True)


async def until(what: str, predicate: Any, timeout_s: float) -> float:
    """Wait for `predicate()`; the monotonic time it first held."""
    end = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)
    return time.monotonic()


async def test_demand_and_tables_over_reports(stack: Stack) -> None:
    op = stack.operator
    holder = op.routing
    statuses: list[int] = []

    # 10 req/s: the estimate settles there; the loop's feedback: 30 req/s planned.
    stop = asyncio.Event()
    steady = asyncio.create_task(load(stack, 10.0, stop, statuses))
    await until(
        "the estimate at 10 req/s",
        lambda: 8.0 <= op.demand.published.get(KEY, 0.0) <= 12.0,
        timeout_s=30.0,
    )
    op.demand.tracker.plan_feedback({KEY: 30.0}, set())
    stop.set()
    await steady

    # (a) A step to 120 req/s (4x the planned capacity) within one second.
    stop = asyncio.Event()
    onset = time.monotonic()
    burst = asyncio.create_task(load(stack, 120.0, stop, statuses))
    surge = await until(
        "the surge in the estimate",
        lambda: op.demand.published.get(KEY, 0.0) > 30.0 + 3 * 30**0.5,
        timeout_s=10.0,
    )
    seen = await until(
        "the step in the estimate",
        lambda: op.demand.published.get(KEY, 0.0) >= 0.8 * 120.0,
        timeout_s=10.0,
    )
    print(
        f"load step: beyond capacity in the operator's estimate after {surge - onset:.2f} s, "
        f"at 80% of the step after {seen - onset:.2f} s"
    )
    assert surge - onset <= 1.5 * INTERVAL_S
    assert seen - onset <= 2.5 * INTERVAL_S

    # (b) The operator applies a new table (a routing change in progress: not final yet).
    before = stack.table_path.read_bytes()
    newer = table(stack.worker_url, 2_000, {"a": 1.0, "b": 1.0}, capacity=300.0)
    transition = AppliedRouting(Routing(service=KEY, slo_ms=2000.0, final=False), time.time())
    changed = time.monotonic()
    holder[KEY] = ServiceRouting(newer, transition)

    async def router_has(version: str) -> bool:
        async with stack.session.get(f"{stack.router_url}/v2/models/classifier") as resp:
            doc = await resp.json()
        return bool(doc["parameters"]["plan_version"] == version)

    end = time.monotonic() + 10.0
    while not await router_has(newer.version):
        assert time.monotonic() < end, "the router never got the new table"
        await asyncio.sleep(0.01)
    delivered_s = time.monotonic() - changed
    print(f"new table in the router after {delivered_s:.2f} s")
    assert delivered_s <= 1.5 * INTERVAL_S
    assert stack.table_path.read_bytes() == before, "the file was not touched"
    # It confirms the table; the drain counts from then.
    assert op.demand.confirmed({KEY: transition})[KEY].applied_at_s > transition.applied_at_s
    await until(
        "the confirmation",
        lambda: op.demand.book.confirmation(KEY, newer.version, time.time()).confirmed_at_s,
        timeout_s=5.0,
    )
    confirmation = op.demand.book.confirmation(KEY, newer.version, time.time())
    assert op.demand.confirmed({KEY: transition})[KEY].applied_at_s == confirmation.confirmed_at_s
    assert confirmation.live == 1

    # (c) The transition is over and the load is steady within capacity: the router is quiet.
    holder[KEY] = ServiceRouting(
        newer, AppliedRouting(Routing(service=KEY, slo_ms=2000.0, final=True), time.time())
    )
    taken = op.server.taken
    await asyncio.sleep(4 * INTERVAL_S)  # a span to count reports in, not a wait for a state
    quiet = op.server.taken - taken
    stop.set()
    await burst
    print(f"reports in 4 s at a steady 120 req/s within capacity: {quiet}")
    assert quiet <= 2
    assert statuses
    assert set(statuses) == {200}
