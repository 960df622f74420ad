"""The profile as served (`accordion.workers.served`): per batch size, the worker's own recent
executions, published on /metrics and read back, and the profile it corrects."""

from __future__ import annotations

import asyncio
import io
import urllib.request
from pathlib import Path

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import generate_latest
from typer.testing import CliRunner

from accordion.workers.cli import app
from accordion.workers.profiler import Overhead
from accordion.workers.served import ServedProfile, held_profile, parse_served
from accordion.workers.server import WorkerMetrics

from .conftest import sample_body

Client = TestClient[web.Request, web.Application]


def test_percentiles_per_batch_size_of_the_last_window() -> None:
    served = ServedProfile(window=100, min_samples=10)
    for _ in range(9):
        served.observe(2, 0.010)
    assert served.point(2) is None  # below min_samples: no reading
    for k in range(1, 101):  # 1..100 ms: the window keeps these, the 9 of 10 ms drop out
        served.observe(2, k / 1000.0)
    assert served.samples(2) == 100
    assert served.point(2) == pytest.approx((0.050, 0.090, 0.099))
    served.observe(3, float("nan"))
    served.observe(0, 0.01)
    assert set(served.points()) == {2}


def test_published_on_metrics_and_read_back() -> None:
    metrics = WorkerMetrics("m")
    for k in range(1, 21):
        metrics.observe_batch(1, k / 1000.0, None)
        metrics.observe_batch(4, 2 * k / 1000.0, None)
    metrics.observe_batch(8, 0.05, None)  # one batch of 8: too few to publish percentiles
    read = parse_served(generate_latest(metrics.registry).decode(), model="m")
    assert set(read) == {1, 4}
    assert read[1][0] == read[4][0] == 20
    assert read[1][1] == pytest.approx((0.010, 0.018, 0.020))
    assert read[4][1] == pytest.approx((0.020, 0.036, 0.040))
    assert parse_served(generate_latest(metrics.registry).decode(), model="other") == {}


def test_the_held_profile_is_served_where_measured_and_scaled_elsewhere() -> None:
    base = {1: (0.010, 0.011, 0.012), 2: (0.015, 0.016, 0.018), 4: (0.020, 0.022, 0.025)}
    # Served 1.3x slower at 1, 1.5x at 2 (kernels differ by size); 4 never ran.
    served = {1: (0.013, 0.015, 0.020), 2: (0.0225, 0.024, 0.030)}
    held = held_profile(base, served)
    assert held[1] == served[1]
    assert held[2] == served[2]
    # The median ratio of the sizes served (two: the upper one, 1.5).
    assert held[4] == pytest.approx((0.030, 0.033, 0.0375))
    assert held_profile(base, {}) == base


def test_the_overhead_is_split_against_the_profile_held() -> None:
    """A slower profile explains more of the lone request's and the saturated worker's time:
    less is left to the cold batch and the per-request work."""
    measured = Overhead(
        fixed_s=0.0,
        per_request_s=0.0,
        cold_batch_s=0.0,
        lone_latency_s=0.0125,
        lone_execution_s=0.0099,
        saturated_qps=250.0,
        saturated_batch=8.0,
    )
    alone = measured.against({1: 0.0077, 8: 0.0206})
    assert alone.cold_batch_s == pytest.approx(0.0022)
    assert alone.per_request_s == pytest.approx(0.004 - 0.0206 / 8)
    assert alone.fixed_s == pytest.approx(0.0125 - 0.0099 - alone.per_request_s)
    served = measured.against({1: 0.0095, 8: 0.028})
    assert served.cold_batch_s == pytest.approx(0.0004)
    assert served.per_request_s == pytest.approx(0.004 - 0.028 / 8)
    assert measured.against({1: 0.02, 8: 0.04}).per_request_s == 0.0


async def test_a_serving_worker_publishes_its_executions(worker_client: Client) -> None:
    for _ in range(20):  # one at a time: batches of one
        resp = await worker_client.post("/v2/models/demo-xs/infer", json=sample_body())
        assert resp.status == 200
    await asyncio.sleep(0)
    read = parse_served(await (await worker_client.get("/metrics")).text(), model="demo-xs")
    assert 1 in read
    samples, (p50, p90, p99) = read[1]
    assert samples >= 16
    assert 0 < p50 <= p90 <= p99 < 1.0


def test_the_served_command_prints_the_block_to_paste(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics = WorkerMetrics("m")
    for k in range(1, 21):
        metrics.observe_batch(1, 0.012 + k / 1e5, None)  # 1.2x a profile of 10 ms
    text = generate_latest(metrics.registry)

    class Answer(io.BytesIO):
        def __enter__(self) -> Answer:
            return self

        def __exit__(self, *_: object) -> None:
            self.close()

    asked: list[str] = []

    def urlopen(url: str, timeout: float) -> Answer:
        asked.append(url)
        return Answer(text)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    block = tmp_path / "profile.yaml"
    block.write_text(
        "profiles:\n  - pool: cpu\n    batches:\n"
        "      - {batchSize: 1, p50Ms: 10.0, p90Ms: 11.0, p99Ms: 12.0}\n"
        "      - {batchSize: 4, p50Ms: 20.0, p90Ms: 22.0, p99Ms: 24.0}\n"
    )
    result = CliRunner().invoke(app, ["served", "--url", "http://w:8080/", "--base", str(block)])
    assert result.exit_code == 0, result.output
    assert asked == ["http://w:8080/metrics"]
    assert "# executions behind each served size: 1: 20" in result.output
    block_out = yaml.safe_load(result.output)["profiles"][0]
    assert block_out["pool"] == "cpu"
    one, four = block_out["batches"]
    assert one["batchSize"] == 1
    assert one["p50Ms"] == pytest.approx(12.1)
    # Batch 4 never ran: the profile's, 1.21x as batch 1 was.
    assert four["batchSize"] == 4
    assert four["p50Ms"] == pytest.approx(20.0 * 12.1 / 10.0)
    alone = CliRunner().invoke(app, ["served", "--url", "http://w:8080"])
    assert alone.exit_code == 0
    assert "batchSize: 4" not in alone.output
