"""Proteus's allocator (ASPLOS'24, algorithms/ilp.py), re-implemented in OR-Tools as the baseline.

One binary x[i, j] per device i and variant j (device i hosts j), a routing share z[i, k] of
family k's demand per device, the served rate y[i] per device and the accuracy-weighted served
rate w[k] per family; see /work/shared/notes/planner-baseline-and-scale.md. Gurobi solved the
bilinear z[i, k] * x[i, j] terms as a non-convex MIQP; with x binary and z in [0, 1] the exact
linearization is McCormick's: q[i, j] = z[i, k(j)] * x[i, j] with q <= x, q <= z,
q >= z - (1 - x). Only j of family k appear with z[i, k] (b_jk = 1), so q is indexed by (i, j).
Solved with SCIP, relative MIP gap 0.5 as in the artifact, and its beta back-off: start at 1.05,
on infeasibility lower beta by 0.1 above 1.5 and by 0.05 below, down to 0.2.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from ortools.linear_solver import pywraplp

from accordion.solver import Problem


@dataclass(frozen=True)
class ProteusResult:
    """Replicas per (service, variant, pool), as the per-device solution aggregates."""

    replicas: dict[tuple[str, str, str], int]
    beta: float
    objective: float
    solve_time_s: float
    status: str
    hit_time_limit: bool


def throughput(problem: Problem, service: int, variant: int, pool: str) -> int:
    """Proteus's p_ij = floor(B * 1000 / latency_ms(B)), B the largest batch with p50 < SLO/2."""
    svc = problem.services[service]
    points = svc.variants[variant].profiles.get(pool, [])
    fits = [p for p in points if p.p50_s < svc.slo_s / 2]
    if not fits:
        return 0
    best = max(fits, key=lambda p: p.batch_size)
    return math.floor(best.batch_size * 1000 / (best.p50_s * 1000))


def solve(problem: Problem, time_limit_s: float = 60.0, backend: str = "SCIP") -> ProteusResult:
    """Proteus's allocation with beta back-off; `backend` is SCIP or CP_SAT (2 workers)."""
    started = time.perf_counter()
    deadline = started + time_limit_s
    devices = [pool.name for pool in problem.pools for _ in range(pool.devices)]
    variants = [(k, j) for k, svc in enumerate(problem.services) for j in range(len(svc.variants))]
    p = {
        (i, v): throughput(problem, variants[v][0], variants[v][1], devices[i])
        for i in range(len(devices))
        for v in range(len(variants))
    }
    beta = 1.05
    status = "INFEASIBLE"
    while beta >= 0.2 - 1e-9:
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            break
        outcome = _solve_once(problem, devices, variants, p, beta, remaining, backend)
        if outcome is not None:
            x, objective, status = outcome
            replicas: dict[tuple[str, str, str], int] = {}
            for i, v in x:
                k, j = variants[v]
                key = (problem.services[k].name, problem.services[k].variants[j].name, devices[i])
                replicas[key] = replicas.get(key, 0) + 1
            elapsed = time.perf_counter() - started
            return ProteusResult(
                replicas, beta, objective, elapsed, status, elapsed >= time_limit_s * 0.99
            )
        beta = round(beta - (0.1 if beta > 1.5 else 0.05), 4)
    elapsed = time.perf_counter() - started
    return ProteusResult({}, beta, 0.0, elapsed, "NO_SOLUTION", elapsed >= time_limit_s * 0.99)


def _solve_once(
    problem: Problem,
    devices: list[str],
    variants: list[tuple[int, int]],
    p: dict[tuple[int, int], int],
    beta: float,
    time_limit_s: float,
    backend: str,
) -> tuple[list[tuple[int, int]], float, str] | None:
    solver = pywraplp.Solver.CreateSolver(backend)
    if backend == "CP_SAT":
        solver.SetSolverSpecificParametersAsString("num_workers: 2")
    families = range(len(problem.services))
    s = [svc.demand_qps for svc in problem.services]
    total = sum(s) or 1.0
    acc = [problem.services[k].variants[j].accuracy for k, j in variants]
    runnable = [(i, v) for (i, v), tp in p.items() if tp > 0]
    x = {(i, v): solver.BoolVar(f"x{i}_{v}") for i, v in runnable}
    q = {(i, v): solver.NumVar(0, 1, f"q{i}_{v}") for i, v in runnable}
    z = {(i, k): solver.NumVar(0, 1, f"z{i}_{k}") for i in range(len(devices)) for k in families}
    y = [solver.NumVar(0, solver.infinity(), f"y{i}") for i in range(len(devices))]
    w = [solver.NumVar(0, solver.infinity(), f"w{k}") for k in families]
    on_device: dict[int, list[int]] = {}
    for i, v in runnable:
        on_device.setdefault(i, []).append(v)
        k = variants[v][0]
        # McCormick: q = z * x exactly, x binary and z in [0, 1].
        solver.Add(q[i, v] <= x[i, v])
        solver.Add(q[i, v] <= z[i, k])
        solver.Add(q[i, v] >= z[i, k] - (1 - x[i, v]))
    solver.Add(solver.Sum(y) >= beta * total)
    for k in families:
        mine = [(i, v) for i, v in runnable if variants[v][0] == k]
        solver.Add(w[k] <= solver.Sum([s[k] * acc[v] * q[i, v] for i, v in mine]))
        solver.Add(
            solver.Sum([q[i, v] for i, v in mine])
            == solver.Sum([z[i, k] for i in range(len(devices))])
        )
        solver.Add(solver.Sum([z[i, k] for i in range(len(devices))]) == 1)
    for i in range(len(devices)):
        vs = on_device.get(i, [])
        solver.Add(solver.Sum([x[i, v] for v in vs]) == 1)
        solver.Add(solver.Sum([q[i, v] for v in vs]) == solver.Sum([z[i, k] for k in families]))
        solver.Add(y[i] <= solver.Sum([p[i, v] * x[i, v] for v in vs]))
        solver.Add(y[i] <= beta * solver.Sum([z[i, k] * s[k] for k in families]))
    solver.Maximize(solver.Sum(w) * (1 / total / 100))
    solver.SetTimeLimit(max(1, int(time_limit_s * 1000)))
    params = pywraplp.MPSolverParameters()
    params.SetDoubleParam(params.RELATIVE_MIP_GAP, 0.5)
    status = solver.Solve(params)
    if status not in (pywraplp.Solver.OPTIMAL, pywraplp.Solver.FEASIBLE):
        return None
    chosen = [(i, v) for (i, v), var in x.items() if var.solution_value() > 0.5]
    name = "OPTIMAL" if status == pywraplp.Solver.OPTIMAL else "FEASIBLE"
    return chosen, solver.Objective().Value(), name
