"""The router's decisions as a pure object: weighted split, health skipping, fast loop, shedding.

The planner (slow loop) sets each variant backend's weight and planned capacity every few
seconds at best; bursts arrive in milliseconds. Between plans, `RoutingDecider` predicts, per
backend, when a request sent now would be answered, from what a router knows: the requests it
sent there and has not seen answered (the backlog), the backend's planned capacity and full-batch
latency, and (when the caller passes its clock) when the backend's current batch started:

* predicted completion = what is left of the batch running now (its latency, less the time
  since the backend last answered or started on an idle queue; the whole latency without a
  clock) + the time the planned capacity needs for the requests queued behind it, at least one
  full batch's latency (the next batch takes in whatever arrives meanwhile); the running
  batch holds at most the backlog, so with the table's profile its latency is the profile's at
  that size (a light load runs small batches), else the full batch's; an idle backend (nothing
  in flight) starts at once on the requests sent now, so with a profile their wait is the
  profile's latency at their number; a backend without a batch latency drains its backlog at
  its planned capacity;
* the split follows the plan's weights by smooth weighted round-robin (deterministic and no
  burstier than the weights; `seed` only staggers the phase of routers that share a table);
* a request whose chosen backend cannot answer before the request's deadline goes to the most
  accurate backend that can (ties: the earliest answer), within the table's bounds
  (`FastLoopBounds.min_accuracy`), else it is shed at once, with the reason: it is beyond what
  the planned capacity can serve, and queueing it would only make others late (unless its pick
  would make it at its median speed: see the correction below);
* a backend under pressure (predicted wait of its backlog / SLO above `relief_pressure`) also
  gives up to `max_shift` of its planned weight, growing linearly with its pressure, to the most
  accurate backends with slack, so that fewer requests need rerouting one by one; as its backlog
  drains, the split returns to the plan's weights by itself;
* backends failing health checks get no traffic; their planned share goes to the healthy ones.

The planned capacity is a profile taken in isolation; a backend that shares its machine, or is
throttled, serves less, and a router that trusts the plan keeps sending what the backend then
drops. So (unless the table's ``fast_loop.correct_capacity`` is off) the decider corrects each
backend's speed online from the answers it sees, when the caller passes its clock:

* a batch's answers reach the router together: answers less than a third of the shortest
  batch latency apart (the profile's smallest, else the batch latency / the planned batch)
  form one group. A group whose requests were all in hand when the previous
  group was answered ran back to back with it: the time between the two groups is that
  batch's cycle (execution and whatever the worker adds between batches), and cycle / planned
  latency of a batch of its size is one sample of how many times slower than planned the
  backend runs. The planned latency of k requests comes from the table's ``profile_ms`` when
  it has one (interpolated), for batches of at least half the planned one; without it only
  groups of at least the planned batch count, against the batch latency (scaled by k /
  planned batch for a larger one: a lower bound). Batches after an idle spell give no sample,
  and neither do small ones: how many requests a batch holds under load is the batcher's
  choice (deadlines), not the device's speed, and comparing it with the full batch's latency
  would make a backend at its profiled speed look slow; and what a worker adds per batch
  (taking requests in, answering them) weighs most on the smallest batches, which a profile
  taken in isolation leaves out: counted, they would make a backend that the fast loop
  relieves (its batches shrink) look ever slower;
* the correction is a high quantile (`correction_quantile`, 0.9: the router must be right for
  nearly every batch, as the worker's batcher fits batches with its tail) of the last
  `correction_window` samples younger than `correction_horizon_s`, never their largest (a
  single outlier moves nothing): none before `correction_min_samples` samples (thin data: the
  plan stands), within `correction_tolerance` of the plan it is the plan, and at most
  `max_slowdown`. It only ever lowers the capacity (a faster backend
  earns no credit beyond its plan) and it fades by itself: samples age out, and a backend
  that runs at its planned speed replaces them; a new plan that changes a backend's capacity
  or batch starts its correction afresh;
* a backend `s` times slower than planned drains its backlog at capacity x min(headroom, 1/s)
  (the headroom's static margin is not applied twice) with batches `s` times longer, so the
  router predicts the longer wait and reroutes or sheds before the worker would drop;
* the quantile decides rerouting and relief, where caution costs accuracy at most; before a
  request is shed, its pick is predicted once more, hopefully: at the backend's median
  slowdown (of the same samples, or the median the worker reports), and, where its planned
  batch no longer fits the SLO at that speed (2 x s x L(b) > SLO), with the batch the planner
  would choose at that speed (from the table's profile), which the worker's batcher will run.
  A request that may still make it there is sent, not shed: with nowhere else to go, losing
  it for sure is worse, and the worker still drops it if its batches do run that slow. On a
  machine whose batches are mostly fast with a long tail (a CPU quota that throttles now and
  then), the quantile alone shed most requests at a light load: a request behind one batch
  was predicted to wait two tail-long batches, and those sent were all answered in time.

What the worker drops or sheds (503) is no batch: it frees the backlog without being answered
and forms no group. Drops are no sample either: a worker at its profiled speed drops too, when
requests are admitted that its batching under deadlines cannot serve, so they say "over what
the batcher serves at this backlog", not "slower than planned". Response times are not
compared with predictions one by one: under overload the worker drops exactly the requests
that would have been slow (survivorship). Only backends whose planned capacity is one device
(capacity x batch latency = the batch) are corrected: the answers of several replicas behind
one address interleave and form no batches.

A worker of ours says it better: every answer carries the worker's own measure of how many
times slower than its profile it serves now (`SLOWDOWN_HEADER`, the `SlowdownMeter` of
`accordion.workers.batching`: the 0.9 quantile over its last 15 batches of the time from a
batch's start to the next one's when they ran back to back, else the execution, over the
profiled latency; `SLOWDOWN_MEDIAN_HEADER`: the same at the median) and which replica answered
(`REPLICA_HEADER`). Once a backend's answers carry reports, they replace the inference above
for that backend: the slowdown is the replicas' together (n / sum of 1 / s_i over the replicas
heard from within `correction_horizon_s`; their medians likewise), so a backend of several
replicas behind one Service address is corrected too, without grouping answers into batches.
Backends that do not report (another server; the simulator's replicas) keep the inference;
`fast_loop.worker_reports: false` makes every backend use it.

No I/O and no clock of its own: the router (`accordion.workers.router`) and the simulator
(`accordion.sim`) drive it with their own time, calling `choose`, `sent` and `finished` (each
takes an optional `now_s`; without it, predictions assume the running batch has just started
and no correction is learned). `finished` takes the request's outcome: ``answered`` (ok or
late), ``dropped`` (the worker gave up on it: a 503 shed or drop) or ``failed``.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Literal

from accordion.workers.batching import robust_quantile
from accordion.workers.config import Backend, RoutingTable, interpolate_profile

Outcome = Literal["answered", "dropped", "failed"]
Report = tuple[str, float] | tuple[str, float, float | None]
"""What a worker's answer says of its speed: (replica, slowdown), with its median slowdown
when it says that too."""


@dataclass(frozen=True)
class Choice:
    """Where to send one request: a backend name, or None (shed) with the reason."""

    backend: str | None
    rerouted_from: str | None = None
    reason: str = ""


@dataclass
class BackendState:
    backend: Backend
    inflight: int = 0
    healthy: bool = True
    batch_started_s: float | None = None
    """When the batch running now started, as the router can tell (a send to an idle backend,
    or the backend's last answer); None: unknown (no clock was passed)."""
    current_weight: float = 0.0
    """Smooth weighted round-robin state."""
    # Online capacity correction (see the module docstring).
    last_answer_s: float | None = None
    group_start_s: float | None = None
    """When the first answer of the current group (batch) came."""
    group_size: int = 0
    group_in_hand: int = 0
    """Requests in hand when the previous group was answered: what this batch could hold."""
    previous_group_s: float | None = None
    in_hand_after_answer: int = 0
    samples: deque[tuple[float, float]] = field(default_factory=deque)
    """(time, cycle / planned batch latency) per measured batch, oldest first."""
    slowdown: float = 1.0
    """The current correction: the backend runs `slowdown` times slower than planned."""
    central: float = 1.0
    """The same at the median: how much slower a typical batch runs (`choose`'s last check)."""
    reports: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    """replica -> (time, slowdown, median slowdown) of its last answer that said
    (`SLOWDOWN_HEADER`; the median is the slowdown where it did not say that too)."""

    def reset_correction(self) -> None:
        self.last_answer_s = self.group_start_s = self.previous_group_s = None
        self.group_size = self.group_in_hand = self.in_hand_after_answer = 0
        self.samples.clear()
        self.reports.clear()
        self.slowdown = self.central = 1.0


class RoutingDecider:
    """Per-request routing decisions for one service; see the module docstring."""

    def __init__(
        self,
        table: RoutingTable,
        *,
        seed: int = 0,
        relief_pressure: float = 0.8,
        correction_window: int = 15,
        correction_quantile: float = 0.9,
        correction_min_samples: int = 3,
        correction_horizon_s: float = 10.0,
        correction_tolerance: float = 0.05,
        max_slowdown: float = 4.0,
    ) -> None:
        self._rng = random.Random(seed)
        self.relief_pressure = relief_pressure
        self.correction_window = max(1, correction_window)
        self.correction_quantile = min(1.0, max(0.0, correction_quantile))
        self.correction_min_samples = max(1, min(correction_min_samples, self.correction_window))
        self.correction_horizon_s = correction_horizon_s
        self.correction_tolerance = correction_tolerance
        self.max_slowdown = max(1.0, max_slowdown)
        self._states: dict[str, BackendState] = {}
        self.table = table
        self.update_table(table)

    # -- inputs --------------------------------------------------------------------------------
    def update_table(self, table: RoutingTable) -> None:
        """Adopt a new plan; backlog and health of backends that stay are kept, and a new
        backend is healthy unless the table says it is pending."""
        old = self._states
        states = {}
        for b in table.backends:
            prev = old.get(b.name)
            if prev is None:
                # A random phase, so that routers sharing a table do not pick in lockstep. A
                # pending backend (still loading) joins at its first passed health check.
                states[b.name] = BackendState(
                    b, current_weight=self._rng.random() * 1e-6, healthy=not b.pending
                )
            else:
                if (prev.backend.capacity_qps, prev.backend.max_batch_size) != (
                    b.capacity_qps,
                    b.max_batch_size,
                ):
                    prev.reset_correction()  # a new capacity: trust it until seen otherwise
                prev.backend = b
                states[b.name] = prev
        self._states = states
        self.table = table

    def set_healthy(self, name: str, healthy: bool) -> None:
        if name in self._states:
            self._states[name].healthy = healthy

    def sent(self, name: str, now_s: float | None = None) -> None:
        """A request left for `name` (at `now_s` on the caller's clock, if given)."""
        state = self._states.get(name)
        if state is None:
            return
        if state.inflight == 0:
            state.batch_started_s = now_s  # an idle backend starts on it at once
        state.inflight += 1

    def finished(
        self,
        name: str,
        now_s: float | None = None,
        outcome: Outcome = "answered",
        report: Report | None = None,
    ) -> None:
        """A request sent to `name` came back: `answered` (ok or late), `dropped` (the worker
        gave up on it or shed it) or `failed` (no answer: an error or a timeout). `report`:
        what the answering worker said of its own speed, (replica, slowdown[, median]), if it
        did."""
        state = self._states.get(name)
        if state is None or state.inflight <= 0:
            return
        if outcome == "answered" and now_s is not None:
            if report is not None and self.table.fast_loop.worker_reports:
                median = report[2] if len(report) > 2 else None
                tail = report[1]
                state.reports[report[0]] = (now_s, tail, tail if median is None else median)
            else:
                self._answered(state, now_s)
        state.inflight -= 1
        # Its batch ended: the next one (if any is queued) starts now.
        state.batch_started_s = now_s if state.inflight > 0 else None
        if outcome == "answered":
            state.in_hand_after_answer = state.inflight

    # -- online capacity correction ------------------------------------------------------------
    @staticmethod
    def _in_service(backend: Backend) -> int:
        """Requests a backend has in service at full capacity (Little's law), at least a batch."""
        batch = max(1, backend.max_batch_size)
        if backend.capacity_qps is None or backend.batch_latency_ms is None:
            return batch
        return max(batch, math.floor(backend.capacity_qps * (backend.batch_latency_ms / 1000.0)))

    def _answered(self, state: BackendState, now_s: float) -> None:
        """Group answers into batches; a finished group may give a sample (module docstring)."""
        backend = state.backend
        if backend.batch_latency_ms is None or self._in_service(backend) > backend.max_batch_size:
            return  # no batch latency to compare with, or several devices
        # Answers closer together than a third of the shortest batch latency are one batch's.
        if backend.profile_ms:
            shortest_ms = min(backend.profile_ms.values())
        else:
            shortest_ms = backend.batch_latency_ms / max(1, backend.max_batch_size)
        last = state.last_answer_s
        state.last_answer_s = now_s
        if (
            state.group_start_s is not None
            and last is not None
            and now_s - last < shortest_ms / 3000.0
        ):
            state.group_size += 1
            return
        # A new group starts: the previous one is complete.
        self._measure(state, now_s)
        state.previous_group_s = state.group_start_s
        state.group_start_s = now_s
        state.group_size = 1
        state.group_in_hand = state.in_hand_after_answer

    def _measure(self, state: BackendState, now_s: float) -> None:
        backend = state.backend
        batch = max(1, backend.max_batch_size)
        size = state.group_size
        if (
            backend.batch_latency_ms is None
            or state.group_start_s is None
            or state.previous_group_s is None
            or state.group_in_hand < size  # not all in hand: it did not run back to back
        ):
            return
        if backend.profile_ms and 2 * size >= batch:
            planned_s = interpolate_profile(backend.profile_ms, size) / 1000.0
        elif size >= batch:
            planned_s = backend.batch_latency_ms / 1000.0 * size / batch
        else:
            return
        cycle_s = state.group_start_s - state.previous_group_s
        state.samples.append((now_s, cycle_s / planned_s))
        while len(state.samples) > self.correction_window:
            state.samples.popleft()
        self._estimate(state)

    def _estimate(self, state: BackendState) -> None:
        if len(state.samples) < self.correction_min_samples:
            state.slowdown = state.central = 1.0
            return
        ratios = [r for _, r in state.samples]
        state.slowdown = self._bounded(robust_quantile(ratios, self.correction_quantile))
        state.central = min(state.slowdown, self._bounded(robust_quantile(ratios, 0.5)))

    def _bounded(self, value: float) -> float:
        """A measured slowdown as the correction: within `correction_tolerance` of the plan, the
        plan (1); at most `max_slowdown`."""
        return 1.0 if value <= 1.0 + self.correction_tolerance else min(self.max_slowdown, value)

    def slowdown(self, name: str, now_s: float | None = None, *, central: bool = False) -> float:
        """How many times slower than planned `name` is seen to serve (1: as planned): at the
        correction's quantile, or (`central`) at the median."""
        state = self._states[name]
        if not self.table.fast_loop.correct_capacity:
            return 1.0
        if state.reports:
            self._reported(state, now_s)
        else:
            samples = state.samples
            horizon = self.correction_horizon_s
            if now_s is not None and samples and samples[0][0] < now_s - horizon:
                while samples and samples[0][0] < now_s - horizon:
                    samples.popleft()
                self._estimate(state)
        return state.central if central else state.slowdown

    def _reported(self, state: BackendState, now_s: float | None) -> None:
        """The slowdown the backend's replicas report: their capacity together, n / sum(1 /
        s_i) over the replicas heard from within the horizon (a replica never counts as
        faster than planned), within `correction_tolerance` of the plan: the plan; the same
        of their medians."""
        reports = state.reports
        if now_s is not None:
            for replica in [
                r for r, (t, _, _) in reports.items() if t < now_s - self.correction_horizon_s
            ]:
                del reports[replica]
        if not reports:
            state.slowdown = state.central = 1.0
            return

        def together(values: list[float]) -> float:
            return self._bounded(len(values) / sum(1.0 / max(1.0, v) for v in values))

        state.slowdown = together([s for _, s, _ in reports.values()])
        state.central = min(state.slowdown, together([m for _, _, m in reports.values()]))

    def effective_capacity_qps(self, name: str, now_s: float | None = None) -> float | None:
        """The capacity the router counts on: the plan's, corrected, times the headroom."""
        backend = self._states[name].backend
        if backend.capacity_qps is None:
            return None
        return backend.capacity_qps * self._share(name, now_s)

    def _share(self, name: str, now_s: float | None, central: bool = False) -> float:
        headroom = self.table.fast_loop.headroom
        slowdown = self.slowdown(name, now_s, central=central)
        return headroom if slowdown <= 1.0 else min(headroom, 1.0 / slowdown)

    # -- state ---------------------------------------------------------------------------------
    def backend(self, name: str) -> Backend:
        return self._states[name].backend

    def inflight(self, name: str) -> int:
        return self._states[name].inflight

    def healthy(self, name: str) -> bool:
        return self._states[name].healthy

    def predicted_wait_s(
        self,
        name: str,
        extra: int = 0,
        now_s: float | None = None,
        *,
        replan: bool = False,
        central: bool = False,
    ) -> float:
        """When the last of the backlog plus `extra` new requests would be answered, from now
        (0 without a capacity); see the module docstring. `replan`: for a backend corrected to
        a speed at which its planned batch no longer fits the SLO, predict with the batch the
        planner would choose at that speed; `central`: at the median slowdown, not the
        correction's quantile (together, the hopeful estimate before shedding)."""
        state = self._states[name]
        backend = state.backend
        if backend.capacity_qps is None:
            return 0.0
        rate = backend.capacity_qps * self._share(name, now_s, central)
        inflight = state.inflight
        if backend.batch_latency_ms is None:
            # No batch latency known: the backlog drains at the planned capacity.
            return (inflight + extra) / rate
        if inflight + extra == 0:
            return 0.0
        slowdown = self.slowdown(name, now_s, central=central)
        batch = max(1, backend.max_batch_size)
        batch_s = backend.batch_latency_ms / 1000.0 * slowdown
        # Requests in the running batch(es): by Little's law, capacity x batch latency, at least
        # one full batch (a slowdown lengthens both: it does not change them).
        in_service = self._in_service(backend)
        replanned = self._replanned_batch(backend, slowdown) if replan else None
        if replanned is not None:
            # Too slow for its planned batch: it runs the planner's batch at its speed.
            in_service, batch_s = replanned
            batch = in_service
            rate = min(rate, in_service / batch_s)
        if inflight == 0 and backend.profile_ms and extra <= batch:
            # An idle backend starts on them at once, as one batch of their size (the batcher
            # does not wait for more: `SloBatcher.lazy` is off by default).
            return interpolate_profile(backend.profile_ms, extra) / 1000.0 * slowdown
        residual = 0.0
        running = 0
        if inflight > 0:
            running = min(inflight, in_service)
            # The batch running holds at most the backlog: with a profile, its latency at that
            # size (a light load runs small batches), else the full batch's.
            residual = batch_s
            if backend.profile_ms and running < batch:
                residual = interpolate_profile(backend.profile_ms, running) / 1000.0 * slowdown
            if now_s is not None and state.batch_started_s is not None:
                residual = min(residual, max(0.0, state.batch_started_s + residual - now_s))
        queued = inflight - running + extra
        if queued <= 0:
            return residual
        # The next batch takes in whatever arrives while this one runs: a full one, for all
        # the router knows.
        return residual + max(batch_s, queued / rate)

    def _replanned_batch(self, backend: Backend, slowdown: float) -> tuple[int, float] | None:
        """For a backend too slow for its planned batch (2 x its latency > SLO at the observed
        speed) with a profile: the planner's batch at that speed and its latency (seconds)."""
        if slowdown <= 1.0 or not backend.profile_ms:
            return None
        batch = max(1, backend.max_batch_size)
        slo_s = self.table.slo_s
        latency_s = interpolate_profile(backend.profile_ms, batch) / 1000.0 * slowdown
        if 2 * latency_s <= slo_s:
            return None
        for size in range(batch - 1, 0, -1):
            latency_s = interpolate_profile(backend.profile_ms, size) / 1000.0 * slowdown
            if 2 * latency_s <= slo_s:
                return size, latency_s
        return 1, latency_s

    def pressure(self, name: str, now_s: float | None = None) -> float:
        return self.predicted_wait_s(name, now_s=now_s) / self.table.slo_s

    def _eligible_target(self, backend: Backend) -> bool:
        floor = self.table.fast_loop.min_accuracy
        return floor is None or backend.accuracy >= floor

    def plan_weights(self) -> dict[str, float]:
        """The plan's weights over healthy backends, normalized (health skipping only)."""
        healthy = {n: s.backend.weight for n, s in self._states.items() if s.healthy}
        total = sum(healthy.values())
        if total <= 0:
            # Only zero-weight backends are healthy: spread over them rather than fail.
            healthy = {n: 1.0 for n, s in self._states.items() if s.healthy}
            total = sum(healthy.values())
        return {n: w / total for n, w in healthy.items()} if total > 0 else {}

    def effective_weights(self, now_s: float | None = None) -> dict[str, float]:
        """The plan's weights adjusted by the fast loop for the current backlogs."""
        weights = self.plan_weights()
        bounds = self.table.fast_loop
        if not bounds.enabled or bounds.max_shift <= 0 or len(weights) < 2:
            return weights
        relief = self.relief_pressure
        pressure = {n: self.pressure(n, now_s) for n in weights}
        if all(p <= relief for p in pressure.values()):
            return weights
        slack = [
            n
            for n in weights
            if pressure[n] < relief and self._eligible_target(self._states[n].backend)
        ]
        if not slack:
            return weights
        # The most accurate backends with slack take the relief, by their spare capacity.
        top = max(self._states[n].backend.accuracy for n in slack)
        spare = {
            n: (1.0 - pressure[n] / relief)
            * ((self._states[n].backend.capacity_qps or 1.0) / self.slowdown(n, now_s))
            for n in slack
            if self._states[n].backend.accuracy >= top
        }
        total_spare = sum(spare.values())
        if total_spare <= 0:
            return weights
        moved = 0.0
        adjusted = dict(weights)
        for n, w in weights.items():
            if pressure[n] > relief:
                fraction = bounds.max_shift * min(1.0, (pressure[n] - relief) / (1.0 - relief))
                adjusted[n] = w * (1.0 - fraction)
                moved += w * fraction
        for n, s in spare.items():
            adjusted[n] += moved * s / total_spare
        return adjusted

    # -- the decision --------------------------------------------------------------------------
    def _pick(self, weights: dict[str, float]) -> str:
        """Smooth weighted round-robin over `weights` (as nginx's upstream balancer)."""
        total = 0.0
        best: BackendState | None = None
        best_name = ""
        for name, w in weights.items():
            state = self._states[name]
            state.current_weight += w
            total += w
            if best is None or state.current_weight > best.current_weight:
                best, best_name = state, name
        assert best is not None
        best.current_weight -= total
        return best_name

    def choose(
        self, budget_s: float, now_s: float | None = None, *, exclude: Collection[str] = ()
    ) -> Choice:
        """Pick the backend of one request with `budget_s` left before its deadline, among
        the healthy ones but `exclude` (the backends whose workers dropped it:
        `FastLoopBounds.drop_retries`)."""
        weights = self.effective_weights(now_s)
        if exclude:
            weights = {n: w for n, w in weights.items() if n not in exclude}
            if weights and sum(weights.values()) <= 0:
                weights = dict.fromkeys(weights, 1.0)  # only spare backends left
        if not weights:
            return Choice(None, reason="no healthy backend" + (" left" if exclude else ""))
        pick = self._pick(weights)
        if self.predicted_wait_s(pick, 1, now_s) <= budget_s:
            return Choice(pick)
        if self.table.fast_loop.enabled:
            best: tuple[float, float, str] | None = None
            for n in weights:
                if n == pick or not self._eligible_target(self._states[n].backend):
                    continue
                wait = self.predicted_wait_s(n, 1, now_s)
                if wait <= budget_s:
                    # The most accurate backend that makes it; ties: the earliest answer.
                    key = (self._states[n].backend.accuracy, -wait, n)
                    if best is None or key[:2] > best[:2]:
                        best = key
            if best is not None:
                return Choice(best[2], rerouted_from=pick)
        if self.predicted_wait_s(pick, 1, now_s, replan=True, central=True) <= budget_s:
            # No backend is sure to make it, but at its typical (median) speed, with the batch
            # the planner would choose at that speed, the pick would: shedding would lose the
            # request for sure, and the worker still drops it if it falls behind.
            return Choice(pick)
        return Choice(
            None,
            reason=f"beyond planned capacity: backlog of {pick!r} cannot be served "
            f"within the {budget_s * 1000:.0f} ms left",
        )
