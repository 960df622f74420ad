"""A Knative-style concurrency autoscaler (the KPA) as a simulator baseline.

Why: serverless inference on Kubernetes today usually means KServe on Knative, whose pod
autoscaler scales each model's replicas on request concurrency, to zero when idle. Accordion's
own serverless mode (scale to zero, the batching model) is measured against it on the same
simulated cluster (bench/serverless).

What it does, as Knative's KPA documents it (knative.dev, "Configuring the autoscaler",
"Additional autoscaling configuration for Knative Pod Autoscaler"):

* every `tick_s` (2 s) it averages the observed concurrency (requests in the replicas and in
  the activator, sampled every `sample_s`) over the stable window (60 s) and over the panic
  window (6 s, 10% of it); desired pods = ceil(average / (target concurrency x target
  utilization)), with container-concurrency-target-percentage 70%;
* it enters panic mode when the panic window's desired count reaches 2x (panic threshold 200%)
  the ready pods; in panic it never scales down, and it leaves panic once the stable window has
  passed without that condition;
* scale-down is at most by the max scale-down rate (2: half the ready pods per tick);
* scale to zero: the last pod goes after no request for the whole stable window and then the
  scale-to-zero grace period (30 s);
* at zero, the activator holds arrivals and asks for a pod at once (no wait for the tick);
  they are sent to the pod when it is ready (cold start: `SimConfig.model_load_s`).

What a KPA cannot do is choose a model variant: each service runs one, the most accurate that
fits its SLO (a KServe InferenceService serves one model), on the pool with the most capacity
per unit of cost. Each pod runs our SLO batcher with our planner's batch cap (the best batching
a KServe predictor could have), so the comparison is of the autoscalers alone. Target
concurrency per pod is that batch cap: the requests one pod works on at once.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from accordion.sim.engine import ControlSample, Replica
from accordion.sim.policy import ControlPolicy, Target, profile_s
from accordion.sim.workload import Family
from accordion.solver import Allocation, VariantSpec
from accordion.solver.capacity import batch_capacity
from accordion.workers.batching import (
    BatchingPolicy,
    Decision,
    LatencyPredictor,
    Request,
    SloBatcher,
)

if TYPE_CHECKING:
    from accordion.sim.engine import Control, Simulator

STABLE_WINDOW_S = 60.0
PANIC_WINDOW_S = 6.0
PANIC_THRESHOLD = 2.0
TARGET_UTILIZATION = 0.7
MAX_SCALE_DOWN_RATE = 2.0
SCALE_TO_ZERO_GRACE_S = 30.0
TICK_S = 2.0
SAMPLE_S = 0.5


class HeldUntilReady(BatchingPolicy):
    """A pod's batcher behind the activator: requests queue, none runs before the pod is ready
    (`ready`), then the SLO batcher decides as usual."""

    def __init__(self, inner: BatchingPolicy) -> None:
        super().__init__(inner.max_batch_size)
        self.inner = inner
        self.ready = False

    def enqueue(self, request: Request, now_s: float) -> None:
        self.inner.enqueue(request, now_s)

    def decide(self, now_s: float) -> Decision:
        if not self.ready:
            return Decision()
        return self.inner.decide(now_s)

    @property
    def queue_depth(self) -> int:
        return self.inner.queue_depth

    @property
    def inflight(self) -> int:
        return self.inner._inflight

    def complete(self, batch_size: int, latency_s: float, now_s: float) -> None:
        self.inner.complete(batch_size, latency_s, now_s)

    def predicted_latency_s(self, batch_size: int) -> float | None:
        return self.inner.predicted_latency_s(batch_size)

    @property
    def busy(self) -> bool:
        return self.inner.busy

    @busy.setter
    def busy(self, value: bool) -> None:
        pass  # the inner batcher keeps it


@dataclass
class _Service:
    """One Knative Service: its model, pool, pods and the autoscaler's state."""

    index: int
    family: Family
    variant: VariantSpec
    pool: str
    max_batch_size: int
    capacity_qps: float
    target: float
    pods: list[Replica] = field(default_factory=list)
    samples: deque[tuple[float, float]] = field(default_factory=deque)
    last_request_s: float = -math.inf
    panic_since_s: float | None = None
    zero_since_s: float | None = None
    cursor: int = 0
    desired: int = 0


class KnativeControl:
    """The engine's `Control` for the KPA baseline (module docstring)."""

    def __init__(self, sim: Simulator, policy: Knative) -> None:
        self.sim = sim
        self.policy = policy
        self.services: list[_Service] = []
        self.notes: list[str] = []

    @property
    def planner_times_s(self) -> list[float]:
        return []

    def start(self, initial_qps: dict[str, float]) -> None:
        percentile = self.policy.view.planning_percentile
        for s, fam in enumerate(self.sim.families):
            choice = _choose(fam, self.sim, percentile)
            if choice is None:
                raise ValueError(f"{fam.name}: no variant fits the SLO on any pool")
            variant, pool, mb, cap = choice
            svc = _Service(s, fam, variant, pool, mb, cap, target=float(mb))
            self.services.append(svc)
            # The warmed-up cluster: as many pods as the initial rate needs, at the target.
            qps = initial_qps.get(fam.name, 0.0)
            pods = math.ceil(qps / (cap * self.policy.target_utilization)) if qps > 0 else 0
            for _ in range(pods):
                self._add_pod(svc, initial=True)
            svc.desired = pods
            if qps > 0:
                svc.last_request_s = 0.0
        self.sim.call_at(SAMPLE_S, self._sample)
        self.sim.call_at(TICK_S, self._tick)

    def measured(self, arrivals: dict[str, int], interval_s: float) -> None:
        """(The KPA reads concurrency, sampled by `_sample`.)"""

    def route(self, service: int, request: Request) -> Replica | None:
        svc = self.services[service]
        svc.last_request_s = self.sim.now_s
        active = [p for p in svc.pods if p.state == "active"]
        if active:
            pod = active[svc.cursor % len(active)]
            svc.cursor += 1
            return pod
        # The activator: hold the request at a pod that is starting; at zero, start one now.
        starting = [p for p in svc.pods if p.state in ("pending", "loading")]
        if not starting:
            svc.desired = max(svc.desired, 1)
            self._add_pod(svc, initial=False)
            self.notes.append(f"{self.sim.now_s:7.1f} s {svc.family.name} scale from zero")
            starting = [p for p in svc.pods if p.state in ("pending", "loading")]
            if not starting:
                return None  # no free device
        return min(starting, key=lambda p: p.ready_at_s)

    def resend(self, replica: Replica, request: Request) -> Replica | None:
        """The system modelled does not send a dropped request again."""
        return None

    def finished(self, replica: Replica, request: Request, outcome: str) -> None:
        pass

    def replica_changed(self, replica: Replica) -> None:
        if replica.state == "active" and isinstance(replica.policy, HeldUntilReady):
            replica.policy.ready = True
            # The held requests go to the pod now that it is ready.
            self.sim._poke(replica)

    def sample(self, service: str) -> ControlSample | None:
        for svc in self.services:
            if svc.family.name == service:
                ready = sum(1 for p in svc.pods if p.state == "active")
                live = sum(1 for p in svc.pods if p.live)
                return ControlSample(
                    planned_qps=ready * svc.capacity_qps,
                    loading_qps=(live - ready) * svc.capacity_qps,
                )
        return None

    # ---- the autoscaler ----------------------------------------------------------------------

    def _sample(self) -> None:
        now = self.sim.now_s
        self.sim.call_at(now + SAMPLE_S, self._sample)
        for svc in self.services:
            concurrency = 0.0
            for p in svc.pods:
                if p.state != "gone" and isinstance(p.policy, HeldUntilReady):
                    concurrency += p.policy.queue_depth + p.policy.inflight
            svc.samples.append((now, concurrency))
            while svc.samples and svc.samples[0][0] < now - STABLE_WINDOW_S:
                svc.samples.popleft()

    def _tick(self) -> None:
        now = self.sim.now_s
        self.sim.call_at(now + TICK_S, self._tick)
        for svc in self.services:
            self._scale(svc, now)

    def _scale(self, svc: _Service, now: float) -> None:
        per_pod = svc.target * self.policy.target_utilization
        stable = [c for t, c in svc.samples]
        panic = [c for t, c in svc.samples if t >= now - PANIC_WINDOW_S]
        stable_avg = sum(stable) / len(stable) if stable else 0.0
        panic_avg = sum(panic) / len(panic) if panic else 0.0
        want_stable = math.ceil(stable_avg / per_pod)
        want_panic = math.ceil(panic_avg / per_pod)
        ready = sum(1 for p in svc.pods if p.state == "active")
        if want_panic >= PANIC_THRESHOLD * max(ready, 1) and want_panic > 0:
            svc.panic_since_s = now
        elif svc.panic_since_s is not None and now - svc.panic_since_s >= STABLE_WINDOW_S:
            svc.panic_since_s = None
        if svc.panic_since_s is not None:
            desired = max(want_panic, svc.desired)  # no scale-down in panic
        else:
            desired = max(want_stable, math.floor(ready / MAX_SCALE_DOWN_RATE))
        if desired == 0:
            if now - svc.last_request_s < STABLE_WINDOW_S:
                desired = 1  # a request within the stable window keeps the last pod
                svc.zero_since_s = None
            else:
                if svc.zero_since_s is None:
                    svc.zero_since_s = now
                if now - svc.zero_since_s < SCALE_TO_ZERO_GRACE_S:
                    desired = min(1, svc.desired)
        else:
            svc.zero_since_s = None
        self._resize(svc, desired)

    def _resize(self, svc: _Service, desired: int) -> None:
        svc.desired = desired
        live = [p for p in svc.pods if p.live]
        if desired > len(live):
            for _ in range(desired - len(live)):
                self._add_pod(svc, initial=False)
        elif desired < len(live):
            order = {"pending": 0, "loading": 1, "active": 2}
            surplus = sorted(live, key=lambda p: (order[p.state], p.policy.queue_depth, -p.rid))
            for p in surplus[: len(live) - desired]:
                self.sim.retire(p)
        svc.pods = [p for p in svc.pods if p.state != "gone"]

    def _add_pod(self, svc: _Service, *, initial: bool) -> None:
        predictor = LatencyPredictor(
            profile_s(svc.variant, svc.pool, self.policy.view.planning_percentile)
        )
        held = HeldUntilReady(SloBatcher(svc.max_batch_size, predictor))
        pod = self.sim.add_replica(
            svc.index,
            svc.variant,
            svc.pool,
            svc.max_batch_size,
            svc.capacity_qps,
            held,
            initial=initial,
        )
        held.ready = pod.state == "active"
        svc.pods.append(pod)


def _choose(
    fam: Family, sim: Simulator, percentile: str
) -> tuple[VariantSpec, str, int, float] | None:
    """The most accurate variant that fits the SLO, on its pool of most capacity per cost."""
    costs = {p.name: p.cost_per_device for p in sim.cluster.pools if p.devices > 0}
    for variant in sorted(fam.variants, key=lambda v: (-v.accuracy, v.name)):
        best: tuple[float, str, int, float] | None = None
        for pool, points in sorted(variant.profiles.items()):
            if pool not in costs:
                continue
            fit = batch_capacity(points, fam.slo_s, percentile, 1.0)  # type: ignore[arg-type]
            if fit is None:
                continue
            per_cost = fit[1] / max(costs[pool], 1e-9)
            if best is None or per_cost > best[0]:
                best = (per_cost, pool, fit[0], fit[1])
        if best is not None:
            return variant, best[1], best[2], best[3]
    return None


class Knative(ControlPolicy):
    """The KPA baseline (module docstring); `target_utilization` is Knative's
    container-concurrency-target-percentage (70% by default)."""

    router = "builtin"

    def __init__(
        self, *, target_utilization: float = TARGET_UTILIZATION, name: str = "knative"
    ) -> None:
        self.target_utilization = target_utilization
        self.name = name

    def control(self, sim: Simulator) -> Control:
        return KnativeControl(sim, self)

    def target(
        self, now_s: float, demand_qps: dict[str, float], current: list[Allocation]
    ) -> Target:
        raise TypeError("the KPA decides from concurrency (control())")

    def batcher(
        self, family: Family, variant: VariantSpec, pool: str, max_batch_size: int
    ) -> BatchingPolicy:
        raise TypeError("the KPA's pods get their batcher from KnativeControl")
