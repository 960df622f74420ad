"""MIG layouts in the cluster: Accordion chooses them, the NVIDIA GPU operator's MIG manager
applies them.

The planner (`accordion.solver.migplan`) gives every GPU of a MIG pool a layout; this module,
pure (Nodes and Pods come in as the dicts the Kubernetes API returns), turns that into what the
MIG manager understands and decides the order in which nodes change. The Kubernetes side (patch
a Node, delete a Pod, write the ConfigMap) is `migactuator`.

How the GPU operator works (its conventions, used as they are):

- The MIG manager applies the config named by the node label `nvidia.com/mig.config` to all
  GPUs of the node, from the `mig-configs` of its ConfigMap (mig-parted format: a config is a
  list of `{devices: all | [indices], mig-enabled, mig-devices: {profile: count}}`), and
  reports in `nvidia.com/mig.config.state`: `pending` while it works, then `success` or
  `failed`.
- Slices then show in the node's `status.allocatable` as `nvidia.com/mig-<profile>` (the
  device plugin's `mixed` strategy); GPU feature discovery labels `nvidia.com/gpu.count`.

How a per-GPU plan becomes per-node configs (a label applies to the whole node):

- A pool's GPUs are numbered over its Ready nodes (matching its nodeSelector) in node-name
  order, each node's GPUs by their index: GPU i of the plan is a fixed (node, device index).
- A node's config is the list of its GPUs' layouts. Its name (`config_name`): NVIDIA's default
  name when every GPU has one of the default configs (`all-1g.10gb`, `all-balanced`, ...:
  nothing to add to the MIG manager's default ConfigMap); otherwise `accordion-` and one block
  per GPU of the profile counts in the model's profile order (`accordion-700000x4-000001x4`:
  four GPUs of 7x 1g.10gb, four of 1x 7g.80gb), so the current layout of every GPU is read back
  from the label alone. `mig_parted_config` writes the `mig-configs` for every name in use; the
  operator keeps them in the ConfigMap `accordion-mig-parted-config` of the GPU operator's
  namespace, which ClusterPolicy `spec.migManager.config.name` must name.

The order (make before break at the node level), one node of a pool at a time, unless the
pool has slack for more (below):

1. a node whose config must change is tainted `accordion.dev/mig-reconfigure:NoSchedule`: no
   new worker lands on it;
2. Accordion's worker pods on it are deleted (their Deployments place them on slices that
   exist elsewhere): the drained node's share of capacity is what a reconfiguration costs;
3. only when none is left, it is relabelled (and the state label removed, so that a stale
   `success` of the old config is never taken for the new one);
4. when the MIG manager says `success`, the taint goes, and the node's slices count
   (`slice_devices`): the control loop places workers on a slice only once it is in the
   allocatable of a node in service (`cap_replicas`).

Replicas are planned on slices in service only (`in_service_layouts`, the planner's
`MigSpec.in_service`): a node tainted or not yet `success` offers none, one in service offers
its config's slices (the planned config, or the old one until its turn). Layouts are still
planned for every GPU. So the step that taints a node also re-plans its work onto slices
elsewhere, before step 2 deletes its workers (make before break), and no traffic waits for
slices the MIG manager has not made. The same hook gives the planner the plan in force's layouts
(`MigSpec.target`), the reference of its layout hysteresis (`migplan`): targets move only for a
gain worth a drain, so a node is not drained and released again a pass later (flapping).

Slack (`moves_freely`): while a node of the pool is out, another may start draining only when
reconfiguring it costs no capacity: every Accordion worker on it (its profile read from the
pod's `nvidia.com/mig-<profile>` request) has a free slice of that profile on a node in service
that keeps its config (untainted, `success`, already the planned config), slices claimed by
nodes drained earlier in the same pass counted as taken. A node no worker runs on qualifies at
once. Why: a relabel holds its node for as long as the MIG manager works (a minute or more);
with the strict one-node rule, a relabel begun for a small gain holds the pool's only slot
while a later demand shift waits for layouts, although nodes whose workers have somewhere to
go could change at the same time without losing a request.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from accordion.operator.api import DevicePool, ResourceRequirements, Toleration
from accordion.operator.pools import (
    node_allocatable,
    node_matches,
    node_name,
    node_ready,
    node_tolerated,
    parse_quantity,
    pod_tolerations,
)
from accordion.solver.mig import GPU_MODELS, Layout, layout_of
from accordion.solver.problem import Problem

LABEL_CONFIG = "nvidia.com/mig.config"
"""The node label the MIG manager applies (a config name of its ConfigMap)."""
LABEL_STATE = "nvidia.com/mig.config.state"
"""The MIG manager's state of the node: pending, success or failed."""
LABEL_GPU_COUNT = "nvidia.com/gpu.count"
"""GPUs of the node (GPU feature discovery)."""
STATE_SUCCESS, STATE_FAILED = "success", "failed"
GPU_RESOURCE = "nvidia.com/gpu"
DRAIN_TAINT = "accordion.dev/mig-reconfigure"
"""Taint of a node whose layout Accordion is changing (effect NoSchedule)."""
CONFIG_PREFIX = "accordion-"
CONFIGMAP_NAME = "accordion-mig-parted-config"
CONFIGMAP_KEY = "config.yaml"
MAX_LABEL = 63


def slice_resource(profile: str) -> str:
    """The extended resource of a slice: `nvidia.com/mig-1g.10gb`."""
    return f"nvidia.com/mig-{profile}"


def split_slice_pool(name: str) -> tuple[str, str] | None:
    """`(pool, profile)` of a slice sub-pool name `<pool>/<profile>`, None for a plain pool."""
    pool, sep, profile = name.partition("/")
    return (pool, profile) if sep else None


def pool_label(pool: str) -> str:
    """A pool name as a label value: `mig/1g.10gb` -> `mig.1g.10gb` (pool names have no dot)."""
    return pool.replace("/", ".", 1)


def pool_from_label(value: str) -> str:
    """The inverse of `pool_label`."""
    return value.replace(".", "/", 1)


def slice_device_pool(pools: Mapping[str, DevicePool], name: str) -> DevicePool | None:
    """The DevicePool a slice sub-pool's workers run with: the MIG pool's, asking one slice
    (`nvidia.com/mig-<profile>: 1`) instead of a whole GPU. None when `name` is no slice of a
    MIG pool."""
    parts = split_slice_pool(name)
    base = pools.get(parts[0]) if parts else None
    if parts is None or base is None or base.spec.mig is None:
        return None
    if parts[1] not in GPU_MODELS[base.spec.mig.gpu_model]:
        return None
    res = base.spec.resources
    limits: dict[str, int | str] = {k: v for k, v in res.limits.items() if k != GPU_RESOURCE}
    requests = {k: v for k, v in res.requests.items() if k != GPU_RESOURCE}
    limits[slice_resource(parts[1])] = 1
    resources = ResourceRequirements(requests=requests, limits=limits)
    return base.model_copy(
        update={"spec": base.spec.model_copy(update={"resources": resources})}, deep=True
    )


# ------------------------------------------------------------------------------ config names


def standard_configs(gpu_model: str) -> dict[str, Layout]:
    """NVIDIA's default configs (the GPU operator's `default-mig-parted-config`) for a model:
    `all-<profile>` (as many instances as fit) and `all-balanced`."""
    profiles = list(GPU_MODELS[gpu_model].values())
    out = {f"all-{p.name}": layout_of({p.name: p.max_instances}) for p in profiles}
    out["all-balanced"] = layout_of({profiles[0].name: 2, profiles[2].name: 1, profiles[3].name: 1})
    return out


def _block(gpu_model: str, layout: Layout) -> str:
    have = dict(layout)
    return "".join(str(have.get(name, 0)) for name in GPU_MODELS[gpu_model])


def config_name(gpu_model: str, layouts: Sequence[Layout]) -> str:
    """The name of the config that gives a node's GPUs `layouts` (module docstring)."""
    if layouts and all(lay == layouts[0] for lay in layouts):
        for name, lay in standard_configs(gpu_model).items():
            if lay == layouts[0]:
                return name
    runs: list[tuple[str, int]] = []
    for lay in layouts:
        block = _block(gpu_model, lay)
        if runs and runs[-1][0] == block:
            runs[-1] = (block, runs[-1][1] + 1)
        else:
            runs.append((block, 1))
    name = CONFIG_PREFIX + "-".join(b + (f"x{n}" if n > 1 else "") for b, n in runs)
    if len(name) > MAX_LABEL:
        digest = hashlib.sha256(name.encode()).hexdigest()[:12]
        name = f"{CONFIG_PREFIX}h{digest}"
    return name


def decode_config(gpu_model: str, name: str | None, gpus: int) -> list[Layout | None]:
    """The layout of each of a node's GPUs under config `name`; None where it is not known
    (no label, a config of someone else's, a hashed name)."""
    unknown: list[Layout | None] = [None] * gpus
    if not name:
        return unknown
    if name in ("all-disabled", "all-enabled"):
        return [()] * gpus
    standard = standard_configs(gpu_model).get(name)
    if standard is not None:
        return [standard] * gpus
    if not name.startswith(CONFIG_PREFIX):
        return unknown
    names = list(GPU_MODELS[gpu_model])
    out: list[Layout | None] = []
    for part in name.removeprefix(CONFIG_PREFIX).split("-"):
        block, _, times = part.partition("x")
        if len(block) != len(names) or not block.isdigit() or (times and not times.isdigit()):
            return unknown
        lay = layout_of({n: int(c) for n, c in zip(names, block, strict=True)})
        out.extend([lay] * (int(times) if times else 1))
    return out if len(out) == gpus else unknown


def mig_parted_entries(gpu_model: str, layouts: Sequence[Layout]) -> list[dict[str, Any]]:
    """The mig-parted entries of one config: GPUs of equal layouts together."""
    groups: dict[Layout, list[int]] = {}
    for i, lay in enumerate(layouts):
        groups.setdefault(lay, []).append(i)
    entries = []
    for lay, devices in groups.items():
        entries.append(
            {
                "devices": "all" if len(groups) == 1 else devices,
                "mig-enabled": True,
                "mig-devices": dict(lay),
            }
        )
    return entries


def mig_parted_config(configs: Mapping[str, tuple[str, Sequence[Layout]]]) -> str:
    """A mig-parted config file (`version: v1`, `mig-configs`) with every config in
    `configs` (name -> (GPU model, per-GPU layouts)) and `all-disabled`/`all-enabled`. JSON,
    which is YAML: the MIG manager reads it as it is."""
    doc: dict[str, Any] = {
        "all-disabled": [{"devices": "all", "mig-enabled": False}],
        "all-enabled": [{"devices": "all", "mig-enabled": True, "mig-devices": {}}],
    }
    for name, (model, layouts) in sorted(configs.items()):
        doc[name] = mig_parted_entries(model, layouts)
    return json.dumps({"version": "v1", "mig-configs": doc}, indent=2) + "\n"


# ----------------------------------------------------------------------------------- nodes


def _labels(node: Mapping[str, Any]) -> dict[str, str]:
    return dict((node.get("metadata") or {}).get("labels") or {})


def node_gpus(node: Mapping[str, Any]) -> int:
    """GPUs of a node: `nvidia.com/gpu.count`, else its allocatable `nvidia.com/gpu`."""
    raw = _labels(node).get(LABEL_GPU_COUNT)
    try:
        if raw is not None:
            return max(0, int(parse_quantity(raw)))
    except ValueError:
        pass
    return int(node_allocatable(node, GPU_RESOURCE))


def drain_tainted(node: Mapping[str, Any]) -> bool:
    return any(
        isinstance(t, Mapping) and t.get("key") == DRAIN_TAINT
        for t in (node.get("spec") or {}).get("taints") or []
    )


def pool_node_dicts(
    pool: DevicePool, nodes: Iterable[Mapping[str, Any]]
) -> list[Mapping[str, Any]]:
    """The Ready nodes of a MIG pool, by name; Accordion's own drain taint is no reason to
    leave a node out (it is still the pool's)."""
    tolerations = [*pod_tolerations(pool), Toleration(key=DRAIN_TAINT, operator="Exists")]
    found = [
        n
        for n in nodes
        if node_matches(n, pool.spec.node_selector)
        and node_ready(n)
        and node_tolerated(n, tolerations)
        and node_gpus(n) > 0
    ]
    return sorted(found, key=node_name)


@dataclass(frozen=True)
class MigNode:
    """A node of a MIG pool as the MIG manager left it."""

    name: str
    first_gpu: int
    """The pool-wide index of its GPU 0."""
    gpus: int
    config: str | None
    state: str | None
    layouts: tuple[Layout | None, ...]
    draining: bool
    slices: dict[str, int] = field(default_factory=dict)
    """Allocatable slices per profile."""


def mig_nodes(pool: DevicePool, nodes: Iterable[Mapping[str, Any]]) -> list[MigNode]:
    """The pool's nodes with their GPUs numbered pool-wide (module docstring)."""
    assert pool.spec.mig is not None
    model = pool.spec.mig.gpu_model
    out: list[MigNode] = []
    first = 0
    for n in pool_node_dicts(pool, nodes):
        labels = _labels(n)
        gpus = node_gpus(n)
        out.append(
            MigNode(
                name=node_name(n),
                first_gpu=first,
                gpus=gpus,
                config=labels.get(LABEL_CONFIG),
                state=labels.get(LABEL_STATE),
                layouts=tuple(decode_config(model, labels.get(LABEL_CONFIG), gpus)),
                draining=drain_tainted(n),
                slices={p: int(node_allocatable(n, slice_resource(p))) for p in GPU_MODELS[model]},
            )
        )
        first += gpus
    return out


def mig_pools(pools: Iterable[DevicePool]) -> list[DevicePool]:
    return sorted((p for p in pools if p.spec.mig is not None), key=lambda p: p.metadata.name)


def pool_gpus(pool: DevicePool, nodes: Iterable[Mapping[str, Any]]) -> int:
    """GPUs the pool's Ready nodes have (what the planner may partition)."""
    return sum(node_gpus(n) for n in pool_node_dicts(pool, nodes))


def current_layouts(
    pools: Iterable[DevicePool], nodes: Iterable[Mapping[str, Any]]
) -> dict[str, list[dict[str, int]]]:
    """Per MIG pool, each GPU's layout now (`MigSpec.current`; {} where not known), so the
    planner relabels as few GPUs as it can."""
    node_list = list(nodes)
    out: dict[str, list[dict[str, int]]] = {}
    for pool in mig_pools(pools):
        out[pool.metadata.name] = [
            dict(lay or ()) for node in mig_nodes(pool, node_list) for lay in node.layouts
        ]
    return out


def in_service_layouts(
    pools: Iterable[DevicePool], nodes: Iterable[Mapping[str, Any]]
) -> dict[str, list[dict[str, int] | None]]:
    """Per MIG pool, each GPU's slices that can take workers now (`MigSpec.in_service`): its
    layout on a node in service (untainted, `success`), {} on a node drained or being
    relabelled, None where not known (a node the MIG manager never configured, a config that
    is not ours: the planned layout is taken as applied)."""
    node_list = list(nodes)
    out: dict[str, list[dict[str, int] | None]] = {}
    for pool in mig_pools(pools):
        gpus: list[dict[str, int] | None] = []
        for node in mig_nodes(pool, node_list):
            for lay in node.layouts:
                if node.draining or (node.config and node.state != STATE_SUCCESS):
                    gpus.append({})
                else:
                    gpus.append(None if lay is None or not node.config else dict(lay))
        out[pool.metadata.name] = gpus
    return out


def with_in_service(
    problem: Problem,
    pools: Iterable[DevicePool],
    nodes: Iterable[Mapping[str, Any]],
    plan: Any = None,
) -> Problem:
    """`problem` with each MIG pool's `in_service` read from the Nodes (`in_service_layouts`):
    the control loop's hook, so that replicas are planned on slices that exist. With the plan
    in force (`plan`), also each GPU's `target`, its layout there: the planner keeps those
    targets unless other layouts gain more than its layout hysteresis (`migplan`)."""
    found = in_service_layouts(pools, nodes)
    if not found:
        return problem
    out = []
    for spec in problem.pools:
        now = found.get(spec.name)
        if spec.mig is None or now is None:
            out.append(spec)
            continue
        update: dict[str, Any] = {"in_service": now[: spec.devices]}
        if plan is not None:
            planned = _planned(plan.layouts, spec.name)
            update["target"] = [
                dict(planned[gpu]) if gpu in planned else None for gpu in range(spec.devices)
            ]
        mig = spec.mig.model_copy(update=update)
        out.append(spec.model_copy(update={"mig": mig}))
    return problem.model_copy(update={"pools": out})


def _planned(layouts: Iterable[Any], pool: str) -> dict[int, Layout]:
    """GPU index -> layout of the plan's `GpuLayout`s of `pool`."""
    return {
        g.gpu: layout_of(Counter(s.profile for s in g.slices)) for g in layouts if g.pool == pool
    }


def desired_configs(
    pool: DevicePool, nodes: Sequence[MigNode], plan_layouts: Iterable[Any]
) -> dict[str, tuple[str, tuple[Layout, ...]]]:
    """Per node the plan touches, the config it should have: (name, per-GPU layouts). GPUs the
    plan leaves out keep the layout they have (no slices where it is not known)."""
    assert pool.spec.mig is not None
    model = pool.spec.mig.gpu_model
    planned = _planned(plan_layouts, pool.metadata.name)
    out: dict[str, tuple[str, tuple[Layout, ...]]] = {}
    for node in nodes:
        indices = range(node.first_gpu, node.first_gpu + node.gpus)
        if not any(i in planned for i in indices):
            continue
        layouts = tuple(planned.get(i, node.layouts[i - node.first_gpu] or ()) for i in indices)
        out[node.name] = (config_name(model, layouts), layouts)
    return out


def slice_devices(
    pools: Mapping[str, DevicePool],
    nodes: Iterable[Mapping[str, Any]],
    plan_layouts: Iterable[Any],
) -> dict[str, int]:
    """Per slice sub-pool `<pool>/<profile>`, the slices workers may be placed on now: on
    nodes the MIG manager has finished (`success`), not being drained, as many as both the
    node's allocatable and its config's layouts have (the planned config's, or the one it
    keeps until its turn to be relabelled: its slices serve until then, and the plan counts
    them, `in_service_layouts`)."""
    node_list = list(nodes)
    layout_list = list(plan_layouts)
    out: dict[str, int] = {}
    for pool in mig_pools(pools.values()):
        assert pool.spec.mig is not None
        found = mig_nodes(pool, node_list)
        desired = desired_configs(pool, found, layout_list)
        for profile in GPU_MODELS[pool.spec.mig.gpu_model]:
            out[f"{pool.metadata.name}/{profile}"] = 0
        for node in found:
            name, layouts = desired.get(node.name, (node.config, node.layouts))
            if node.draining or node.state != STATE_SUCCESS:
                continue
            if node.config != name:
                if any(lay is None for lay in node.layouts):
                    continue  # a config of someone else's: its slices are not known
                layouts = node.layouts
            planned: Counter[str] = Counter()
            for lay in layouts:
                for profile, n in lay or ():
                    planned[profile] += n
            for profile, n in planned.items():
                key = f"{pool.metadata.name}/{profile}"
                out[key] += min(n, node.slices.get(profile, 0))
    return out


def cap_replicas(
    wanted: Mapping[Any, tuple[str, int]], slices: Mapping[str, int]
) -> dict[Any, int]:
    """Per worker key (with its pool and planned replicas), the replicas it may have now: the
    slices of its sub-pool that exist, shared in key order. Keys on plain pools are left out."""
    left = dict(slices)
    out: dict[Any, int] = {}
    on_slices = [kv for kv in wanted.items() if kv[1][0] in left]
    for key, (pool, replicas) in sorted(on_slices, key=lambda kv: str(kv[0])):
        out[key] = min(replicas, left[pool])
        left[pool] -= out[key]
    return out


# ---------------------------------------------------------------------------------- actions


@dataclass(frozen=True)
class NodeAction:
    """One step on a node, in the order of the module docstring."""

    node: str
    kind: Literal["drain", "evict", "relabel", "release"]
    config: str = ""
    pods: tuple[tuple[str, str], ...] = ()
    """evict: the (namespace, name) of Accordion's worker pods on the node."""


def pods_on(pods: Iterable[Mapping[str, Any]], node: str) -> tuple[list[tuple[str, str]], int]:
    """Accordion's worker pods bound to `node` that are not being deleted yet, and how many
    are still terminating (they hold their slice until they are gone)."""
    out, terminating = [], 0
    for pod in pods:
        meta = pod.get("metadata") or {}
        if (pod.get("spec") or {}).get("nodeName") != node:
            continue
        if meta.get("deletionTimestamp"):
            terminating += 1
        else:
            out.append((str(meta.get("namespace") or "default"), str(meta.get("name") or "")))
    return sorted(out), terminating


def pod_profile(pod: Mapping[str, Any]) -> str | None:
    """The slice profile a worker pod asks (`nvidia.com/mig-<profile>` in a container's limits
    or requests); None when it asks none."""
    prefix = slice_resource("")
    for container in (pod.get("spec") or {}).get("containers") or []:
        resources = (container or {}).get("resources") or {}
        for part in ("limits", "requests"):
            for key in resources.get(part) or {}:
                if str(key).startswith(prefix):
                    return str(key).removeprefix(prefix)
    return None


def free_slices(
    nodes: Iterable[MigNode],
    desired: Mapping[str, tuple[str, tuple[Layout, ...]]],
    pods: Sequence[Mapping[str, Any]],
) -> Counter[str]:
    """Per profile, the slices free now on nodes in service that keep their config: untainted,
    `success`, at the planned config; allocatable less the pods bound there (terminating ones
    too: they hold their slice until gone)."""
    free: Counter[str] = Counter()
    for node in nodes:
        name = desired.get(node.name, (node.config, ()))[0]
        if node.draining or node.state != STATE_SUCCESS or node.config != name:
            continue
        used = Counter(
            pod_profile(p) for p in pods if (p.get("spec") or {}).get("nodeName") == node.name
        )
        for profile, n in node.slices.items():
            free[profile] += max(0, n - used.get(profile, 0))
    return free


def moves_freely(node: str, pods: Sequence[Mapping[str, Any]], free: Counter[str]) -> bool:
    """True when every Accordion worker on `node` has a free slice of its profile in `free`;
    then those slices are taken (module docstring, slack)."""
    need = Counter(pod_profile(p) for p in pods if (p.get("spec") or {}).get("nodeName") == node)
    if any(profile is None or free[profile] < n for profile, n in need.items()):
        return False
    for profile, n in need.items():
        assert profile is not None
        free[profile] -= n
    return True


def node_actions(
    pools: Mapping[str, DevicePool],
    nodes: Iterable[Mapping[str, Any]],
    plan_layouts: Iterable[Any],
    pods: Iterable[Mapping[str, Any]],
) -> tuple[list[NodeAction], dict[str, tuple[str, tuple[Layout, ...]]]]:
    """The steps towards the plan's layouts now, and every config in use or wanted (name ->
    (GPU model, per-GPU layouts)) for the MIG manager's ConfigMap. At most one node per pool is
    drained or reconfigured at a time (one node's share of capacity is lost at a time), more
    only when their workers move to free slices (module docstring, slack)."""
    node_list = list(nodes)
    pod_list = list(pods)
    layout_list = list(plan_layouts)
    actions: list[NodeAction] = []
    configs: dict[str, tuple[str, tuple[Layout, ...]]] = {}
    for pool in mig_pools(pools.values()):
        assert pool.spec.mig is not None
        model = pool.spec.mig.gpu_model
        found = mig_nodes(pool, node_list)
        desired = desired_configs(pool, found, layout_list)
        for node in found:
            known = tuple(lay or () for lay in node.layouts)
            decoded = all(lay is not None for lay in node.layouts)
            if node.config and decoded and node.config not in ("all-disabled", "all-enabled"):
                configs[node.config] = (model, known)
        busy = any(n.draining and n.state != STATE_FAILED for n in found)
        free = free_slices(found, desired, pod_list)
        for node in found:
            name, layouts = desired.get(node.name, (node.config or "", ()))
            if name and layouts:
                configs[name] = (model, layouts)
            if not name or node.config == name:
                if node.draining and node.state == STATE_SUCCESS and node.config == name:
                    actions.append(NodeAction(node.name, "release", name))
                continue
            if not node.draining:
                fits = moves_freely(node.name, pod_list, free)
                if not busy or fits:
                    actions.append(NodeAction(node.name, "drain", name))
                    busy = True
                continue
            on_node, terminating = pods_on(pod_list, node.name)
            if on_node:
                actions.append(NodeAction(node.name, "evict", name, tuple(on_node)))
            elif not terminating:  # relabelled only once every worker on it is gone
                actions.append(NodeAction(node.name, "relabel", name))
    return actions, configs


def mig_slices(world: Any, plan: Any) -> dict[str, int]:
    """The control loop's hook: slices per sub-pool that workers may use now. From the Nodes
    when the driver watches them (`slice_devices`); else (local mode, the simulator) the
    plan's layouts are taken as applied."""
    pools: Mapping[str, DevicePool] = world.pools
    if plan is None or not any(p.spec.mig is not None for p in pools.values()):
        return {}
    if world.nodes is not None:
        return slice_devices(pools, world.nodes, plan.layouts)
    out: Counter[str] = Counter()
    for gpu in plan.layouts:
        for s in gpu.slices:
            out[f"{gpu.pool}/{s.profile}"] += 1
    return dict(out)
