"""Ours and the baselines that share our planner: hardware-only and Clipper-HA/HT, and INFaaS.

* `Accordion` (ours): the operator's planner (`accordion.solver.planner.plan`) on the demand
  estimate plus headroom, `SloBatcher` in every replica, the router pods' `RoutingDecider`
  (`accordion.workers.fastloop`, fast loop on or off).
  By default (`spare=True`) it plans twice: the estimate plus a small routing headroom at the
  best accuracy, then the burst headroom on the devices left over as spare replicas; routing
  weights fill the most accurate replicas first and only the router's fast loop sends overflow
  to the spare ones. With `spare=False` it is one plan for estimate plus headroom, routed by
  the planner's shares.
  The headroom is the InferenceService's `demand.headroom`; the default here is 0.5, not the
  API's 0.1: Twitter-derived traces burst far above their 2-second EWMA between re-plans, and
  the planner otherwise releases the devices that would absorb the bursts.
* `HardwareOnly`: the same planner and batcher, but each service keeps one fixed variant (the
  most accurate one that fits the SLO on some pool): hardware scaling without accuracy scaling.
* `Clipper` (HA: most accurate fixed variant; HT: least accurate): Clipper's AIMD batching on
  replicas scaled to demand by the same planner (Clipper itself does not place replicas; giving
  it our allocation makes the baseline stronger, not weaker).
* `InfaasGreedy`: INFaaS's model-less autoscaler: per service, when demand exceeds capacity,
  scale up by the action of least accuracy cost (replicate the current variant on a free
  device: no cost; else switch a replica to a faster variant: the accuracy lost); when capacity
  exceeds demand, first release replicas, then upgrade to more accurate variants while the
  capacity still covers demand. Triton's dynamic batcher in every replica (no deadline drops).
"""

from __future__ import annotations

import dataclasses
import time

from accordion.sim.policy import ControlPolicy, SimView, Target, TargetRow, profile_s
from accordion.sim.workload import Cluster, Family
from accordion.solver import (
    Allocation,
    PlannerSettings,
    PoolSpec,
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

SPARE_RELATIVE_GAP = 0.005
SPARE_POLISH_S = 0.5

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


def accuracy_first_routing(
    rows: list[TargetRow], demand_qps: dict[str, float], headroom: float
) -> list[TargetRow]:
    """Routing weights for the *expected* demand, most accurate replicas first.

    The planner sizes replicas for the estimate plus the (large) planned headroom, and its
    routed shares spread that inflated demand over every replica, the less accurate ones too.
    With the router's fast loop on, overflow finds the spare replicas anyway, so the weights
    can fill the most accurate replicas up to their capacity with the estimate (plus a small
    routing headroom) and leave the rest as spare capacity.
    """
    by_service: dict[str, list[TargetRow]] = {}
    for r in rows:
        by_service.setdefault(r.service, []).append(r)
    out: list[TargetRow] = []
    for service, group in sorted(by_service.items()):
        remaining = demand_qps.get(service, 0.0) * (1.0 + headroom)
        ordered = sorted(group, key=lambda r: (-r.accuracy, r.variant, r.pool))
        for r in ordered:
            routed = min(remaining, r.capacity_qps_per_replica * r.replicas)
            remaining -= routed
            out.append(dataclasses.replace(r, routed_qps=routed))
    return out


class Accordion(ControlPolicy):
    """Ours: planner + SloBatcher + the router's `RoutingDecider`, fast loop on or off.

    `router="builtin"` routes with plain weighted round-robin instead (see `SimConfig.router`).
    """

    def __init__(
        self,
        *,
        fast_loop: bool = True,
        replan_interval_s: float = 5.0,
        headroom: float = 0.5,
        utilization: float = 0.9,
        settings: PlannerSettings | None = None,
        accuracy_first: bool = True,
        routing_headroom: float = 0.1,
        spare: bool = True,
        router: str = "decider",
        name: str | None = None,
    ) -> None:
        self.fast_loop = fast_loop
        self.replan_interval_s = replan_interval_s
        self.headroom = headroom
        self.utilization = utilization
        self._settings = settings
        self.accuracy_first = accuracy_first
        self.spare = spare
        self.router = router
        self.routing_headroom = routing_headroom
        self.name = name or ("accordion" if fast_loop else "accordion-nofast")

    def settings(self) -> PlannerSettings:
        if self._settings is not None:
            return self._settings
        return PlannerSettings(
            latency_percentile=self.view.planning_percentile,
            utilization=self.utilization,
            time_limit_s=5.0,
        )

    def spare_settings(self) -> PlannerSettings:
        """The spare plan's settings: a burst buffer needs no 0.1% optimality.

        A 0.5% gap (and at most 0.5 s of MILP polishing) instead of the main plan's: on the
        10x cluster, polishing the spare plan to 0.1% took the planner past 1 s per re-plan
        (SCIP polishing a rounded LP that missed the gap); at 0.5% the rounding is accepted.
        A 1% gap cost violations at 1x (0.17% instead of 0.07% on zipf-p50).
        """
        main = self.settings()
        return main.model_copy(
            update={
                "relative_gap": max(main.relative_gap, SPARE_RELATIVE_GAP),
                "polish_time_s": min(main.polish_time_s, SPARE_POLISH_S),
            }
        )

    def variants(self) -> dict[str, tuple[VariantSpec, ...]] | None:
        return None

    def target(
        self, now_s: float, demand_qps: dict[str, float], current: list[Allocation]
    ) -> Target:
        if self.spare:
            return self._target_with_spare(demand_qps, current)
        target = plan_target(
            self.view, demand_qps, current, self.settings(), self.headroom, self.variants()
        )
        if self.fast_loop and self.accuracy_first:
            target.rows = accuracy_first_routing(target.rows, demand_qps, self.routing_headroom)
        return target

    def _target_with_spare(self, demand_qps: dict[str, float], current: list[Allocation]) -> Target:
        """Plan for the estimate (small headroom) at the best accuracy, then plan the burst
        headroom on the devices left over, as spare replicas only the fast loop routes to."""
        main = plan_target(
            self.view, demand_qps, current, self.settings(), self.routing_headroom, self.variants()
        )
        used: dict[str, int] = {}
        for r in main.rows:
            used[r.pool] = used.get(r.pool, 0) + r.replicas
        left = [
            PoolSpec(
                name=p.name,
                devices=max(0, p.devices - used.get(p.name, 0)),
                cost_per_device=p.cost_per_device,
            )
            for p in self.view.cluster.pools
        ]
        spare_view = SimView(
            cluster=Cluster(pools=tuple(left), families=self.view.cluster.families),
            service_time=self.view.service_time,
        )
        burst = {k: v * self.headroom for k, v in demand_qps.items()}
        extra = plan_target(spare_view, burst, [], self.spare_settings(), 0.0, self.variants())
        rows = accuracy_first_routing(main.rows, demand_qps, self.routing_headroom)
        merged: dict[tuple[str, str, str], TargetRow] = {
            (r.service, r.variant, r.pool): r for r in rows
        }
        for r in extra.rows:
            key = (r.service, r.variant, r.pool)
            if key in merged:
                m = merged[key]
                merged[key] = dataclasses.replace(m, replicas=m.replicas + r.replicas)
            else:
                merged[key] = dataclasses.replace(r, routed_qps=0.0)
        return Target(
            rows=[merged[k] for k in sorted(merged)],
            planner_time_s=main.planner_time_s + extra.planner_time_s,
        )

    def batcher(
        self, family: Family, variant: VariantSpec, pool: str, max_batch_size: int
    ) -> BatchingPolicy:
        predictor = LatencyPredictor(profile_s(variant, pool, self.view.planning_percentile))
        return SloBatcher(max_batch_size, predictor)


class HardwareOnly(Accordion):
    """One fixed variant per service (the most accurate that fits), replicas scaled to demand."""

    most_accurate = True

    def __init__(self, *, name: str = "hardware-only", **kwargs: object) -> None:
        super().__init__(
            name=name,
            fast_loop=False,
            spare=False,
            router="builtin",
            **kwargs,  # type: ignore[arg-type]
        )

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
