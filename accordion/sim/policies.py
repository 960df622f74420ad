"""Ours and the baselines that share our planner: hardware-only and Clipper-HA/HT, and INFaaS.

* `Accordion` (ours): the product itself. The operator's `ControlLoop` with its default
  timings and planner settings drives the run (`accordion.sim.driver.LoopControl`): the same
  problem building, hysteresis, burst buffer, desired state, make-before-break, routing tables
  and router (`RoutingDecider`) as a cluster runs; every worker runs the worker's batcher.
  Variants of ours switch a product feature off as a user can (the router's fast loop:
  `fast_loop=False`; spare replicas: `burst_buffer=False`, as `spec.demand.burst.policy: Off`).
* `HardwareOnly`: our planner and batcher, but each service keeps one fixed variant (the
  most accurate one that fits the SLO on some pool): hardware scaling without accuracy scaling.
* `Clipper` (HA: most accurate fixed variant; HT: least accurate): Clipper's AIMD batching on
  replicas scaled to demand by the same planner (Clipper itself does not place replicas; giving
  it our allocation makes the baseline stronger, not weaker).
* `InfaasGreedy`: INFaaS's model-less autoscaler: per service, when demand exceeds capacity,
  scale up by the action of least accuracy cost (replicate the current variant on a free
  device: no cost; else switch a replica to a faster variant: the accuracy lost); when capacity
  exceeds demand, first release replicas, then upgrade to more accurate variants while the
  capacity still covers demand. Triton's dynamic batcher in every replica (no deadline drops).

The planner baselines re-plan every `replan_interval_s` (5 s) for the estimate plus a 50%
headroom (a large margin makes them stronger on bursty traces), from the same demand estimator
at the same default timings.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from accordion.operator.control.timing import DEFAULT_TIMINGS, Timings
from accordion.sim.policy import ControlPolicy, SimView, Target, TargetRow, profile_s
from accordion.sim.workload import Family
from accordion.solver import (
    Allocation,
    PlannerSettings,
    Problem,
    ServiceSpec,
    VariantSpec,
)
from accordion.solver.capacity import batch_capacity
from accordion.solver.planner import plan
from accordion.workers.batching import (
    BatchingPolicy,
    ClipperAimd,
    LatencyPredictor,
    SloBatcher,
    TritonDynamicBatcher,
)

if TYPE_CHECKING:
    from accordion.sim.engine import Control, Simulator

_Key = tuple[str, str, str]
_Choice = tuple[float, float, _Key, _Key | None]


def plan_target(
    view: SimView,
    demand_qps: dict[str, float],
    current: list[Allocation],
    settings: PlannerSettings,
    headroom: float,
    variants: dict[str, tuple[VariantSpec, ...]] | None = None,
) -> Target:
    """Run the operator's planner on the estimated demand plus headroom."""
    services = []
    for fam in view.cluster.families:
        chosen = variants[fam.name] if variants is not None else fam.variants
        services.append(
            ServiceSpec(
                name=fam.name,
                demand_qps=max(0.0, demand_qps.get(fam.name, 0.0)) * (1.0 + headroom),
                slo_s=fam.slo_s,
                variants=list(chosen),
            )
        )
    names = {(s.name, v.name) for s in services for v in s.variants}
    cur = [a for a in current if (a.service, a.variant) in names]
    problem = Problem(
        pools=list(view.cluster.pools), services=services, current=cur, settings=settings
    )
    started = time.perf_counter()
    result = plan(problem)
    elapsed = time.perf_counter() - started
    rows = [
        TargetRow(
            service=r.service,
            variant=r.variant,
            pool=r.pool,
            replicas=r.replicas,
            max_batch_size=r.max_batch_size,
            routed_qps=r.routed_qps,
            capacity_qps_per_replica=r.capacity_qps_per_replica,
            accuracy=r.accuracy,
        )
        for r in result.rows
    ]
    return Target(rows=rows, planner_time_s=elapsed)


def fits(variant: VariantSpec, slo_s: float, percentile: str, utilization: float = 1.0) -> bool:
    """Whether `variant` can serve within `slo_s` on at least one pool."""
    return any(
        batch_capacity(points, slo_s, percentile, utilization) is not None  # type: ignore[arg-type]
        for points in variant.profiles.values()
    )


class Accordion(ControlPolicy):
    """Ours: the product's control loop drives the run (see the module docstring)."""

    router = "decider"

    def __init__(
        self,
        *,
        fast_loop: bool = True,
        burst_buffer: bool = True,
        timings: Timings = DEFAULT_TIMINGS,
        planner: PlannerSettings | None = None,
        name: str | None = None,
    ) -> None:
        self.fast_loop = fast_loop
        self.burst_buffer = burst_buffer
        self.timings = timings
        self.planner = planner
        self.name = name or ("accordion" if fast_loop else "accordion-nofast")

    def control(self, sim: Simulator) -> Control:
        from accordion.sim.driver import LoopControl

        return LoopControl(
            sim,
            timings=self.timings,
            planner=self.planner,
            fast_loop=self.fast_loop,
            burst_buffer=self.burst_buffer,
        )

    def target(
        self, now_s: float, demand_qps: dict[str, float], current: list[Allocation]
    ) -> Target:
        raise TypeError("Accordion decides through the operator's ControlLoop (control())")

    def batcher(
        self, family: Family, variant: VariantSpec, pool: str, max_batch_size: int
    ) -> BatchingPolicy:
        raise TypeError("Accordion's workers build their batcher from their WorkerConfig")


class PlannerBaseline(ControlPolicy):
    """A baseline that plans with our planner (`plan_target`) every `replan_interval_s`."""

    def __init__(
        self,
        *,
        replan_interval_s: float = 5.0,
        headroom: float = 0.5,
        utilization: float = 0.9,
        settings: PlannerSettings | None = None,
        name: str = "planner-baseline",
    ) -> None:
        self.replan_interval_s = replan_interval_s
        self.headroom = headroom
        self.utilization = utilization
        self._settings = settings
        self.name = name

    def settings(self) -> PlannerSettings:
        if self._settings is not None:
            return self._settings
        return PlannerSettings(
            latency_percentile=self.view.planning_percentile,
            utilization=self.utilization,
            time_limit_s=5.0,
        )

    def variants(self) -> dict[str, tuple[VariantSpec, ...]] | None:
        return None

    def target(
        self, now_s: float, demand_qps: dict[str, float], current: list[Allocation]
    ) -> Target:
        return plan_target(
            self.view, demand_qps, current, self.settings(), self.headroom, self.variants()
        )

    def batcher(
        self, family: Family, variant: VariantSpec, pool: str, max_batch_size: int
    ) -> BatchingPolicy:
        predictor = LatencyPredictor(profile_s(variant, pool, self.view.planning_percentile))
        return SloBatcher(max_batch_size, predictor)


class HardwareOnly(PlannerBaseline):
    """One fixed variant per service (the most accurate that fits), replicas scaled to demand."""

    most_accurate = True

    def __init__(self, *, name: str = "hardware-only", **kwargs: object) -> None:
        super().__init__(name=name, **kwargs)  # type: ignore[arg-type]

    def variants(self) -> dict[str, tuple[VariantSpec, ...]]:
        out: dict[str, tuple[VariantSpec, ...]] = {}
        pct = self.view.planning_percentile
        for fam in self.view.cluster.families:
            usable = [v for v in fam.variants if fits(v, fam.slo_s, pct)] or list(fam.variants)
            pick = (
                max(usable, key=lambda v: (v.accuracy, v.name))
                if self.most_accurate
                else min(usable, key=lambda v: (v.accuracy, v.name))
            )
            out[fam.name] = (pick,)
        return out


class Clipper(HardwareOnly):
    """Clipper-HA (most accurate fixed variant) or -HT (least accurate), AIMD batching."""

    def __init__(self, *, high_accuracy: bool, **kwargs: object) -> None:
        super().__init__(name="clipper-ha" if high_accuracy else "clipper-ht", **kwargs)
        self.most_accurate = high_accuracy

    def batcher(
        self, family: Family, variant: VariantSpec, pool: str, max_batch_size: int
    ) -> BatchingPolicy:
        return ClipperAimd(max_batch_size, family.slo_s)


class InfaasGreedy(ControlPolicy):
    """INFaaS-style greedy autoscaling (see the module docstring)."""

    name = "infaas"

    def __init__(
        self,
        *,
        replan_interval_s: float = 5.0,
        utilization: float = 0.9,
        max_queue_delay_s: float = 0.005,
    ) -> None:
        self.replan_interval_s = replan_interval_s
        self.utilization = utilization
        self.max_queue_delay_s = max_queue_delay_s
        self.alloc: dict[tuple[str, str, str], int] = {}

    def _options(self, fam: Family) -> list[tuple[str, str, int, float, float]]:
        """(variant, pool, max batch, capacity per replica, accuracy) of every usable pair."""
        pct = self.view.planning_percentile
        out = []
        for v in fam.variants:
            for pool, points in sorted(v.profiles.items()):
                fit = batch_capacity(points, fam.slo_s, pct, self.utilization)
                if fit is not None:
                    out.append((v.name, pool, fit[0], fit[1], v.accuracy))
        return out

    def target(
        self, now_s: float, demand_qps: dict[str, float], current: list[Allocation]
    ) -> Target:
        started = time.perf_counter()
        devices = {p.name: p.devices for p in self.view.cluster.pools}
        used: dict[str, int] = dict.fromkeys(devices, 0)
        for (_, _, pool), n in self.alloc.items():
            used[pool] += n
        opts = {fam.name: self._options(fam) for fam in self.view.cluster.families}
        info = {
            (fam, v, p): (mb, cap, acc) for fam, os in opts.items() for v, p, mb, cap, acc in os
        }

        def capacity(fam: str) -> float:
            return sum(info[k][1] * n for k, n in self.alloc.items() if k[0] == fam and n > 0)

        def add(key: tuple[str, str, str], n: int) -> None:
            self.alloc[key] = self.alloc.get(key, 0) + n
            used[key[2]] += n
            if self.alloc[key] == 0:
                del self.alloc[key]

        # Serve the largest shortfall first, one action at a time.
        for _ in range(sum(devices.values()) * 4):
            short = [
                (demand_qps.get(f.name, 0.0) - capacity(f.name), f.name)
                for f in self.view.cluster.families
                if demand_qps.get(f.name, 0.0) > capacity(f.name) + 1e-9
            ]
            if not short:
                break
            _, fam = max(short)
            best: tuple[float, float, tuple[str, str, str], tuple[str, str, str] | None] | None = (
                None
            )
            mine = [k for k, n in self.alloc.items() if k[0] == fam and n > 0]
            top_acc = max((info[k][2] for k in mine), default=max(o[4] for o in opts[fam]))
            for v, p, _, cap, acc in opts[fam]:
                if used[p] < devices[p]:
                    # Replicate (or start) a variant on a free device: costs accuracy only
                    # when the variant is less accurate than the best running one.
                    cost = max(0.0, top_acc - acc)
                    cand: _Choice = (cost, -cap, (fam, v, p), None)
                    if best is None or cand < best:
                        best = cand
            if best is None or best[0] > 0:
                # Downgrade one running replica to a faster variant on the same pool.
                for k in mine:
                    _, cap0, acc0 = info[k]
                    for v, p, _, cap, acc in opts[fam]:
                        if p == k[2] and cap > cap0:
                            cand = (acc0 - acc, -(cap - cap0), (fam, v, p), k)
                            if best is None or cand < best:
                                best = cand
            if best is None:
                break
            _, _, new, old = best
            if old is not None:
                add(old, -1)
            add(new, 1)
        # Scale down: release replicas while capacity covers demand, then upgrade.
        for family in self.view.cluster.families:
            fam = family.name
            want = demand_qps.get(fam, 0.0)
            for key in sorted((k for k in self.alloc if k[0] == fam), key=lambda k: info[k][2]):
                while self.alloc.get(key, 0) > 0 and capacity(fam) - info[key][1] >= want:
                    if capacity(fam) - info[key][1] <= 0:
                        break
                    add(key, -1)
            for key in sorted((k for k in self.alloc if k[0] == fam), key=lambda k: info[k][2]):
                for v, p, _, cap, acc in sorted(opts[fam], key=lambda o: -o[4]):
                    if p != key[2] or acc <= info[key][2] or key not in self.alloc:
                        continue
                    if capacity(fam) - info[key][1] + cap >= want:
                        add(key, -1)
                        add((fam, v, p), 1)
                        break
        rows = []
        for (fam, v, p), n in sorted(self.alloc.items()):
            mb, cap, _ = info[(fam, v, p)]
            rows.append(TargetRow(fam, v, p, n, mb, cap * n, cap))
        return Target(rows=rows, planner_time_s=time.perf_counter() - started)

    def batcher(
        self, family: Family, variant: VariantSpec, pool: str, max_batch_size: int
    ) -> BatchingPolicy:
        return TritonDynamicBatcher(max_batch_size, self.max_queue_delay_s, [max_batch_size])
