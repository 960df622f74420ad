"""Models from files, the profiler, the load generator, and the typer commands."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from aiohttp.test_utils import TestServer
from typer.testing import CliRunner

from accordion.workers.cli import app
from accordion.workers.loadgen import (
    check_loopback,
    poisson_schedule,
    ramp_schedule,
    run_load,
    trace_schedule,
)
from accordion.workers.models import DEMO_FAMILY, ModelRunner, build_demo, load_model
from accordion.workers.profiler import profile_yaml, summarize
from accordion.workers.server import Worker, create_app

from .conftest import worker_config


def test_demo_family_is_deterministic_and_grows() -> None:
    a, b = build_demo("demo-xs"), build_demo("demo-xs")
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    sizes = [sum(p.numel() for p in build_demo(n).parameters()) for n in list(DEMO_FAMILY)[:3]]
    assert sizes == sorted(sizes)
    with pytest.raises(ValueError, match="unknown builtin"):
        load_model("builtin:nope")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("kind", ["torchscript", "export"])
def test_load_model_files(tmp_path: Path, kind: str) -> None:
    module = build_demo("demo-xs")
    x = torch.randn(2, 256)
    if kind == "torchscript":
        path = tmp_path / "m.pt"
        torch.jit.save(torch.jit.trace(module, x), str(path))  # type: ignore[no-untyped-call]
    else:
        path = tmp_path / "m.pt2"
        batch = torch.export.Dim("batch", min=1, max=64)
        torch.export.save(torch.export.export(module, (x,), dynamic_shapes=({0: batch},)), path)
    loaded = load_model(str(path), [256])
    runner = ModelRunner(loaded)
    try:
        out, latency_s = runner.run_sync(x.numpy())
        assert latency_s > 0
        with torch.inference_mode():
            np.testing.assert_allclose(
                np.asarray(out, dtype=np.float32), module(x).numpy(), rtol=1e-4, atol=1e-5
            )
    finally:
        runner.close()
    if kind == "export":  # a torch.export file records one sample's shape
        assert load_model(str(path)).input_shape == (256,)
    else:
        with pytest.raises(ValueError, match="input_shape"):
            load_model(str(path))
    with pytest.raises(FileNotFoundError):
        load_model(str(tmp_path / "missing.pt"), [256])


def test_profile_block_format() -> None:
    p = summarize(4, [0.001, 0.002, 0.003])
    assert p.p50_ms <= p.p90_ms <= p.p99_ms
    text = profile_yaml([p], "cpu")
    assert text.startswith("profiles:\n  - pool: cpu\n    batches:\n      - {batchSize: 4, p50Ms:")


def test_profile_command() -> None:
    result = CliRunner().invoke(
        app, ["profile", "--model", "builtin:demo-xs", "--batch-sizes", "1,4", "--repeats", "5"]
    )
    assert result.exit_code == 0, result.output
    assert "{batchSize: 1, p50Ms:" in result.output
    assert "{batchSize: 4, p50Ms:" in result.output
    bad = CliRunner().invoke(app, ["profile", "--model", "builtin:demo-xs", "--batch-sizes", "a"])
    assert bad.exit_code != 0


def test_profile_batch_sizes_take_ranges() -> None:
    """``--batch-sizes 1-3,6``: every size of a range, once each, in order; a range that goes
    down or a size below 1 is refused with the part named."""
    result = CliRunner().invoke(
        app,
        ["profile", "--model", "builtin:demo-xs", "--batch-sizes", "2-3,1,6,3", "--repeats", "3"],
    )
    assert result.exit_code == 0, result.output
    sizes = [int(x.split(",")[0]) for x in result.output.split("{batchSize: ")[1:]]
    assert sizes == [1, 2, 3, 6]
    for bad, part in (("4-2", "'4-2'"), ("0-3", "'0-3'"), ("1-x", "'1-x'"), (",", "no batch")):
        refused = CliRunner().invoke(
            app, ["profile", "--model", "builtin:demo-xs", "--batch-sizes", bad]
        )
        assert refused.exit_code == 2, (bad, refused.output)
        assert part in refused.output, (bad, refused.output)


def test_schedules() -> None:
    s = poisson_schedule(1000.0, 2.0, seed=1)
    assert 1800 < len(s) < 2200
    assert s == sorted(s)
    r = ramp_schedule(0.0, 1000.0, 2.0, seed=1)
    first, second = sum(t < 1.0 for t in r), sum(t >= 1.0 for t in r)
    assert second > 2 * first


def test_trace_schedule(tmp_path: Path) -> None:
    path = tmp_path / "trace.txt"
    path.write_text("# offsets\n10.5\n10.0\n11\n")
    assert trace_schedule(path) == [0.0, 0.5, 1.0]


def test_only_loopback_targets() -> None:
    check_loopback("http://127.0.0.1:8080")
    check_loopback("http://localhost:1")
    check_loopback("http://[::1]:80")
    with pytest.raises(ValueError, match="loopback"):
        check_loopback("http://10.0.0.1:8080")
    with pytest.raises(ValueError, match="loopback"):
        check_loopback("http://example.com")
    result = CliRunner().invoke(
        app, ["load", "--url", "http://example.com", "--model", "m", "--rate", "1"]
    )
    assert result.exit_code != 0


async def test_load_generator_against_a_worker() -> None:
    async with TestServer(create_app(Worker(worker_config(), warm_up=False))) as server:
        url = str(server.make_url("")).rstrip("/")
        report = await run_load(url, "demo-xs", poisson_schedule(200.0, 1.0), slo_ms=1000.0)
    assert report.sent > 100
    assert report.failed == 0
    assert report.attainment > 0.95
    summary = report.summary()
    assert summary["p50_ms"] <= summary["p99_ms"]
    assert summary["goodput_qps"] > 100


async def test_the_load_generator_records_when_requests_actually_left() -> None:
    """An open-loop generator that falls behind (here: its event loop blocked for 0.2 s by the
    first request's arrival) sends late; the report says when each request left, the arrivals
    the server saw, not the schedule."""
    import asyncio
    import time

    from aiohttp import web

    first = asyncio.Event()

    async def infer(request: web.Request) -> web.Response:
        first.set()
        return web.json_response({"outputs": []})

    async def block_the_loop() -> None:
        await first.wait()
        time.sleep(0.2)  # noqa: ASYNC251 - the point: a busy generator

    app = web.Application()
    app.router.add_post("/v2/models/m/infer", infer)
    schedule = [0.0, 0.05, 0.055, 0.06, 0.3]
    async with TestServer(app) as server:
        url = str(server.make_url("")).rstrip("/")
        blocker = asyncio.create_task(block_the_loop())
        report = await run_load(url, "m", schedule, slo_ms=1000.0, body=b"{}")
        await blocker
    assert report.failed == 0
    assert report.scheduled_s == schedule
    late = [s - t for s, t in zip(report.sent_at_s, schedule, strict=True)]
    assert min(late) > -1e-3  # never before its time
    assert max(late[1:4]) > 0.1  # those due while the loop was blocked left after it
    assert report.lateness_ms(100) == pytest.approx(max(late) * 1000.0)
    assert report.summary()["send_late_p99_ms"] > 0.0


async def test_the_load_generator_says_why_requests_failed() -> None:
    """Failed answers are counted by reason: a v2 error body's `error` with its numbers as #
    (two sheds with different deadlines are one reason), else the status."""
    from aiohttp import web

    answers = iter(
        [
            web.json_response(
                {"error": "shed: backlog cannot be served within the 42 ms left"}, status=503
            ),
            web.json_response(
                {"error": "shed: backlog cannot be served within the 7.5 ms left"}, status=503
            ),
            web.Response(status=500, text="boom"),
            web.json_response({"outputs": []}),
        ]
    )

    async def infer(request: web.Request) -> web.Response:
        return next(answers)

    app = web.Application()
    app.router.add_post("/v2/models/m/infer", infer)
    async with TestServer(app) as server:
        url = str(server.make_url("")).rstrip("/")
        report = await run_load(url, "m", [0.0, 0.01, 0.02, 0.03], slo_ms=1000.0, body=b"{}")
    assert report.failed == 3
    assert report.errors == {
        "503: shed: backlog cannot be served within the # ms left": 2,
        "HTTP 500": 1,
    }
