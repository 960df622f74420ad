"""The simulator as the third driver of the operator's `ControlLoop` (after kopf and local mode).

What a user's cluster runs, on simulated time: each model family is an `InferenceService`
(built by `family_service` as a user would write it: the profile a user would measure on that
hardware, the API's defaults for headroom and the burst buffer), each pool a `DevicePool`. The
loop is the operator's, with its default timings (`control.timing.DEFAULT_TIMINGS`) and planner
settings; only the world and the actuator are simulated:

* demand: every second the arrivals of each service are folded into the same `DemandTracker`
  the other drivers use, fed back with the plan's capacity (surges, fast falls while short);
* burstiness: each router's `DispersionMeter` counts its service's arrivals, published by the
  operator's rule (`control.burstiness`) into the demand view, so a service that asks for the
  planner's batching model (`batching_model=True`: `spec.demand.capacityModel: Batching`) is
  sized as in a cluster; by default the utilization margin, as the API's default;
* passes: when demand leaves a service's band (`ControlLoop.pass_due`, debounced and at most
  every `min_pass_interval_s`), when a replica becomes ready or goes (the operator's watch on
  Deployments), after the drain the loop asks for, and every `resync_interval_s`;
* `SimActuator` carries the steps out as Kubernetes would: a worker group is a Deployment of
  replicas, each needs a device of its pool (without a free one it waits, as a pod stays
  Pending) and loads for `model_load_s`; scaling down removes pending, then loading, then the
  least loaded replicas; a removed replica drains as the product's worker does
  (`accordion.workers.drain`): it answers its queue and holds its device until no request has
  come for `QUIET_S` (1 s) since it was removed or since its last request, `worker_drain_s` (the
  operator's `workers.drainSeconds`, 5 s) at most; a removed group's Service stays meanwhile
  (`KubernetesActuator.sweep_worker_services`), so routers whose loaded table still names the
  group send to its draining replicas (a group scaled down keeps sending to its ready ones);
* the activator: a request that finds no ready replica of its service is held by the router's
  own `Activator` (`accordion.sim.activator`), which wakes the operator at once (an immediate
  demand report, as the router's `Reporter.wake`; the operator folds it within a quarter report
  interval and passes at once, as `handlers.Driver` does) and releases it when one of the
  router's backends joins its split (its health check), or drops it at its deadline;
* routing: the router's own `RoutingDecider` per service, fed the tables `desired.routing_table`
  builds (one backend per worker group, as the router sees a Kubernetes Service), picked up
  `ROUTER_RELOAD_S` after the loop applies them (the router re-reads its table file that often);
  a backend the table names as pending (a group still loading), or one that refused a
  connection (no endpoint behind its Service: the request is sent again, `MAX_CONNECT_RETRIES`
  times at most), is out of the split until a recheck every `RECHECK_S` finds an endpoint (the
  router's health loop); behind a backend, requests go round-robin to the group's ready
  replicas (kube-proxy), and each replica runs the worker's batcher (`batching.make_policy`
  on the worker's configuration) and reports its speed as the worker does (`SlowdownMeter`).

Decisions that exist only here would make simulator results describe a system no user runs, so
there are none: everything above that decides is the product's code.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, assert_never

from accordion.operator.api import CapacityModelName, DevicePool, InferenceService, parse_resource
from accordion.operator.config import OperatorConfig
from accordion.operator.control.burstiness import BurstinessBook, combine
from accordion.operator.control.demand import DemandTracker
from accordion.operator.control.desired import WorkerKey, WorkerSpec, routing_table, spare_by_group
from accordion.operator.control.loop import (
    AppliedRouting,
    ApplyRouting,
    ControlLoop,
    DemandView,
    EnsureWorker,
    LoopSettings,
    RecordEvent,
    RemoveService,
    RemoveWorker,
    RunningWorker,
    Step,
    UpdateStatus,
    World,
)
from accordion.operator.control.timing import DEFAULT_TIMINGS, Timings
from accordion.sim.activator import HeldRequests
from accordion.sim.engine import HELD, ControlSample, Held, Replica, dist_quantile
from accordion.sim.metrics import DROPPED
from accordion.sim.mig import SimMig
from accordion.sim.pipelines import Link, StageHandover, stage_variant, stages_doc
from accordion.sim.staged import CellularReplicaPolicy, cellular_variant, replica_policy
from accordion.sim.workload import Family
from accordion.solver import Burstiness, PlannerSettings, PoolSpec, VariantSpec
from accordion.solver.problem import StageSpec
from accordion.workers.batching import Request, SlowdownMeter
from accordion.workers.dispersion import DispersionMeter
from accordion.workers.drain import QUIET_S
from accordion.workers.fastloop import RoutingDecider
from accordion.workers.router import MAX_CONNECT_RETRIES, RECHECK_S

if TYPE_CHECKING:
    from accordion.sim.engine import Simulator

NAMESPACE = "sim"
WORKER_DRAIN_S: float = OperatorConfig.model_fields["worker_drain_s"].default
"""The operator's `workers.drainSeconds` by default: the longest a removed worker drains."""
ROUTER_RELOAD_S = 0.5
"""The router re-reads its routing table this often (`accordion.workers.router`)."""


def dns_label(name: str) -> str:
    """A name as a DNS-1035 label (what the API accepts for object and variant names)."""
    label = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    if not label or not label[0].isalpha():
        label = "v-" + label
    return label[:63].rstrip("-")


def measured_profile_ms(
    variant: VariantSpec | StageSpec, pool: str, service_time: str
) -> list[dict[str, float]]:
    """The profile a user would measure for `variant` (or one part of its model) on `pool`, in
    the API's form: the percentiles of the service times the simulator draws
    (`SimConfig.service_time`)."""
    out = []
    for p in variant.profiles[pool]:
        p50 = p.p50_s * 1000.0
        p90 = (p.p90_s if p.p90_s is not None else p.p50_s) * 1000.0
        if service_time == "p50":
            p90 = p99 = p50
        elif service_time == "p90":
            p50 = p99 = p90
        else:
            p99 = dist_quantile(p50, p90, 0.99)
        out.append({"batchSize": p.batch_size, "p50Ms": p50, "p90Ms": p90, "p99Ms": p99})
    return out


def family_service(fam: Family, service_time: str, initial_qps: float) -> InferenceService:
    """A model family as the InferenceService a user would apply (API defaults elsewhere)."""
    obj: dict[str, Any] = {
        "apiVersion": "accordion.dev/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": dns_label(fam.name), "namespace": NAMESPACE, "generation": 1},
        "spec": {
            "slo": {"latencyMs": fam.slo_s * 1000.0},
            # Measured demand; demand.qps is the estimate until the first measurement.
            "demand": {"source": "Prometheus", "qps": round(initial_qps, 6)},
            "variants": [
                cellular_variant(  # a cellular variant as its step profile (`staged`)
                    v,
                    {
                        "name": dns_label(v.name),
                        "accuracy": v.accuracy,
                        "model": {"storageUri": f"/models/{dns_label(v.name)}.pt"},
                        "profiles": [
                            {"pool": pool, "batches": measured_profile_ms(v, pool, service_time)}
                            for pool in sorted(v.profiles)
                        ],
                        # Its model's parts, when measured (pipelines, `accordion.sim.pipelines`)
                        **stages_doc(
                            v, lambda st, pool: measured_profile_ms(st, pool, service_time)
                        ),
                    },
                    lambda u, pool: measured_profile_ms(u, pool, service_time),
                )
                for v in fam.variants
            ],
        },
    }
    svc = parse_resource(obj, f"family {fam.name}")
    assert isinstance(svc, InferenceService)
    return svc


def pool_object(pool: PoolSpec) -> DevicePool:
    spec: dict[str, Any] = {"devices": pool.devices, "costPerDevice": pool.cost_per_device}
    if pool.mig is not None:  # MIG GPUs (`accordion.sim.mig`)
        mig = {"gpuModel": pool.mig.gpu_model, "layouts": pool.mig.layouts}
        spec["mig"] = {k: v for k, v in mig.items() if v is not None}
    obj = {
        "apiVersion": "accordion.dev/v1alpha1",
        "kind": "DevicePool",
        "metadata": {"name": pool.name},
        "spec": spec,
    }
    parsed = parse_resource(obj, f"pool {pool.name}")
    assert isinstance(parsed, DevicePool)
    return parsed


class Refused:
    """What `LoopControl._send` returns when its backend has no endpoint: the router's
    connection was refused, and it sends the request again (`MAX_CONNECT_RETRIES`)."""


REFUSED = Refused()


@dataclass
class Group:
    """A worker group (a Deployment): its spec and its replicas."""

    key: WorkerKey
    spec: WorkerSpec
    replicas: list[Replica] = field(default_factory=list)
    cursor: int = 0

    def live(self) -> list[Replica]:
        return [r for r in self.replicas if r.live]

    def active(self) -> list[Replica]:
        return [r for r in self.replicas if r.state == "active"]


class SimActuator:
    """Carries the loop's steps out on the simulated cluster (see the module docstring)."""

    def __init__(self, control: LoopControl) -> None:
        self.control = control

    async def apply(self, step: Step) -> None:
        c = self.control
        match step:
            case EnsureWorker():
                c.ensure(step.spec)
            case RemoveWorker():
                c.remove(step.key)
            case ApplyRouting():
                c.apply_routing(step)
            case RemoveService():
                for key in step.workers:
                    c.remove(key)
                c.world.routing.pop(step.service, None)
            case UpdateStatus():
                c.world.status[step.service] = step.status
            case RecordEvent():
                c.notes.append(f"{c.sim.now_s:7.1f} s {step.service} {step.reason}: {step.message}")
            case _:
                assert_never(step)


MAX_PASSES_AT_ONE_INSTANT = 100
"""A loop that requeues itself without the simulated clock moving would hang the simulator;
past this many passes at one instant it is an error (the operator's clock always moves)."""


class LoopControl:
    """The engine's `Control` for ours: the operator's `ControlLoop` on simulated time."""

    holds_requests = True
    """The routers' activator holds a request while no backend is in the split (False: the
    router answers 503, as routers did before issue 17)."""

    def __init__(
        self,
        sim: Simulator,
        *,
        timings: Timings = DEFAULT_TIMINGS,
        planner: PlannerSettings | None = None,
        fast_loop: bool = True,
        burst_buffer: bool = True,
        services: Callable[[Family, str, float], InferenceService] = family_service,
        batching_model: bool = False,
        link: Link | None = None,
        worker_drain_s: float = WORKER_DRAIN_S,
    ) -> None:
        self.sim = sim
        self.worker_drain_s = worker_drain_s
        """The longest a removed worker drains (0: its device is free once its queue is)."""
        self.batching_model = batching_model
        """True: the families' InferenceServices ask for the batching model
        (`spec.demand.capacityModel: Batching`); False: the API's default, the planner's
        utilization margin. The routers measure burstiness either way, as in a cluster."""
        self.timings = timings
        self.fast_loop = fast_loop
        self._services = services
        settings = LoopSettings.from_timings(timings, planner)
        if not burst_buffer:
            settings = dataclasses.replace(settings, burst_buffer=False)
        self.loop = ControlLoop(settings, clock=lambda: sim.now_s)
        self.tracker = DemandTracker(timings.rise_half_life_s, timings.fall_half_life_s)
        self.world = World(pools={p.name: pool_object(p) for p in sim.cluster.pools})
        self.actuator = SimActuator(self)
        self.mig = SimMig(
            sim, self.world.pools, self._evict, lambda: self._request(timings.debounce_s)
        )
        """MIG pools: GPUs as Nodes and the operator's node steps (`accordion.sim.mig`)."""
        self.groups: dict[WorkerKey, Group] = {}
        self.draining: dict[WorkerKey, Group] = {}
        """Removed groups whose replicas drain (their Service stays meanwhile)."""
        self.handover = StageHandover(sim, self.groups, self.finished, link)
        """Pipeline stages hand their batches on to the next stage's group (`link`: the network
        between them; the planner's model of it by default)."""
        self.deciders: dict[str, RoutingDecider] = {}
        self.backends: dict[str, dict[str, WorkerKey]] = {}
        self.key_of: dict[int, str] = {}
        self.index_of: dict[str, int] = {}
        self.variant_of: dict[tuple[str, str], VariantSpec] = {}
        self.notes: list[str] = []
        self.passes = 0
        self._passes_now = 0
        """Passes in a row at the current simulated instant (`MAX_PASSES_AT_ONE_INSTANT`)."""
        self._planner_times: list[float] = []
        self._pass_at: float | None = None
        self._last_pass_s = -1e9
        self._initial = True
        self._aio = asyncio.new_event_loop()
        self._view = DemandView()
        self.meters: dict[str, DispersionMeter] = {}
        self.resent = 0
        """Requests sent on to another backend after a worker dropped them (`resend`)."""
        self._dropped_by: dict[int, set[str]] = {}
        """Per request sent on after a worker's drop: the backends that dropped it (`resend`)."""
        """Per service, its router's `DispersionMeter` (fed every arrival)."""
        self.bursty = BurstinessBook()
        self.activators = HeldRequests(sim, self._wake)
        """The routers' activators (requests held at zero ready replicas)."""
        self._measured_at: dict[str, float] = {}
        self._last_rate: dict[str, float] = {}
        self._own_latency_s: dict[str, float] = {}
        self._rechecking: set[tuple[str, str]] = set()
        """(service, backend) pairs out of a router's split with a recheck scheduled."""

    @property
    def planner_times_s(self) -> list[float]:
        return self._planner_times

    # ---- the Control protocol -----------------------------------------------------------

    def start(self, initial_qps: dict[str, float]) -> None:
        sim = self.sim
        for s, fam in enumerate(sim.families):
            svc = self._services(fam, sim.config.service_time, initial_qps.get(fam.name, 0.0))
            if self.batching_model:
                svc.spec.demand.capacity_model = CapacityModelName.BATCHING
            self.world.services[svc.key] = svc
            self.key_of[s] = svc.key
            self.index_of[svc.key] = s
            for v in fam.variants:
                self.variant_of[(svc.key, dns_label(v.name))] = v
        # The warmed-up cluster: the first plan's replicas are ready at time 0, and the
        # second pass routes to them (with MIG pools: the layouts first, then replicas).
        for _ in range(3 if self.mig else 2):
            self._pass()
        self._initial = False
        self._counted = [0] * len(sim.families)
        sim.call_at(self.timings.demand_interval_s, self._measure)
        t = self.timings.resync_interval_s
        end = sim.config.end_s if sim.config.end_s is not None else sim.workload.duration_s
        while t <= end:
            sim.call_at(t, lambda: self._request(0.0))
            t += self.timings.resync_interval_s

    def measured(self, arrivals: dict[str, int], interval_s: float) -> None:
        """(The engine's per-second tally; this control measures at its own interval.)"""

    def _measure(self) -> None:
        """Every `demand_interval_s`: each router's request counter, as a rate."""
        self.sim.call_at(self.sim.now_s + self.timings.demand_interval_s, self._measure)
        self._observe()

    def _wake(self, service: str) -> None:
        """A request held at zero ready replicas: its router reports at once."""
        self.sim.call_at(self.sim.now_s, lambda: self._observe(service))

    def _observe(self, woken: str | None = None) -> None:
        """Fold each router's request counter since its last report in, as a rate; `woken`:
        that service's router alone reports (`Reporter.wake`), its window counted over a
        report interval at least when it reported no arrivals last (`ReportPolicy`)."""
        now = self.sim.now_s
        totals = self.sim.arrivals_total
        for s, key in self.key_of.items():
            if woken is not None and key != woken:
                continue
            since = self._measured_at.get(key, 0.0)
            if now <= since:
                continue
            interval = now - since
            if woken is not None and not self._last_rate.get(key):
                interval = max(interval, self.timings.demand_interval_s)
            rate = (totals[s] - self._counted[s]) / interval
            self.tracker.observe(key, now, rate)
            self._counted[s], self._measured_at[key], self._last_rate[key] = totals[s], now, rate
        self._view = DemandView(
            qps=self.tracker.estimates(),
            burst=self.tracker.bursts(),
            last_arrival_s=self.tracker.last_arrivals(),
            burstiness=self._burstiness(),
            cold_start_s=self.activators.last_cold_starts(),
        )
        if self.loop.pass_due(self.world, self._view):
            # Demand passes wait for no quiet time (debounce is for bursts of watch events),
            # only for the shortest interval between passes; a wake from zero not even for
            # that (`accordion.operator.handlers.Driver._settle`). The operator folds the
            # held request's report within a quarter of the report interval
            # (`reports.RouterDemand.run` on a surge), and passes then.
            if woken is not None and self.loop.waking():
                self._request(self.timings.demand_interval_s / 4)
            else:
                self._request(self._last_pass_s + self.timings.min_pass_interval_s - now)

    def _burstiness(self) -> dict[str, Burstiness]:
        """Each router's dispersion meter, published by the operator's rule (`burstiness`)."""
        for key, meter in self.meters.items():
            value = meter.value()
            self.bursty.observe(key, combine([value] if value is not None else []))
        return dict(self.bursty.published)

    def route(self, service: int, request: Request) -> Replica | Held | None:
        now = self.sim.now_s
        key = self.key_of[service]
        self.meters.setdefault(key, DispersionMeter()).add(now)
        return self._route(key, request)

    def _route(
        self, key: str, request: Request, exclude: Collection[str] = ()
    ) -> Replica | Held | None:
        """As the router's `infer`: with no backend in the split the activator holds the
        request (`holds_requests`; else the router answers 503); a backend with no endpoint
        refuses the connection, leaves the split and the request is sent again,
        `MAX_CONNECT_RETRIES` times at most. `exclude`: backends that dropped it (`resend`)."""
        refused = 0
        while True:
            if not self._ready(key):
                if not self.holds_requests:
                    return None
                own = self._own_latency_s.get(key, 0.0)
                return HELD if self.activators.hold(key, request, own) else None
            out = self._send(key, request, exclude)
            if not isinstance(out, Refused):
                return out
            refused += 1
            if refused > MAX_CONNECT_RETRIES:
                return None

    def _ready(self, key: str) -> bool:
        """The router's readiness: some backend of its table is in the split (healthy)."""
        decider = self.deciders.get(key)
        return decider is not None and bool(decider.plan_weights())

    def _endpoints(self, key: WorkerKey) -> list[Replica]:
        """What a group's Service sends to: its ready replicas, or while it has none, those of
        its removed predecessor that still drain (serving, terminating endpoints)."""
        group = self.groups.get(key)
        active = group.active() if group is not None else []
        if active:
            return active
        gone = self.draining.get(key)
        if gone is None:
            return []
        now = self.sim.now_s
        left = [r for r in gone.replicas if r.state == "retiring" and now < r.drain_end_s]
        if not left:
            del self.draining[key]
        return left

    def _release(self, key: str) -> None:
        """Send the requests the activator holds on, now that a backend is ready."""
        if not self._ready(key):
            return
        for request in self.activators.release(key):
            out = self._route(key, request)
            if out is None:
                self.sim.recorder.finish(request.request_id, request.arrival_s, DROPPED)
            elif isinstance(out, Replica):
                self.sim.enqueue(out, request)

    def _send(
        self, key: str, request: Request, exclude: Collection[str] = ()
    ) -> Replica | Refused | None:
        now = self.sim.now_s
        decider = self.deciders.get(key)
        if decider is None:
            return None  # no routing table: the router answers 503
        choice = decider.choose(request.deadline_s - now, now, exclude=exclude)
        if choice.backend is None:
            return None
        decider.sent(choice.backend, now)
        wkey = self.backends[key][choice.backend]
        endpoints = self._endpoints(wkey)
        if not endpoints:  # no endpoint behind the Service: the connection is refused
            decider.finished(choice.backend, now, "failed")
            decider.set_healthy(choice.backend, False)
            self._recheck(key, choice.backend)
            return REFUSED
        group = self.groups.get(wkey) or self.draining[wkey]
        replica = endpoints[group.cursor % len(endpoints)]
        group.cursor += 1
        request.payload = (key, choice.backend)
        return replica

    def _recheck(self, key: str, backend: str) -> None:
        """A backend out of the split is checked again every `RECHECK_S` (the router's health
        loop) while its table names it: it rejoins once its Service has an endpoint."""
        if (key, backend) in self._rechecking:
            return
        self._rechecking.add((key, backend))

        def check() -> None:
            self._rechecking.discard((key, backend))
            decider = self.deciders.get(key)
            wkey = self.backends.get(key, {}).get(backend)
            if decider is None or wkey is None or decider.healthy(backend):
                return
            if self._endpoints(wkey):
                decider.set_healthy(backend, True)
                self._release(key)
            else:
                self._recheck(key, backend)

        # After the trace's end only while requests wait for it (they end at their deadline).
        waiting = self.activators.waiting(key) > 0
        self.sim.call_at(self.sim.now_s + RECHECK_S, check, after_end=waiting)

    def finished(self, replica: Replica, request: Request, outcome: str) -> None:
        if not isinstance(request.payload, tuple):
            return
        key, backend = request.payload
        decider = self.deciders.get(key)
        if decider is None:
            return
        now = self.sim.now_s
        if outcome == "answered":
            self._dropped_by.pop(request.request_id, None)
            value = replica.meter.value(now) if replica.meter is not None else None
            report = (f"r{replica.rid}", value) if value is not None else None
            decider.finished(backend, now, "answered", report)
        else:
            decider.finished(backend, now, "dropped")

    def resend(self, replica: Replica, request: Request) -> Replica | Held | None:
        """As the router on a worker's drop (a 503 saying ``dropped``): the request goes to
        another backend of its table, one the fast loop predicts answers it in time, at most
        the table's ``fast_loop.drop_retries`` times (`RoutingDecider.choose` with the
        backends that dropped it excluded). Not a pipeline's later stage: its router sent the
        request to the first stage, which answered."""
        if replica.admit is not None or not isinstance(request.payload, tuple):
            return None
        key, backend = request.payload
        decider = self.deciders.get(key)
        if decider is None or request.deadline_s <= self.sim.now_s:
            return None
        tried = self._dropped_by.setdefault(request.request_id, set())
        tried.add(backend)
        bounds = decider.table.fast_loop
        if not bounds.enabled or len(tried) > bounds.drop_retries:
            del self._dropped_by[request.request_id]
            return None
        out = self._route(key, request, tried)
        if out is None:
            del self._dropped_by[request.request_id]
        else:
            self.resent += 1
        return out

    def replica_changed(self, replica: Replica) -> None:
        if self.mig:
            self.mig.assign()  # a slice taken or freed (`accordion.sim.mig`)
        # Held requests go on when a backend joins the router's split (`_recheck`), not when
        # a replica is ready: the router learns that from its health check.
        if not self._initial:
            self._request(self.timings.debounce_s)  # the Deployment's readiness changed

    def sample(self, service: str) -> ControlSample | None:
        key = f"{NAMESPACE}/{dns_label(service)}"
        plan = self.loop.last_plan
        # Per worker group: a pipeline's spare replicas in its stages' devices (`desired`).
        spare_of = spare_by_group(
            r for r in (plan.rows if plan is not None else []) if r.service == key
        )
        out = ControlSample(estimate_qps=self._view.qps.get(key, 0.0))
        for gkey, group in self.groups.items():
            if gkey.service != key or gkey.stage:  # a pipeline counts at its first stage
                continue
            cap = group.spec.capacity_qps_per_replica
            ready = len(group.active())
            spare = min(ready, spare_of.get(gkey, 0))
            out.planned_qps += (ready - spare) * cap
            out.spare_qps += spare * cap
            out.loading_qps += (len(group.live()) - ready) * cap
        return out

    # ---- passes ---------------------------------------------------------------------------

    def _request(self, after_s: float) -> None:
        at = self.sim.now_s + max(0.0, after_s)
        if self._pass_at is not None and self._pass_at <= at + 1e-9:
            return
        self._pass_at = at
        self.sim.call_at(at, self._scheduled)

    def _scheduled(self) -> None:
        if self._pass_at is None or self._pass_at > self.sim.now_s + 1e-9:
            return  # superseded by an earlier pass
        self._pass_at = None
        self._pass()

    def _pass(self) -> None:
        """One pass of the loop, as the operator runs it."""
        same = self._last_pass_s == self.sim.now_s
        self._passes_now = self._passes_now + 1 if same else 1
        if self._passes_now > MAX_PASSES_AT_ONE_INSTANT:
            raise RuntimeError(
                f"the control loop asked for {self._passes_now} passes at t={self.sim.now_s} s "
                "without the clock moving: a requeue that never comes due"
            )
        self._last_pass_s = self.sim.now_s
        self.passes += 1
        self.world.workers = {
            key: RunningWorker(spec=g.spec, ready_replicas=len(g.active()))
            for key, g in self.groups.items()
        }
        if self.mig:
            self.world.nodes = self.mig.nodes()
        result = self._aio.run_until_complete(
            self.loop.reconcile(self.world, self._view, self.actuator)
        )
        if self.mig:
            self.mig.act(self.loop.last_plan, initial=self._initial)
        decision = result.decision
        if decision.planned:
            self._planner_times.append(self.loop.plan_time_s + self.loop.spare_time_s)
        self.tracker.plan_feedback(self.loop.capacity_by_service(), self.loop.short_services())
        if decision.requeue_after_s is not None:
            self._request(decision.requeue_after_s)

    # ---- the actuator's work ----------------------------------------------------------------

    def ensure(self, spec: WorkerSpec) -> None:
        group = self.groups.get(spec.key)
        if group is None:
            group = self.groups[spec.key] = Group(spec.key, spec)
        group.spec = spec
        live = group.live()
        if spec.replicas > len(live):
            for _ in range(spec.replicas - len(live)):
                group.replicas.append(self._new_replica(spec))
        elif spec.replicas < len(live):
            order = {"pending": 0, "loading": 1, "active": 2}
            surplus = sorted(live, key=lambda r: (order[r.state], r.policy.queue_depth, -r.rid))[
                : len(live) - spec.replicas
            ]
            for r in surplus:
                self._retire(r)
        group.replicas = [r for r in group.replicas if r.state != "gone"]

    def _new_replica(self, spec: WorkerSpec) -> Replica:
        config = spec.worker_config()
        service = self.index_of[spec.key.service]
        variant = whole = self.variant_of[(spec.key.service, spec.key.variant)]
        if spec.stage is not None:  # a pipeline stage runs its parts (`pipelines`)
            variant = stage_variant(whole, spec.stage.first, spec.stage.last, spec.key.pool)
        replica = self.sim.add_replica(
            service,
            variant,
            spec.key.pool,
            spec.max_batch_size,
            # A pipeline's capacity counts once, at its first stage.
            0.0 if spec.key.stage else spec.capacity_qps_per_replica,
            replica_policy(config, variant, spec.key.pool),  # cellular per step (`staged`)
            initial=self._initial,
            tag=spec.key,
        )
        if not isinstance(replica.policy, CellularReplicaPolicy):
            replica.meter = SlowdownMeter(config.profile_s)
        self.handover.wire(replica, spec, whole)
        return replica

    def _evict(self, replica: Replica) -> None:
        """A worker pod deleted from a node being drained (MIG): it finishes its queue, and its
        Deployment makes a new one, which waits for a free slice (`accordion.sim.mig`)."""
        self._retire(replica)
        group = self.groups.get(replica.tag) if isinstance(replica.tag, WorkerKey) else None
        if group is not None:
            self.ensure(group.spec)

    def _retire(self, replica: Replica) -> None:
        """SIGTERM to a worker: it drains (`accordion.workers.drain`)."""
        self.sim.retire(replica, drain_s=self.worker_drain_s, quiet_s=QUIET_S)

    def remove(self, key: WorkerKey) -> None:
        group = self.groups.pop(key, None)
        if group is None:
            return
        for r in group.live():
            self._retire(r)
        if any(r.state == "retiring" for r in group.replicas):
            self.draining[key] = group

    def apply_routing(self, step: ApplyRouting) -> None:
        self.world.routing[step.service] = AppliedRouting(step.routing, self.sim.now_s)
        table = routing_table(step.routing, lambda k: f"http://{k.backend_name}.sim")
        backends = {r.key.backend_name: r.key for r in step.routing.routes}
        if table is not None:
            table = table.model_copy(
                update={"fast_loop": table.fast_loop.model_copy(update={"enabled": self.fast_loop})}
            )
        delay = 0.0 if self._initial else ROUTER_RELOAD_S

        def load() -> None:
            self.backends[step.service] = backends
            if table is None:
                self.deciders.pop(step.service, None)
            elif step.service in self.deciders:
                self.deciders[step.service].update_table(table)
            else:
                seed = self.sim.config.seed * 1000 + len(self.deciders)
                self.deciders[step.service] = RoutingDecider(table, seed=seed)
            if table is not None:
                decider = self.deciders[step.service]
                for b in table.backends:  # pending ones join at a passed check
                    if decider.healthy(b.name):
                        continue
                    if self._initial and self._endpoints(backends[b.name]):
                        decider.set_healthy(b.name, True)  # a router's first check, at start
                    else:
                        self._recheck(step.service, b.name)
                latencies = [b.batch_latency_ms for b in table.backends if b.batch_latency_ms]
                self._own_latency_s[step.service] = min(latencies) / 1000.0 if latencies else 0.0
            self._release(step.service)

        if delay <= 0:
            load()
        else:
            self.sim.call_at(self.sim.now_s + delay, load)
