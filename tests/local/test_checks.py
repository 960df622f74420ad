"""`accordion up` refuses to start, at once and with a clear message, when it cannot run."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from accordion.local.actuator import free_port
from accordion.local.runtime import (
    LocalModeError,
    LocalRuntime,
    RouterCounters,
    RuntimeSettings,
    histogram_quantile,
    parse_router_metrics,
    tick_rates,
)


def _up(manifest_dir: Path, port: int, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "accordion.local.cli", "-f", str(manifest_dir), "--port",
           str(port), "--run-dir", str(tmp_path / "run"), "--no-view"]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def test_invalid_manifest_stops_up_with_the_field_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "svc.yaml").write_text(
        "apiVersion: accordion.dev/v1alpha1\nkind: InferenceService\n"
        "metadata: {name: classifier}\nspec: {slo: {latencyMs: -5}, accuracy: {floor: 70},"
        " variants: []}\n"
    )
    started = time.monotonic()
    result = _up(bad, free_port(), tmp_path)
    assert result.returncode == 2
    assert "accordion up: error: invalid manifests" in result.stderr
    assert "latencyMs" in result.stderr or "latency_ms" in result.stderr
    assert time.monotonic() - started < 30


def test_missing_model_file_stops_up(tmp_path: Path, manifests: Callable[..., Path]) -> None:
    directory = manifests(xl_uri=str(tmp_path / "nowhere" / "xl.pt"))
    started = time.monotonic()
    result = _up(directory, free_port(), tmp_path)
    assert time.monotonic() - started < 30  # at once: before any process starts
    assert not (tmp_path / "run" / "state.json").exists()
    assert result.returncode == 2
    assert "model file" in result.stderr
    assert "does not exist" in result.stderr
    assert "demo-xl" in result.stderr


def test_unknown_builtin_model_is_refused(tmp_path: Path, manifests: Callable[..., Path]) -> None:
    with pytest.raises(LocalModeError, match=r"unknown builtin model 'demo-huge'"):
        LocalRuntime([manifests(xl_uri="builtin:demo-huge")], tmp_path / "run")


def test_port_in_use_stops_up(tmp_path: Path, manifests: Callable[..., Path]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        started = time.monotonic()
        result = _up(manifests(), port, tmp_path)
    assert time.monotonic() - started < 30
    assert not (tmp_path / "run" / "state.json").exists()
    assert result.returncode == 2
    assert f"port {port} (router of default/classifier) is in use" in result.stderr


def test_no_service_and_gpu_pool_are_refused(tmp_path: Path) -> None:
    only_pool = tmp_path / "pool.yaml"
    only_pool.write_text(
        "apiVersion: accordion.dev/v1alpha1\nkind: DevicePool\nmetadata: {name: gpu}\n"
        "spec: {devices: 1, costPerDevice: 1, device: cuda}\n"
    )
    with pytest.raises(LocalModeError, match="no InferenceService"):
        LocalRuntime([only_pool], tmp_path / "run", RuntimeSettings(base_port=free_port()))
    cluster = Path(__file__).parents[2] / "examples"
    with pytest.raises(LocalModeError, match="CPU pools only"):
        LocalRuntime(
            [cluster / "cluster.yaml", cluster / "services.yaml"],
            tmp_path / "run2",
            RuntimeSettings(base_port=free_port()),
        )


ROUTER_METRICS = """\
# TYPE accordion_router_requests_total counter
accordion_router_requests_total{service="default.classifier"} 120.0
# TYPE accordion_router_outcomes_total counter
accordion_router_outcomes_total{outcome="ok",service="default.classifier",variant="a@p"} 100.0
accordion_router_outcomes_total{outcome="late",service="default.classifier",variant="a@p"} 5.0
accordion_router_outcomes_total{outcome="shed",service="default.classifier",variant="none"} 15.0
# TYPE accordion_router_accuracy_served_total counter
accordion_router_accuracy_served_total{service="default.classifier",variant="a@p"} 80.0
# TYPE accordion_router_request_latency_seconds histogram
accordion_router_request_latency_seconds_bucket{le="0.01",service="s",variant="a@p"} 50.0
accordion_router_request_latency_seconds_bucket{le="0.1",service="s",variant="a@p"} 100.0
accordion_router_request_latency_seconds_bucket{le="+Inf",service="s",variant="a@p"} 105.0
accordion_router_request_latency_seconds_count{service="s",variant="a@p"} 105.0
accordion_router_request_latency_seconds_sum{service="s",variant="a@p"} 3.0
"""


def test_router_metrics_are_read_like_prometheus_would() -> None:
    c = parse_router_metrics(ROUTER_METRICS)
    assert c.requests == 120
    assert c.outcomes == {"ok": 100, "late": 5, "shed": 15}
    assert c.accuracy_served == 80
    assert histogram_quantile(0.5, c.latency_buckets) == pytest.approx(0.01 + 0.09 * 2.5 / 50)
    assert histogram_quantile(0.9, c.latency_buckets) == pytest.approx(0.01 + 0.09 * 44.5 / 50)
    assert histogram_quantile(0.99, c.latency_buckets) == pytest.approx(0.1)  # in +Inf
    assert histogram_quantile(0.99, {}) is None


def test_live_view_renders_before_the_first_tick(
    tmp_path: Path, manifests: Callable[..., Path]
) -> None:
    from rich.console import Console

    from accordion.local.view import render

    rt = LocalRuntime([manifests()], tmp_path / "run", RuntimeSettings(base_port=free_port()))
    console = Console(record=True, width=160)
    console.print(render(rt))
    text = console.export_text()
    assert "classifier" in text
    assert "starting" in text
    assert "Ctrl-C stops everything" in text


def test_served_accuracy_is_per_finished_request_not_per_arrival() -> None:
    # A falling load: 10 requests arrived during the tick, but 20 finished (the queue from
    # the previous tick drained), 19 in time on an 84%-accurate variant and 1 late. The router
    # counts arrivals in requests_total and answers in accuracy_served/outcomes.
    old = RouterCounters(requests=100, outcomes={"ok": 90.0}, accuracy_served=90 * 0.84)
    new = RouterCounters(
        requests=110, outcomes={"ok": 109.0, "late": 1.0}, accuracy_served=109 * 0.84
    )
    rates = tick_rates(new, old, dt_s=0.5)
    assert rates.demand_qps == pytest.approx(20.0)
    assert rates.finished == 20
    assert rates.ok_qps == pytest.approx(38.0)
    assert rates.violations_qps == pytest.approx(2.0)
    assert rates.served_accuracy == pytest.approx(84 * 19 / 20)  # never above the best variant
    idle = tick_rates(new, new, dt_s=1.0)
    assert idle.served_accuracy is None
    assert idle.demand_qps == 0


def test_live_view_is_readable_at_80_columns(
    tmp_path: Path, manifests: Callable[..., Path]
) -> None:
    from rich.console import Console

    from accordion.local.actuator import Event
    from accordion.local.runtime import Sample
    from accordion.local.view import render

    rt = LocalRuntime([manifests()], tmp_path / "run", RuntimeSettings(base_port=free_port()))
    key = "default/classifier"
    rt.latest[key] = Sample(
        t_s=60.0, service=key, demand_qps=148.25, estimate_qps=151.3, capacity_qps=322.0,
        planned_accuracy=79.0, served_accuracy=78.95, ok_qps=147.9, violations_qps=0.35,
        p99_ms=8.21, slo_ms=100.0, replicas={"demo-xl@local-cpu": 0, "demo-m@local-cpu": 1},
        ready={"demo-xl@local-cpu": 1, "demo-m@local-cpu": 1}, weights={"demo-m@local-cpu": 1.0},
    )  # fmt: skip
    rt.stats[key].requests, rt.stats[key].ok, rt.stats[key].replans = 9447, 9442, 3
    rt.events.append(Event(time.time(), key, "Normal", "AccuracyScaledDown", "84 -> 79"))
    console = Console(record=True, width=80)
    console.print(render(rt))
    text = console.export_text()
    assert "…" not in text, text
    assert max(len(line) for line in text.splitlines()) <= 80
    rows = [line.split() for line in text.splitlines()]
    headers = next(r for r in rows if r[:1] == ["service"])
    assert headers == ["service", "demand/s", "capacity/s", "accuracy", "p99/SLO", "violations",
                       "re-plans"], text  # fmt: skip
    service_row = next(r for r in rows if r[:1] == ["classifier"])
    assert service_row == ["classifier", "148.2", "322", "plan", "79.0", "8ms", "0.3/s", "3"]
    assert ["est", "151.3", "served", "79.0", "/100ms", "99.95%", "ok"] in rows
    assert ["classifier", "demo-m", "local-cpu", "1/1", "1.00"] in rows
    assert ["classifier", "demo-xl", "local-cpu", "1/0", "0.00"] in rows
    assert "AccuracyScaledDown" in text
    assert f"default/classifier → {rt.router_url(key)}" in text
