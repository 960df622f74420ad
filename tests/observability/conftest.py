"""Shared helpers: a real data plane (two workers and a router) on loopback, PromQL analysis.

The workers run the smallest built-in torch model (`builtin:demo-xs`) on CPU; the router splits
between them by a routing table file, as in a pod.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import promql_parser
import pytest
from aiohttp.test_utils import TestServer

from accordion.observability import dashboards
from accordion.observability.metrics import catalog
from accordion.observability.rules import recording_rules
from accordion.workers.config import Backend, BatchingConfig, RoutingTable, WorkerConfig
from accordion.workers.router import Router, create_router_app
from accordion.workers.server import Worker, create_app

SERVICE_TABLE_NAME = "default.demo"  # the router's own service label (namespace.name)
VARIANTS = {"big": 0.8, "small": 0.7}  # variant -> accuracy (router scale)
POOL = "cpu"


async def wait_for(
    predicate: Callable[[], Awaitable[bool]], timeout_s: float, what: str, poll_s: float = 0.1
) -> None:
    """Wait for a condition with a deadline (no fixed sleeps)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while not await predicate():
        if loop.time() > end:
            pytest.fail(f"timed out after {timeout_s:g}s waiting for {what}")
        await asyncio.sleep(poll_s)


def write_table(path: Path, urls: dict[str, str], weights: dict[str, float]) -> None:
    table = RoutingTable(
        service=SERVICE_TABLE_NAME,
        slo_ms=2000.0,
        backends=[
            Backend(
                name=f"{name}@{POOL}",
                url=urls[name],
                model_name=name,
                weight=weights[name],
                accuracy=accuracy,
                max_batch_size=8,
                batch_latency_ms=5.0,
                # With a capacity the router predicts each request's wait: those that cannot
                # make their deadline are shed at once.
                capacity_qps=200.0,
            )
            for name, accuracy in VARIANTS.items()
        ],
    )
    tmp = path.with_suffix(".tmp")
    tmp.write_text(table.model_dump_json())
    tmp.replace(path)


@dataclass
class DataPlane:
    router: Router
    router_url: str
    worker_urls: dict[str, str]
    table_path: Path


@pytest.fixture
async def data_plane(tmp_path: Path) -> AsyncIterator[DataPlane]:
    async with AsyncExitStack() as stack:
        urls: dict[str, str] = {}
        for name in VARIANTS:
            config = WorkerConfig(
                model_name=name,
                model="builtin:demo-xs",
                slo_ms=2000.0,
                profile_ms={1: 1.0, 8: 2.0},
                batching=BatchingConfig(max_batch_size=8, max_queue=64),
            )
            server = TestServer(create_app(Worker(config, warm_up=False)), host="127.0.0.1")
            await stack.enter_async_context(server)
            urls[name] = str(server.make_url("")).rstrip("/")
        path = tmp_path / "routing.json"
        write_table(path, urls, {"big": 0.5, "small": 0.5})
        router = Router(path, health_interval_s=0.2, reload_interval_s=0.1)
        server = TestServer(create_router_app(router), host="127.0.0.1")
        await stack.enter_async_context(server)
        yield DataPlane(router, str(server.make_url("")).rstrip("/"), urls, path)


def sample_body(features: int = 256) -> dict[str, object]:
    return {
        "inputs": [
            {"name": "input", "shape": [1, features], "datatype": "FP32", "data": [0.5] * features}
        ]
    }


# ------------------------------------------------------------------------------ PromQL


GRAFANA_VARIABLES = {
    "$__rate_interval": "15s",
    "$__range": "1m",
    "${datasource}": "prometheus",
    "$namespace": ".*",
    "$service": ".*",
}


def expand(expr: str, variables: dict[str, str] | None = None) -> str:
    """Substitute Grafana's variables so that the expression is plain PromQL."""
    out = expr
    for name, value in sorted((variables or GRAFANA_VARIABLES).items(), key=lambda kv: -len(kv[0])):
        out = out.replace(name, value)
    assert "$" not in out, f"unexpanded variable in {out}"
    return out


def record_labels() -> dict[str, frozenset[str]]:
    """Series produced by the recording rules, with their labels."""
    out: dict[str, frozenset[str]] = {}
    for rule in recording_rules():
        assert rule.record is not None
        out[rule.record] = frozenset({"namespace", "service"})
    return out


def known_series() -> dict[str, frozenset[str]]:
    return {**catalog(), **record_labels()}


@dataclass(frozen=True)
class Selector:
    name: str
    labels: frozenset[str]


def selectors(expr: promql_parser.Expr) -> list[Selector]:
    found: list[Selector] = []

    def visit(node: promql_parser.Expr) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            labels = frozenset(m.name for m in node.matchers.matchers if m.name != "__name__")
            found.append(Selector(node.name or "", labels))
        return True

    promql_parser.walk(expr, visit)
    return found


def problems(expr_text: str, series: dict[str, frozenset[str]] | None = None) -> list[str]:
    """Metric names and labels of an expression that no component exports."""
    series = series or known_series()
    expr = promql_parser.parse(expr_text)
    out: list[str] = []
    for sel in selectors(expr):
        if sel.name not in series:
            out.append(f"unknown metric {sel.name!r}")
            continue
        unknown = sel.labels - series[sel.name]
        if unknown:
            out.append(f"{sel.name}: unknown labels {sorted(unknown)}")

    def visit(node: promql_parser.Expr) -> bool:
        if isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            inner = selectors(node.expr)
            available = frozenset().union(*(series.get(s.name, frozenset()) for s in inner))
            missing = set(node.modifier.labels) - available
            if inner and missing:
                out.append(
                    f"grouping by {sorted(missing)} that {sorted({s.name for s in inner})} lack"
                )
        return True

    promql_parser.walk(expr, visit)
    return out


def all_expressions() -> Iterable[tuple[str, str]]:
    """(where, expression) of every dashboard query, variable and rule."""
    from accordion.observability.rules import alert_rules

    for uid, title, query in dashboards.queries():
        yield f"{uid}: {title}", expand(query.expr)
    for rule in [*recording_rules(), *alert_rules()]:
        yield f"rule {rule.record or rule.alert}", rule.expr


LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>\w+)\)$")
