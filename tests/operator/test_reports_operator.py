"""The real operator (`kopf run`, against the emulator) with its report server.

The test acts as the routers (it posts their reports, as the other tests act as the kubelet):
demand from reports re-plans a Router-sourced service; the answer carries the routing table
the operator wrote, with its revision; the old worker is removed only `drain_s` after the
router confirmed the final table, not after the ConfigMap write; the router Deployment gets
`--report-url` and its identity; bad reports get a precise 4xx. Reports are authenticated (the
default, `report_auth: TokenReview`): the emulator answers the operator's TokenReviews for the
tokens it issued; the refusals are checked in `test_reports_need_a_token_of_the_namespace`.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from accordion.workers.config import REPORT_AUDIENCE, REPORT_PATH
from tests.workers.test_processes import free_port

from .conftest import Cluster, EmulatorThread, Operator, isvc, request_log, wait_for

pytestmark = pytest.mark.timeout(120)
DRAIN_S = 1.0


@pytest.fixture(scope="module")
def report_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def operator(
    emulator: EmulatorThread,
    kubeconfig: Path,
    report_port: int,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Operator]:
    tmp = tmp_path_factory.mktemp("operator-reports")
    env = {
        "ACCORDION_REPORT_PORT": str(report_port),
        "ACCORDION_REPORT_URL": f"http://127.0.0.1:{report_port}{REPORT_PATH}",
        "ACCORDION_DRAIN_S": str(DRAIN_S),
    }
    op = Operator(kubeconfig, tmp / "operator.log", env)
    op.start()
    yield op
    op.stop()


def post(port: int, body: dict[str, Any], token: str | None = None) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{REPORT_PATH}",
        data=json.dumps(body).encode(),
        method="POST",
        headers=headers,
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


class FakeRouter:
    """Reports like a router every half second: `rate_qps`, and the table `version` it has,
    with its ServiceAccount `token` (the emulator's TokenReview vouches for it)."""

    def __init__(self, port: int, service: str, token: str) -> None:
        self.port, self.service, self.token = port, service, token
        self.rate_qps = 0.0
        self.version, self.revision = "", 0
        self.total = 0
        self.cold_start_s: float | None = None
        self.answers: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def report(self) -> tuple[int, dict[str, Any]]:
        window = round(self.rate_qps * 0.5)
        self.total += window
        status, answer = post(
            self.port,
            {
                "service": self.service,
                "router": "svc-router-0",
                "instance": "test",
                "requests_total": self.total,
                "window_requests": window,
                "window_s": 0.5,
                "table_version": self.version,
                "table_revision": self.revision,
                **({} if self.cold_start_s is None else {"cold_start_s": self.cold_start_s}),
            },
            self.token,
        )
        if status == 200:
            self.answers.append(answer)
        return status, answer

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            with contextlib.suppress(OSError):
                self.report()

    def __enter__(self) -> FakeRouter:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)


def test_ready_and_bad_reports(cluster: Cluster, report_port: int) -> None:
    def ready() -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{report_port}/readyz", timeout=2) as r:
                return int(r.status)
        except (urllib.error.URLError, OSError):
            return 0

    assert wait_for("the report server", lambda: ready() == 200, timeout_s=30)
    token = cluster.token("nowhere")
    status, answer = post(report_port, {"service": "x", "router": "r"}, token)
    assert status == 400
    assert "service" in answer["error"]
    assert "instance" in answer["error"]
    base = {"router": "r", "instance": "i", "requests_total": 1, "window_requests": 1}
    status, answer = post(report_port, {"service": "nowhere/none", "window_s": 1.0, **base}, token)
    assert status == 404
    assert answer["error"] == "no InferenceService nowhere/none"


def test_demand_from_reports_and_a_drain_that_waits_for_the_router(
    cluster: Cluster, report_port: int
) -> None:
    ns, pool, key = "rep", "pool-rep", "rep/svc"
    cluster.create_pool(pool, 1)
    cluster.create(isvc("svc", ns, pool, 0.0, demand={"qps": 40.0, "headroom": 0.0}))
    assert cluster.get(ns, "svc")["spec"]["demand"].get("source") is None  # the default: Router
    wait_for("the big worker for 40 req/s", lambda: set(cluster.workers(ns)) == {"big"})
    cluster.mark_ready(ns)
    first = wait_for("a routing table", lambda: cluster.routing(ns, "svc"))
    router = next(d for d in cluster.deployments(ns) if d["metadata"]["name"] == "svc-router")
    container = router["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[args.index("--report-url") + 1] == f"http://127.0.0.1:{report_port}{REPORT_PATH}"
    assert {e["name"] for e in container["env"]} >= {"POD_NAME", "POD_NAMESPACE"}
    assert first["namespace"] == ns
    assert first["revision"] > 0

    with FakeRouter(report_port, key, cluster.token(ns)) as fake:
        fake.version, fake.revision = first["version"], first["revision"]
        # 150 req/s at the router: more than big can serve on the one device; small can.
        fake.rate_qps = 150.0
        wait_for("the small worker", lambda: "small" in cluster.workers(ns), timeout_s=30)
        assert wait_for(
            "the measured demand in status",
            lambda: (q := cluster.status(ns, "svc").get("demandQps")) and q > 120 and q,
        )
        cluster.mark_ready(ns, "small")

        def final_table() -> dict[str, Any] | None:
            t = cluster.routing(ns, "svc")
            routed = {b["name"].split("@")[0] for b in (t or {}).get("backends", []) if b["weight"]}
            return t if routed == {"small"} else None

        final = wait_for("the final table (small only)", final_table)
        written = time.monotonic()

        # The answer carries it (the file would come with the kubelet's sync, much later).
        def answer_with_it() -> dict[str, Any] | None:
            return next(
                (
                    a
                    for a in reversed(fake.answers)
                    if (a.get("table") or {}).get("version") == final["version"]
                ),
                None,
            )

        answer = wait_for("the new table in an answer", answer_with_it)
        assert answer["table"]["revision"] == final["revision"] > first["revision"]
        assert answer["heartbeat_s"] == 0.0
        # The router keeps routing by the old table: big stays well past drain_s.
        while time.monotonic() < written + 4 * DRAIN_S:
            assert "big" in cluster.workers(ns), "removed before the router took the table"
            time.sleep(0.1)
        fake.version, fake.revision = final["version"], final["revision"]
        confirmed = time.monotonic()
        wait_for("big removed", lambda: "big" not in cluster.workers(ns), timeout_s=30)
        removed_after_s = time.monotonic() - confirmed
        print(f"old worker removed {removed_after_s:.2f} s after the router's confirmation")
        assert removed_after_s >= 0.9 * DRAIN_S


def test_reports_need_a_token_of_the_namespace(cluster: Cluster, report_port: int) -> None:
    """The real operator asks the API server (the emulator's TokenReview) about each router's
    token once, and takes a report only with a token of the service's namespace."""
    ns, pool, key = "auth", "pool-auth", "auth/svc"
    cluster.create_pool(pool, 1)
    cluster.create(isvc("svc", ns, pool, 0.0, demand={"qps": 10.0, "headroom": 0.0}))
    wait_for("a worker", lambda: cluster.workers(ns))
    cluster.mark_ready(ns)
    wait_for("a routing table", lambda: cluster.routing(ns, "svc"))
    router = next(d for d in cluster.deployments(ns) if d["metadata"]["name"] == "svc-router")
    spec = router["spec"]["template"]["spec"]
    args = spec["containers"][0]["args"]
    token_dir = args[args.index("--report-token-file") + 1].rpartition("/")[0]
    (volume,) = [v for v in spec["volumes"] if "projected" in v]
    (source,) = volume["projected"]["sources"]
    assert source["serviceAccountToken"]["audience"] == REPORT_AUDIENCE
    mounts = {m["name"]: m for m in spec["containers"][0]["volumeMounts"]}
    assert mounts[volume["name"]] == {
        "name": volume["name"],
        "mountPath": token_dir,
        "readOnly": True,
    }

    body = {
        "service": key,
        "router": "svc-router-0",
        "instance": "auth-test",
        "requests_total": 5,
        "window_requests": 5,
        "window_s": 1.0,
    }

    def reviews() -> int:
        return sum(1 for m, p in request_log(cluster) if m == "POST" and "/tokenreviews" in p)

    before = reviews()
    status, answer = post(report_port, body)
    assert status == 401
    assert "no Authorization header" in answer["error"]
    status, answer = post(report_port, body, "made-up")
    assert status == 401
    assert "invalid bearer token" in answer["error"]
    status, answer = post(report_port, body, cluster.token("elsewhere"))
    assert status == 403
    assert "system:serviceaccount:elsewhere:default" in answer["error"]
    status, answer = post(report_port, body, cluster.token(ns, pod="svc-router-1"))
    assert status == 403
    assert "svc-router-1" in answer["error"]
    token = cluster.token(ns, pod="svc-router-0")
    for _ in range(3):
        status, answer = post(report_port, body, token)
        assert status == 200, answer
    assert reviews() == before + 4  # one per token: the good one's three reports made one

    # The API server fails to answer a review: 503 (the router keeps its table, and retries).
    cluster.emulator.call(lambda emu: emu.inject("POST", "tokenreviews", 500))
    fresh = cluster.token(ns, pod="svc-router-0")
    status, answer = post(report_port, body, fresh)
    assert status == 503
    assert "TokenReview" in answer["error"]
    status, answer = post(report_port, body, fresh)
    assert status == 200, answer
