"""What a DevicePool can really offer, from the Nodes of the cluster.

A pool declares `spec.devices`, but the devices only exist where nodes match its
`nodeSelector`, are Ready, accept pods (not cordoned, no `NoSchedule`/`NoExecute` taint the
pool's worker pods do not tolerate) and have the pool's device resource allocatable. This
module counts them, pure: Nodes come in as the dicts the Kubernetes API returns, and out come
the number of devices the planner may really use (the smaller of the declared and the
allocatable) and the pool's `NodesMissing` and `Ready` conditions, so a pool whose nodes are
missing or full is reported rather than silently planned on.

A third condition, `WorkerCpuLimited`, says when a CPU pool's workers are limited to less than
`MIN_WORKER_CPUS`: a CPU worker keeps two threads busy, the model's (one torch thread by
default) and its HTTP server's event loop, and under a smaller CPU limit they take turns, so
requests wait behind batches and the worker serves slower than the latency profile it was
planned with (measured on one core, `bench/serverless/NOTES.md`: at half the saturated rate
its p99 was 52 ms where the batching model, from its profile, said 41).

Taints are matched as the scheduler does (`core/v1 Toleration.ToleratesTaint`): a toleration
matches a taint when its effect is empty or the same, its key is empty or the same, and its
operator is `Exists`, or `Equal` (the default) with the same value. The worker pods carry the
pool's `tolerations`, plus what the `ExtendedResourceToleration` admission plugin (GKE, AKS
and others turn it on) gives a pod that requests an extended resource: a toleration of the
`NoSchedule` taints keyed by that resource (`nvidia.com/gpu` on GPU node pools).
`PreferNoSchedule` taints do not keep pods off a node and are not looked at.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from accordion.operator.api import Condition, DevicePool, DevicePoolStatus, Toleration

MIN_WORKER_CPUS = 2.0
"""Fewest CPUs a CPU pool's worker should be limited to: its model thread and its HTTP server's
event loop (`WorkerCpuLimited`, see the module docstring)."""

NON_DEVICE_RESOURCES = frozenset({"cpu", "memory", "ephemeral-storage", "pods"})
"""Resources that are not a pool's device: a pool limited only by these counts nodes only."""

_SUFFIXES: dict[str, float] = {
    "": 1.0,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "Ki": 2.0**10,
    "Mi": 2.0**20,
    "Gi": 2.0**30,
    "Ti": 2.0**40,
}
_QUANTITY = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?)\s*([A-Za-z]*)\s*$")


def parse_quantity(value: int | float | str) -> float:
    """A Kubernetes quantity as a number: `4` → 4, `"500m"` → 0.5, `"1Ki"` → 1024.

    Raises `ValueError` for anything else (exponent forms are not used for devices).
    """
    if isinstance(value, int | float):
        return float(value)
    match = _QUANTITY.match(value)
    if match is None or match.group(2) not in _SUFFIXES:
        raise ValueError(f"{value!r} is not a quantity")
    return float(match.group(1)) * _SUFFIXES[match.group(2)]


def device_resource(pool: DevicePool) -> tuple[str, float] | None:
    """The pool's device resource and how much of it one replica takes, e.g. `(nvidia.com/gpu, 1)`.

    The first resource in `limits` (then `requests`) that is not cpu, memory, storage or
    hugepages; None when the pool asks for none (a CPU pool), or the amount is not positive.
    """
    for table in (pool.spec.resources.limits, pool.spec.resources.requests):
        for name in sorted(table):
            if name in NON_DEVICE_RESOURCES or name.startswith("hugepages-"):
                continue
            try:
                amount = parse_quantity(table[name])
            except ValueError:
                return None
            return (name, amount) if amount > 0 else None
    return None


def worker_cpu_limit(pool: DevicePool) -> float | None:
    """The CPU limit of one of the pool's workers (`resources.limits.cpu`), None when it has
    none (or it does not parse: the API server validates quantities)."""
    value = pool.spec.resources.limits.get("cpu")
    if value is None:
        return None
    try:
        return parse_quantity(value)
    except ValueError:
        return None


def cpu_condition(pool: DevicePool, generation: int | None = None) -> Condition:
    """`WorkerCpuLimited`: True when a CPU pool limits its workers to fewer than
    `MIN_WORKER_CPUS` (see the module docstring)."""
    limit = worker_cpu_limit(pool)
    if pool.spec.device != "cpu":
        status, reason = "False", "NotACpuPool"
        message = f"workers run on {pool.spec.device}"
    elif limit is None:
        status, reason = "False", "NoCpuLimit"
        message = "workers have no CPU limit"
    elif limit < MIN_WORKER_CPUS:
        status, reason = "True", "CpuLimitBelowTwo"
        message = (
            f"each worker is limited to {limit:g} CPU: its model thread and its HTTP server "
            "take turns on it, requests wait behind batches and the worker serves slower than "
            f"its latency profile; give workers at least {MIN_WORKER_CPUS:g} CPUs "
            "(resources.limits.cpu)"
        )
    else:
        status, reason = "False", "CpuLimitSufficient"
        message = f"each worker is limited to {limit:g} CPUs"
    return Condition(
        type="WorkerCpuLimited",
        status=status,
        reason=reason,
        message=message,
        observed_generation=generation,
    )


def node_name(node: Mapping[str, Any]) -> str:
    """The node's `metadata.name` ("" when absent)."""
    return str((node.get("metadata") or {}).get("name") or "")


def node_matches(node: Mapping[str, Any], selector: Mapping[str, str]) -> bool:
    """Whether the node's labels include every `key: value` of the selector."""
    labels = (node.get("metadata") or {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in selector.items())


def node_ready(node: Mapping[str, Any]) -> bool:
    """Whether the node accepts new pods: its Ready condition is True and it is not cordoned."""
    if (node.get("spec") or {}).get("unschedulable"):
        return False
    for cond in (node.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


BLOCKING_EFFECTS = frozenset({"NoSchedule", "NoExecute"})
"""Taint effects that keep a pod that does not tolerate them off a node."""


def tolerates(toleration: Toleration, taint: Mapping[str, Any]) -> bool:
    """Whether a toleration matches a taint (`core/v1 Toleration.ToleratesTaint`)."""
    if toleration.effect and toleration.effect != taint.get("effect"):
        return False
    if toleration.key and toleration.key != taint.get("key"):
        return False
    if toleration.operator == "Exists":
        return True
    return (toleration.value or "") == (taint.get("value") or "")


def pod_tolerations(pool: DevicePool) -> list[Toleration]:
    """The tolerations a worker pod of the pool runs with: the pool's, and one of `NoSchedule`
    taints keyed by an extended resource it requests (the `ExtendedResourceToleration`
    plugin)."""
    extended = {
        name
        for table in (pool.spec.resources.limits, pool.spec.resources.requests)
        for name in table
        if "/" in name and "kubernetes.io/" not in name and not name.startswith("requests.")
    }
    implicit = [
        Toleration(key=name, operator="Exists", effect="NoSchedule") for name in sorted(extended)
    ]
    return [*pool.spec.tolerations, *implicit]


def node_tolerated(node: Mapping[str, Any], tolerations: Iterable[Toleration]) -> bool:
    """Whether every `NoSchedule` and `NoExecute` taint of the node is tolerated."""
    held = list(tolerations)
    for taint in (node.get("spec") or {}).get("taints") or []:
        if not isinstance(taint, Mapping) or taint.get("effect") not in BLOCKING_EFFECTS:
            continue
        if not any(tolerates(t, taint) for t in held):
            return False
    return True


def node_allocatable(node: Mapping[str, Any], resource: str) -> float:
    """How much of `resource` the node can allocate (0 when absent or unreadable)."""
    raw = ((node.get("status") or {}).get("allocatable") or {}).get(resource)
    if raw is None:
        return 0.0
    try:
        return max(0.0, parse_quantity(raw))
    except ValueError:
        return 0.0


@dataclass(frozen=True)
class PoolCapacity:
    """What the cluster's nodes offer one pool."""

    pool: str
    declared: int
    """`spec.devices`."""
    matching_nodes: int
    """Nodes whose labels match the selector, Ready or not."""
    ready_nodes: list[str] = field(default_factory=list)
    """Names of the matching nodes that are Ready and schedulable for the pool's pods."""
    resource: str | None = None
    """The device resource counted, None for a pool that asks for none."""
    allocatable: int | None = None
    """Replicas' worth of the device resource on the ready nodes (None without a resource)."""

    @property
    def available(self) -> int:
        """Devices the planner may use: the declared count, capped by what the nodes have."""
        if not self.ready_nodes:
            return 0
        if self.allocatable is None:
            return self.declared
        return min(self.declared, self.allocatable)

    @property
    def missing(self) -> int:
        """Declared devices the nodes cannot offer."""
        return self.declared - self.available

    def conditions(self, generation: int | None = None) -> list[Condition]:
        """`NodesMissing` and `Ready`, with a message that says how many devices are missing."""
        if not self.ready_nodes:
            what = (
                "no node matches the nodeSelector"
                if self.matching_nodes == 0
                else f"none of the {self.matching_nodes} matching nodes is Ready and schedulable"
            )
            reason, message = "NoReadyNodes", f"{what}: 0 of {self.declared} devices available"
        elif self.missing > 0:
            reason = "NotEnoughDevices"
            message = (
                f"{len(self.ready_nodes)} ready nodes have {self.allocatable} allocatable "
                f"{self.resource}: {self.available} of {self.declared} devices available "
                f"({self.missing} missing)"
            )
        else:
            reason = "AllDevicesAvailable"
            message = f"{len(self.ready_nodes)} ready nodes offer all {self.declared} devices"
        short = not self.ready_nodes or self.missing > 0
        return [
            Condition(
                type=kind,
                status="True" if true else "False",
                reason=reason,
                message=message,
                observed_generation=generation,
            )
            for kind, true in (("NodesMissing", short), ("Ready", not short))
        ]

    def status(
        self, allocated_devices: int | None = None, generation: int | None = None
    ) -> DevicePoolStatus:
        """The pool's status: matching nodes, devices the plan uses and the conditions."""
        return DevicePoolStatus(
            conditions=self.conditions(generation),
            allocated_devices=allocated_devices,
            matching_nodes=self.matching_nodes,
        )


def pool_capacity(pool: DevicePool, nodes: Iterable[Mapping[str, Any]]) -> PoolCapacity:
    """Count what `nodes` offer `pool`: matching nodes, ready ones and their devices."""
    matching = [n for n in nodes if node_matches(n, pool.spec.node_selector)]
    tolerations = pod_tolerations(pool)
    ready = [n for n in matching if node_ready(n) and node_tolerated(n, tolerations)]
    res = device_resource(pool)
    allocatable: int | None = None
    if pool.spec.mig is not None:
        # A MIG pool has its nodes' GPUs however they are split (`mig`; imported here: it
        # builds on this module).
        from accordion.operator import mig

        ready = mig.pool_node_dicts(pool, matching)
        res = (mig.LABEL_GPU_COUNT, 1.0)
        allocatable = sum(mig.node_gpus(n) for n in ready)
    elif res is not None:
        name, per_replica = res
        allocatable = sum(math.floor(node_allocatable(n, name) / per_replica + 1e-9) for n in ready)
    return PoolCapacity(
        pool=pool.metadata.name,
        declared=pool.spec.devices,
        matching_nodes=len(matching),
        ready_nodes=sorted(node_name(n) for n in ready),
        resource=None if res is None else res[0],
        allocatable=allocatable,
    )


def available_devices(
    pools: Iterable[DevicePool], nodes: Iterable[Mapping[str, Any]]
) -> dict[str, int]:
    """Per pool name, the devices it can really offer: `to_problem`'s `available_devices`."""
    node_list = list(nodes)
    return {p.metadata.name: pool_capacity(p, node_list).available for p in pools}
