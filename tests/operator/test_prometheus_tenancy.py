"""The demand reader with hostile tenants and a secured Prometheus.

* Isolation: a `spec.demand.query` that could read another namespace is never sent.
* Plausible answers: NaN, infinities, negatives and rates above the API's bound are rejected.
* Fair time: a namespace's slow queries delay only that namespace; queries run concurrently,
  each with its own timeout, at most `max_per_namespace` of one namespace at once.
* Secured Prometheus: a TLS endpoint that wants a bearer token, the token file rotated under
  the reader, a CA bundle.

A real Prometheus (Debian's, TLS through its web config, series from recording rules labelled by
namespace) answers the isolation, plausibility and CA checks; an aiohttp server on loopback
plays a slow or token-guarded Prometheus (Prometheus itself cannot be made slow on demand, and
it checks no bearer tokens: Thanos and OpenShift's kube-rbac-proxy do).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import trustme
import yaml
from aiohttp import web

from accordion.operator.api import InferenceService, parse_resource
from accordion.operator.config import OperatorConfig
from accordion.operator.prometheus import (
    PrometheusDemand,
    QueryRejectedError,
    check_scope,
    parse_answer,
)

pytestmark = pytest.mark.timeout(120)


def service(name: str, ns: str, query: str | None = None) -> InferenceService:
    demand: dict[str, Any] = {"source": "Prometheus", "headroom": 0.0}
    if query is not None:
        demand["query"] = query
    obj = parse_resource(
        {
            "apiVersion": "accordion.dev/v1alpha1",
            "kind": "InferenceService",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "slo": {"latencyMs": 100},
                "demand": demand,
                "variants": [
                    {
                        "name": "v",
                        "accuracy": 80,
                        "model": {"storageUri": "builtin:demo-s", "format": "builtin"},
                        "profiles": [{"pool": "p", "batches": [{"batchSize": 1, "p50Ms": 20}]}],
                    }
                ],
            },
        }
    )
    assert isinstance(obj, InferenceService)
    return obj


# ------------------------------------------------------------------------------- isolation


@pytest.mark.parametrize(
    "query",
    [
        'sum(kube_secret_info{namespace="kube-system"})',
        "sum(rate(accordion_router_requests_total[1m]))",
        'sum(rate(x{namespace=~"team-a|kube-system"}[1m]))',
        'sum(rate(x{namespace!="team-b"}[1m]))',
        'sum(x{namespace="team-a"}) + sum(y)',
        'max_over_time(sum(z{namespace="kube-system"})[5m:1m])',
        'sum(x{namespace="team-a"}) or on() label_replace(y, "namespace", "team-a", "", "")',
        'count({__name__=~".+"})',
        "sum(",
    ],
)
def test_a_query_that_could_read_another_namespace_is_rejected(query: str) -> None:
    with pytest.raises(QueryRejectedError):
        check_scope(query, "team-a")


@pytest.mark.parametrize(
    "query",
    [
        'sum(rate(accordion_router_requests_total{namespace="team-a",service="s"}[1m]))',
        'sum(rate(my_requests_total{namespace="team-a", code=~"2.."}[5m] offset 1m))',
        'max_over_time(sum(x{namespace="team-a"})[5m:1m]) * 1.1',
        'sum(x{namespace="team-a", namespace!="other"})',
        "vector(3)",
    ],
)
def test_a_query_confined_to_its_namespace_is_sent_unchanged(query: str) -> None:
    assert check_scope(query, "team-a") == query


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"resultType": "vector", "result": [{"metric": {}, "value": [0, "NaN"]}]}, "bad rate"),
        ({"resultType": "vector", "result": [{"metric": {}, "value": [0, "+Inf"]}]}, "bad rate"),
        ({"resultType": "vector", "result": [{"metric": {}, "value": [0, "-1"]}]}, "bad rate"),
        ({"resultType": "vector", "result": [{"metric": {}, "value": [0, "1e30"]}]}, "bad rate"),
        ({"resultType": "scalar", "result": [0, "1e308"]}, "bad rate"),
        (
            {"resultType": "vector", "result": [{"metric": {}, "value": [0, "9e5"]}] * 2},
            "bad rate",
        ),
        ({"resultType": "matrix", "result": []}, "vector or a scalar"),
    ],
)
def test_implausible_answers_are_rejected_with_the_value(body: Any, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_answer({"status": "success", "data": body})


def test_plausible_answers() -> None:
    vector = {"resultType": "vector", "result": [{"value": [0, "1.5"]}, {"value": [0, "2"]}]}
    assert parse_answer({"status": "success", "data": vector}) == 3.5
    scalar = {"resultType": "scalar", "result": [0, "12"]}
    assert parse_answer({"status": "success", "data": scalar}) == 12.0


# ------------------------------------------------------------------ certificates and server


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def tls_files(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tls")
    cert = ca.issue_cert("127.0.0.1", "localhost")
    files = {"ca": d / "ca.pem", "cert": d / "server.pem", "key": d / "server.key"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    cert.cert_chain_pems[0].write_to_path(str(files["cert"]))
    cert.private_key_pem.write_to_path(str(files["key"]))
    return files


@dataclass
class FakePrometheus:
    """`/api/v1/query` over TLS: answers `rate` for queries naming a known service, waits
    `slow_s` for those containing "slow", and wants `Authorization: Bearer <token>`."""

    url: str = ""
    token: str = "first-token"
    rate: float = 5.0
    slow_s: float = 30.0
    queries: list[str] = field(default_factory=list)
    auths: list[str] = field(default_factory=list)
    spans: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    """(start, end) of each answered or abandoned query, by namespace."""

    def peak(self, ns: str) -> int:
        """Most queries of `ns` in flight at once, 50 ms after any start (the server learns
        of an abandoned query a moment after the reader starts its next)."""
        spans = self.spans.get(ns, [])
        return max(
            (sum(a <= t + 0.05 < b for a, b in spans) for t, _ in spans),
            default=0,
        )

    async def handle(self, request: web.Request) -> web.Response:
        self.auths.append(request.headers.get("Authorization", ""))
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response(
                {"status": "error", "errorType": "unauthorized", "error": "bad token"}, status=401
            )
        query = request.query["query"]
        self.queries.append(query)
        ns = query.split('namespace="', 1)[1].split('"', 1)[0]
        started = time.monotonic()
        try:
            if "slow" in query:
                await asyncio.sleep(self.slow_s)
            value = {"metric": {}, "value": [time.time(), str(self.rate)]}
            return web.json_response(
                {"status": "success", "data": {"resultType": "vector", "result": [value]}}
            )
        finally:
            self.spans.setdefault(ns, []).append((started, time.monotonic()))


@pytest_asyncio.fixture
async def fake(tls_files: dict[str, Path]) -> AsyncIterator[FakePrometheus]:
    prom = FakePrometheus()
    app = web.Application()
    app.router.add_get("/api/v1/query", prom.handle)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(tls_files["cert"]), str(tls_files["key"]))
    # handler_cancellation: a query the client gave up on stops here too (as in Prometheus,
    # which gets the reader's timeout with the query), so `spans` are the reader's.
    runner = web.AppRunner(app, shutdown_timeout=0.1, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    prom.url = f"https://127.0.0.1:{port}"
    yield prom
    await runner.cleanup()


def reader(url: str, tmp: Path, tls_files: dict[str, Path], **kw: Any) -> PrometheusDemand:
    token = tmp / "token"
    if not token.exists():
        token.write_text("first-token\n")
    config = OperatorConfig(
        prometheus_url=url,
        prometheus_bearer_token_file=str(token),
        prometheus_ca_file=str(tls_files["ca"]),
        demand_timeout_s=kw.pop("timeout_s", 2.0),
        demand_rise_half_life_s=0.001,  # each poll's answer is the estimate
        demand_fall_half_life_s=0.001,
        **kw,
    )
    return PrometheusDemand.from_config(config, time.monotonic)


# ------------------------------------------------------------------------- secured server


async def test_token_and_ca_reach_a_tls_prometheus_and_a_rotated_token_is_used(
    fake: FakePrometheus, tmp_path: Path, tls_files: dict[str, Path]
) -> None:
    svc = service("s", "team-a")
    demand = reader(fake.url, tmp_path, tls_files)
    assert await demand.poll([svc])
    assert demand.view().qps == {"team-a/s": 5.0}
    assert fake.auths[-1] == "Bearer first-token"

    # The token rotates on the server, then in the file (as a Secret volume is updated).
    fake.token = "second-token"
    assert await demand.poll([svc])
    assert "401" in demand.view().unavailable["team-a/s"]
    (tmp_path / "token.new").write_text("second-token")
    os.replace(tmp_path / "token.new", tmp_path / "token")
    fake.rate = 8.0
    assert await demand.poll([svc])
    assert demand.view().unavailable == {}
    assert demand.view().qps["team-a/s"] == pytest.approx(8.0, rel=0.01)
    assert fake.auths[-1] == "Bearer second-token"


async def test_without_the_ca_the_certificate_is_refused(
    fake: FakePrometheus, tmp_path: Path, tls_files: dict[str, Path]
) -> None:
    demand = reader(fake.url, tmp_path, tls_files)
    demand.ca_file = None
    await demand.poll([service("s", "team-a")])
    assert "CERTIFICATE_VERIFY_FAILED" in demand.view().unavailable["team-a/s"]
    assert fake.queries == [], "nothing was sent over an unverified connection"
    insecure = reader(fake.url, tmp_path, tls_files, prometheus_insecure_skip_verify=True)
    insecure.ca_file = None
    await insecure.poll([service("s", "team-a")])
    assert insecure.view().qps == {"team-a/s": 5.0}


async def test_a_rejected_query_is_never_sent_and_says_why(
    fake: FakePrometheus, tmp_path: Path, tls_files: dict[str, Path]
) -> None:
    hostile = service("thief", "team-a", 'sum(kube_secret_info{namespace="kube-system"})')
    honest = service("s", "team-b")
    demand = reader(fake.url, tmp_path, tls_files)
    await demand.poll([hostile, honest])
    view = demand.view()
    assert view.qps == {"team-b/s": 5.0}
    reason = view.unavailable["team-a/thief"]
    assert reason.startswith("Prometheus query rejected: QueryRejectedError")
    assert 'namespace="team-a"' in reason
    assert all("kube_secret_info" not in q for q in fake.queries)


async def test_slow_queries_of_one_namespace_delay_no_other_namespace(
    fake: FakePrometheus, tmp_path: Path, tls_files: dict[str, Path]
) -> None:
    slow_ns = [
        service(f"slow{i}", "team-slow", f'sum(slow_requests{{namespace="team-slow",i="{i}"}})')
        for i in range(5)
    ]
    others = [service(f"s{i}", f"team-{i}") for i in range(20)]
    demand = reader(fake.url, tmp_path, tls_files, timeout_s=1.0)
    started = time.monotonic()
    await demand.poll([*slow_ns, *others])
    took = time.monotonic() - started
    view = demand.view()
    assert set(view.qps) == {s.key for s in others}, view.unavailable
    assert set(view.unavailable) == {s.key for s in slow_ns}
    assert took < 1.0 + 1.5, f"a poll waits one timeout at most, took {took:.2f} s"
    assert fake.peak("team-slow") == 2, "at most two queries of one namespace at once"
    timed_out = [r for r in view.unavailable.values() if "no answer within 1 s" in r]
    not_run = [r for r in view.unavailable.values() if "at most 2 queries at once" in r]
    assert len(timed_out) >= 2, view.unavailable
    assert len(timed_out) + len(not_run) == 5
    # The 20 healthy queries did not wait behind the slow ones (sequentially: 5 timeouts).
    assert len([q for q in fake.queries if "slow" in q]) <= 4


# ---------------------------------------------------------------------- real Prometheus


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def real_prometheus(tmp_path: Path, tls_files: dict[str, Path]) -> Iterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        if os.environ.get("ACCORDION_REQUIRE_TOOLS"):
            pytest.fail("prometheus is not installed")
        pytest.skip("prometheus not installed (apt-get install prometheus; `make test` does)")
    rules = {
        "groups": [
            {
                "name": "tenants",
                "interval": "1s",
                "rules": [
                    {"record": "team_requests", "expr": "vector(7)", "labels": {"namespace": ns}}
                    for ns in ("team-a", "kube-system")
                ],
            }
        ]
    }
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    (tmp_path / "prometheus.yml").write_text(
        yaml.safe_dump({"rule_files": [str(tmp_path / "rules.yaml")]})
    )
    (tmp_path / "web.yml").write_text(
        yaml.safe_dump(
            {
                "tls_server_config": {
                    "cert_file": str(tls_files["cert"]),
                    "key_file": str(tls_files["key"]),
                }
            }
        )
    )
    port = _free_port()
    log = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--web.config.file={tmp_path / 'web.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


async def test_a_real_tls_prometheus_answers_only_scoped_plausible_queries(
    real_prometheus: str, tmp_path: Path, tls_files: dict[str, Path]
) -> None:
    svc = {
        "ok": service("ok", "team-a", 'sum(team_requests{namespace="team-a"})'),
        "other-ns": service("other-ns", "team-a", "sum(team_requests)"),
        "huge": service("huge", "team-a", 'sum(team_requests{namespace="team-a"}) * 1e30'),
        "inf": service("inf", "team-a", 'sum(team_requests{namespace="team-a"}) / 0'),
        "nan": service("nan", "team-a", 'sum(team_requests{namespace="team-a"}) * (0 / 0)'),
    }
    demand = reader(real_prometheus, tmp_path, tls_files, timeout_s=5.0)
    ctx = ssl.create_default_context(cafile=str(tls_files["ca"]))
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as session:
        while True:  # until Prometheus listens and its rules have produced samples
            try:
                async with session.get(
                    f"{real_prometheus}/api/v1/query",
                    params={"query": "count(team_requests)"},
                    ssl=ctx,
                ) as resp:
                    if resp.status == 200 and json.loads(await resp.text())["data"]["result"]:
                        break
            except aiohttp.ClientConnectionError:
                pass
            assert time.monotonic() < deadline, "no rule output from Prometheus"
            await asyncio.sleep(0.2)
    await demand.poll(svc.values())
    view = demand.view()
    assert view.qps == {"team-a/ok": 7.0}, view.unavailable
    assert "QueryRejectedError" in view.unavailable["team-a/other-ns"]
    assert "bad rate 7e+30" in view.unavailable["team-a/huge"]
    assert "bad rate inf" in view.unavailable["team-a/inf"]
    assert "bad rate nan" in view.unavailable["team-a/nan"]
