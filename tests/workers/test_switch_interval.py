"""The worker process's thread switch interval (`WorkerConfig.switch_interval_ms`): `serve`
sets it before the server starts, so the HTTP thread's Python cannot hold the model thread
back for Python's default 5 ms between kernels (`accordion.workers.config.SWITCH_INTERVAL_MS`
says what it buys)."""

from __future__ import annotations

import sys

import pytest
from aiohttp import web
from pydantic import ValidationError

from accordion.workers import server
from accordion.workers.config import SWITCH_INTERVAL_MS, WorkerConfig


@pytest.fixture
def restore_interval() -> object:
    before = sys.getswitchinterval()
    yield
    sys.setswitchinterval(before)


@pytest.mark.parametrize("interval_ms", [None, 0.05, 2.0])
def test_serve_sets_the_interval_before_the_server_runs(
    monkeypatch: pytest.MonkeyPatch, restore_interval: object, interval_ms: float | None
) -> None:
    seen: list[float] = []
    monkeypatch.setattr(web, "run_app", lambda *a, **k: seen.append(sys.getswitchinterval()))
    sys.setswitchinterval(0.005)
    extra = {} if interval_ms is None else {"switch_interval_ms": interval_ms}
    config = WorkerConfig(model_name="m", model="builtin:demo-xs", **extra)
    server.serve(config)
    expected = (SWITCH_INTERVAL_MS if interval_ms is None else interval_ms) / 1000.0
    assert seen == [pytest.approx(expected)]


@pytest.mark.parametrize("bad", [0, -1, 1000])
def test_a_switch_interval_out_of_range_is_refused(bad: float) -> None:
    with pytest.raises(ValidationError, match="switch_interval_ms"):
        WorkerConfig(model_name="m", model="builtin:demo-xs", switch_interval_ms=bad)
