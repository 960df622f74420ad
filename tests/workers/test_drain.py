"""A server told to drain (`accordion.workers.drain`) serves on after SIGTERM while requests
come, closing each connection, and stops a second after the last one; as real processes: a
small app, and a worker serving a model."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from http.client import HTTPConnection
from pathlib import Path

import pytest

from accordion.workers.config import WorkerConfig
from accordion.workers.drain import QUIET_S

from .conftest import sample_body
from .test_processes import free_port, http, start, wait_ready

APP = """
import sys
from aiohttp import web
from accordion.workers import drain

class Owner:
    draining = False

owner = Owner()

async def echo(_):
    return web.Response(text="ok")

async def ready(_):
    return web.Response(status=503 if owner.draining else 200)

app = web.Application()
app.router.add_post("/echo", echo)
app.router.add_get("/ready", ready)
drain.install(app, owner, float(sys.argv[2]), float(sys.argv[3]))
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
"""


def small_app(drain_s: float, quiet_s: float = QUIET_S) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", APP, str(port), str(drain_s), str(quiet_s)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, url, path="/ready")
    return proc, url


def post(url: str, path: str, body: bytes) -> tuple[int, str]:
    """A POST as a keep-alive client sends it (urllib would ask to close the connection
    itself): the status, and the server's Connection header."""
    host, port = url.removeprefix("http://").split(":")
    conn = HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("POST", path, body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        return resp.status, resp.getheader("Connection") or ""
    finally:
        conn.close()


def stopped_after(proc: subprocess.Popen[str], since: float) -> float:
    proc.wait(timeout=20)
    took = time.monotonic() - since
    stderr = proc.communicate()[1]
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr
    return took


def test_a_draining_server_serves_while_requests_come_then_stops() -> None:
    # A quiet time longer than the drain: a stall of the shared machine between two requests
    # does not end it early here (the next test has the quiet time end it).
    proc, url = small_app(drain_s=2.5, quiet_s=5.0)
    answers: list[tuple[int, str]] = []
    stop = threading.Event()

    def client() -> None:  # a request every 0.2 s, as a router still sending would
        while not stop.is_set() and proc.poll() is None:
            try:
                answers.append(post(url, "/echo", b"{}"))
            except OSError:
                break
            time.sleep(0.2)

    assert post(url, "/echo", b"{}") == (200, ""), "kept alive before SIGTERM"
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    thread = threading.Thread(target=client)
    thread.start()
    time.sleep(0.3)
    assert http("GET", f"{url}/ready")[0] == 503, "the owner is told it drains"
    try:
        took = stopped_after(proc, sent)
    finally:
        stop.set()
        thread.join()
    assert 2.3 <= took <= 5.0, f"stopped {took:.2f} s after SIGTERM, not at the drain's end"
    assert len(answers) >= 8
    assert all(a == (200, "close") for a in answers), answers


def test_a_draining_server_nobody_sends_to_stops_a_second_later() -> None:
    proc, _ = small_app(drain_s=30.0)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert 0.9 <= stopped_after(proc, sent) < 3.0


def test_without_a_drain_sigterm_stops_at_once() -> None:
    proc, _ = small_app(drain_s=0.0)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert stopped_after(proc, sent) < 1.5


@pytest.mark.timeout(120)
def test_a_worker_drains_with_its_config(tmp_path: Path) -> None:
    """The worker takes its drain from its WorkerConfig (the operator sets `drain_s`); it
    stays ready while it drains (routers check a group's readiness through its Service)."""
    port = free_port()
    config = WorkerConfig(
        model_name="demo-xs", model="builtin:demo-xs", port=port, slo_ms=2000.0, drain_s=20.0
    )
    path = tmp_path / "worker.json"
    path.write_text(config.model_dump_json())
    proc = start(["serve", "--config", str(path)])
    url = f"http://127.0.0.1:{port}"
    body = json.dumps(sample_body()).encode()
    try:
        wait_ready(proc, url)
        infer = "/v2/models/demo-xs/infer"
        assert post(url, infer, body) == (200, ""), "kept alive before SIGTERM"
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        for _ in range(5):  # 1.5 s of requests: each answered, its connection closed
            assert post(url, infer, body) == (200, "close")
            time.sleep(0.3)
        assert http("GET", f"{url}/v2/health/ready")[0] == 200
        took = stopped_after(proc, sent)
        assert 1.5 <= took < 10.0, f"stopped {took:.2f} s after SIGTERM"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
