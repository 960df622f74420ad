"""Carry out `mig.node_actions` on the cluster: taint, evict, relabel, release; and keep the
MIG manager's ConfigMap holding every config Accordion names.

The kopf driver calls `apply_mig` after each pass of the control loop (the loop itself knows no
Nodes). Every write is idempotent and follows the cache, so a failed one is simply decided
again in the next pass. The ConfigMap goes out before any relabel: a node is never labelled
with a config the MIG manager cannot find (see `mig` for where that ConfigMap must live).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from accordion.operator.actuator import MERGE, KubernetesActuator
from accordion.operator.api import DevicePool
from accordion.operator.k8s import MANAGED_BY
from accordion.operator.mig import (
    CONFIGMAP_KEY,
    CONFIGMAP_NAME,
    DRAIN_TAINT,
    LABEL_CONFIG,
    LABEL_STATE,
    NodeAction,
    mig_parted_config,
    node_actions,
)

log = logging.getLogger("accordion.operator.mig")


def configmap(namespace: str, text: str) -> dict[str, Any]:
    """The MIG manager's ConfigMap (mig-parted file `config.yaml`)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": CONFIGMAP_NAME,
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/managed-by": MANAGED_BY,
                "app.kubernetes.io/part-of": "accordion",
            },
        },
        "data": {CONFIGMAP_KEY: text},
    }


def _taints(node: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    return [
        dict(t)
        for t in ((node or {}).get("spec") or {}).get("taints") or []
        if isinstance(t, Mapping) and t.get("key") != DRAIN_TAINT
    ]


async def _write_configmap(actuator: KubernetesActuator, namespace: str, text: str) -> None:
    have = actuator.cache.get("ConfigMap", namespace, CONFIGMAP_NAME)
    if have is not None and (have.get("data") or {}).get(CONFIGMAP_KEY) == text:
        return
    body = configmap(namespace, text)
    core: Any = actuator.core
    if have is None:
        try:
            resp = await actuator._call(
                "create",
                lambda: core.create_namespaced_config_map(namespace, body, _preload_content=False),
            )
        except Exception as exc:
            if getattr(exc, "status", None) != 409:
                raise
            resp = None
    if have is not None or resp is None:
        resp = await actuator._call(
            "patch",
            lambda: core.patch_namespaced_config_map(
                CONFIGMAP_NAME, namespace, body, _content_type=MERGE, _preload_content=False
            ),
        )
    returned = json.loads(resp.data) if hasattr(resp, "data") and resp.data else {}
    actuator.cache.put("ConfigMap", returned if returned.get("metadata") else body)


async def _patch_node(actuator: KubernetesActuator, name: str, body: dict[str, Any]) -> None:
    core: Any = actuator.core
    resp = await actuator._call(
        "patch",
        lambda: core.patch_node(name, body, _content_type=MERGE, _preload_content=False),
    )
    returned = json.loads(resp.data) if hasattr(resp, "data") and resp.data else {}
    if returned.get("metadata"):
        actuator.cache.put("Node", returned)


async def _act(actuator: KubernetesActuator, action: NodeAction) -> None:
    node = actuator.cache.get("Node", "", action.node)
    core: Any = actuator.core
    if action.kind == "drain":
        taint = {"key": DRAIN_TAINT, "value": action.config, "effect": "NoSchedule"}
        await _patch_node(actuator, action.node, {"spec": {"taints": [*_taints(node), taint]}})
    elif action.kind == "evict":
        for ns, pod in action.pods:

            def delete(ns: str = ns, pod: str = pod) -> Any:
                return core.delete_namespaced_pod(pod, ns, _preload_content=False)

            await actuator._call("delete", delete)
    elif action.kind == "relabel":
        # The state label goes too: a `success` left from the old config must not count.
        labels = {LABEL_CONFIG: action.config, LABEL_STATE: None}
        await _patch_node(actuator, action.node, {"metadata": {"labels": labels}})
    elif action.kind == "release":
        await _patch_node(actuator, action.node, {"spec": {"taints": _taints(node) or None}})


async def apply_mig(
    actuator: KubernetesActuator,
    namespace: str,
    pools: Mapping[str, DevicePool],
    nodes: Iterable[Mapping[str, Any]],
    plan_layouts: Iterable[Any],
    pods: Iterable[Mapping[str, Any]],
) -> list[NodeAction]:
    """One round of node steps towards the plan's layouts (`mig.node_actions`); returns what
    was done. A failure is logged and decided again in the next pass."""
    actions, configs = node_actions(pools, nodes, plan_layouts, pods)
    if not configs and not actions:
        return []
    try:
        await _write_configmap(actuator, namespace, mig_parted_config(configs))
    except Exception as exc:
        log.warning("writing ConfigMap %s/%s failed: %s", namespace, CONFIGMAP_NAME, exc)
        actions = [a for a in actions if a.kind != "relabel"]
    done = []
    for action in actions:
        try:
            await _act(actuator, action)
        except Exception as exc:
            log.warning("MIG %s of node %s failed: %s", action.kind, action.node, exc)
            continue
        log.info(
            "MIG: %s node %s (config %s)%s",
            action.kind,
            action.node,
            action.config,
            f", pods {[p for _, p in action.pods]}" if action.pods else "",
        )
        done.append(action)
    return done
