"""What the batching model costs the planner (bench/solver's problems, with burstiness).

bench/solver's problems carry no burstiness, so its timings are unchanged by construction (the
planner keeps the margin); this measures the same problems with every service's burstiness
set: the first plan builds each (profile, batch cap, SLO) table once, later plans (the loop
re-plans every few seconds) find them cached. Prints a markdown table.

    flock /tmp/accordion-heavy.lock .venv/bin/python bench/serverless/planner_cost.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from accordion.solver import Burstiness, Problem, plan
from accordion.solver.queueing import _attainment_table
from bench.solver import problems

CASES = ((10, 9), (100, 90), (1000, 900))


def with_burstiness(problem: Problem, dispersion: float) -> Problem:
    services = [
        s.model_copy(
            update={"burstiness": Burstiness(dispersion=dispersion, rate_qps=max(s.demand_qps, 1))}
        )
        for s in problem.services
    ]
    return problem.model_copy(update={"services": services})


def main() -> None:
    print("| devices/pool | services | margin plan (s) | model, first plan (s) | model, next (s) |")
    print("|---:|---:|---:|---:|---:|")
    for devices, services in CASES:
        base = problems.build(devices, services, 1.0)
        started = time.perf_counter()
        plan(base)
        margin = time.perf_counter() - started
        _attainment_table.cache_clear()
        bursty = with_burstiness(base, 2.0)
        started = time.perf_counter()
        plan(bursty)
        first = time.perf_counter() - started
        started = time.perf_counter()
        plan(with_burstiness(base, 2.5))
        again = time.perf_counter() - started
        print(f"| {devices} | {services} | {margin:.2f} | {first:.2f} | {again:.2f} |", flush=True)


if __name__ == "__main__":
    main()
