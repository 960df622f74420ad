"""The baselines' control: a target per re-plan tick, carried out make-before-break.

A baseline policy (Proteus, Clipper, INFaaS, hardware-only) answers `ControlPolicy.target` at
start and every `replan_interval_s` with the replicas it wants and their routing weights, from
the demand estimate (the same `DemandTracker` as ours, at the default timings). Devices are
exclusive, as Kubernetes schedules GPUs (one pod per device) and as ours is held to
(`accordion.sim.driver`): a new replica takes a free device of its pool and loads for
`model_load_s`; where the target replaces a replica and no device is free, the old replica
goes at once (it drains its queue) and the new one loads on its device after it (break before
make: these policies have no control loop that could do better). Replicas removed without a
replacement serve until the new plan's replicas are ready.

Routing: plain smooth weighted round-robin per service over the ready replicas (the baselines'
systems have no router of ours), or, with ``router="decider"``, our router's `RoutingDecider`
with one backend per replica.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

from accordion.operator.control.demand import DemandTracker
from accordion.sim.engine import ControlSample, Replica
from accordion.sim.policy import Target
from accordion.solver import Allocation
from accordion.workers.batching import Request
from accordion.workers.config import (
    Backend,
    FastLoopBounds,
    RoutingTable,
    interpolate_profile,
)
from accordion.workers.fastloop import RoutingDecider

if TYPE_CHECKING:
    from accordion.sim.engine import Simulator
    from accordion.sim.policy import ControlPolicy


class TargetControl:
    """Runs a baseline `ControlPolicy` in the engine (see the module docstring)."""

    def __init__(self, sim: Simulator, policy: ControlPolicy) -> None:
        self.sim = sim
        self.policy = policy
        self.tracker = DemandTracker()
        self._planner_times: list[float] = []
        self._deciders: dict[int, RoutingDecider] = {}
        self._decider_replicas: dict[int, dict[str, Replica]] = {}
        self._routing_dirty = True
        router = sim.config.router
        self._router = router if router != "auto" else policy.router

    @property
    def planner_times_s(self) -> list[float]:
        return self._planner_times

    # ---- the Control protocol ---------------------------------------------------------------

    def start(self, initial_qps: dict[str, float]) -> None:
        self._apply(self.policy.target(0.0, initial_qps, []), initial=True)
        for name, qps in initial_qps.items():
            self.tracker.observe(name, 0.0, qps)
        end_s = self.sim.config.end_s
        end = end_s if end_s is not None else self.sim.workload.duration_s
        t = self.policy.replan_interval_s
        while t <= end:
            self.sim.call_at(t, self._replan)
            t += self.policy.replan_interval_s

    def measured(self, arrivals: dict[str, int], interval_s: float) -> None:
        for name, n in arrivals.items():
            self.tracker.observe(name, self.sim.now_s, n / interval_s)

    def route(self, service: int, request: Request) -> Replica | None:
        if self._router == "decider":
            return self._route_decider(service, request)
        return self._route_builtin(service)

    def resend(self, replica: Replica, request: Request) -> Replica | None:
        """The system modelled does not send a dropped request again."""
        return None

    def finished(self, replica: Replica, request: Request, outcome: str) -> None:
        """Tell the router a request it sent was answered or dropped (its capacity correction
        learns from both, as the router process does)."""
        if isinstance(request.payload, tuple):
            service, name = request.payload
            decider = self._deciders.get(service)
            if decider is not None:
                answered = outcome == "answered"
                decider.finished(name, self.sim.now_s, "answered" if answered else "dropped")

    def replica_changed(self, replica: Replica) -> None:
        self._routing_dirty = True

    def sample(self, service: str) -> ControlSample | None:
        return None

    # ---- targets ----------------------------------------------------------------------------

    def _replan(self) -> None:
        target = self.policy.target(
            self.sim.now_s, self.tracker.estimates(), self.current_allocation()
        )
        self._apply(target, initial=False)

    def current_allocation(self) -> list[Allocation]:
        counts: dict[tuple[int, str, str], int] = defaultdict(int)
        for r in self.sim.replicas:
            if r.state in ("loading", "active") and not r.replaced:
                counts[r.key] += 1
        return [
            Allocation(service=self.sim.workload.families[s], variant=v, pool=p, replicas=n)
            for (s, v, p), n in sorted(counts.items())
        ]

    def _apply(self, target: Target, initial: bool) -> None:
        """Carry a target out make-before-break (see the module docstring)."""
        sim = self.sim
        self._routing_dirty = True
        self._planner_times.append(target.planner_time_s)
        ready_s = sim.now_s if initial else sim.now_s + sim.config.model_load_s
        desired: dict[tuple[int, str, str], tuple[int, int, float, float]] = {}
        for row in target.rows:
            s = sim.service_index.get(row.service)
            if s is None or row.replicas <= 0:
                continue
            desired[(s, row.variant, row.pool)] = (
                row.replicas,
                row.max_batch_size,
                row.routed_qps,
                row.capacity_qps_per_replica,
            )
        live: dict[tuple[int, str, str], list[Replica]] = defaultdict(list)
        for r in sim.replicas:
            if r.state in ("loading", "active") and not r.replaced:
                live[r.key].append(r)
        removals: dict[str, list[Replica]] = defaultdict(list)
        additions: dict[str, list[tuple[int, str, int, float]]] = defaultdict(list)
        for key in sorted(set(live) | set(desired)):
            have = live.get(key, [])
            want = desired.get(key, (0, 1, 0.0, 0.0))[0]
            if len(have) > want:
                # Remove loading ones first, then the least loaded.
                order = sorted(
                    have, key=lambda r: (r.state != "loading", r.policy.queue_depth, r.rid)
                )
                removals[key[2]].extend(order[: len(have) - want])
            elif len(have) < want:
                _, mb, _, cap = desired[key]
                for _ in range(want - len(have)):
                    additions[key[2]].append((key[0], key[1], mb, cap))
        for pool in sorted(set(removals) | set(additions)):
            free = sim.free_devices(pool)
            outgoing = list(removals.get(pool, []))
            for service, vname, mb, cap in additions.get(pool, []):
                fam = sim.families[service]
                variant = fam.variant(vname)
                batcher = self.policy.batcher(fam, variant, pool, mb)
                if free > 0:
                    free -= 1
                    sim.add_replica(service, variant, pool, mb, cap, batcher, initial=initial)
                elif outgoing:
                    # One model per device: the old replica goes (it drains its queue), the
                    # new one waits for its device, then loads.
                    old = outgoing.pop(0)
                    old.replaced = True
                    sim.retire(old)
                    sim.add_replica(service, variant, pool, mb, cap, batcher, initial=initial)
                # else: no device, the target over-asks this pool
            for old in outgoing:
                old.replaced = True
                if initial or old.state == "loading":
                    sim.retire(old)
                else:
                    sim.schedule_retire(old, ready_s)
        # Routing weights of the replicas that stay and of the new ones.
        counts: dict[tuple[int, str, str], int] = defaultdict(int)
        for r in sim.replicas:
            if r.state in ("loading", "active") and not r.replaced:
                counts[r.key] += 1
        for r in sim.replicas:
            if r.state in ("loading", "active") and not r.replaced and r.key in desired:
                r.weight = desired[r.key][2] / max(1, counts[r.key])

    # ---- routing ----------------------------------------------------------------------------

    def _route_builtin(self, service: int) -> Replica | None:
        """Smooth weighted round-robin over the ready replicas, no fast loop."""
        ready = [r for r in self.sim.by_service[service] if r.state == "active"]
        if not ready:
            return None
        weighted = [r for r in ready if r.weight > 0]
        pool = weighted or ready
        total = 0.0
        best: Replica | None = None
        for r in pool:
            w = r.weight if weighted else r.capacity_qps
            r.current_weight += w
            total += w
            if best is None or r.current_weight > best.current_weight:
                best = r
        assert best is not None
        best.current_weight -= total
        return best

    def _tables(self) -> None:
        """Rebuild every service's routing table from its ready replicas (after a change)."""
        sim = self.sim
        self._routing_dirty = False
        for s, name in enumerate(sim.workload.families):
            ready = [r for r in sim.by_service[s] if r.state == "active"]
            self._decider_replicas[s] = {f"r{r.rid}": r for r in ready}
            if not ready:
                continue
            use_capacity = all(r.weight <= 0 for r in ready)
            backends = []
            for r in ready:
                full = r.policy.predicted_latency_s(r.max_batch_size)
                if full is None:
                    full = interpolate_profile(
                        {p.batch_size: p.p50_s for p in r.variant.profiles[r.pool]},
                        r.max_batch_size,
                    )
                backends.append(
                    Backend(
                        name=f"r{r.rid}",
                        url="http://sim",
                        weight=r.capacity_qps if use_capacity else r.weight,
                        accuracy=min(1.0, r.variant.accuracy / 100.0),
                        capacity_qps=r.capacity_qps if r.capacity_qps > 0 else None,
                        max_batch_size=r.max_batch_size,
                        batch_latency_ms=full * 1000.0,
                    )
                )
            table = RoutingTable(
                service=name,
                slo_ms=sim.families[s].slo_s * 1000.0,
                backends=backends,
                fast_loop=FastLoopBounds(enabled=self.policy.fast_loop),
            )
            decider = self._deciders.get(s)
            if decider is None:
                self._deciders[s] = RoutingDecider(table, seed=sim.config.seed * 1000 + s)
            else:
                decider.update_table(table)

    def _route_decider(self, service: int, req: Request) -> Replica | None:
        if self._routing_dirty:
            self._tables()
        replicas = self._decider_replicas.get(service)
        if not replicas:
            return None
        decider = self._deciders[service]
        choice = decider.choose(req.deadline_s - self.sim.now_s, self.sim.now_s)
        if choice.backend is None:
            return None
        decider.sent(choice.backend, self.sim.now_s)
        req.payload = (service, choice.backend)
        return replicas[choice.backend]
