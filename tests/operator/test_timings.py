"""The operator's timings come from its configuration (one set of defaults with local mode and
the simulator), read when the driver runs, not when the module is imported."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from kubernetes import client as k8s

from accordion.operator.config import OperatorConfig
from accordion.operator.control.loop import ReconcileResult
from accordion.operator.control.timing import DEFAULT_TIMINGS
from accordion.operator.handlers import Driver


def test_the_configuration_defaults_are_the_shared_timings() -> None:
    timings = OperatorConfig().timings()
    assert timings.rise_half_life_s == DEFAULT_TIMINGS.rise_half_life_s
    assert timings.fall_half_life_s == DEFAULT_TIMINGS.fall_half_life_s
    assert timings.resync_interval_s == DEFAULT_TIMINGS.resync_interval_s
    assert timings.hysteresis == DEFAULT_TIMINGS.hysteresis
    config = OperatorConfig.load({"ACCORDION_RESYNC_INTERVAL_S": "7"})
    assert config.timings().resync_interval_s == 7.0


async def passes_in(resync_s: float, seconds: float) -> int:
    config = OperatorConfig(watch_nodes=False, resync_interval_s=resync_s, debounce_s=0.0)
    driver = Driver(config=config, api_client=k8s.ApiClient())
    count = 0

    async def reconcile_once() -> ReconcileResult:
        nonlocal count
        count += 1
        raise RuntimeError("not a real pass")  # the loop logs it and goes on

    driver.reconcile_once = reconcile_once  # type: ignore[method-assign]
    task = asyncio.create_task(driver.run())
    await asyncio.sleep(seconds)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return count


@pytest.mark.timeout(30)
async def test_resync_interval_is_read_from_the_configuration() -> None:
    # A failed pass asks for a retry after 1 s; nothing else wakes the driver here.
    assert await passes_in(0.2, 1.5) >= 2
    assert await passes_in(30.0, 1.5) == 0
