"""The control loop's inputs: what a driver knows of the cluster (`World`) and of demand.

Every driver (the kopf operator, local mode, the simulator) builds these from its own sources
(watch caches; processes and router counters; simulated replicas) and hands them to
`ControlLoop`. They are plain values: a driver replaces an object when it changes, never
mutates one in place, so the loop can skip services whose inputs equal a settled pass's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from accordion.operator.api import DevicePool, InferenceService, InferenceServiceStatus
from accordion.operator.control.desired import Routing, WorkerKey, WorkerSpec
from accordion.solver import Burstiness


@dataclass(frozen=True)
class RunningWorker:
    """A worker group that exists: the spec it was created with, and how many replicas are ready."""

    spec: WorkerSpec
    ready_replicas: int = 0


@dataclass(frozen=True)
class AppliedRouting:
    """The routing a service's router has now, and when it was applied (clock seconds)."""

    routing: Routing
    applied_at_s: float = 0.0


@dataclass
class World:
    """What the driver knows of the cluster (or the machine). Keys are `namespace/name`.

    `invalid` maps a service to its (field path, message) errors: such a service is not
    planned, its running workers are left alone, and only its status is written.
    """

    services: dict[str, InferenceService] = field(default_factory=dict)
    pools: dict[str, DevicePool] = field(default_factory=dict)
    invalid: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    invalid_generation: dict[str, int | None] = field(default_factory=dict)
    workers: dict[WorkerKey, RunningWorker] = field(default_factory=dict)
    routing: dict[str, AppliedRouting] = field(default_factory=dict)
    status: dict[str, InferenceServiceStatus] = field(default_factory=dict)
    worker_failures: dict[WorkerKey, tuple[str, str]] = field(default_factory=dict)
    """Worker groups whose pods fail (reason, message): a model that cannot be loaded or
    downloaded, a crash loop, an image that cannot be pulled (the driver reads the pods)."""
    nodes: list[dict[str, Any]] | None = None
    """The cluster's Nodes (API dicts) when the driver watches them: pools are then capped at
    the devices their ready nodes offer (`pools.available_devices`). None: pools are taken at
    their declared `spec.devices`."""


@dataclass
class DemandView:
    """Smoothed demand (req/s, before headroom) per service, and measurement failures."""

    qps: dict[str, float] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    """Services whose demand could not be measured now, with why (the last estimate is used)."""
    rejected: set[str] = field(default_factory=set)
    """Of those, the services whose demand query was refused and never sent (it reads series
    outside the service's namespace, or is not valid PromQL)."""
    burst: dict[str, float] = field(default_factory=dict)
    """Per service, the burst headroom learned from its own arrivals (`demand.BurstLearner`):
    how far above the smoothed estimate its short-term rate has gone lately, as a fraction.
    Used for `spec.demand.burst.policy: Auto`; absent: nothing learned yet."""
    burstiness: dict[str, Burstiness] = field(default_factory=dict)
    """Per service, its arrivals' burstiness as published by `burstiness.BurstinessBook`;
    absent: not measured (the planner keeps its utilization margin)."""
    last_arrival_s: dict[str, float] = field(default_factory=dict)
    """Per service, when a measurement last showed arrivals (the loop's clock): scale to zero
    (`idle`) releases the last replica of a `minReplicas: 0` service only after
    `scaleToZeroIdleSeconds` without any. Absent: not known."""
    cold_start_s: dict[str, float] = field(default_factory=dict)
    """Per service, the last cold start its routers measured (status.coldStartSeconds)."""
