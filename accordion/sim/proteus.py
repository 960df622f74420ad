"""Proteus (ASPLOS'24) re-implemented for the simulator: its allocator and its batcher.

Allocator, as its artifact builds it (algorithms/ilp.py; see the note in shared/notes): one
variant per device, the share of each family's demand routed to each device, maximize the
demand-weighted accuracy of the *routed* load, subject to the served rate being at least beta
times the demand; beta starts at 1.05 and backs off (by 0.1 above 1.5, else 0.05, down to 0.2)
while the model is infeasible. Throughput of a variant on a device is floor(B * 1000 / L_ms(B))
for the largest batch B whose p50 latency is under SLO / 2. Devices with no routed load are then
upgraded to the most accurate variant that fits. Devices of one type are interchangeable, so the
per-device binaries x_ij are aggregated into integer counts per (variant, device type) and the
bilinear z_ik * x_ij into a routed rate per (variant, device type): the same optimum, solved
exactly by a MILP (SCIP through OR-Tools) instead of Gurobi's non-convex MIQP.

Batcher ("wait until the head request's last moment"): FIFO; when the device is free, requests
that cannot make their deadline even alone are dropped; a full batch goes at once; otherwise it
waits until the head request's deadline minus the predicted (p50) latency of the batch it would
send. Late responses are possible when execution is slower than the p50 it plans with.
"""

from __future__ import annotations

import math
import time
from collections import deque

from ortools.linear_solver import pywraplp

from accordion.sim.policy import ControlPolicy, Target, TargetRow, profile_s
from accordion.sim.workload import Family
from accordion.solver import Allocation, VariantSpec
from accordion.workers.batching import BatchingPolicy, Decision, Dropped, Request


class ProteusBatcher(BatchingPolicy):
    """Proteus's batching: wait until the head request's last moment; drop the hopeless."""

    name = "proteus"

    def __init__(self, max_batch_size: int, profile_s: dict[int, float]) -> None:
        super().__init__(max_batch_size)
        self._profile = sorted(profile_s.items())
        self._queue: deque[Request] = deque()

    def latency_s(self, batch_size: int) -> float:
        """Profiled latency of the smallest profiled batch that holds `batch_size`."""
        for b, lat in self._profile:
            if b >= batch_size:
                return lat
        b, lat = self._profile[-1]
        return lat * batch_size / b

    def predicted_latency_s(self, batch_size: int) -> float:
        return self.latency_s(batch_size)

    def enqueue(self, request: Request, now_s: float) -> None:
        self._queue.append(request)

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def decide(self, now_s: float) -> Decision:
        if self.busy:
            return Decision()
        dropped = []
        single = self.latency_s(1)
        while self._queue and now_s + single > self._queue[0].deadline_s + 1e-12:
            dropped.append(Dropped(self._queue.popleft(), "head cannot make its deadline"))
        if not self._queue:
            return Decision(dropped=tuple(dropped))
        n = min(len(self._queue), self.max_batch_size)
        last_moment = self._queue[0].deadline_s - self.latency_s(n)
        if n < self.max_batch_size and now_s < last_moment - 1e-12:
            return Decision(dropped=tuple(dropped), wake_at_s=last_moment)
        # The batch: as many as fit before the head's deadline (at least the head).
        while n > 1 and now_s + self.latency_s(n) > self._queue[0].deadline_s:
            n -= 1
        batch = tuple(self._queue.popleft() for _ in range(n))
        self._start(batch)
        return Decision(batch=batch, dropped=tuple(dropped), predicted_latency_s=self.latency_s(n))


def proteus_throughput(points: dict[int, float], slo_s: float) -> tuple[int, int] | None:
    """(B, floor(B * 1000 / L_ms(B))) for the largest batch B with L(B) < SLO / 2, or None."""
    best = None
    for b, lat in sorted(points.items()):
        if lat < slo_s / 2:
            best = (b, math.floor(b * 1000.0 / (lat * 1000.0)))
    return best


class Proteus(ControlPolicy):
    """Proteus's allocation, beta back-off, idle-device upgrade and batching."""

    name = "proteus"

    def __init__(
        self,
        *,
        replan_interval_s: float = 10.0,
        time_limit_s: float = 10.0,
        relative_gap: float = 0.01,
    ) -> None:
        self.replan_interval_s = replan_interval_s
        self.time_limit_s = time_limit_s
        self.relative_gap = relative_gap
        self.last_beta = 0.0

    def _options(self) -> list[tuple[str, str, str, int, int, float]]:
        """(family, variant, pool, B, throughput, accuracy), planned at p50 as the artifact."""
        out = []
        for fam in self.view.cluster.families:
            for v in fam.variants:
                for pool in sorted(v.profiles):
                    fit = proteus_throughput(profile_s(v, pool, "p50"), fam.slo_s)
                    if fit is not None and fit[1] > 0:
                        out.append((fam.name, v.name, pool, fit[0], fit[1], v.accuracy))
        return out

    def solve(self, demand_qps: dict[str, float], beta: float) -> list[tuple[int, float]] | None:
        """Devices and routed rate per option for one beta, or None when infeasible."""
        opts = self._options()
        devices = {p.name: p.devices for p in self.view.cluster.pools}
        solver = pywraplp.Solver.CreateSolver("SCIP")
        if solver is None:
            raise RuntimeError("OR-Tools has no SCIP backend")
        total = sum(max(0.0, demand_qps.get(f.name, 0.0)) for f in self.view.cluster.families)
        n = [solver.IntVar(0, devices[o[2]], f"n{k}") for k, o in enumerate(opts)]
        q = [solver.NumVar(0, solver.infinity(), f"q{k}") for k in range(len(opts))]
        y = [solver.NumVar(0, solver.infinity(), f"y{k}") for k in range(len(opts))]
        for pool, count in devices.items():
            ns = [n[k] for k, o in enumerate(opts) if o[2] == pool]
            if ns:
                # Every device hosts one variant (idle ones are upgraded afterwards).
                solver.Add(solver.Sum(ns) <= count)
        for fam in self.view.cluster.families:
            s_k = max(0.0, demand_qps.get(fam.name, 0.0))
            qs = [q[k] for k, o in enumerate(opts) if o[0] == fam.name]
            if qs:
                solver.Add(solver.Sum(qs) == s_k)  # all of a family's demand is routed
        for k, o in enumerate(opts):
            big = max(1.0, total)
            solver.Add(q[k] <= big * n[k])  # route only to devices hosting the variant
            solver.Add(y[k] <= o[4] * n[k])
            solver.Add(y[k] <= beta * q[k])
        if total > 0:
            solver.Add(solver.Sum(y) >= beta * total)
        solver.Maximize(solver.Sum([o[5] * q[k] for k, o in enumerate(opts)]))
        solver.SetTimeLimit(int(self.time_limit_s * 1000))
        params = pywraplp.MPSolverParameters()
        params.SetDoubleParam(params.RELATIVE_MIP_GAP, self.relative_gap)
        status = solver.Solve(params)
        if status not in (pywraplp.Solver.OPTIMAL, pywraplp.Solver.FEASIBLE):
            return None
        return [
            (round(n[k].solution_value()), max(0.0, q[k].solution_value()))
            for k in range(len(opts))
        ]

    def target(
        self, now_s: float, demand_qps: dict[str, float], current: list[Allocation]
    ) -> Target:
        started = time.perf_counter()
        opts = self._options()
        beta = 1.05
        solution = None
        while beta >= 0.2 - 1e-9:
            solution = self.solve(demand_qps, beta)
            if solution is not None:
                break
            beta -= 0.1 if beta > 1.5 else 0.05
        self.last_beta = beta
        devices = {p.name: p.devices for p in self.view.cluster.pools}
        rows: dict[tuple[str, str, str], list[float]] = {}
        used = dict.fromkeys(devices, 0)
        if solution is not None:
            for k, (count, routed) in enumerate(solution):
                fam, var, pool, _, _, _ = opts[k]
                if count <= 0:
                    continue
                used[pool] += count
                if routed <= 1e-9:
                    # Hosts no routed load: upgraded below with the other idle devices.
                    used[pool] -= count
                    continue
                rows[(fam, var, pool)] = [float(count), routed]
        # Idle devices: the most accurate feasible variant (of the family that has the least
        # capacity relative to demand on that pool type), with no routed load until re-solve.
        for pool, count in sorted(devices.items()):
            idle = count - used[pool]
            fams = [o for o in opts if o[2] == pool]
            for i in range(idle):
                if not fams:
                    break
                names = sorted({o[0] for o in fams})
                fam = names[i % len(names)]
                best = max((o for o in fams if o[0] == fam), key=lambda o: (o[5], o[1]))
                key = (fam, best[1], pool)
                row = rows.setdefault(key, [0.0, 0.0])
                row[0] += 1
        info = {(o[0], o[1], o[2]): o for o in opts}
        out = [
            TargetRow(
                service=fam,
                variant=var,
                pool=pool,
                replicas=int(count),
                max_batch_size=info[(fam, var, pool)][3],
                routed_qps=routed,
                capacity_qps_per_replica=float(info[(fam, var, pool)][4]),
            )
            for (fam, var, pool), (count, routed) in sorted(rows.items())
        ]
        return Target(rows=out, planner_time_s=time.perf_counter() - started)

    def batcher(
        self, family: Family, variant: VariantSpec, pool: str, max_batch_size: int
    ) -> BatchingPolicy:
        return ProteusBatcher(max_batch_size, profile_s(variant, pool, "p50"))
