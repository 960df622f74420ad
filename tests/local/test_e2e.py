"""`accordion up` end to end: real worker processes, real torch models, the real planner.

A shortened form of `make demo` (low load, past the capacity of the most accurate variant,
back down) and the failure behaviour (a worker killed, `up` killed). Bounded loopback load
only; every wait is on a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from accordion.local.demo import (
    Phase,
    drive,
    read_jsonl,
    read_state,
    stop_up,
    wait_ready,
)
from tests.local.conftest import UpFactory


def wait_for(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def pids(state: dict[str, Any]) -> list[int]:
    out = [int(r["pid"]) for r in state.get("routers", {}).values() if r.get("pid")]
    return out + [p for w in state.get("workers", []) for p in w["pids"]]


def test_accuracy_scales_down_past_capacity_and_back_up(
    manifests: Callable[..., Path], up: UpFactory
) -> None:
    proc, run_dir = up(manifests(), "--interval-s", "0.5", "--fall-half-life-s", "2")
    url, model = wait_ready(proc, run_dir, timeout_s=60)
    phases = [
        Phase("low", 4.0, 8.0, 8.0),
        Phase("ramp up", 16.0, 8.0, 60.0),  # demo-xl is planned for 50 req/s: past its capacity
        Phase("high", 6.0, 60.0, 60.0),
        Phase("low again", 14.0, 8.0, 8.0),
    ]
    reports = asyncio.run(drive(url, model, phases, slo_ms=100.0))
    state = read_state(run_dir)
    leftover = stop_up(proc, run_dir, signal.SIGINT)  # Ctrl-C
    assert proc.returncode == 0
    assert leftover == []

    timeline = read_jsonl(run_dir / "timeline.jsonl")
    used = {b for s in timeline for b, n in s["replicas"].items() if n}
    assert used == {"demo-xl@local-cpu", "demo-m@local-cpu"}
    accuracies = [s["planned_accuracy"] for s in timeline if s["planned_accuracy"] is not None]
    assert accuracies[0] == 84
    assert min(accuracies) == 79
    assert accuracies[-1] == 84, "accuracy must climb back when the load falls"
    # The served mix followed: the smaller variant answered during the peak.
    served = [s["served_accuracy"] for s in timeline if s["served_accuracy"] is not None]
    assert min(served) < 80
    status = state["status"]["default/classifier"]
    assert status["effectiveAccuracy"] == 84
    events = [e["reason"] for e in read_jsonl(run_dir / "events.jsonl")]
    assert "AccuracyScaledDown" in events
    assert "AccuracyScaledUp" in events

    by_phase = {r["phase"]: r for r in reports}
    # Past the large variant's capacity, the small one serves the peak within the SLO. (The
    # ramp itself may shed while the new worker starts: a worker needs seconds to load, more
    # on a busy machine; `make demo` reports the whole run's attainment.)
    assert by_phase["high"]["attainment"] >= 0.97, reports
    assert by_phase["low again"]["attainment"] >= 0.9, reports


def test_dead_worker_is_noticed_rerouted_and_replaced(
    manifests: Callable[..., Path], up: UpFactory
) -> None:
    # 30 req/s planned with 100% headroom is past one demo-xl replica: two share a port.
    proc, run_dir = up(manifests(devices=2, qps=30), "--interval-s", "0.5")
    url, model = wait_ready(proc, run_dir, timeout_s=60)

    def xl() -> dict[str, Any]:
        workers = read_state(run_dir).get("workers", [])
        return next((w for w in workers if w["backend"] == "demo-xl@local-cpu"), {})

    wait_for(lambda: xl().get("ready") == 2, 60, "two ready demo-xl replicas")
    victim = xl()["pids"][0]

    async def load_while_killing() -> list[dict[str, Any]]:
        task = asyncio.create_task(drive(url, model, [Phase("steady", 12.0, 8, 8)], 100.0))
        await asyncio.sleep(2.0)  # let the load run before the failure (load, not a wait)
        os.kill(victim, signal.SIGKILL)
        return await task

    reports = asyncio.run(load_while_killing())
    wait_for(
        lambda: xl().get("ready") == 2 and victim not in xl().get("pids", []),
        60,
        "the killed replica to be replaced",
    )
    events = read_jsonl(run_dir / "events.jsonl")
    died = [e for e in events if e["reason"] == "WorkerDied"]
    assert died, events
    assert str(victim) in died[0]["message"]
    # The surviving replica kept serving: at most the requests in flight on the victim failed.
    assert reports[0]["within_slo"] / reports[0]["sent"] >= 0.85, reports

    # `up` killed without a chance to clean up: its children go with it.
    children = pids(read_state(run_dir))
    assert children
    proc.kill()
    proc.wait(timeout=10)
    wait_for(lambda: not any(alive(p) for p in children), 20, "every child to exit")
