"""MIG pools in the simulator: GPUs as Nodes, the operator's node steps, a simulated MIG manager.

The control loop plans a MIG pool's layouts; what happens next in a cluster is the operator's
(`accordion.operator.mig`): one node at a time is tainted, its workers evicted, relabelled,
and released once the MIG manager has applied the config; workers are placed only on slices
in a node's allocatable. This module runs exactly that code on simulated time, with one GPU per
Node (`<pool>-gpu-NNN`, so node order is GPU order):

* `nodes()` renders each GPU as the Node dict the loop reads (labels `nvidia.com/mig.config`
  and `.state`, the drain taint, allocatable `nvidia.com/mig-<profile>`), plus one plain node
  for pools without nodes of their own;
* `act(plan)` runs `mig.node_actions` and carries the steps out: drain = taint; evict = the
  replicas on that GPU retire (they finish their queue) and their Deployments make new ones,
  which wait for a free slice elsewhere (a Pending pod); relabel = the MIG manager works for
  `reconfigure_s` (ASSUMED 60 s: it stops the GPU's clients, repartitions, restarts the device
  plugin), then the GPU has the new layout and the state `success`; release = untaint;
* the engine's devices of each slice sub-pool are the slices of schedulable GPUs (`success`,
  untainted) plus the slices still held on the others, so a replica starts only on a slice
  that exists, as the scheduler would place a pod.

At time 0 (the warmed-up cluster) the first plan's layouts are in place, as its replicas are.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from accordion.operator.mig import (
    DRAIN_TAINT,
    LABEL_CONFIG,
    LABEL_GPU_COUNT,
    LABEL_STATE,
    STATE_SUCCESS,
    config_name,
    decode_config,
    node_actions,
    slice_resource,
)
from accordion.solver.mig import Layout, layout_of

if TYPE_CHECKING:
    from accordion.operator.api import DevicePool
    from accordion.sim.engine import Replica, Simulator
    from accordion.solver import Plan

RECONFIGURE_S = 60.0
"""ASSUMED time the MIG manager takes to apply a new config to a GPU (no GPU was lent)."""


@dataclass
class Gpu:
    """One MIG GPU (one Node) as the MIG manager leaves it."""

    pool: str
    index: int
    model: str
    layout: Layout = ()
    config: str | None = None
    state: str | None = None
    tainted: bool = False
    held: dict[int, str] = field(default_factory=dict)
    """Replica id -> profile of the slice it holds on this GPU."""

    @property
    def name(self) -> str:
        return f"{self.pool}-gpu-{self.index:03d}"

    @property
    def schedulable(self) -> bool:
        return self.state == STATE_SUCCESS and not self.tainted

    def free(self, profile: str) -> int:
        used = sum(1 for p in self.held.values() if p == profile)
        return dict(self.layout).get(profile, 0) - used


@dataclass
class Outage:
    """A GPU out of service: from its drain to its release (simulated seconds)."""

    gpu: str
    start_s: float
    end_s: float | None = None
    slices_before: Layout = ()


class SimMig:
    """The MIG pools of a simulated cluster (module docstring)."""

    def __init__(
        self,
        sim: Simulator,
        pools: dict[str, DevicePool],
        evict: Callable[[Replica], None],
        changed: Callable[[], None],
        reconfigure_s: float = RECONFIGURE_S,
    ) -> None:
        self.sim = sim
        self.evict = evict
        """Retire a replica and let its Deployment make a new one (the driver's)."""
        self.changed = changed
        """A node changed: the operator's watch on Nodes asks for a pass (the driver's)."""
        self.reconfigure_s = reconfigure_s
        self.pools = {n: p for n, p in pools.items() if p.spec.mig is not None}
        self.gpus: list[Gpu] = [
            Gpu(name, i, p.spec.mig.gpu_model)
            for name, p in sorted(self.pools.items())
            if p.spec.mig is not None
            for i in range(p.spec.devices)
        ]
        self.outages: list[Outage] = []
        self.relabels = 0

    def __bool__(self) -> bool:
        return bool(self.gpus)

    # -- what the loop reads ------------------------------------------------------------------

    def nodes(self) -> list[dict[str, Any]]:
        self.assign()
        out = [
            {
                "metadata": {"name": "plain-node", "labels": {}},
                "spec": {},
                "status": {"conditions": [{"type": "Ready", "status": "True"}]},
            }
        ]
        for gpu in self.gpus:
            labels = {LABEL_GPU_COUNT: "1"}
            if gpu.config:
                labels[LABEL_CONFIG] = gpu.config
            if gpu.state:
                labels[LABEL_STATE] = gpu.state
            allocatable = (
                {slice_resource(p): str(n) for p, n in gpu.layout}
                if gpu.state == STATE_SUCCESS
                else {}
            )
            out.append(
                {
                    "metadata": {"name": gpu.name, "labels": labels},
                    "spec": {
                        "taints": [{"key": DRAIN_TAINT, "effect": "NoSchedule"}]
                        if gpu.tainted
                        else []
                    },
                    "status": {
                        "allocatable": allocatable,
                        "conditions": [{"type": "Ready", "status": "True"}],
                    },
                }
            )
        return out

    def pods(self) -> list[dict[str, Any]]:
        replicas = {r.rid: r for r in self.sim.replicas}
        out = []
        for gpu in self.gpus:
            for rid in gpu.held:
                r = replicas[rid]
                meta: dict[str, Any] = {"name": f"replica-{rid}", "namespace": "sim"}
                if r.state == "retiring":
                    meta["deletionTimestamp"] = "retiring"
                limits = {slice_resource(gpu.held[rid]): "1"}
                spec = {"nodeName": gpu.name, "containers": [{"resources": {"limits": limits}}]}
                out.append({"metadata": meta, "spec": spec})
        return out

    # -- slices and replicas ------------------------------------------------------------------

    def assign(self) -> None:
        """Keep each slot-holding replica of a slice sub-pool on a GPU: new ones on a
        schedulable GPU with a free slice of their profile, gone ones off theirs; then the
        engine's devices per sub-pool (module docstring)."""
        holders = {r.rid: r for r in self.sim.replicas if r.owns_slot and "/" in r.pool}
        for gpu in self.gpus:
            gpu.held = {rid: p for rid, p in gpu.held.items() if rid in holders}
        placed = {rid for gpu in self.gpus for rid in gpu.held}
        for rid, r in sorted(holders.items()):
            if rid in placed:
                continue
            pool, _, profile = r.pool.partition("/")
            candidates = [g for g in self.gpus if g.pool == pool and g.free(profile) > 0]
            best = next((g for g in candidates if g.schedulable), None) or next(
                iter(candidates), None
            )
            if best is not None:
                best.held[rid] = profile
        # A schedulable GPU offers every slice; another, the slices its workers still hold,
        # less those already evicted (a slice freed there must not go to a waiting replica).
        devices: Counter[str] = Counter()
        for gpu in self.gpus:
            if gpu.schedulable:
                for profile, n in gpu.layout:
                    devices[f"{gpu.pool}/{profile}"] += n
                continue
            for rid, profile in gpu.held.items():
                if holders[rid].state != "retiring":
                    devices[f"{gpu.pool}/{profile}"] += 1
        for key in {*devices, *(k for k in self.sim.pool_devices if "/" in k)}:
            self.sim.pool_devices[key] = devices.get(key, 0)
            self.sim.start_pending(key)

    # -- the operator's node steps ------------------------------------------------------------

    def act(self, plan: Plan | None, initial: bool = False) -> None:
        """The operator's node steps for `plan` (`mig.node_actions`); at time 0 the plan's
        layouts are simply in place."""
        if plan is None:
            return
        if initial:
            planned = {
                (g.pool, g.gpu): layout_of(Counter(s.profile for s in g.slices))
                for g in plan.layouts
            }
            for gpu in self.gpus:
                lay = planned.get((gpu.pool, gpu.index))
                if lay is not None:
                    gpu.layout, gpu.state = lay, STATE_SUCCESS
                    gpu.config = config_name(gpu.model, [lay])
            self.assign()
            return
        self.assign()
        actions, _ = node_actions(self.pools, self.nodes(), plan.layouts, self.pods())
        by_name = {g.name: g for g in self.gpus}
        replicas = {r.rid: r for r in self.sim.replicas}
        for action in actions:
            gpu = by_name[action.node]
            if action.kind == "drain":
                gpu.tainted = True
                self.outages.append(Outage(gpu.name, self.sim.now_s, slices_before=gpu.layout))
            elif action.kind == "evict":
                for _, pod in action.pods:
                    self.evict(replicas[int(pod.removeprefix("replica-"))])
            elif action.kind == "relabel":
                self.relabels += 1
                gpu.config, gpu.state = action.config, "pending"
                self.sim.call_at(
                    self.sim.now_s + self.reconfigure_s, self._done(gpu, action.config)
                )
            elif action.kind == "release":
                gpu.tainted = False
                for outage in self.outages:
                    if outage.gpu == gpu.name and outage.end_s is None:
                        outage.end_s = self.sim.now_s
        self.assign()
        if actions:
            self.changed()

    def _done(self, gpu: Gpu, config: str) -> Callable[[], None]:
        return lambda: self._applied(gpu, config)

    def _applied(self, gpu: Gpu, config: str) -> None:
        """The MIG manager is done: the GPU has the config's layout (one GPU per node)."""
        if gpu.config != config:
            return
        (layout,) = decode_config(gpu.model, config, 1)
        gpu.layout, gpu.state = layout or (), STATE_SUCCESS
        self.assign()
        self.changed()
