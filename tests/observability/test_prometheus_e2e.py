"""End to end on a real Prometheus: every dashboard query and alert returns data.

Two workers (the built-in demo model on CPU) and a router run on loopback; Prometheus (the
Debian package's binary, on loopback, with a temporary config and data directory) scrapes
them with the labels the chart's PodMonitors give them in a cluster, and evaluates the
generated recording rules and alerts every second. Load goes to the router, a third of it with
deadlines nobody can meet (so the router sheds and the SLO alerts have something to see).

The operator's metrics come from a stand-in that exports the operator metric contract of
`accordion.observability.metrics` (which test_queries holds equal to the operator's real
registry, `accordion.operator.metrics`) in a state a healthy operator never reaches:
Degraded, demand unmeasurable, no recent reconcile, a floor above what is served. So every
alert but "operator down" must return data; that one must once the stand-in stops.

Then the operator's demand reader (`accordion.operator.prometheus.PrometheusDemand`, with the
operator's default query) must read the router's request rate back, and, once Prometheus is
stopped, report the service's demand as unavailable and keep planning for the last estimate.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from accordion.observability import dashboards, metrics
from accordion.observability.rules import alert_rules, recording_rules, rule_groups

from .conftest import (
    LABEL_VALUES,
    POOL,
    VARIANTS,
    DataPlane,
    expand,
    sample_body,
    wait_for,
    write_table,
)

NAMESPACE, SERVICE = "default", "demo"
pytestmark = pytest.mark.timeout(180)


# ------------------------------------------------------------------ the operator stand-in


class OperatorStandIn:
    """Exports every metric of the operator contract, for one service in a bad state."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.families: dict[str, Any] = {}
        for m in metrics.OPERATOR_METRICS:
            cls = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}[m.type]
            # prometheus_client appends _total itself.
            name = m.name.removesuffix("_total") if m.type == "counter" else m.name
            self.families[m.name] = cls(
                name, m.help or m.name, sorted(m.labels), registry=self.registry
            )
        svc = {"namespace": NAMESPACE, "service": SERVICE}
        f = self.families
        f["accordion_service_slo_latency_seconds"].labels(**svc).set(2.0)
        f["accordion_service_slo_objective"].labels(**svc).set(0.99)
        f["accordion_service_accuracy_floor"].labels(**svc).set(0.95)  # above what is served
        f["accordion_service_accuracy_target"].labels(**svc).set(0.99)
        f["accordion_service_planned_accuracy"].labels(**svc).set(0.75)
        f["accordion_service_demand_requests_per_second"].labels(**svc).set(40.0)
        f["accordion_service_capacity_requests_per_second"].labels(**svc).set(10.0)
        f["accordion_service_spare_capacity_requests_per_second"].labels(**svc).set(5.0)
        for variant in VARIANTS:
            for state in ("planned", "ready"):
                f["accordion_service_replicas"].labels(
                    **svc, variant=variant, pool=POOL, state=state
                ).set(1)
        f["accordion_service_device_seconds_total"].labels(**svc, pool=POOL).inc(7200.0)
        f["accordion_service_cost_total"].labels(**svc).inc(2.0)
        f["accordion_service_cost_per_1k_requests"].labels(**svc).set(0.5)
        for condition, value in (("Ready", 1), ("Degraded", 1), ("DemandUnavailable", 1)):
            f["accordion_service_condition"].labels(**svc, condition=condition).set(value)
        # The last successful pass was long ago.
        f["accordion_operator_last_reconcile_timestamp_seconds"].set(time.time() - 3600)

    def tick(self) -> None:
        """What a (failing) control loop would record between two scrapes."""
        f = self.families
        f["accordion_operator_reconciles_total"].labels(result="error").inc()
        f["accordion_operator_reconciles_total"].labels(result="ok")
        f["accordion_operator_plan_duration_seconds"].observe(0.05)
        f["accordion_operator_plans_held_total"].labels(reason="rise_younger_than_startup").inc()
        f["accordion_operator_reports_total"].labels(code="200").inc()
        f["accordion_operator_reports_total"].labels(code="403").inc()  # a misconfigured router
        f["accordion_operator_plan_changes_total"].labels(
            namespace=NAMESPACE, service=SERVICE
        ).inc()

    def app(self) -> web.Application:
        async def scrape(_: web.Request) -> web.Response:
            self.tick()
            return web.Response(
                body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
            )

        app = web.Application()
        app.router.add_get("/metrics", scrape)
        return app


# ------------------------------------------------------------------------------ Prometheus


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _hostport(url: str) -> str:
    return url.removeprefix("http://").rstrip("/")


class Prometheus:
    """A Prometheus server on loopback with a temporary config, rules and data directory."""

    def __init__(self, binary: str, workdir: Path, config: dict[str, Any]) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        (workdir / "rules.yaml").write_text(yaml.safe_dump(_fast_rules()))
        config["rule_files"] = [str(workdir / "rules.yaml")]
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = (workdir / "prometheus.log").open("w")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()

    def logs(self) -> str:
        return (self.workdir / "prometheus.log").read_text()[-3000:]


def _fast_rules() -> dict[str, Any]:
    groups = rule_groups()
    for group in groups["groups"]:
        group["interval"] = "1s"
    return groups


@pytest.fixture
def prometheus_binary() -> str:
    binary = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if os.access("/usr/bin/prometheus", os.X_OK) else None
    )
    if binary is None:
        pytest.skip("prometheus not installed (apt-get install prometheus; `make test` does)")
    return binary


@contextlib.contextmanager
def running(prom: Prometheus) -> Iterator[Prometheus]:
    try:
        yield prom
    finally:
        prom.stop()


class Api:
    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url

    async def query(self, expr: str) -> list[dict[str, Any]]:
        async with self.session.get(f"{self.url}/api/v1/query", params={"query": expr}) as resp:
            body = await resp.json()
        assert body["status"] == "success", f"{expr}: {body}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    async def label_values(self, label: str, selector: str) -> list[str]:
        async with self.session.get(
            f"{self.url}/api/v1/label/{label}/values", params={"match[]": selector}
        ) as resp:
            body = await resp.json()
        assert body["status"] == "success", body
        values: list[str] = body["data"]
        return values


async def _load(session: aiohttp.ClientSession, plane: DataPlane, stop: asyncio.Event) -> None:
    """Open-loop load to the router, ~40 req/s, a third with a 1 ms deadline (shed)."""
    url = f"{plane.router_url}/v2/models/{plane.router.service}/infer"
    limit = asyncio.Semaphore(16)
    tasks: set[asyncio.Task[None]] = set()

    async def one(i: int) -> None:
        headers = {"x-accordion-deadline-ms": "1"} if i % 3 == 0 else {}
        async with limit, session.post(url, json=sample_body(), headers=headers) as resp:
            await resp.read()

    i = 0
    while not stop.is_set():
        task = asyncio.create_task(one(i))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        i += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.025)
    await asyncio.gather(*tasks, return_exceptions=True)


@pytest.fixture
async def operator_stand_in() -> AsyncIterator[TestServer]:
    server = TestServer(OperatorStandIn().app(), host="127.0.0.1")
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()


async def test_every_query_and_alert_returns_data_on_a_real_prometheus(
    data_plane: DataPlane,
    operator_stand_in: TestServer,
    prometheus_binary: str,
    tmp_path: Path,
) -> None:
    DEMAND.clear()
    svc_labels = {"namespace": NAMESPACE, "service": SERVICE}
    config: dict[str, Any] = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [
            {
                "job_name": "router",
                "static_configs": [
                    {"targets": [_hostport(data_plane.router_url)], "labels": svc_labels}
                ],
            },
            *(
                {
                    "job_name": f"worker-{name}",
                    "static_configs": [
                        {
                            "targets": [_hostport(url)],
                            "labels": {**svc_labels, "variant": name, "pool": POOL},
                        }
                    ],
                }
                for name, url in data_plane.worker_urls.items()
            ),
            {
                "job_name": "operator",
                "honor_labels": True,
                "static_configs": [{"targets": [_hostport(str(operator_stand_in.make_url("")))]}],
            },
        ],
    }
    prom = Prometheus(prometheus_binary, tmp_path, config)
    stop_load = asyncio.Event()
    with running(prom):
        async with aiohttp.ClientSession() as session:
            api = Api(session, prom.url)

            async def ready() -> bool:
                if prom.proc.poll() is not None:
                    pytest.fail(f"prometheus exited: {prom.logs()}")
                try:
                    async with session.get(f"{prom.url}/-/ready") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await wait_for(ready, 60, "Prometheus to be ready", poll_s=0.2)
            load = asyncio.create_task(_load(session, data_plane, stop_load))
            try:
                # A new routing table: the routers' reloads show on the operator dashboard.
                write_table(
                    data_plane.table_path, data_plane.worker_urls, {"big": 0.7, "small": 0.3}
                )
                await _every_query_returns_data(api)
                await _demand_reader_reads_the_rate(api, prom)
            finally:
                stop_load.set()
                await load
            # The operator goes away: "operator down" fires.
            await operator_stand_in.close()
            down = next(r for r in alert_rules() if r.alert == "AccordionOperatorDown")

            async def operator_down() -> bool:
                return bool(await api.query(down.expr))

            await wait_for(operator_down, 30, "AccordionOperatorDown to return data", poll_s=0.5)
            # Prometheus goes away: the demand reader reports it and keeps its estimate.
            await _demand_reader_falls_back(prom)


PENDING: dict[str, str] = {}  # what had no data at the last look, for the failure message


async def _every_query_returns_data(api: Api) -> None:
    checks: dict[str, str] = {}
    for uid, title, query in dashboards.queries():
        expr = expand(query.expr)
        sparse = {s for s in metrics.EVENT_DRIVEN if s in expr} - {
            "accordion_router_table_reloads_total"  # the test rewrites the table
        }
        if sparse:
            continue  # e.g. rerouted requests: no reroute may have happened
        checks[f"dashboard {uid} / {title}: {expr}"] = expr
    for rule in recording_rules():
        assert rule.record is not None
        checks[f"record {rule.record}"] = rule.record
    for rule in alert_rules():
        if rule.alert != "AccordionOperatorDown":
            checks[f"alert {rule.alert}"] = rule.expr
    checks["SLO burn-rate alert pending or firing"] = (
        'ALERTS{alertname="AccordionSLOBurnRateCritical", namespace="default", service="demo"}'
    )
    missing = dict(checks)

    async def all_have_data() -> bool:
        for where, expr in list(missing.items()):
            result = await api.query(expr)
            if result:
                missing.pop(where)
        PENDING.clear()
        PENDING.update(missing)
        return not missing

    try:
        await wait_for(all_have_data, 60, "every query to return data", poll_s=0.5)
    except pytest.fail.Exception:
        pytest.fail("no data for:\n  " + "\n  ".join(sorted(PENDING)))
    for definition in dashboards.variable_queries():
        match = LABEL_VALUES.match(expand(definition))
        assert match, definition
        values = await api.label_values(match["label"], match["selector"])
        assert (NAMESPACE if match["label"] == "namespace" else SERVICE) in values, definition
    # The recorded violation ratio is the shed third of the load, roughly.
    (ratio,) = await api.query(f'accordion:slo_violation_ratio:rate5m{{service="{SERVICE}"}}')
    assert 0.15 < float(ratio["value"][1]) < 0.6, ratio
    (served,) = await api.query("accordion:served_accuracy:rate5m")
    assert min(VARIANTS.values()) <= float(served["value"][1]) <= max(VARIANTS.values())


DEMAND: dict[str, Any] = {}


def _service() -> Any:
    api_module = pytest.importorskip("accordion.operator.api")
    doc = next(
        yaml.safe_load_all(
            (Path(__file__).resolve().parents[2] / "examples" / "services.yaml").read_text()
        )
    )
    doc["metadata"] = {"name": SERVICE, "namespace": NAMESPACE}
    doc["spec"]["demand"] = {"source": "Prometheus"}
    return api_module.parse_resource(doc, "test service")


async def _demand_reader_reads_the_rate(api: Api, prom: Prometheus) -> None:
    demand_module = pytest.importorskip("accordion.operator.prometheus")
    config_module = pytest.importorskip("accordion.operator.config")
    service = _service()
    # The timeout the operator is configured with by default (the chart renders the same).
    timeout_s = config_module.OperatorConfig().demand_timeout_s
    reader = demand_module.PrometheusDemand(
        url=prom.url,
        query_template=config_module.DEFAULT_DEMAND_QUERY,
        timeout_s=timeout_s,
        clock=time.monotonic,
    )
    query = demand_module.render_query(config_module.DEFAULT_DEMAND_QUERY, service)
    assert "accordion_router_requests_total" in query

    async def rate_now() -> float:
        result = await api.query(query)
        return sum(float(s["value"][1]) for s in result)

    await wait_for(lambda: _positive(rate_now()), 30, "a request rate at the router")
    before = await rate_now()
    # With the default (float) timeout, sent in a form Prometheus accepts, the query succeeds.
    assert await reader.poll([service]) is True, reader.view().unavailable
    after = await rate_now()
    view = reader.view()
    assert service.key not in view.unavailable, view.unavailable
    estimate = view.qps[service.key]
    assert min(before, after) * 0.9 <= estimate <= max(before, after) * 1.1, (before, estimate)
    DEMAND.update(reader=reader, service=service, estimate=estimate)


async def _positive(value: Any) -> bool:
    return float(await value) > 0


async def _demand_reader_falls_back(prom: Prometheus) -> None:
    if not DEMAND:
        pytest.skip("the operator's demand reader is not available")
    prom.stop()
    reader, service = DEMAND["reader"], DEMAND["service"]
    assert await reader.poll([service]) is True  # newly unavailable: the loop must know
    view = reader.view()
    assert view.unavailable[service.key].startswith("Prometheus query failed")
    assert view.qps[service.key] == DEMAND["estimate"]  # plans for the last estimate
