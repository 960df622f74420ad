"""The router's decisions as a pure object: weighted split, health skipping, fast loop, shedding.

The planner (slow loop) sets each variant backend's weight and planned capacity every few
seconds at best; bursts arrive in milliseconds. Between plans, `RoutingDecider` watches each
backend's backlog (requests sent and not yet answered) against its capacity:

* pressure = predicted wait of a new request at that backend / the SLO, where the predicted wait
  is backlog / capacity + the latency of a full batch;
* a backend under pressure (> `relief_pressure`) gives up to `max_shift` of its planned weight,
  growing linearly with its pressure, to backends with slack (pressure below
  `relief_pressure`, accuracy at least the table's `min_accuracy`), in proportion to their spare
  capacity; as its backlog drains, the split returns to the plan's weights by itself;
* a request whose chosen backend cannot answer before the request's deadline goes to a backend
  that can (if the bounds allow), else it is shed at once, with the reason: it is beyond what
  the planned capacity can serve, and queueing it would only make others late;
* backends failing health checks get no traffic; their planned share goes to the healthy ones.

No I/O and no clock: the router (`accordion.workers.router`) and the simulator drive it with
their own time, calling `choose`, `sent` and `finished`.
"""

from __future__ import annotations

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
        self._states = {
            b.name: BackendState(
                b,
                inflight=old[b.name].inflight if b.name in old else 0,
                healthy=old[b.name].healthy if b.name in old else True,
            )
            for b in table.backends
        }
        self.table = table

    def set_healthy(self, name: str, healthy: bool) -> None:
        if name in self._states:
            self._states[name].healthy = healthy

    def sent(self, name: str) -> None:
        """A request left for `name`."""
        if name in self._states:
            self._states[name].inflight += 1

    def finished(self, name: str) -> None:
        """A request sent to `name` was answered (or failed)."""
        state = self._states.get(name)
        if state is not None and state.inflight > 0:
            state.inflight -= 1

    # -- state ---------------------------------------------------------------------------------
    def backend(self, name: str) -> Backend:
        return self._states[name].backend

    def inflight(self, name: str) -> int:
        return self._states[name].inflight

    def healthy(self, name: str) -> bool:
        return self._states[name].healthy

    def predicted_wait_s(self, name: str, extra: int = 0) -> float:
        """When a new request sent now to `name` would be answered (0 without a capacity)."""
        backend = self._states[name].backend
        if backend.capacity_qps is None:
            return 0.0
        batch_s = (backend.batch_latency_ms or 0.0) / 1000.0
        capacity = backend.capacity_qps * self.table.fast_loop.headroom
        return (self._states[name].inflight + extra) / capacity + batch_s

    def pressure(self, name: str) -> float:
        return self.predicted_wait_s(name) / self.table.slo_s

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

    def effective_weights(self) -> dict[str, float]:
        """The plan's weights adjusted by the fast loop for the current backlogs."""
        weights = self.plan_weights()
        bounds = self.table.fast_loop
        if not bounds.enabled or len(weights) < 2:
            return weights
        pressure = {n: self.pressure(n) for n in weights}
        relief = self.relief_pressure
        spare = {
            n: (1.0 - pressure[n] / relief) * (self._states[n].backend.capacity_qps or 0.0)
            for n in weights
            if pressure[n] < relief and self._eligible_target(self._states[n].backend)
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
    def choose(self, budget_s: float) -> Choice:
        """Pick the backend of one request with `budget_s` left before its deadline."""
        weights = self.effective_weights()
        if not weights:
            return Choice(None, reason="no healthy backend")
        names = list(weights)
        pick = self._rng.choices(names, weights=[weights[n] for n in names])[0]
        if self.predicted_wait_s(pick, extra=1) <= budget_s:
            return Choice(pick)
        if self.table.fast_loop.enabled:
            candidates = [
                n
                for n in names
                if n != pick
                and self._eligible_target(self._states[n].backend)
                and self.predicted_wait_s(n, extra=1) <= budget_s
            ]
            if candidates:
                # The most accurate backend that makes it; ties: the least loaded.
                best = max(
                    candidates,
                    key=lambda n: (self._states[n].backend.accuracy, -self.pressure(n)),
                )
                return Choice(best, rerouted_from=pick)
        return Choice(
            None,
            reason=f"beyond planned capacity: backlog of {pick!r} cannot be served "
            f"within the {budget_s * 1000:.0f} ms left",
        )
