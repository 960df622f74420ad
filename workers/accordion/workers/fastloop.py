"""The router's decisions as a pure object: weighted split, health skipping, fast loop, shedding.

The planner (slow loop) sets each variant backend's weight and planned capacity every few
seconds at best; bursts arrive in milliseconds. Between plans, `RoutingDecider` predicts, per
backend, when a request sent now would be answered, from what a router knows: the requests it
sent there and has not seen answered (the backlog), the backend's planned capacity and full-batch
latency, and (when the caller passes its clock) when the backend's current batch started:

* predicted completion = what is left of the batch running now (the full-batch latency, less
  the time since the backend last answered or started on an idle queue; the whole batch latency
  without a clock) + the time the planned capacity needs for the requests queued behind it, at
  least one batch latency; a backend without a batch latency drains its backlog at its planned
  capacity;
* the split follows the plan's weights by smooth weighted round-robin (deterministic and no
  burstier than the weights; `seed` only staggers the phase of routers that share a table);
* a request whose chosen backend cannot answer before the request's deadline goes to the most
  accurate backend that can (ties: the earliest answer), within the table's bounds
  (`FastLoopBounds.min_accuracy`), else it is shed at once, with the reason: it is beyond what
  the planned capacity can serve, and queueing it would only make others late;
* a backend under pressure (predicted wait of its backlog / SLO above `relief_pressure`) also
  gives up to `max_shift` of its planned weight, growing linearly with its pressure, to the most
  accurate backends with slack, so that fewer requests need rerouting one by one; as its backlog
  drains, the split returns to the plan's weights by itself;
* backends failing health checks get no traffic; their planned share goes to the healthy ones.

No I/O and no clock of its own: the router (`accordion.workers.router`) and the simulator
(`accordion.sim`) drive it with their own time, calling `choose`, `sent` and `finished` (each
takes an optional `now_s`; without it, predictions assume the running batch has just started).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from accordion.workers.config import Backend, RoutingTable


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


class RoutingDecider:
    """Per-request routing decisions for one service; see the module docstring."""

    def __init__(
        self,
        table: RoutingTable,
        *,
        seed: int = 0,
        relief_pressure: float = 0.8,
    ) -> None:
        self._rng = random.Random(seed)
        self.relief_pressure = relief_pressure
        self._states: dict[str, BackendState] = {}
        self.table = table
        self.update_table(table)

    # -- inputs --------------------------------------------------------------------------------
    def update_table(self, table: RoutingTable) -> None:
        """Adopt a new plan; backlog and health of backends that stay are kept."""
        old = self._states
        states = {}
        for b in table.backends:
            prev = old.get(b.name)
            if prev is None:
                # A random phase, so that routers sharing a table do not pick in lockstep.
                states[b.name] = BackendState(b, current_weight=self._rng.random() * 1e-6)
            else:
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

    def finished(self, name: str, now_s: float | None = None) -> None:
        """A request sent to `name` was answered (or failed)."""
        state = self._states.get(name)
        if state is not None and state.inflight > 0:
            state.inflight -= 1
            # Its batch ended: the next one (if any is queued) starts now.
            state.batch_started_s = now_s if state.inflight > 0 else None

    # -- state ---------------------------------------------------------------------------------
    def backend(self, name: str) -> Backend:
        return self._states[name].backend

    def inflight(self, name: str) -> int:
        return self._states[name].inflight

    def healthy(self, name: str) -> bool:
        return self._states[name].healthy

    def predicted_wait_s(self, name: str, extra: int = 0, now_s: float | None = None) -> float:
        """When the last of the backlog plus `extra` new requests would be answered, from now
        (0 without a capacity); see the module docstring."""
        state = self._states[name]
        backend = state.backend
        if backend.capacity_qps is None:
            return 0.0
        rate = backend.capacity_qps * self.table.fast_loop.headroom
        inflight = state.inflight
        if backend.batch_latency_ms is None:
            # No batch latency known: the backlog drains at the planned capacity.
            return (inflight + extra) / rate
        if inflight + extra == 0:
            return 0.0
        batch = max(1, backend.max_batch_size)
        batch_s = backend.batch_latency_ms / 1000.0
        residual = 0.0
        running = 0
        if inflight > 0:
            # Requests in the running batch(es): by Little's law, capacity x batch latency,
            # at least one full batch.
            running = min(inflight, max(batch, math.floor(backend.capacity_qps * batch_s)))
            residual = batch_s
            if now_s is not None and state.batch_started_s is not None:
                residual = min(batch_s, max(0.0, state.batch_started_s + batch_s - now_s))
        queued = inflight - running + extra
        if queued <= 0:
            return residual
        return residual + max(batch_s, queued / rate)

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
            n: (1.0 - pressure[n] / relief) * (self._states[n].backend.capacity_qps or 1.0)
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

    def choose(self, budget_s: float, now_s: float | None = None) -> Choice:
        """Pick the backend of one request with `budget_s` left before its deadline."""
        weights = self.effective_weights(now_s)
        if not weights:
            return Choice(None, reason="no healthy backend")
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
        return Choice(
            None,
            reason=f"beyond planned capacity: backlog of {pick!r} cannot be served "
            f"within the {budget_s * 1000:.0f} ms left",
        )
