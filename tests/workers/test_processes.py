"""The data-plane CLIs as real processes: `serve`, `route` and `load` on loopback ports.

One worker (builtin:demo-xs) behind one router whose table names it twice (variants `a` and
`b`, so a table change is visible without a second torch process); requests through the
router; `accordion load` as a subprocess, its report checked against the router's and the
worker's `/metrics`; a table rewrite followed; SIGTERM stops each process with status 0 and
leaves nothing of its process group behind; bad command lines fail fast with a clear message.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from accordion.workers.config import Backend, RoutingTable

from .conftest import sample_body

CLI = [sys.executable, "-m", "accordion.workers"]
SERVICE = "classifier"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(args: list[str]) -> subprocess.Popen[str]:
    """A CLI in a session (process group) of its own, so that orphans can be looked for."""
    return subprocess.Popen(
        [*CLI, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def http(method: str, url: str, body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def wait_ready(
    proc: subprocess.Popen[str], url: str, timeout_s: float = 30.0, path: str = "/v2/health/ready"
) -> None:
    """Wait until `url` answers 200 at `path` (a router is server-ready once it takes requests,
    which it holds until a backend is ready: wait for its model's readiness to have one)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args!r} exited with {proc.returncode}: {proc.communicate()[1]}")
        try:
            if http("GET", f"{url}{path}")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    pytest.fail(f"{url} not ready after {timeout_s} s")


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        head, value = line.rsplit(" ", 1)
        found = dict(
            pair.split("=", 1) for pair in head[len(name) + 1 : -1].split(",") if "=" in pair
        )
        if all(found.get(k) == f'"{v}"' for k, v in labels.items()):
            total += float(value)
    return total


def write_table(path: Path, worker_url: str, weights: dict[str, float]) -> None:
    table = RoutingTable(
        service=SERVICE,
        slo_ms=2000.0,
        version=json.dumps(weights),
        backends=[
            Backend(name=n, url=worker_url, model_name="demo-xs", weight=w, accuracy=acc)
            for (n, w), acc in zip(weights.items(), (0.8, 0.7), strict=True)
        ],
    )
    tmp = path.with_suffix(".tmp")
    tmp.write_text(table.model_dump_json())
    tmp.replace(path)  # atomic, as a ConfigMap update is


@dataclass
class Stack:
    worker: subprocess.Popen[str]
    router: subprocess.Popen[str]
    worker_url: str
    router_url: str
    table: Path

    def scrape(self) -> tuple[str, str]:
        return (
            http("GET", f"{self.router_url}/metrics")[2].decode(),
            http("GET", f"{self.worker_url}/metrics")[2].decode(),
        )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    table = tmp_path_factory.mktemp("router") / "routing.json"
    wport, rport = free_port(), free_port()
    worker_url, router_url = f"http://127.0.0.1:{wport}", f"http://127.0.0.1:{rport}"
    write_table(table, worker_url, {"a": 1.0, "b": 0.0})
    worker = start(
        [
            *("serve", "--model", "builtin:demo-xs", "--port", str(wport)),
            *("--slo-ms", "2000", "--max-batch-size", "8", "--threads", "1"),
        ]
    )
    router = start(["route", "--table", str(table), "--port", str(rport)])
    try:
        wait_ready(worker, worker_url)
        wait_ready(router, router_url)  # ready once its health check has seen the worker
        yield Stack(worker, router, worker_url, router_url, table)
    finally:
        for proc in (router, worker):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def infer(url: str) -> tuple[int, str, str]:
    status, headers, _ = http(
        "POST", f"{url}/v2/models/{SERVICE}/infer", json.dumps(sample_body()).encode()
    )
    return status, headers.get("x-accordion-variant", ""), headers.get("x-accordion-outcome", "")


def test_requests_through_the_router_are_counted(stack: Stack) -> None:
    router0, worker0 = stack.scrape()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: infer(stack.router_url), range(40)))
    assert set(results) == {(200, "a", "ok")}
    router1, worker1 = stack.scrape()

    def delta(name: str, before: str, after: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("accordion_router_requests_total", router0, router1, service=SERVICE) == 40
    assert (
        delta("accordion_router_outcomes_total", router0, router1, variant="a", outcome="ok") == 40
    )
    served = delta("accordion_router_accuracy_served_total", router0, router1, variant="a")
    assert served == pytest.approx(40 * 0.8)
    assert delta("accordion_worker_requests_total", worker0, worker1, outcome="ok") == 40


def run_load(stack: Stack, *args: str) -> dict[str, Any]:
    """`accordion load` against the router (SLO 2 s, 256 floats per request); its report."""
    done = subprocess.run(
        [
            *(*CLI, "load", "--url", stack.router_url, "--model", SERVICE),
            *("--slo-ms", "2000", "--input-shape", "256", *args),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def answered_by_worker(before: str, after: str) -> float:
    """Requests the worker answered (ok or late) between two scrapes of its /metrics."""
    return sum(
        metric(after, "accordion_worker_requests_total", outcome=o)
        - metric(before, "accordion_worker_requests_total", outcome=o)
        for o in ("ok", "late")
    )


def test_load_command_agrees_with_the_metrics(stack: Stack) -> None:
    router0, worker0 = stack.scrape()
    report = run_load(stack, "--rate", "80", "--duration-s", "1.5", "--seed", "3")
    router1, worker1 = stack.scrape()
    sent = report["sent"]
    assert sent > 60  # Poisson(120): far beyond 5 sigma
    assert report["within_slo"] + report["late"] + report["failed"] == sent
    assert report["attainment"] == pytest.approx(report["within_slo"] / sent, abs=1e-4)
    assert report["attainment"] >= 0.95  # 2 s of budget for a 0.1 ms model
    assert report["p50_ms"] <= report["p99_ms"]
    requests = metric(router1, "accordion_router_requests_total") - metric(
        router0, "accordion_router_requests_total"
    )
    assert requests == sent
    answered = answered_by_worker(worker0, worker1)
    assert answered == report["within_slo"] + report["late"]  # every 200 the client got


def test_binary_load_through_the_router(stack: Stack) -> None:
    """`accordion load --binary` through the router process: KServe v2 binary tensor bodies
    (and binary answers) reach the worker and come back intact."""
    _, worker0 = stack.scrape()
    report = run_load(stack, "--rate", "40", "--duration-s", "1", "--binary")
    assert report["sent"] > 10
    assert report["failed"] == 0, report
    _, worker1 = stack.scrape()
    answered = answered_by_worker(worker0, worker1)
    assert answered == report["sent"]


def test_table_change_is_followed(stack: Stack) -> None:
    reloads = metric(stack.scrape()[0], "accordion_router_table_reloads_total", result="ok")
    write_table(stack.table, stack.worker_url, {"a": 0.0, "b": 1.0})
    end = time.monotonic() + 10
    while time.monotonic() < end:
        text = stack.scrape()[0]
        if metric(text, "accordion_router_weight", variant="b", kind="plan") == 1.0:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the router did not adopt the new table")
    assert metric(text, "accordion_router_table_reloads_total", result="ok") == reloads + 1
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: infer(stack.router_url), range(12)))
    assert set(results) == {(200, "b", "ok")}


def test_sigterm_stops_each_process_cleanly(stack: Stack) -> None:
    for proc in (stack.router, stack.worker):
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{proc.args!r} ignored SIGTERM")
        stderr = proc.communicate()[1]
        assert proc.returncode == 0, stderr
        assert "Traceback" not in stderr, stderr
        with pytest.raises(ProcessLookupError):  # nothing of its process group is left
            os.killpg(proc.pid, 0)


def test_a_router_told_to_drain_is_not_ready_and_stops_cleanly(tmp_path: Path) -> None:
    """With --drain-seconds a terminating router keeps listening, reports itself not ready
    and closes each connection after its answer (`accordion.workers.drain`, tested in
    test_drain.py) for the whole drain, requests or none, then stops with status 0."""
    table = tmp_path / "routing.json"
    write_table(table, "http://127.0.0.1:9", {"a": 1.0, "b": 0.0})
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    router = start(["route", "--table", str(table), "--port", str(port), "--drain-seconds", "2"])
    try:
        wait_ready(router, url, path="/v2/health/live")
        assert http("GET", f"{url}/v2/health/ready")[0] == 200
        router.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        time.sleep(0.3)
        status, headers, _ = http("GET", f"{url}/v2/health/ready")
        assert status == 503, "a draining router is not ready"
        assert headers.get("Connection") == "close"
        assert http("GET", f"{url}/v2/health/live")[0] == 200, "it still listens"
        router.wait(timeout=10)
        assert 1.9 <= time.monotonic() - sent < 5.0, "it drains for --drain-seconds"
        stderr = router.communicate()[1]
        assert router.returncode == 0, stderr
        assert "Traceback" not in stderr, stderr
    finally:
        if router.poll() is None:
            os.killpg(router.pid, signal.SIGKILL)
            router.wait()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "500"}  # rich would wrap the message at 80 columns
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, env=env)


def test_bad_command_lines_fail_with_a_clear_message(tmp_path: Path) -> None:
    missing = run_cli("serve", "--model", str(tmp_path / "missing.pt"), "--port", "0")
    assert missing.returncode != 0
    assert "missing.pt does not exist" in missing.stderr
    no_table = run_cli("route", "--table", str(tmp_path / "missing.json"), "--port", "0")
    assert no_table.returncode != 0
    assert "does not exist" in no_table.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("service: [")
    bad_table = run_cli("route", "--table", str(bad), "--port", "0")
    assert bad_table.returncode != 0
    assert "malformed YAML" in bad_table.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        for args in (
            ("serve", "--model", "builtin:demo-xs", "--port", port),
            ("route", "--table", str(write_ok_table(tmp_path)), "--port", port),
        ):
            done = run_cli(*args)
            assert done.returncode == 1, done.stderr
            assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
            assert "Traceback" not in done.stderr
    for done in (missing, no_table, bad_table):
        assert "Traceback" not in done.stderr


def write_ok_table(tmp_path: Path) -> Path:
    path = tmp_path / "ok.json"
    write_table(path, "http://127.0.0.1:9", {"a": 1.0, "b": 0.0})
    return path
