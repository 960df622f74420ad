"""Scale to zero and back in `accordion up`: the product path end to end.

A service with `minReplicas: 0` and a 10 s idle period: `up` starts it with one worker (a new
service counts as active), releases it once no request came for 10 s (status scaledToZero, no
worker process left), and one request sent then is held by the router's activator, counted by
the loop's next scrape, planned, started, and answered: within the cold start the router
measured plus its own latency, with nothing lost.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from accordion.local.demo import read_state, wait_ready
from tests.local.conftest import UpFactory
from tests.local.test_e2e import wait_for
from tests.workers.conftest import sample_body

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="local mode runs processes"
)


def workers(run_dir: Path) -> list[dict[str, Any]]:
    return list(read_state(run_dir).get("workers", []))


def metric_sum(url: str, name: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_idle_service_scales_to_zero_and_a_request_brings_it_back(
    manifests: Callable[..., Path], up: UpFactory
) -> None:
    directory = manifests(qps=0.0, min_replicas=0)
    path = directory / "classifier.yaml"
    text = path.read_text().replace(
        "  minReplicas: 0", "  minReplicas: 0\n  scaleToZeroIdleSeconds: 10"
    )
    assert "scaleToZeroIdleSeconds: 10" in text
    path.write_text(text)
    proc, run_dir = up(directory, "--interval-s", "0.5")
    url, model = wait_ready(proc, run_dir, timeout_s=60)
    assert len(workers(run_dir)) == 1

    wait_for(lambda: not workers(run_dir), 60, "the idle service to scale to zero")

    body = json.dumps(sample_body(features=256)).encode()
    request = urllib.request.Request(
        f"{url}/v2/models/{model}/infer",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "x-accordion-deadline-ms": "60000"},
    )
    sent = time.monotonic()
    with urllib.request.urlopen(request, timeout=90) as resp:
        status = resp.status
        answer = json.loads(resp.read())
    first_s = time.monotonic() - sent
    assert status == 200
    assert answer["outputs"]
    assert len(workers(run_dir)) == 1

    cold_start_s = metric_sum(url, "accordion_router_cold_start_seconds_sum")
    assert metric_sum(url, "accordion_router_cold_start_seconds_count") == 1
    assert (
        metric_sum(url, 'accordion_router_outcomes_total{service="classifier",variant="none"') == 0
    )
    # Warm now: the request's own latency.
    started = time.monotonic()
    with urllib.request.urlopen(request, timeout=30) as resp:
        assert resp.status == 200
    own_s = time.monotonic() - started
    assert first_s <= cold_start_s + own_s + 0.5, (first_s, cold_start_s, own_s)

    def svc_status() -> dict[str, Any]:
        return dict(read_state(run_dir)["status"]["default/classifier"])

    wait_for(
        lambda: svc_status().get("coldStartSeconds") is not None, 30, "status.coldStartSeconds"
    )
    assert svc_status()["coldStartSeconds"] == pytest.approx(cold_start_s, abs=1e-3)
    assert svc_status()["scaledToZero"] is False
    print(f"local scale from zero: cold start {cold_start_s:.2f} s, first answer {first_s:.2f} s")
