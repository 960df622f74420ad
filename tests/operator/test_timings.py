"""The operator's timings come from its configuration (one set of defaults with local mode and
the simulator), read when the driver runs, not when the module is imported."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest
from kubernetes import client as k8s

from accordion.operator.config import OperatorConfig
from accordion.operator.control.loop import ReconcileResult
from accordion.operator.control.timing import DEFAULT_TIMINGS
from accordion.operator.handlers import Driver
from accordion.operator.prometheus import PrometheusDemand


def test_the_configuration_defaults_are_the_shared_timings() -> None:
    # Every one: half-lives, passes, debounce, drain, band, payback (the simulator's figures
    # describe the operator as installed; the chart renders these, tests/chart/test_render.py).
    assert OperatorConfig().timings() == DEFAULT_TIMINGS
    config = OperatorConfig.load({"ACCORDION_RESYNC_INTERVAL_S": "7"})
    assert config.timings().resync_interval_s == 7.0


def test_the_prometheus_reader_defaults_are_the_shared_timings() -> None:
    # Built without the configuration (as a test or a script would), the reader smooths demand
    # as the loop does, not on half-lives of its own.
    reader = PrometheusDemand(url="http://prometheus:9090", query_template="up")
    assert reader.tracker.rise_half_life_s == DEFAULT_TIMINGS.rise_half_life_s
    assert reader.tracker.fall_half_life_s == DEFAULT_TIMINGS.fall_half_life_s


@contextlib.asynccontextmanager
async def running(
    driver: Driver, reconcile_once: Callable[[], Coroutine[Any, Any, ReconcileResult]]
) -> AsyncIterator[None]:
    """The driver's loop in a task, with `reconcile_once` standing in for a pass."""
    driver.reconcile_once = reconcile_once  # type: ignore[method-assign]
    task = asyncio.create_task(driver.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def passes_in(resync_s: float, seconds: float) -> int:
    config = OperatorConfig(watch_nodes=False, resync_interval_s=resync_s, debounce_s=0.0)
    driver = Driver(config=config, api_client=k8s.ApiClient())
    count = 0

    async def reconcile_once() -> ReconcileResult:
        nonlocal count
        count += 1
        raise RuntimeError("not a real pass")  # the loop logs it and goes on

    async with running(driver, reconcile_once):
        await asyncio.sleep(seconds)
    return count


@pytest.mark.timeout(30)
async def test_resync_interval_is_read_from_the_configuration() -> None:
    # A failed pass asks for a retry after 1 s; nothing else wakes the driver here.
    assert await passes_in(0.2, 1.5) >= 2
    assert await passes_in(30.0, 1.5) == 0


async def pass_delay(wake: str, debounce_s: float, min_pass_s: float) -> list[float]:
    """Seconds from a wake to each pass of a driver (two wakes, the second at the first pass)."""
    config = OperatorConfig(
        watch_nodes=False,
        resync_interval_s=60.0,
        debounce_s=debounce_s,
        min_pass_interval_s=min_pass_s,
    )
    driver = Driver(config=config, api_client=k8s.ApiClient())
    loop = asyncio.get_running_loop()
    woken = loop.time()
    delays: list[float] = []
    done = asyncio.Event()

    def poke() -> None:
        nonlocal woken
        woken = loop.time()
        driver.wake_for_demand() if wake == "demand" else driver.trigger()

    async def reconcile_once() -> ReconcileResult:
        delays.append(loop.time() - woken)
        if len(delays) == 1:
            poke()  # a second reading out of band right after the first pass
        else:
            done.set()
        raise RuntimeError("not a real pass")

    async with running(driver, reconcile_once):
        await asyncio.sleep(0)
        poke()
        await asyncio.wait_for(done.wait(), 20)
    return delays


@pytest.mark.timeout(60)
async def test_a_demand_pass_waits_for_no_quiet_time_only_for_the_pass_interval() -> None:
    """A pass for demand that left its band is not debounced (a burst of watch events is): it
    runs at once, and the next no sooner than `min_pass_interval_s` after it."""
    first, second = await pass_delay("demand", debounce_s=3.0, min_pass_s=1.0)
    assert first < 1.5  # the debounce would be 3 s
    assert 0.9 <= second < 2.5  # the pass interval, not the debounce
    watch_first, _ = await pass_delay("watch", debounce_s=1.0, min_pass_s=0.0)
    assert watch_first >= 0.9  # watch events still settle for debounce_s


@pytest.mark.timeout(60)
async def test_a_wake_from_zero_does_not_wait_for_the_pass_interval() -> None:
    """Requests held at zero replicas: the pass that starts a replica runs at once, even right
    after another pass."""
    config = OperatorConfig(watch_nodes=False, resync_interval_s=60.0, min_pass_interval_s=5.0)
    driver = Driver(config=config, api_client=k8s.ApiClient())
    loop = asyncio.get_running_loop()
    times: list[float] = []
    second = asyncio.Event()

    async def reconcile_once() -> ReconcileResult:
        times.append(loop.time())
        if len(times) == 1:
            driver.wake_for_demand(waking=True)
        else:
            second.set()
        raise RuntimeError("not a real pass")

    async with running(driver, reconcile_once):
        driver.wake_for_demand()
        await asyncio.wait_for(second.wait(), 20)
    assert times[1] - times[0] < 2.5  # the pass interval would hold it 5 s
