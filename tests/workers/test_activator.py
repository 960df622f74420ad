"""Scale from zero through the router's activator, with real processes.

A router (`accordion.workers route`) starts with a table whose only worker does not run (a
service scaled to zero), reporting to a stand-in operator (an HTTP server that records the
reports) at an interval far longer than the test: any report that arrives is the activator's
immediate one. Requests sent then are held; the "operator" starts the worker when the report
arrives, as the real one plans a replica for a service with demand; every held request is then
answered, none lost, and the first one within the measured cold start plus its own latency.
With the cold start known, a request whose deadline is shorter than it is refused at once
(503 with the reason in KServe's error JSON). The `Activator` itself is also driven directly
for its bound and deadline rules.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from accordion.workers.activator import Activator
from accordion.workers.config import DEADLINE_HEADER, Backend, ReportAnswer, RoutingTable
from accordion.workers.reporting import ReportPolicy, Window

from .conftest import sample_body
from .test_processes import SERVICE, free_port, http, metric, start, wait_ready


class FakeOperator:
    """Takes router reports (POST /v1/reports) and records them with their arrival time."""

    def __init__(self) -> None:
        self.reports: list[tuple[float, dict[str, Any]]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                owner.reports.append((time.monotonic(), json.loads(body)))
                answer = b'{"heartbeat_s": 10.0}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/reports"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for_demand(self, timeout_s: float) -> tuple[float, dict[str, Any]]:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            for received, report in list(self.reports):
                if report.get("window_requests", 0) > 0:
                    return received, report
            time.sleep(0.01)
        pytest.fail(f"no report with arrivals within {timeout_s} s: {self.reports}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def operator() -> Iterator[FakeOperator]:
    fake = FakeOperator()
    try:
        yield fake
    finally:
        fake.close()


def infer(url: str, deadline_ms: float) -> tuple[int, float, dict[str, Any]]:
    """(status, seconds, body) of one request with a deadline."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        f"{url}/v2/models/{SERVICE}/infer",
        data=json.dumps(sample_body()).encode(),
        method="POST",
        headers={"Content-Type": "application/json", DEADLINE_HEADER: str(deadline_ms)},
    )
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=120) as resp:
            status, body = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    return status, time.monotonic() - started, json.loads(body)


def kill(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_scale_from_zero_answers_every_held_request(tmp_path: Path, operator: FakeOperator) -> None:
    wport, rport = free_port(), free_port()
    worker_url, router_url = f"http://127.0.0.1:{wport}", f"http://127.0.0.1:{rport}"
    table = tmp_path / "routing.json"
    table.write_text(
        RoutingTable(
            service=SERVICE,
            namespace="default",
            slo_ms=2000.0,
            backends=[
                Backend(name="a", url=worker_url, model_name="demo-xs", weight=1.0, accuracy=0.8)
            ],
        ).model_dump_json()
    )
    router = start(
        [
            *("route", "--table", str(table), "--port", str(rport)),
            *("--report-url", operator.url, "--report-interval", "60"),
        ]
    )
    worker: subprocess.Popen[str] | None = None
    try:
        # Scaled to zero: the router takes requests (server ready), the model is not ready.
        wait_ready(router, router_url)
        assert http("GET", f"{router_url}/v2/models/{SERVICE}/ready")[0] == 503

        held = 6
        with ThreadPoolExecutor(held) as pool:
            sent = time.monotonic()
            futures = [pool.submit(infer, router_url, 120_000) for _ in range(held)]
            # The activator reports at once (the interval is 60 s): the operator starts a
            # replica when it hears of demand at zero replicas.
            received, report = operator.wait_for_demand(timeout_s=10)
            assert received - sent < 5.0
            assert report["service"] == f"default/{SERVICE}"
            worker = start(
                [
                    *("serve", "--model", "builtin:demo-xs", "--port", str(wport)),
                    *("--slo-ms", "2000", "--max-batch-size", "8", "--threads", "1"),
                ]
            )
            results = [f.result(timeout=120) for f in futures]
        assert [status for status, _, _ in results] == [200] * held, results

        text = http("GET", f"{router_url}/metrics")[2].decode()
        assert metric(text, "accordion_router_cold_start_seconds_count", service=SERVICE) == 1
        cold_start_s = metric(text, "accordion_router_cold_start_seconds_sum", service=SERVICE)
        assert metric(text, "accordion_router_activator_requests_total", result="released") == (
            held
        )
        assert metric(text, "accordion_router_outcomes_total", outcome="ok") == held
        assert metric(text, "accordion_router_outcomes_total", outcome="shed") == 0
        # The cold start spans the worker's whole start (its model load included).
        assert cold_start_s > 0.5
        # The first request is answered within the cold start plus its own latency: one
        # request's latency now that a replica is warm, with a scheduling margin.
        own_s = min(infer(router_url, 120_000)[1] for _ in range(5))
        first_s = min(seconds for _, seconds, _ in results)
        assert first_s <= cold_start_s + own_s + 0.5, (first_s, cold_start_s, own_s)
        print(
            f"cold start {cold_start_s:.3f} s, first answer {first_s:.3f} s, last "
            f"{max(s for _, s, _ in results):.3f} s, warm latency {own_s * 1000:.1f} ms"
        )

        # With the cold start known, a request whose deadline is shorter is refused at once.
        kill(worker)
        end = time.monotonic() + 10
        while http("GET", f"{router_url}/v2/models/{SERVICE}/ready")[0] != 503:
            assert time.monotonic() < end, "the router still counts the dead worker ready"
            time.sleep(0.05)
        status, seconds, body = infer(router_url, cold_start_s * 1000 / 4)
        assert status == 503
        assert body["error"].startswith("cold start: no replica is ready; one is expected in")
        assert seconds < cold_start_s / 4
        # That request asked for a report too, and it carries the measured cold start.
        end = time.monotonic() + 10
        while not any(r.get("cold_start_s") for _, r in operator.reports):
            assert time.monotonic() < end, operator.reports
            time.sleep(0.01)
        carried = next(r["cold_start_s"] for _, r in operator.reports if r.get("cold_start_s"))
        assert carried == pytest.approx(cold_start_s)
    finally:
        kill(router)
        if worker is not None:
            kill(worker)


async def test_the_queue_is_bounded_and_deadlines_expire() -> None:
    holds: list[None] = []
    activator = Activator(max_queued=2, on_hold=lambda: holds.append(None))
    now = activator.now()
    first = asyncio.create_task(activator.hold(now + 10, 2, 0.0))
    await asyncio.sleep(0.01)
    assert activator.queued == 2
    full = await activator.hold(now + 10, 1, 0.0)
    assert (full.result, full.reason) == (
        "rejected-full",
        "cold start: no replica is ready and 2 samples wait already (at most 2)",
    )
    assert holds == [None]  # one immediate report per WAKE_INTERVAL_S, not one per request
    expired = await activator.hold(activator.now() + 0.05, 0, 0.0)
    assert expired.result == "expired"
    activator.ready()
    released = await first
    assert released.result == "released"
    assert released.reason is None
    assert activator.queued == 0
    assert activator.last_s is not None
    assert activator.expected_s == activator.last_s
    # Expected 1 s of cold start from now on: a deadline 0.5 s away is refused at once.
    activator.expected_s = 1.0
    refused = await activator.hold(activator.now() + 0.5, 1, 0.0)
    assert refused.result == "rejected-deadline"
    assert refused.waited_s == 0.0


def test_a_held_request_makes_the_next_window_a_report() -> None:
    """`Reporter.wake` sets `urgent`: the next window is reported though the quiet rule would
    say nothing (one request after a quiet spell is within counting noise of zero)."""
    now = [1000.0]
    policy = ReportPolicy(interval_s=1.0, heartbeat_s=10.0, clock=lambda: now[0])
    version = ("v1", 1)
    total = 0
    for second in range(5):
        now[0] += 1.0
        window = policy.close_window(total, version, None)
        assert window.reason == ("first" if second == 0 else None)
        if window.reason is not None:
            policy.delivered(window, version, ReportAnswer())
    total += 1
    now[0] += 1.0
    assert policy.close_window(total, version, None).reason is None  # noise, without the wake
    policy.urgent = True
    total += 1
    now[0] += 1.0
    window = policy.close_window(total, version, None)
    assert (window.reason, window.requests) == ("cold-start", 1)
    assert not policy.urgent  # once
    # A wake a moment into the window counts over one interval, not the moment: one request
    # 10 ms in is not a rate of 100 per second to plan replicas for.
    policy.urgent = True
    total += 1
    now[0] += 0.01
    window = policy.close_window(total, version, None)
    assert (window.reason, window.requests, window.seconds) == ("cold-start", 1, 1.0)
    # A service with traffic reported (no replica planned for it: starved) reports its true
    # window: its wakes every quarter second must not read a quarter of its rate.
    policy.delivered(Window(50, 1.0, "moved"), version, ReportAnswer())
    policy.urgent = True
    total += 12
    now[0] += 0.25
    window = policy.close_window(total, version, None)
    assert (window.reason, window.requests, window.seconds) == ("cold-start", 12, 0.25)


def test_grpc_refusal_at_zero_replicas_is_unavailable_with_the_reason(tmp_path: Path) -> None:
    """Over gRPC, a request the activator cannot hold (`--max-queued 0`) is UNAVAILABLE, with
    the activator's reason, as KServe's and Triton's clients expect of a 503."""
    import numpy as np
    import tritonclient.grpc as grpcclient  # type: ignore[import-untyped]
    from tritonclient.utils import InferenceServerException  # type: ignore[import-untyped]

    rport, rgrpc = free_port(), free_port()
    table = tmp_path / "routing.json"
    table.write_text(
        RoutingTable(
            service=SERVICE,
            slo_ms=2000.0,
            backends=[
                Backend(
                    name="a",
                    url=f"http://127.0.0.1:{free_port()}",
                    model_name="demo-xs",
                    weight=1.0,
                    accuracy=0.8,
                )
            ],
        ).model_dump_json()
    )
    router = start(
        [
            *("route", "--table", str(table), "--port", str(rport)),
            *("--grpc-port", str(rgrpc), "--max-queued", "0"),
        ]
    )
    try:
        wait_ready(router, f"http://127.0.0.1:{rport}")
        client = grpcclient.InferenceServerClient(url=f"127.0.0.1:{rgrpc}")
        assert client.is_server_ready()
        assert not client.is_model_ready(SERVICE)
        tensor = grpcclient.InferInput("input", [1, 256], "FP32")
        tensor.set_data_from_numpy(np.full((1, 256), 0.5, dtype=np.float32))
        with pytest.raises(InferenceServerException) as info:
            client.infer(SERVICE, [tensor], client_timeout=30)
        assert info.value.status() == "StatusCode.UNAVAILABLE"
        assert "cold start: no replica is ready and 0 samples wait already" in str(
            info.value.message()
        )
    finally:
        kill(router)


async def test_a_cold_start_nobody_waits_for_is_not_measured() -> None:
    """A request that expired long ago does not make a replica that comes an hour later a
    one-hour cold start (which would refuse every later request at once)."""
    now = [1000.0]
    activator = Activator(clock=lambda: now[0])
    expired = await activator.hold(now[0] + 0.01, 1, 0.0)
    assert expired.result == "expired"
    now[0] += 3600
    activator.ready()
    assert activator.last_s is None
    assert activator.began_s is None
    # The next request starts a cold start of its own, measured from it.
    waiting = asyncio.create_task(activator.hold(now[0] + 60, 1, 0.0))
    await asyncio.sleep(0.01)
    now[0] += 2.0
    activator.ready()
    assert (await waiting).result == "released"
    assert activator.last_s == 2.0
