"""The discrete-event engine: arrivals, replicas with batchers, devices, measurement.

Simulated time only; one heap of events ordered by (time, kind, sequence number), so that runs
are deterministic for a seed. Arrivals come from the sorted workload and are merged with the
heap (events at the same instant run first: a completion frees a device before an arrival is
routed). Each replica runs one batching policy object from `accordion.workers.batching` (or a
baseline's), driven by the protocol that module describes; execution times are drawn from the
profile (`SimConfig.service_time`).

The engine knows nothing of how replicas are chosen or requests routed: a `Control` does (the
policy's `control(sim)`). Ours is `accordion.sim.driver.LoopControl`, the operator's own
`ControlLoop` driven on simulated time; the baselines' is `accordion.sim.targets.TargetControl`
(a target per re-plan tick, carried out make-before-break). The engine offers them replicas
(`add_replica`, `retire`), devices (a replica holds one device of its pool from the moment it
is scheduled until it has drained its queue; one that finds no free device waits, as a pod
stays Pending, and gets the first device freed), scheduled calls (`call_at`), and every second
the arrivals of that second per service (`Control.measured`).
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from accordion.sim.metrics import DROPPED, LATE, OK, Recorder, SecondStats, Summary
from accordion.sim.policy import ControlPolicy, SimView
from accordion.sim.staged import answered, execution_points
from accordion.sim.workload import Cluster, Family, Workload
from accordion.solver import VariantSpec
from accordion.workers.batching import BatchingPolicy, Decision, Request
from accordion.workers.config import interpolate_profile

# Event kinds, in the order they run at the same instant.
_COMPLETE, _READY, _RETIRE, _WAKE, _MEASURE, _CALL, _FINAL_CALL = range(7)
_EPS = 1e-9


class Held:
    """What `Control.route` returns for a request it holds (the router's activator,
    `accordion.sim.activator`): it will enqueue or drop the request itself later."""


HELD = Held()


@dataclass(frozen=True)
class SimConfig:
    """Knobs of a run (the world's physics; how a policy decides is the policy's)."""

    seed: int = 0
    service_time: str = "p50"
    """``p50``: constant p50 (Proteus's artifact); ``p90``: constant p90; ``dist``: drawn from
    the profile (piecewise linear through p50 at the median and p90 at the 90th percentile)."""
    model_load_s: float = 2.0
    """From a replica getting its device to its model serving (pod start and model load)."""
    initial_window_s: float = 5.0
    """The first plan is made for the mean rate over this window (same for every policy),
    with its replicas ready at time 0 (a cluster already warmed up)."""
    router: str = "auto"
    """Baselines only: ``auto``: the policy's choice (`ControlPolicy.router`); ``decider``: the
    router's `RoutingDecider`, one backend per replica; ``builtin``: plain smooth weighted
    round-robin, no fast loop."""
    end_s: float | None = None


@dataclass
class Replica:
    """One worker on one device: a variant, its batcher and its lifecycle.

    pending (no free device yet) -> loading -> active -> retiring (draining its queue) -> gone.
    """

    rid: int
    service: int
    variant: VariantSpec
    pool: str
    max_batch_size: int
    capacity_qps: float
    policy: BatchingPolicy
    ready_at_s: float
    state: str = "loading"
    weight: float = 0.0
    current_weight: float = 0.0
    owns_slot: bool = True
    replaced: bool = False
    wake_token: int = 0
    tag: Any = None
    """The control's own mark (the product's worker group)."""
    meter: Any = None
    """A `SlowdownMeter` when the replica reports its speed as our workers do."""
    admit: Callable[[Request], Request] | None = None
    """A pipeline stage's: the request as its batcher sees it (`accordion.sim.pipelines`)."""
    hand_on: Callable[[tuple[Request, ...]], None] | None = None
    """A pipeline stage's but the last: takes a finished batch on to the next stage
    instead of answering it (`accordion.sim.pipelines`)."""
    drain_quiet_s: float = 0.0
    """Retiring with a drain (`Simulator.retire`): the device stays held until no request has
    come for this long (since the retirement or the last request), ..."""
    drain_end_s: float = 0.0
    """... or until this instant, whichever is first (and the queue is empty)."""
    quiet_end_s: float = 0.0
    """When a draining replica's quiet time ends, unless another request comes first."""

    @property
    def key(self) -> tuple[int, str, str]:
        return (self.service, self.variant.name, self.pool)

    @property
    def live(self) -> bool:
        return self.state in ("pending", "loading", "active")


@dataclass
class ControlSample:
    """What a control reports of one service in one second, for the timeline plot."""

    planned_qps: float = 0.0
    """Capacity of the ready replicas the plan routes to by weight."""
    spare_qps: float = 0.0
    """Capacity of ready spare (burst) replicas."""
    loading_qps: float = 0.0
    """Capacity of replicas that are pending or loading."""
    estimate_qps: float = 0.0


class Control(Protocol):
    """Decides which replicas run and routes every request (see the module docstring)."""

    def start(self, initial_qps: dict[str, float]) -> None:
        """Set the cluster up for `initial_qps` (replicas ready at once, `add_replica(...,
        initial=True)`) and schedule what the control does over time (`call_at`)."""

    def measured(self, arrivals: dict[str, int], interval_s: float) -> None:
        """The arrivals of the last `interval_s` per service (every second)."""

    def route(self, service: int, request: Request) -> Replica | Held | None:
        """The replica a request goes to, None (shed), or `HELD` (the control holds it and
        later calls `enqueue`, or records it dropped)."""

    def finished(self, replica: Replica, request: Request, outcome: str) -> None:
        """A request sent to `replica` was ``answered`` or ``dropped``."""

    def resend(self, replica: Replica, request: Request) -> Replica | Held | None:
        """`replica` dropped `request` (after `finished`): the replica it is sent on to, as a
        router that retries a worker's drop does, None (the drop stands) or `HELD`."""

    def replica_changed(self, replica: Replica) -> None:
        """A replica became active, or gone."""

    def sample(self, service: str) -> ControlSample | None:
        """The service's capacity by kind now (None: the control does not say)."""

    @property
    def planner_times_s(self) -> list[float]: ...


@dataclass
class SimResult:
    """A finished run: the summary, per-second rows and the request outcomes."""

    summary: Summary
    seconds: list[SecondStats]
    outcome: dict[int, int] = field(default_factory=dict)
    families: dict[str, tuple[int, int, float]] = field(default_factory=dict)
    """Per family: demand, requests served in time, their effective accuracy."""
    timeline: dict[str, list[tuple[int, ControlSample, int]]] = field(default_factory=dict)
    """Per family, per second: the control's capacity sample and the family's arrivals."""
    notes: list[str] = field(default_factory=list)
    """What the control wants said of the run (e.g. plan events)."""


def dist_quantile(p50: float, p90: float, u: float) -> float:
    """The inverse CDF of the ``dist`` service-time model at `u` (see `SimConfig`)."""
    lo = max(0.5 * p50, 2 * p50 - p90)
    hi = p90 + (p90 - p50)
    if u < 0.5:
        return lo + (p50 - lo) * u / 0.5
    if u < 0.9:
        return p50 + (p90 - p50) * (u - 0.5) / 0.4
    return p90 + (hi - p90) * (u - 0.9) / 0.1


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
        self.replicas: list[Replica] = []
        self.by_service: dict[int, list[Replica]] = defaultdict(list)
        self._heap: list[tuple[float, int, int, object]] = []
        self._seq = 0
        self._next_rid = 0
        self._arrivals_this_second: dict[int, int] = defaultdict(int)
        self.arrivals_total: list[int] = [0] * len(workload.families)
        """Arrivals per service since the start (a router's request counter)."""
        self._slots_in_use = 0
        self._slots_by_pool: dict[str, int] = defaultdict(int)
        self._pending: dict[str, deque[Replica]] = defaultdict(deque)
        self._last_slot_change_s = 0.0
        self.now_s = 0.0
        self.timeline: dict[str, list[tuple[int, ControlSample, int]]] = defaultdict(list)
        self.busy_s_by_pool: dict[str, float] = defaultdict(float)
        """Execution time of the batches started on each pool's devices."""
        policy.setup(SimView(cluster=cluster, service_time=self.config.service_time))
        self.control: Control = policy.control(self)

    # ---- event plumbing -------------------------------------------------------------------

    def _push(self, t_s: float, kind: int, payload: object) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t_s, kind, self._seq, payload))

    def call_at(self, t_s: float, fn: Callable[[], None], *, after_end: bool = False) -> None:
        """Run `fn` at simulated time `t_s` (after completions and arrivals of that instant).
        A control's timers stop a second after the trace's last arrival, unless `after_end`:
        for a call that may end a request still waiting (it must not recur for ever)."""
        self._push(max(t_s, self.now_s), _FINAL_CALL if after_end else _CALL, fn)

    def _slots_changed(self, delta: int) -> None:
        self.recorder.device_seconds += self._slots_in_use * (self.now_s - self._last_slot_change_s)
        self._last_slot_change_s = self.now_s
        self._slots_in_use += delta

    def free_devices(self, pool: str) -> int:
        return self.pool_devices.get(pool, 0) - self._slots_by_pool[pool]

    def _take_slot(self, replica: Replica) -> None:
        replica.owns_slot = True
        self._slots_by_pool[replica.pool] += 1
        self._slots_changed(+1)

    def _release_slot(self, replica: Replica) -> None:
        if not replica.owns_slot:
            return
        replica.owns_slot = False
        self._slots_by_pool[replica.pool] -= 1
        self._slots_changed(-1)
        self.start_pending(replica.pool)

    def start_pending(self, pool: str) -> None:
        """Give free devices of `pool` to the replicas waiting for one (also when the pool's
        devices grow: MIG slices that appear, `accordion.sim.mig`)."""
        queue = self._pending[pool]
        while queue and self.free_devices(pool) > 0:
            waiting = queue.popleft()
            if waiting.state != "pending":
                continue
            self._take_slot(waiting)
            waiting.state = "loading"
            waiting.ready_at_s = self.now_s + self.config.model_load_s
            self._push(waiting.ready_at_s, _READY, waiting)

    # ---- execution ------------------------------------------------------------------------

    def exec_time_s(self, replica: Replica, batch_size: int) -> float:
        """An execution time of a batch, drawn per `SimConfig.service_time`."""
        points = execution_points(replica)  # a cellular replica runs a step (`staged`)
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
        return dist_quantile(p50, p90, self.rng.random())

    def _poke(self, replica: Replica) -> None:
        """Ask the replica's batcher what to do now, and do it."""
        now = self.now_s
        decision: Decision = replica.policy.decide(now)
        for d in decision.dropped:
            self.control.finished(replica, d.request, "dropped")
            again = self.control.resend(replica, d.request)
            if again is None:
                self.recorder.finish(d.request.request_id, d.request.arrival_s, DROPPED)
            elif isinstance(again, Replica):  # the router sends it on (`Control.resend`)
                self.enqueue(again, d.request)
        if decision.batch:
            latency = self.exec_time_s(replica, len(decision.batch))
            self.busy_s_by_pool[replica.pool] += latency
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
            until = min(replica.quiet_end_s, replica.drain_end_s)
            if self.now_s < until - _EPS:  # draining: check again when it may end
                self.call_at(until, lambda: self._maybe_gone(replica))
                return
            replica.state = "gone"
            self._release_slot(replica)
            self.control.replica_changed(replica)

    def _complete(self, replica: Replica, batch: tuple[Request, ...], latency_s: float) -> None:
        acc = replica.variant.accuracy
        if replica.meter is not None:
            replica.meter.observe(len(batch), latency_s, self.now_s)
        done = answered(replica, batch)  # a cellular step: the requests it finishes
        if replica.hand_on is not None:  # a pipeline stage: the next stage's work now
            replica.hand_on(done)
            done = ()
        for req in done:
            kind = OK if self.now_s <= req.deadline_s + _EPS else LATE
            self.recorder.finish(req.request_id, req.arrival_s, kind, acc)
            self.control.finished(replica, req, "answered")
        replica.policy.complete(len(batch), latency_s, self.now_s)
        self._poke(replica)

    # ---- replicas -------------------------------------------------------------------------

    def add_replica(
        self,
        service: int,
        variant: VariantSpec,
        pool: str,
        max_batch: int,
        capacity_qps: float,
        policy: BatchingPolicy,
        *,
        initial: bool = False,
        tag: Any = None,
    ) -> Replica:
        """A new replica on a free device of its pool, or waiting for one (pending).
        `initial`: ready at once (the warmed-up cluster at time 0)."""
        replica = Replica(
            rid=self._next_rid,
            service=service,
            variant=variant,
            pool=pool,
            max_batch_size=max_batch,
            capacity_qps=capacity_qps,
            policy=policy,
            ready_at_s=self.now_s,
            owns_slot=False,
            tag=tag,
        )
        self._next_rid += 1
        self.replicas.append(replica)
        self.by_service[service].append(replica)
        if self.free_devices(pool) > 0:
            self._take_slot(replica)
            if initial:
                replica.state = "active"
                self.control.replica_changed(replica)
            else:
                replica.ready_at_s = self.now_s + self.config.model_load_s
                self._push(replica.ready_at_s, _READY, replica)
        else:
            replica.state = "pending"
            self._pending[pool].append(replica)
        return replica

    def schedule_retire(self, replica: Replica, at_s: float) -> None:
        self._push(at_s, _RETIRE, replica)

    def _ready(self, replica: Replica) -> None:
        if replica.state != "loading":
            return
        replica.state = "active"
        self.control.replica_changed(replica)

    def retire(self, replica: Replica, drain_s: float = 0.0, quiet_s: float = 0.0) -> None:
        """Stop sending to a replica; it drains its queue, then releases its device. With a
        `drain_s` (the product's worker, `accordion.workers.drain`), an active replica holds
        its device, and takes what is still sent to it, until no request has come for
        `quiet_s` or `drain_s` has passed, whichever is first."""
        if replica.state == "gone":
            return
        if replica.state == "active" and drain_s > 0:
            replica.drain_quiet_s = quiet_s
            replica.drain_end_s = self.now_s + drain_s
            replica.quiet_end_s = self.now_s + quiet_s
        if replica.state in ("pending", "loading"):
            replica.state = "gone"
            self._release_slot(replica)
            self.control.replica_changed(replica)
            return
        replica.state = "retiring"
        replica.weight = 0.0
        self._maybe_gone(replica)

    def enqueue(self, replica: Replica, request: Request) -> None:
        if replica.state == "retiring":  # a draining worker: its quiet time starts again
            replica.quiet_end_s = self.now_s + replica.drain_quiet_s
        if replica.admit is not None:
            request = replica.admit(request)
        replica.policy.enqueue(request, self.now_s)
        self._poke(replica)

    # ---- arrivals and measurement ---------------------------------------------------------

    def _arrive(self, rid: int) -> None:
        w = self.workload
        service = w.family[rid]
        req = Request(rid, w.arrival_s[rid], w.deadline_s[rid])
        self.recorder.arrival(rid, req.arrival_s)
        self._arrivals_this_second[service] += 1
        self.arrivals_total[service] += 1
        replica = self.control.route(service, req)
        if replica is None:
            self.recorder.finish(rid, req.arrival_s, DROPPED)
            return
        if isinstance(replica, Held):
            return
        self.enqueue(replica, req)

    def _measure(self) -> None:
        sec = round(self.now_s) - 1
        st = self.recorder.second(sec)
        st.capacity_qps = sum(r.capacity_qps for r in self.replicas if r.state == "active")
        st.devices = float(self._slots_in_use)
        counts = {
            name: self._arrivals_this_second.get(s, 0)
            for s, name in enumerate(self.workload.families)
        }
        self._arrivals_this_second.clear()
        for name, n in counts.items():
            sample = self.control.sample(name)
            if sample is not None:
                self.timeline[name].append((sec, sample, n))
        self.control.measured(counts, 1.0)

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
        self.control.start(initial)
        t = 1.0
        while t <= end_s + 1.0:
            self._push(t, _MEASURE, None)
            t += 1.0
        i, n = 0, len(w)
        last_report = -1
        while True:
            next_arrival = w.arrival_s[i] if i < n else math.inf
            if self._heap and self._heap[0][0] <= next_arrival:
                t_s, kind, _, payload = heapq.heappop(self._heap)
                if kind == _CALL and t_s > end_s + 1.0 and i >= n:
                    continue  # the control's timers after the end of the trace
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
        self.recorder.planner_times_s = list(self.control.planner_times_s)
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
            timeline=dict(self.timeline),
            notes=list(getattr(self.control, "notes", [])),
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
            self.retire(payload)
        elif kind == _MEASURE:
            self._measure()
        elif kind in (_CALL, _FINAL_CALL):
            cast(Callable[[], None], payload)()


def simulate(
    cluster: Cluster,
    workload: Workload,
    policy: ControlPolicy,
    config: SimConfig | None = None,
    progress: Callable[[float], None] | None = None,
) -> SimResult:
    """Run `policy` on `workload` over `cluster`; see `Simulator`."""
    return Simulator(cluster, workload, policy, config).run(progress)
