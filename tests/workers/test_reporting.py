"""Router reports: when a router reports (`ReportPolicy`, on a test clock), and the HTTP part
against a real aiohttp server standing in for the operator, in front of a real worker.

The operator side (aggregation, tables from ConfigMaps, the drain) is tested in
tests/operator/test_reports*.py; a real router process posting to the real receiver there too.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from accordion.workers.config import (
    REPORT_PATH,
    Backend,
    ReportAnswer,
    RouterReport,
    RoutingTable,
)
from accordion.workers.reporting import ReportPolicy, Window
from accordion.workers.router import Router, create_router_app
from accordion.workers.server import Worker, create_app

from .conftest import sample_body, worker_config

Client = TestClient[web.Request, web.Application]
VERSION = ("v1", 1)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def steady(policy: ReportPolicy, clock: Clock, rates: list[float], **kw: Any) -> list[str | None]:
    """Close one window per rate (one second each, `rate` arrivals); deliver what is due."""
    total = getattr(policy, "_test_total", 0)
    reasons = []
    for rate in rates:
        clock.t += 1.0
        total += round(rate)
        window = policy.close_window(total, kw.get("table", VERSION), kw.get("capacity"))
        reasons.append(window.reason)
        if window.reason is not None:
            policy.delivered(window, kw.get("table", VERSION), kw.get("answer", ReportAnswer()))
    policy._test_total = total  # type: ignore[attr-defined]
    return reasons


def test_a_steady_rate_is_quiet_until_the_heartbeat() -> None:
    clock = Clock()
    policy = ReportPolicy(interval_s=1.0, heartbeat_s=10.0, clock=clock)
    reasons = steady(policy, clock, [1000, 1020, 990, 1030, 980, 1000, 1010, 995, 1005, 1000, 1000])
    assert reasons[0] == "first"
    assert reasons[1:10] == [None] * 9  # within 10% (and 2 sigma): nothing to say
    assert reasons[10] == "heartbeat"  # 10 s after the last report
    assert steady(policy, clock, [1000] * 10) == [None] * 9 + ["heartbeat"]


def test_a_moved_rate_is_reported_and_counting_noise_is_not() -> None:
    clock = Clock()
    policy = ReportPolicy(clock=clock)
    assert steady(policy, clock, [1000, 1080, 1150]) == ["first", None, "rate"]
    assert steady(policy, clock, [1150, 1000]) == [None, "rate"]  # falls too
    # At 4 req/s a one-second count has a standard deviation of 2: 7 is noise, 12 is not.
    slow = ReportPolicy(clock=clock)
    assert steady(slow, clock, [4, 7, 1, 12]) == ["first", None, None, "rate"]


def test_arrivals_beyond_the_planned_capacity_are_reported_every_window() -> None:
    clock = Clock()
    policy = ReportPolicy(clock=clock)
    assert (
        steady(policy, clock, [200, 200, 200], capacity=150.0) == ["first"] + ["over-capacity"] * 2
    )
    # Two routers share the service: 100 here is 200 in all, beyond 150.
    two = ReportPolicy(clock=clock)
    answer = ReportAnswer(routers=2)
    assert steady(two, clock, [100, 100, 70, 70], capacity=150.0, answer=answer) == [
        "first",
        "over-capacity",
        "rate",  # 140 in all: within capacity; the 30% fall is reported once
        None,
    ]
    assert steady(two, clock, [70], capacity=150.0, answer=answer) == [None]


def test_a_new_table_a_failed_report_and_the_operators_heartbeat() -> None:
    clock = Clock()
    policy = ReportPolicy(clock=clock)
    assert steady(policy, clock, [50, 50]) == ["first", None]
    assert steady(policy, clock, [50], table=("v2", 2)) == ["table"]  # confirms the new table
    clock.t += 1.0
    window = policy.close_window(policy._test_total + 50, ("v2", 2), None)  # type: ignore[attr-defined]
    assert window.reason is None
    policy.failed()  # as if it had been sent and not acknowledged
    clock.t += 1.0
    assert policy.close_window(window.requests + 10**6, ("v2", 2), None).reason == "retry"
    # While the operator waits for this router (a routing change), it reports every window.
    waiting = ReportPolicy(clock=clock)
    answer = ReportAnswer(heartbeat_s=0.0)
    assert steady(waiting, clock, [50, 50, 50], answer=answer) == [
        "first",
        "heartbeat",
        "heartbeat",
    ]


def test_the_first_window_after_a_quiet_spell_is_not_diluted() -> None:
    clock = Clock()
    policy = ReportPolicy(clock=clock)
    total = 0
    for second in range(6):
        clock.t += 1.0
        total += 100
        window = policy.close_window(total, VERSION, None)
        if second == 0:
            policy.delivered(window, VERSION, ReportAnswer())
        else:
            assert window.reason is None
    clock.t += 1.0
    total += 700  # a 7x burst within one second
    window = policy.close_window(total, VERSION, None)
    assert window.reason == "rate"
    assert window == Window(700, 1.0, "rate")
    assert window.rate_qps == 700.0


def test_a_heartbeat_carries_the_average_since_the_last_report() -> None:
    clock = Clock()
    policy = ReportPolicy(clock=clock)
    total = 0
    windows = []
    for rate in [100, 95, 105, 98, 102, 96, 104, 99, 101, 100, 100]:
        clock.t += 1.0
        total += rate
        window = policy.close_window(total, VERSION, None)
        windows.append(window)
        if window.reason is not None:
            policy.delivered(window, VERSION, ReportAnswer())
    assert [w.reason for w in windows] == ["first"] + [None] * 9 + ["heartbeat"]
    # The ten seconds since the first report, not the last one alone: 1,000 over 10 s.
    assert windows[-1] == Window(1000, 10.0, "heartbeat")


def test_counting_noise_is_not_a_burst() -> None:
    clock = Clock()
    policy = ReportPolicy(clock=clock)
    # 5 req/s planned: 8 in a second is within noise (2 sigma = 4.5), 12 is beyond it.
    assert steady(policy, clock, [5, 8, 12], capacity=5.0) == ["first", None, "over-capacity"]


def test_policy_bounds() -> None:
    with pytest.raises(ValueError, match="interval_s"):
        ReportPolicy(interval_s=0.0)


# ------------------------------------------------------------------------- over HTTP


def table(
    urls: str, weights: dict[str, float], revision: int, service: str = "classifier"
) -> RoutingTable:
    return RoutingTable(
        service=service,
        namespace="team-a",
        slo_ms=2000.0,
        backends=[
            Backend(name=n, url=urls, model_name="demo-xs", weight=w, accuracy=0.8)
            for n, w in weights.items()
        ],
        version=f"r{revision}-{sorted(weights.items())}",
        revision=revision,
    )


def write(path: Path, t: RoutingTable) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(t.model_dump_json())
    tmp.replace(path)


@dataclass
class FakeOperator:
    """An aiohttp app that takes reports as the operator does and answers with `table`."""

    reports: list[RouterReport] = field(default_factory=list)
    table: RoutingTable | None = None
    status: int = 200
    attempts: int = 0

    def app(self) -> web.Application:
        async def take(request: web.Request) -> web.Response:
            self.attempts += 1
            if self.status != 200:
                return web.json_response({"error": "not the leader"}, status=self.status)
            report = RouterReport.model_validate_json(await request.read())
            self.reports.append(report)
            newer = self.table is not None and self.table.revision > report.table_revision
            answer = ReportAnswer(table=self.table if newer else None, heartbeat_s=0.0)
            return web.Response(body=answer.model_dump_json(), content_type="application/json")

        app = web.Application()
        app.router.add_post(REPORT_PATH, take)
        return app


async def wait_for(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while not predicate():
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.01)


@dataclass
class Stack:
    client: Client
    router: Router
    path: Path
    worker_url: str
    operator: FakeOperator


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with AsyncExitStack() as exits:
        worker = TestServer(create_app(Worker(worker_config(), warm_up=False)))
        await exits.enter_async_context(worker)
        worker_url = str(worker.make_url("")).rstrip("/")
        operator = FakeOperator()
        op_server = TestServer(operator.app())
        await exits.enter_async_context(op_server)
        path = tmp_path / "routing.json"
        write(path, table(worker_url, {"big": 1.0}, revision=100))
        router = Router(
            path,
            health_interval_s=0.1,
            reload_interval_s=0.05,
            report_url=str(op_server.make_url(REPORT_PATH)),
            report_policy=ReportPolicy(interval_s=0.05),
        )
        client = await exits.enter_async_context(TestClient(TestServer(create_router_app(router))))
        yield Stack(client, router, path, worker_url, operator)


async def infer(client: Client, samples: int = 1) -> int:
    body: dict[str, Any] = sample_body()
    if samples > 1:
        tensor = body["inputs"][0]
        tensor["shape"] = [samples, 256]
        tensor["data"] = tensor["data"] * samples
    resp = await client.post("/v2/models/classifier/infer", json=body)
    await resp.read()
    return resp.status


async def test_reports_carry_arrivals_and_the_table_and_a_pushed_table_is_adopted(
    stack: Stack,
) -> None:
    op, router = stack.operator, stack.router
    statuses = await asyncio.gather(
        *(infer(stack.client) for _ in range(5)), infer(stack.client, 3)
    )
    assert set(statuses) == {200}
    await wait_for(lambda: bool(op.reports) and op.reports[-1].requests_total == 8)
    last = op.reports[-1]
    assert last.service == "team-a/classifier"
    assert last.table_revision == 100
    assert last.table_version == router.table.version
    assert sum(r.window_requests for r in op.reports) == 8  # a batch counts its samples
    assert len({r.instance for r in op.reports}) == 1

    # The operator has a newer table: the router takes it from the answer, the file unchanged.
    file_before = stack.path.read_bytes()
    op.table = table(stack.worker_url, {"big": 0.0, "small": 1.0}, revision=200)
    await wait_for(lambda: router.table.revision == 200)
    assert router.decider.plan_weights() == {"big": 0.0, "small": 1.0}
    assert stack.path.read_bytes() == file_before
    # ... and confirms it in its next report.
    await wait_for(lambda: op.reports[-1].table_version == op.table.version)  # type: ignore[union-attr]

    # A file older than the table in use is not taken; a newer one is.
    reloads = router.metrics.reloads.labels("classifier", "ok")._value.get()
    write(stack.path, table(stack.worker_url, {"big": 1.0}, revision=150))
    digest = hashlib.sha256(stack.path.read_bytes()).digest()
    await wait_for(lambda: router._digest == digest)  # the file was read, and kept aside
    assert router.table.revision == 200
    write(stack.path, table(stack.worker_url, {"big": 1.0, "small": 1.0}, revision=300))
    await wait_for(lambda: router.table.revision == 300)
    assert router.metrics.reloads.labels("classifier", "ok")._value.get() == reloads + 1


async def test_a_table_for_another_service_is_refused_and_said(stack: Stack) -> None:
    op, router = stack.operator, stack.router
    op.table = table(stack.worker_url, {"big": 1.0}, revision=500, service="other")
    await wait_for(lambda: bool(op.reports) and op.reports[-1].table_error is not None)
    assert "team-a/other" in (op.reports[-1].table_error or "")
    assert router.table.revision == 100
    assert router.service == "classifier"


async def test_an_unreachable_operator_costs_requests_nothing(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    op, router = stack.operator, stack.router
    op.status = 503  # a follower
    with caplog.at_level(logging.DEBUG, logger="accordion.workers.reporting"):
        await wait_for(lambda: op.attempts >= 3)  # retried every interval
        assert set(await asyncio.gather(*(infer(stack.client) for _ in range(10)))) == {200}
    assert router.reporter is not None
    assert router.reporter.reachable is False
    failures = [r for r in caplog.records if "failed" in r.getMessage()]
    assert failures
    assert all(r.levelno == logging.DEBUG for r in failures)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    op.status = 200
    await wait_for(lambda: bool(op.reports))
    assert op.reports[-1].requests_total == 10  # nothing was lost while it was away


async def test_a_stopping_router_says_goodbye(tmp_path: Path) -> None:
    operator = FakeOperator()
    async with TestServer(operator.app()) as op_server:
        path = tmp_path / "routing.json"
        write(path, table("http://127.0.0.1:9", {"big": 1.0}, revision=1))
        router = Router(
            path,
            report_url=str(op_server.make_url(REPORT_PATH)),
            report_policy=ReportPolicy(interval_s=0.05),
        )
        await router.start()
        await wait_for(lambda: bool(operator.reports))
        await router.stop()
        assert operator.reports[-1].stopping is True
        assert [r.stopping for r in operator.reports].count(True) == 1


async def test_without_a_namespace_the_router_does_not_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    operator = FakeOperator()
    async with TestServer(operator.app()) as op_server:
        path = tmp_path / "routing.json"
        old = table("http://127.0.0.1:9", {"big": 1.0}, revision=0).model_copy(
            update={"namespace": None}
        )
        write(path, old)
        router = Router(
            path,
            report_url=str(op_server.make_url(REPORT_PATH)),
            report_policy=ReportPolicy(interval_s=0.02),
        )
        assert router.reporter is not None
        assert router.reporter.service_key() is None
        monkeypatch.setenv("POD_NAMESPACE", "team-b")
        router2 = Router(path, report_url=str(op_server.make_url(REPORT_PATH)))
        assert router2.reporter is not None
        assert router2.reporter.service_key() == "team-b/classifier"
