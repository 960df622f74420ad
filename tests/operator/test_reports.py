"""The operator's side of the routers' reports, on a test clock: rates summed over live
routers (a silent one ages out, a stopping one goes at once, a restarted one never makes a
negative rate), the estimate, the precedence against Prometheus, the answers (newer tables,
the heartbeat), and the drain that waits for the routers' confirmation (the real ControlLoop).

A real router process posting to this receiver: test_reports_e2e.py; the real operator with
its report server against the emulator: test_reports_operator.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from accordion.operator.api import InferenceService
from accordion.operator.config import OperatorConfig
from accordion.operator.control.desired import Routing
from accordion.operator.control.loop import (
    AppliedRouting,
    ControlLoop,
    DemandView,
    LoopSettings,
    RemoveWorker,
    World,
)
from accordion.operator.k8s import ROUTING_FILE, routing_configmap
from accordion.operator.reports import (
    MAX_BODY_BYTES,
    ReportBook,
    ReportServer,
    RouterDemand,
    ServiceRouting,
    UnknownServiceError,
)
from accordion.workers.config import REPORT_PATH, Backend, RouterReport, RoutingTable

from .test_loop import Clock, MemoryActuator, all_ready, pool, service

SVC = "default/svc"


def report(
    router: str,
    window_requests: int,
    total: int,
    *,
    instance: str = "i1",
    version: str = "",
    revision: int = 0,
    window_s: float = 1.0,
    **kw: Any,
) -> RouterReport:
    return RouterReport(
        service=kw.pop("service", SVC),
        router=router,
        instance=instance,
        requests_total=total,
        window_requests=window_requests,
        window_s=window_s,
        table_version=version,
        table_revision=revision,
        **kw,
    )


def test_rates_of_live_routers_are_summed_and_a_silent_one_ages_out() -> None:
    book = ReportBook(interval_s=1.0, heartbeat_s=10.0)
    book.take(report("r1", 60, 600), 100.0)
    book.take(report("r2", 40, 400), 100.5)
    assert book.rate_qps(SVC, 101.0) == pytest.approx(100.0)
    # r1 stays quiet (steady), r2 keeps reporting: r1 still counts within heartbeat + 2 intervals.
    for t in range(101, 112):
        book.take(report("r2", 40, 400 + 40 * (t - 100)), float(t))
    assert book.rate_qps(SVC, 111.9) == pytest.approx(100.0)
    assert book.rate_qps(SVC, 112.5) == pytest.approx(40.0)  # r1: 12.5 s > 12 s: gone
    assert set(book.live(SVC, 112.5)) == {"r2"}
    # A router that stops says so and is forgotten at once.
    book.take(report("r2", 0, 880, stopping=True), 113.0)
    assert book.rate_qps(SVC, 113.0) is None
    book.expire(200.0)
    assert book.routers == {}


def test_a_restarted_router_never_makes_a_negative_or_inflated_rate() -> None:
    book = ReportBook()
    book.take(report("r1", 500, 50_000), 10.0)
    # The pod's container restarted: a new process, its counter from zero.
    book.take(report("r1", 30, 30, instance="i2"), 11.0)
    assert book.rate_qps(SVC, 11.0) == pytest.approx(30.0)
    assert book.restarts == 1
    # Same instance, counter backwards (a report from before the last one, replayed).
    book.take(report("r1", 20, 20, instance="i2"), 12.0)
    assert book.rate_qps(SVC, 12.0) == pytest.approx(20.0)
    assert book.restarts == 2
    # An empty window gives no rate, not a division by zero.
    book.take(report("r1", 0, 20, instance="i2", window_s=0.0), 13.0)
    assert book.rate_qps(SVC, 13.0) is None


def svc(source: str = "Router", name: str = "svc", **demand: Any) -> InferenceService:
    return service(name, demand={"source": source, "headroom": 0.0, **demand})


def receiver(clock: Clock, tables: dict[str, ServiceRouting] | None = None) -> RouterDemand:
    known = tables if tables is not None else {SVC: ServiceRouting(None, None)}
    return RouterDemand(known.get, clock, interval_s=1.0, heartbeat_s=10.0)


def test_a_load_step_is_taken_at_once_beyond_the_planned_capacity() -> None:
    clock = Clock()
    demand = receiver(clock)
    services = {SVC: svc()}
    for second in range(5):
        clock.t += 1.0
        demand.answer(report("r1", 20, 20 * (second + 1)))
        demand.answer(report("r2", 20, 20 * (second + 1)))
        demand.fold(services)
    assert demand.published[SVC] == pytest.approx(40.0)
    demand.tracker.plan_feedback({SVC: 45.0}, set())  # as the loop feeds it back
    clock.t += 1.0
    demand.answer(report("r1", 140, 240))  # 7x within one second, over both routers
    demand.answer(report("r2", 140, 240))
    demand.fold(services)
    assert demand.published[SVC] == pytest.approx(280.0)
    view = demand.view(services, DemandView())
    assert view.qps[SVC] == pytest.approx(280.0)
    assert SVC in view.burst  # learned from the routers' arrivals


def test_precedence_against_prometheus_and_silence() -> None:
    clock = Clock()
    keys = ["default/router", "default/prom", "default/query", "default/static"]
    services = {
        "default/router": svc("Router", "router"),
        "default/prom": svc("Prometheus", "prom"),
        "default/query": svc("Prometheus", "query", query='my_rate{namespace="default"}'),
        "default/static": svc("Static", "static", qps=5.0),
    }
    demand = RouterDemand(lambda k: ServiceRouting(None, None), clock)
    for key in keys:
        clock.t += 0.01
        demand.answer(report("r1", 100, 100, service=key))
    demand.fold(services)
    prom = DemandView(qps={"default/prom": 7.0, "default/query": 9.0})
    view = demand.view(services, prom)
    # Router and Prometheus-without-query take reports; a custom query and Static do not.
    assert view.qps == {"default/router": 100.0, "default/prom": 100.0, "default/query": 9.0}
    assert [s.key for s in demand.prometheus_services(services.values())] == ["default/query"]

    # The routers go silent: Prometheus measures those services again; until it answers, the
    # last estimate stands and the service says why.
    clock.t += 13.0
    assert [s.key for s in demand.prometheus_services(services.values())] == [
        "default/router",
        "default/prom",
        "default/query",
    ]
    demand.fold(services)
    view = demand.view(services, DemandView(qps={"default/query": 9.0}))
    assert view.qps["default/router"] == 100.0
    assert "no report from the routers" in view.unavailable["default/router"]
    view = demand.view(services, DemandView(qps={"default/prom": 7.0}))
    assert view.qps["default/prom"] == 7.0
    assert "default/prom" not in view.unavailable


def table(version: str, revision: int) -> RoutingTable:
    return RoutingTable(
        service="svc",
        namespace="default",
        slo_ms=100.0,
        backends=[Backend(name="big@gpu", url="http://big:8080", weight=1.0, accuracy=0.8)],
        version=version,
        revision=revision,
    )


def test_answers_carry_newer_tables_and_ask_for_confirmation() -> None:
    clock = Clock()
    tables = {SVC: ServiceRouting(table("v2", 2_000), None)}
    demand = receiver(clock, tables)
    answer = demand.answer(report("r1", 10, 10, version="v1", revision=1_000))
    assert answer.table is not None
    assert answer.table.version == "v2"
    assert answer.heartbeat_s == 0.0  # report again next interval: confirm it
    answer = demand.answer(report("r2", 10, 10, version="v2", revision=2_000))
    assert answer.table is None
    assert answer.routers == 2
    assert answer.heartbeat_s == 0.0  # r1 has not confirmed yet
    answer = demand.answer(report("r1", 10, 20, version="v2", revision=2_000))
    assert answer.heartbeat_s == 10.0
    # A router with a newer table (a file written by a later operator) gets nothing older.
    assert demand.answer(report("r1", 10, 30, version="v3", revision=3_000)).table is None
    with pytest.raises(UnknownServiceError, match="no InferenceService default/other"):
        demand.answer(report("r1", 1, 1, service="default/other"))


async def test_the_drain_waits_for_the_routers_confirmation() -> None:
    """The loop removes the old worker `drain_s` after the last live router confirmed the
    final table, not after the ConfigMap write; without live routers, after the write."""
    clock = Clock()
    config = OperatorConfig()
    world = World(services={SVC: service()}, pools={"gpu": pool(devices=1)})
    loop = ControlLoop(LoopSettings(drain_s=5.0), clock=clock)
    act = MemoryActuator(world, clock)

    def routing_of(key: str) -> ServiceRouting | None:
        applied = world.routing.get(key)
        if key not in world.services or applied is None:
            return None if key not in world.services else ServiceRouting(None, None)
        cm = routing_configmap(applied.routing, "uid", config, applied.applied_at_s)
        raw = cm["data"].get(ROUTING_FILE)
        return ServiceRouting(RoutingTable.model_validate_json(raw) if raw else None, applied)

    demand = RouterDemand(routing_of, clock, interval_s=1.0, heartbeat_s=10.0)

    async def reconcile(view: DemandView) -> list[str]:
        confirmed = World(**{**world.__dict__, "routing": demand.confirmed(world.routing)})
        res = await loop.reconcile(confirmed, view, act)
        return [type(s).__name__ for s in res.applied if isinstance(s, RemoveWorker)]

    def router_reports(version_of: str) -> str:
        got = routing_of(SVC)
        assert got is not None
        assert got.table is not None
        version = got.table.version if version_of == "current" else version_of
        demand.answer(report("r1", 40, 40, version=version))
        return version

    view = DemandView()
    await reconcile(view)
    all_ready(world)
    await reconcile(view)
    old = router_reports("current")  # the router has the big-only table
    view = DemandView(qps={SVC: 150.0})
    await reconcile(view)  # small starts
    all_ready(world)
    assert await reconcile(view) == []  # the final routing (small only) is written now
    written = world.routing[SVC].applied_at_s
    for _ in range(7):  # 7 s: past drain_s, but the router still routes by the old table
        clock.t += 1.0
        router_reports(old)
        assert await reconcile(view) == []
    router_reports("current")  # it took the new table: the drain starts now
    confirmed_at = clock.t
    assert confirmed_at - written == pytest.approx(7.0)
    clock.t += 4.0
    router_reports("current")
    assert await reconcile(view) == []
    clock.t += 1.0
    assert await reconcile(view) == ["RemoveWorker"]
    assert clock.t - confirmed_at == pytest.approx(5.0)


def test_without_live_routers_the_file_sync_counts_after_the_timeout_the_write() -> None:
    clock = Clock()
    applied = AppliedRouting(Routing(service=SVC, slo_ms=100.0), applied_at_s=clock.t)
    tables = {SVC: ServiceRouting(table("v2", 2_000), applied)}
    demand = RouterDemand(tables.get, clock, confirm_timeout_s=60.0, file_sync_s=90.0)
    # No router reports: routers (if any) read the mounted file, which the kubelet syncs.
    assert demand.confirmed({SVC: applied})[SVC].applied_at_s == applied.applied_at_s + 90.0
    demand.answer(report("r1", 1, 1, version="v1"))
    clock.t += 3.0
    assert demand.confirmed({SVC: applied})[SVC].applied_at_s == clock.t  # waiting
    for _ in range(60):  # a router that keeps refusing the table
        clock.t += 1.0
        demand.answer(report("r1", 1, 1, version="v1", table_error="bad table"))
    assert demand.confirmed({SVC: applied})[SVC].applied_at_s == applied.applied_at_s


def test_reports_are_validated_at_the_edge() -> None:
    fields = {"router": "r", "instance": "i", "requests_total": 0, "window_requests": 0}
    with pytest.raises(ValueError, match="service"):
        RouterReport.model_validate({"service": "no-namespace", "window_s": 1, **fields})
    with pytest.raises(ValueError, match="requests_total"):
        report("r1", 1, -5)


async def test_only_the_leader_takes_reports_and_is_ready() -> None:
    clock = Clock()
    demand = receiver(clock)
    leading = False
    server = ReportServer(demand, lambda: leading)
    body = report("r1", 10, 10).model_dump_json()
    async with TestClient(TestServer(server.app())) as client:
        assert (await client.get("/readyz")).status == 503
        resp = await client.post(REPORT_PATH, data=body)
        assert resp.status == 503
        assert (await resp.json())["error"] == "this operator is not the leader"
        assert demand.book.routers == {}  # a follower keeps nothing
        leading = True
        assert (await client.get("/readyz")).status == 200
        resp = await client.post(REPORT_PATH, data=body)
        assert resp.status == 200
        assert (await resp.json())["routers"] == 1
        resp = await client.post(REPORT_PATH, data=b"x" * (MAX_BODY_BYTES + 1))
        assert resp.status == 413
        resp = await client.post(REPORT_PATH, data=b"{not json")
        assert resp.status == 400
        assert "invalid report" in (await resp.json())["error"]
