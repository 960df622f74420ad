"""The discrete-event engine: arrivals, routers, replicas with batchers, re-planning.

Simulated time only; one heap of events ordered by (time, kind, sequence number), so that runs
are deterministic for a seed. Arrivals come from the sorted workload and are merged with the
heap (events at the same instant run first: a completion frees a device before an arrival is
routed). Per service, a router splits arrivals over the ready replicas by the target's routing
weights (smooth weighted round-robin: deterministic, and no burstier than the weights); with
the fast loop on, it re-routes an arrival whose chosen replica cannot make its deadline to the
most accurate replica that can, and sheds it when none can. Each replica runs one batching
policy object from `accordion.workers.batching` (or a baseline's), driven by the protocol that
module describes; execution times are drawn from the profile (`SimConfig.service_time`).

Re-planning: every second the arrivals of that second are folded into the same demand
estimator the operator uses (`DemandTracker`); every `replan_interval_s` the policy's target is
applied make-before-break: a new replica loads for `model_load_s` while the replica it replaces
keeps serving on the same device slot; it then takes over and the old one drains its queue.
Replicas removed without a replacement serve until the new plan's replicas are ready.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from accordion.operator.control.demand import DemandTracker
from accordion.sim.metrics import DROPPED, LATE, OK, Recorder, SecondStats, Summary
from accordion.sim.policy import ControlPolicy, SimView, Target
from accordion.sim.workload import Cluster, Family, Workload
from accordion.solver import Allocation, VariantSpec
from accordion.workers.batching import BatchingPolicy, Decision, Request
from accordion.workers.config import (
    Backend,
    FastLoopBounds,
    RoutingTable,
    interpolate_profile,
)
from accordion.workers.fastloop import Outcome, RoutingDecider

# Event kinds, in the order they run at the same instant.
_COMPLETE, _READY, _RETIRE, _WAKE, _MEASURE, _REPLAN = range(6)
_EPS = 1e-9


@dataclass(frozen=True)
class SimConfig:
    """Knobs of a run."""

    seed: int = 0
    service_time: str = "p50"
    """``p50``: constant p50 (Proteus's artifact); ``p90``: constant p90; ``dist``: drawn from
    the profile (piecewise linear through p50 at the median and p90 at the 90th percentile)."""
    model_load_s: float = 2.0
    initial_window_s: float = 5.0
    """The first plan is made for the mean rate over this window (same for every policy)."""
    router: str = "auto"
    """``auto``: the policy's choice (`ControlPolicy.router`); ``decider``: the router's own
    `RoutingDecider` (accordion.workers.fastloop), one backend per replica, fast loop per the
    policy; ``builtin``: plain smooth weighted round-robin, no fast loop."""
    rise_half_life_s: float = 2.0
    fall_half_life_s: float = 20.0
    end_s: float | None = None


@dataclass
class Replica:
    """One worker on one device: a variant, its batcher and its lifecycle."""

    rid: int
    service: int
    variant: VariantSpec
    pool: str
    max_batch_size: int
    capacity_qps: float
    policy: BatchingPolicy
    ready_at_s: float
    state: str = "loading"  # loading -> active -> retiring -> gone
    weight: float = 0.0
    current_weight: float = 0.0
    owns_slot: bool = True
    replaces: Replica | None = None
    replaced: bool = False
    wake_token: int = 0

    @property
    def key(self) -> tuple[int, str, str]:
        return (self.service, self.variant.name, self.pool)


@dataclass
class SimResult:
    """A finished run: the summary, per-second rows and the request outcomes."""

    summary: Summary
    seconds: list[SecondStats]
    outcome: dict[int, int] = field(default_factory=dict)
    families: dict[str, tuple[int, int, float]] = field(default_factory=dict)
    """Per family: demand, requests served in time, their effective accuracy."""


class Simulator:
    """One run of one control policy on one workload and cluster."""

    def __init__(
        self,
        cluster: Cluster,
        workload: Workload,
        policy: ControlPolicy,
        config: SimConfig | None = None,
    ) -> None:
        self.cluster = cluster
        self.workload = workload
        self.policy = policy
        self.config = config or SimConfig()
        self.rng = random.Random(self.config.seed)
        fam_by_name = {f.name: f for f in cluster.families}
        missing = [n for n in workload.families if n not in fam_by_name]
        if missing:
            raise ValueError(f"the workload names families the cluster lacks: {missing}")
        self.families: list[Family] = [fam_by_name[n] for n in workload.families]
        self.service_index = {n: i for i, n in enumerate(workload.families)}
        self.pool_devices = {p.name: p.devices for p in cluster.pools}
        self.recorder = Recorder(family_of=workload.family)
        self.tracker = DemandTracker(self.config.rise_half_life_s, self.config.fall_half_life_s)
        self.replicas: list[Replica] = []
        self.by_service: dict[int, list[Replica]] = defaultdict(list)
        self._heap: list[tuple[float, int, int, object]] = []
        self._seq = 0
        self._next_rid = 0
        self._arrivals_this_second: dict[int, int] = defaultdict(int)
        self._slots_in_use = 0
        self._last_slot_change_s = 0.0
        self.now_s = 0.0
        self._deciders: dict[int, RoutingDecider] = {}
        self._decider_replicas: dict[int, dict[str, Replica]] = {}
        self._routing_dirty = True
        self._router = self.config.router if self.config.router != "auto" else policy.router
        policy.setup(SimView(cluster=cluster, service_time=self.config.service_time))

    # ---- event plumbing -------------------------------------------------------------------

    def _push(self, t_s: float, kind: int, payload: object) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t_s, kind, self._seq, payload))

    def _slots_changed(self, delta: int) -> None:
        self.recorder.device_seconds += self._slots_in_use * (self.now_s - self._last_slot_change_s)
        self._last_slot_change_s = self.now_s
        self._slots_in_use += delta

    # ---- execution ------------------------------------------------------------------------

    def exec_time_s(self, replica: Replica, batch_size: int) -> float:
        """An execution time of a batch, drawn per `SimConfig.service_time`."""
        points = replica.variant.profiles[replica.pool]
        p50 = interpolate_profile({p.batch_size: p.p50_s for p in points}, batch_size)
        p90 = interpolate_profile(
            {p.batch_size: p.p90_s if p.p90_s is not None else p.p50_s for p in points},
            batch_size,
        )
        mode = self.config.service_time
        if mode == "p50":
            return p50
        if mode == "p90":
            return p90
        u = self.rng.random()
        lo = max(0.5 * p50, 2 * p50 - p90)
        hi = p90 + (p90 - p50)
        if u < 0.5:
            value = lo + (p50 - lo) * u / 0.5
        elif u < 0.9:
            value = p50 + (p90 - p50) * (u - 0.5) / 0.4
        else:
            value = p90 + (hi - p90) * (u - 0.9) / 0.1
        return value

    def _poke(self, replica: Replica) -> None:
        """Ask the replica's batcher what to do now, and do it."""
        now = self.now_s
        decision: Decision = replica.policy.decide(now)
        for d in decision.dropped:
            self.recorder.finish(d.request.request_id, d.request.arrival_s, DROPPED)
            self._finished(d.request, "dropped")
        if decision.batch:
            latency = self.exec_time_s(replica, len(decision.batch))
            self._push(now + latency, _COMPLETE, (replica, decision.batch, latency))
        if decision.wake_at_s is not None and decision.wake_at_s > now:
            replica.wake_token += 1
            self._push(decision.wake_at_s, _WAKE, (replica, replica.wake_token))
        self._maybe_gone(replica)

    def _maybe_gone(self, replica: Replica) -> None:
        if (
            replica.state == "retiring"
            and not replica.policy.busy
            and replica.policy.queue_depth == 0
        ):
            replica.state = "gone"
            if replica.owns_slot:
                replica.owns_slot = False
                self._slots_changed(-1)

    def _complete(self, replica: Replica, batch: tuple[Request, ...], latency_s: float) -> None:
        acc = replica.variant.accuracy
        for req in batch:
            kind = OK if self.now_s <= req.deadline_s + _EPS else LATE
            self.recorder.finish(req.request_id, req.arrival_s, kind, acc)
            self._finished(req, "answered")
        replica.policy.complete(len(batch), latency_s, self.now_s)
        self._poke(replica)

    # ---- routing --------------------------------------------------------------------------

    def _tables(self) -> None:
        """Rebuild every service's routing table from its ready replicas (after a change)."""
        self._routing_dirty = False
        for s, name in enumerate(self.workload.families):
            ready = [r for r in self.by_service[s] if r.state == "active"]
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
                slo_ms=self.families[s].slo_s * 1000.0,
                backends=backends,
                fast_loop=FastLoopBounds(enabled=self.policy.fast_loop),
            )
            decider = self._deciders.get(s)
            if decider is None:
                self._deciders[s] = RoutingDecider(table, seed=self.config.seed * 1000 + s)
            else:
                decider.update_table(table)

    def _route_decider(self, service: int, req: Request) -> Replica | None:
        if self._routing_dirty:
            self._tables()
        replicas = self._decider_replicas.get(service)
        if not replicas:
            return None
        decider = self._deciders[service]
        choice = decider.choose(req.deadline_s - self.now_s, self.now_s)
        if choice.backend is None:
            return None
        decider.sent(choice.backend, self.now_s)
        req.payload = (service, choice.backend)
        return replicas[choice.backend]

    def _finished(self, req: Request, outcome: Outcome) -> None:
        """Tell the router a request it sent was answered or dropped (its capacity correction
        learns from both, as the router process does)."""
        if isinstance(req.payload, tuple):
            service, name = req.payload
            decider = self._deciders.get(service)
            if decider is not None:
                decider.finished(name, self.now_s, outcome)

    def _route(self, service: int, req: Request) -> Replica | None:
        if self._router == "decider":
            return self._route_decider(service, req)
        # Plain weighted routing (the baselines'): smooth weighted round-robin, no fast loop.
        ready = [r for r in self.by_service[service] if r.state == "active"]
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

    def _arrive(self, rid: int) -> None:
        w = self.workload
        service = w.family[rid]
        req = Request(rid, w.arrival_s[rid], w.deadline_s[rid])
        self.recorder.arrival(rid, req.arrival_s)
        self._arrivals_this_second[service] += 1
        replica = self._route(service, req)
        if replica is None:
            self.recorder.finish(rid, req.arrival_s, DROPPED)
            return
        replica.policy.enqueue(req, self.now_s)
        self._poke(replica)

    # ---- control --------------------------------------------------------------------------

    def current_allocation(self) -> list[Allocation]:
        counts: dict[tuple[int, str, str], int] = defaultdict(int)
        for r in self.replicas:
            if r.state in ("loading", "active") and not r.replaced:
                counts[r.key] += 1
        return [
            Allocation(service=self.workload.families[s], variant=v, pool=p, replicas=n)
            for (s, v, p), n in sorted(counts.items())
        ]

    def _new_replica(
        self,
        service: int,
        variant: VariantSpec,
        pool: str,
        max_batch: int,
        cap: float,
        ready_s: float,
    ) -> Replica:
        fam = self.families[service]
        replica = Replica(
            rid=self._next_rid,
            service=service,
            variant=variant,
            pool=pool,
            max_batch_size=max_batch,
            capacity_qps=cap,
            policy=self.policy.batcher(fam, variant, pool, max_batch),
            ready_at_s=ready_s,
        )
        self._next_rid += 1
        self.replicas.append(replica)
        self.by_service[service].append(replica)
        return replica

    def _apply(self, target: Target, initial: bool) -> None:
        """Carry a target out make-before-break (see the module docstring)."""
        self._routing_dirty = True
        self.recorder.planner_times_s.append(target.planner_time_s)
        ready_s = self.now_s if initial else self.now_s + self.config.model_load_s
        desired: dict[tuple[int, str, str], tuple[int, int, float, float]] = {}
        for row in target.rows:
            s = self.service_index.get(row.service)
            if s is None or row.replicas <= 0:
                continue
            desired[(s, row.variant, row.pool)] = (
                row.replicas,
                row.max_batch_size,
                row.routed_qps,
                row.capacity_qps_per_replica,
            )
        live: dict[tuple[int, str, str], list[Replica]] = defaultdict(list)
        for r in self.replicas:
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
        used: dict[str, int] = defaultdict(int)
        for r in self.replicas:
            if r.owns_slot and r.state != "gone":
                used[r.pool] += 1
        for pool in sorted(set(removals) | set(additions)):
            free = self.pool_devices.get(pool, 0) - used[pool]
            outgoing = list(removals.get(pool, []))
            for service, vname, mb, cap in additions.get(pool, []):
                variant = self.families[service].variant(vname)
                if free > 0:
                    free -= 1
                    new = self._new_replica(service, variant, pool, mb, cap, ready_s)
                    self._slots_changed(+1)
                elif outgoing:
                    old = outgoing.pop(0)
                    old.replaced = True
                    new = self._new_replica(service, variant, pool, mb, cap, ready_s)
                    new.owns_slot = False
                    new.replaces = old
                else:
                    continue  # no device: the target over-asks this pool
                if initial:
                    self._ready(new)
                else:
                    self._push(ready_s, _READY, new)
            for old in outgoing:
                old.replaced = True
                if initial or old.state == "loading":
                    self._retire(old)
                else:
                    self._push(ready_s, _RETIRE, old)
        # Routing weights of the replicas that stay and of the new ones.
        counts: dict[tuple[int, str, str], int] = defaultdict(int)
        for r in self.replicas:
            if r.state in ("loading", "active") and not r.replaced:
                counts[r.key] += 1
        for r in self.replicas:
            if r.state in ("loading", "active") and not r.replaced and r.key in desired:
                routed = desired[r.key][2]
                r.weight = routed / max(1, counts[r.key])

    def _ready(self, replica: Replica) -> None:
        if replica.state != "loading":
            return
        self._routing_dirty = True
        replica.state = "active"
        old = replica.replaces
        if old is not None:
            # The slot moves to the new replica; the old one drains on it meanwhile.
            if old.owns_slot:
                old.owns_slot = False
            else:
                self._slots_changed(+1)
            replica.owns_slot = True
            replica.replaces = None
            self._retire(old)

    def _retire(self, replica: Replica) -> None:
        if replica.state == "gone":
            return
        self._routing_dirty = True
        if replica.state == "loading":
            replica.state = "gone"
            if replica.owns_slot:
                replica.owns_slot = False
                self._slots_changed(-1)
            if replica.replaces is not None:
                replica.replaces.replaced = False
                replica.replaces = None
            return
        replica.state = "retiring"
        replica.weight = 0.0
        self._maybe_gone(replica)

    def _measure(self) -> None:
        sec = round(self.now_s) - 1
        st = self.recorder.second(sec)
        st.capacity_qps = sum(r.capacity_qps for r in self.replicas if r.state == "active")
        st.devices = float(self._slots_in_use)
        for s, name in enumerate(self.workload.families):
            self.tracker.observe(name, self.now_s, float(self._arrivals_this_second.get(s, 0)))
        self._arrivals_this_second.clear()

    def _replan(self) -> None:
        estimates = self.tracker.estimates()
        target = self.policy.target(self.now_s, estimates, self.current_allocation())
        self._apply(target, initial=False)

    # ---- the run --------------------------------------------------------------------------

    def run(self, progress: Callable[[float], None] | None = None) -> SimResult:
        started = time.perf_counter()
        w = self.workload
        end_s = self.config.end_s if self.config.end_s is not None else w.duration_s
        window = self.config.initial_window_s
        initial: dict[str, float] = {}
        for s, name in enumerate(w.families):
            n = sum(1 for a, f in zip(w.arrival_s, w.family, strict=True) if f == s and a < window)
            initial[name] = n / window
        self._apply(self.policy.target(0.0, initial, []), initial=True)
        for name, qps in initial.items():
            self.tracker.observe(name, 0.0, qps)
        t = 1.0
        while t <= end_s + 1.0:
            self._push(t, _MEASURE, None)
            t += 1.0
        t = self.policy.replan_interval_s
        while t <= end_s:
            self._push(t, _REPLAN, None)
            t += self.policy.replan_interval_s
        i, n = 0, len(w)
        last_report = -1
        while True:
            next_arrival = w.arrival_s[i] if i < n else math.inf
            if self._heap and self._heap[0][0] <= next_arrival:
                t_s, kind, _, payload = heapq.heappop(self._heap)
                self.now_s = t_s
                self._dispatch(kind, payload)
            elif i < n:
                self.now_s = next_arrival
                self._arrive(i)
                i += 1
            else:
                break
            if progress is not None and int(self.now_s) != last_report:
                last_report = int(self.now_s)
                progress(self.now_s)
        self._slots_changed(0)
        if len(self.recorder.outcome) != n:
            raise AssertionError(f"{n - len(self.recorder.outcome)} requests never ended")
        wall = time.perf_counter() - started
        return SimResult(
            summary=self.recorder.summary(self.policy.name, wall),
            seconds=self.recorder.per_second(),
            outcome=self.recorder.outcome,
            families={
                name: (
                    self.recorder.family_demand[f],
                    self.recorder.family_ok[f],
                    self.recorder.family_accuracy_sum[f] / max(1, self.recorder.family_ok[f]),
                )
                for f, name in enumerate(w.families)
            },
        )

    def _dispatch(self, kind: int, payload: object) -> None:
        if kind == _COMPLETE:
            done = cast(tuple[Replica, tuple[Request, ...], float], payload)
            self._complete(*done)
        elif kind == _WAKE:
            replica, token = cast(tuple[Replica, int], payload)
            if token == replica.wake_token and replica.state != "gone":
                self._poke(replica)
        elif kind == _READY:
            assert isinstance(payload, Replica)
            self._ready(payload)
        elif kind == _RETIRE:
            assert isinstance(payload, Replica)
            self._retire(payload)
        elif kind == _MEASURE:
            self._measure()
        elif kind == _REPLAN:
            self._replan()


def simulate(
    cluster: Cluster,
    workload: Workload,
    policy: ControlPolicy,
    config: SimConfig | None = None,
    progress: Callable[[float], None] | None = None,
) -> SimResult:
    """Run `policy` on `workload` over `cluster`; see `Simulator`."""
    return Simulator(cluster, workload, policy, config).run(progress)
