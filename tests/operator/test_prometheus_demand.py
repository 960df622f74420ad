"""Demand from Prometheus, end to end: the operator queries Prometheus's HTTP API, smooths the
rate with the shared estimator, re-plans, and reports DemandUnavailable when the query fails.

Prometheus itself is the chart's business; here a tiny HTTP server answers `/api/v1/query` in
Prometheus's response format with a rate the test sets (its own emulator and operator).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from accordion.operator.api import InferenceService, parse_resource
from accordion.operator.prometheus import parse_rate, render_query

from .conftest import Cluster, EmulatorThread, Operator, isvc, wait_for

pytestmark = pytest.mark.timeout(120)


class FakePrometheus:
    """Answers instant queries with `rate`; with `failing`, answers 503 like an overloaded one."""

    def __init__(self) -> None:
        self.rate = 0.0
        self.failing = False
        self.queries: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlparse(self.path)
                params = parse_qs(url.query)
                fake.queries.extend(params.get("query", []))
                if fake.failing or url.path != "/api/v1/query":
                    self.send_response(503)
                    self.end_headers()
                    return
                body = {
                    "status": "success",
                    "data": {
                        "resultType": "vector",
                        "result": [{"metric": {}, "value": [1700000000.0, str(fake.rate)]}],
                    },
                }
                raw = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def prometheus() -> Iterator[FakePrometheus]:
    fake = FakePrometheus()
    yield fake
    fake.close()


@pytest.fixture(scope="module")
def operator(
    emulator: EmulatorThread,
    kubeconfig: Path,
    prometheus: FakePrometheus,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Operator]:
    tmp = tmp_path_factory.mktemp("operator-prom")
    config = tmp / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "prometheus_url": prometheus.url,
                "demand_interval_s": 0.2,
                "demand_timeout_s": 2.0,
                "demand_rise_half_life_s": 0.01,
                "demand_fall_half_life_s": 0.01,
            }
        )
    )
    op = Operator(kubeconfig, tmp / "operator.log", {"ACCORDION_OPERATOR_CONFIG": str(config)})
    op.start()
    yield op
    op.stop()


def test_demand_follows_prometheus_and_survives_its_outage(
    cluster: Cluster, prometheus: FakePrometheus
) -> None:
    ns, pool = "prom", "pool-prom"
    prometheus.rate = 40.0
    cluster.create_pool(pool, 1)
    cluster.create(isvc("svc", ns, pool, 0.0, demand={"source": "Prometheus", "headroom": 0.0}))
    wait_for("the big worker for 40 req/s", lambda: set(cluster.workers(ns)) == {"big"})
    wait_for("demand measured", lambda: cluster.status(ns, "svc").get("demandQps") == 40.0)
    assert cluster.conditions(ns, "svc")["DemandUnavailable"]["status"] == "False"
    assert any('service="svc"' in q and 'namespace="prom"' in q for q in prometheus.queries)

    prometheus.rate = 150.0
    wait_for("the small worker for 150 req/s", lambda: "small" in cluster.workers(ns))

    prometheus.failing = True
    conds = wait_for(
        "DemandUnavailable",
        lambda: (c := cluster.conditions(ns, "svc"))["DemandUnavailable"]["status"] == "True" and c,
    )
    assert "Prometheus query failed" in conds["DemandUnavailable"]["message"]
    assert cluster.status(ns, "svc")["demandQps"] == 150.0, "the last estimate is kept"
    assert "small" in cluster.workers(ns)


def test_query_rendering_and_parsing() -> None:
    svc = parse_resource(isvc("svc", "ns", "p", 1.0, demand={"source": "Prometheus"}))
    assert isinstance(svc, InferenceService)
    assert render_query("rate{{ns={namespace!r},s={name!r}}}", svc) == "rate{ns='ns',s='svc'}"
    svc.spec.demand.query = 'my_query{namespace="ns"}'
    assert render_query("ignored", svc) == 'my_query{namespace="ns"}'
    assert parse_rate([]) == 0.0
    assert parse_rate([{"value": [0, "1.5"]}, {"value": [0, "2"]}]) == 3.5
    with pytest.raises(ValueError, match="bad rate"):
        parse_rate([{"value": [0, "NaN"]}])
