"""The interface between the simulator and a control policy (ours, Proteus, the baselines).

A baseline control policy answers two questions: which replicas should run, with what routing
weights (`ControlPolicy.target`, called at start and every `replan_interval_s`), and which
batching policy object each new replica runs (`ControlPolicy.batcher`); `targets.TargetControl`
carries targets out make-before-break. Ours overrides `control` instead: the operator's own
control loop drives the run (`accordion.sim.driver`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from accordion.sim.workload import Cluster, Family
from accordion.solver import Allocation, VariantSpec
from accordion.solver.problem import Percentile
from accordion.workers.batching import BatchingPolicy

if TYPE_CHECKING:
    from accordion.sim.engine import Control, Simulator


@dataclass(frozen=True)
class TargetRow:
    """Replicas of one (service, variant, pool) and the load routed to them (QPS, all of them)."""

    service: str
    variant: str
    pool: str
    replicas: int
    max_batch_size: int
    routed_qps: float
    capacity_qps_per_replica: float
    accuracy: float = 0.0


@dataclass
class Target:
    """What should run; `planner_time_s` is the wall time the policy spent deciding it."""

    rows: list[TargetRow] = field(default_factory=list)
    planner_time_s: float = 0.0


@dataclass(frozen=True)
class SimView:
    """What a policy may know of the simulation: the cluster and how execution times behave."""

    cluster: Cluster
    service_time: str
    """``p50`` (constant p50, as Proteus's artifact), ``p90`` (constant p90) or ``dist``."""

    @property
    def planning_percentile(self) -> Percentile:
        return "p50" if self.service_time == "p50" else "p90"


class ControlPolicy(ABC):
    """A control policy: targets on a cadence, a batcher per replica, fast loop on or off."""

    name: str = "policy"
    replan_interval_s: float = 5.0
    fast_loop: bool = False
    router: str = "builtin"
    """``decider``: the router's `RoutingDecider` (ours), its fast loop on or off per
    `fast_loop`; ``builtin``: plain weighted routing (the baselines: their systems have no such
    router)."""

    def setup(self, view: SimView) -> None:
        """Called once before the run."""
        self.view = view

    def control(self, sim: Simulator) -> Control:
        """What drives the run: by default a target per re-plan tick (`targets.TargetControl`)."""
        from accordion.sim.targets import TargetControl

        return TargetControl(sim, self)

    @abstractmethod
    def target(
        self, now_s: float, demand_qps: dict[str, float], current: list[Allocation]
    ) -> Target:
        """What should run now, given the estimated demand per service and what runs."""

    @abstractmethod
    def batcher(
        self, family: Family, variant: VariantSpec, pool: str, max_batch_size: int
    ) -> BatchingPolicy:
        """A fresh batching policy object for a new replica."""


def profile_s(variant: VariantSpec, pool: str, percentile: Percentile) -> dict[int, float]:
    """Latency per batch size of `variant` on `pool` at `percentile`."""
    return {p.batch_size: p.latency_s(percentile) for p in variant.profiles.get(pool, [])}
