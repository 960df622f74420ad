"""The step runner: carries a decision's steps out through an `Actuator`, make before break.

Every service's make steps go first (one wave: new and grown worker groups are the slowest to
take effect, pods must start), then the rest of each service's steps in the decision's order,
then every service's status steps (statuses and events: a wave of re-planned services changes
its routing and workers first, and reports after; at 1,000 services a pool change writes about
140 of each, which the API server takes a second to write).
A failed step of a service (a worker that could not be created) holds back every break step of
that service, so traffic never loses its old backends for a new one that does not exist; other
services go on. `concurrency` bounds how many services are worked on at once (an API server
takes many requests in flight; a process actuator may want 1).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from accordion.operator.control.steps import Actuator, Step

log = logging.getLogger(__name__)


async def run_steps(
    steps: Sequence[Step], actuator: Actuator, concurrency: int = 1
) -> tuple[list[Step], list[tuple[Step, BaseException]]]:
    """Apply `steps`; return the steps applied and the steps that failed (with why)."""
    applied: list[Step] = []
    failed: list[tuple[Step, BaseException]] = []
    groups: dict[str, list[Step]] = {}
    for step in steps:
        groups.setdefault(step.service, []).append(step)
    makes: dict[str, list[Step]] = {}
    rests: dict[str, list[Step]] = {}
    reports: dict[str, list[Step]] = {}
    for svc, svc_steps in groups.items():
        n = 0
        while n < len(svc_steps) and svc_steps[n].phase == "make":
            n += 1
        if n:
            makes[svc] = svc_steps[:n]
        rest = [s for s in svc_steps[n:] if s.phase != "status"]
        if rest:
            rests[svc] = rest
        report = [s for s in svc_steps[n:] if s.phase == "status"]
        if report:
            reports[svc] = report
    blocked: set[str] = set()
    gate = asyncio.Semaphore(max(1, concurrency))

    async def run(svc: str, svc_steps: list[Step]) -> None:
        async with gate:
            for step in svc_steps:
                if step.phase == "break" and svc in blocked:
                    continue
                try:
                    await actuator.apply(step)
                except Exception as exc:
                    log.warning("step %s failed: %s", type(step).__name__, exc)
                    failed.append((step, exc))
                    blocked.add(svc)
                    continue
                applied.append(step)

    for wave in (makes, rests, reports):
        if concurrency <= 1:
            for svc, svc_steps in wave.items():
                await run(svc, svc_steps)
        else:
            await asyncio.gather(*(run(svc, s) for svc, s in wave.items()))
    return applied, failed
