"""RBAC: no wildcards, nothing dangerous, and every API call the operator makes is allowed.

The operator's API calls are collected from its code (`operator/accordion/operator/`):
kopf handler decorators (the resources kopf watches and patches), Kubernetes client calls
(`create_namespaced_deployment`, `patch_namespaced_config_map`, `..._custom_object_status`,
...), kopf's event helpers, plus what kopf itself needs (CRD and namespace discovery,
peering). If the operator exports its own list as `accordion.operator.rbac.REQUIRED_ACCESS`
(tuples of api group, resource, verb) that list is checked as well.
"""

from __future__ import annotations

import ast
import importlib
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from .conftest import REPO, objects

OPERATOR_SRC = REPO / "operator" / "accordion" / "operator"
Access = tuple[str, str, str]  # (api group, resource, verb)

# What kopf needs whatever the handlers are: discovery and (with peering) the peering object.
KOPF_ACCESS: set[Access] = {
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
    ("", "namespaces", "list"),
    ("", "namespaces", "watch"),
    ("", "events", "create"),
}
KOPF_PEERING: set[Access] = {
    ("kopf.dev", "clusterkopfpeerings", v) for v in ("get", "list", "watch", "patch")
}
# The Accordion resources: what kopf needs for a resource it handles.
ACCORDION_RESOURCES = {
    "inferenceservices": ("accordion.dev", "inferenceservices"),
    "inferenceservice": ("accordion.dev", "inferenceservices"),
    "InferenceService": ("accordion.dev", "inferenceservices"),
    "devicepools": ("accordion.dev", "devicepools"),
    "devicepool": ("accordion.dev", "devicepools"),
    "DevicePool": ("accordion.dev", "devicepools"),
}
BUILTIN_RESOURCES = {
    "deployment": ("apps", "deployments"),
    "deployments": ("apps", "deployments"),
    "Deployment": ("apps", "deployments"),
    "service": ("", "services"),
    "services": ("", "services"),
    "config_map": ("", "configmaps"),
    "configmaps": ("", "configmaps"),
    "ConfigMap": ("", "configmaps"),
    "event": ("", "events"),
    "events": ("", "events"),
    "pod": ("", "pods"),
    "pods": ("", "pods"),
    "Pod": ("", "pods"),
    "node": ("", "nodes"),
    "nodes": ("", "nodes"),
    "Node": ("", "nodes"),
    "namespace": ("", "namespaces"),
    "pod_disruption_budget": ("policy", "poddisruptionbudgets"),
    "token_review": ("authentication.k8s.io", "tokenreviews"),
}
_CLIENT_VERB = {
    "create": "create",
    "patch": "patch",
    "replace": "update",
    "delete": "delete",
    "read": "get",
    "list": "list",
}
_CLIENT_CALL = re.compile(
    r"\.(create|patch|replace|delete|read|list)_(namespaced_|cluster_)?"
    r"([a-z_]+?)(_status|_scale)?(_for_all_namespaces)?\("
)
_KOPF_HANDLER = re.compile(r"^kopf\.(on\.\w+|timer|daemon|index)$")
_KOPF_EVENTS = re.compile(r"\bkopf\.(event|info|warn|exception)\(")


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    if isinstance(node, ast.Name):
        return node.id
    return ""


def required_access(sources: Iterable[tuple[str, str]]) -> set[Access]:
    """The (group, resource, verb) the given operator sources need, from what they call."""
    need: set[Access] = set()
    for where, text in sources:
        for match in _CLIENT_CALL.finditer(text):
            verb, scope, kind, sub, everywhere = match.groups()
            if kind == "custom_object":
                targets = sorted(set(ACCORDION_RESOURCES.values()))
            elif kind in BUILTIN_RESOURCES:
                targets = [BUILTIN_RESOURCES[kind]]
            elif scope or everywhere:
                raise AssertionError(f"{where}: unknown Kubernetes client call {match.group(0)}")
            else:
                continue  # not a Kubernetes client call (path.read_text(), ...)
            for group, resource in targets:
                need.add((group, resource + (sub or "").replace("_", "/"), _CLIENT_VERB[verb]))
        if _KOPF_EVENTS.search(text):
            need.add(("", "events", "create"))
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not _KOPF_HANDLER.match(_dotted(node.func)):
                continue
            names = [a.value for a in node.args if isinstance(a, ast.Constant)]
            names += [
                k.value.value
                for k in node.keywords
                if k.arg in {"kind", "plural", "resource"} and isinstance(k.value, ast.Constant)
            ]
            for name in names:
                target = ACCORDION_RESOURCES.get(str(name)) or BUILTIN_RESOURCES.get(str(name))
                if target is None:
                    continue
                group, resource = target
                # Event handlers only watch (kopf stores no progress on the object for them);
                # other handlers may have kopf patch the object's annotations.
                watch_only = _dotted(node.func) == "kopf.on.event"
                for verb in ("list", "watch") if watch_only else ("list", "watch", "patch"):
                    need.add((group, resource, verb))
    return need


def operator_sources() -> list[tuple[str, str]]:
    return [(str(p.relative_to(REPO)), p.read_text()) for p in sorted(OPERATOR_SRC.rglob("*.py"))]


def exported_access() -> set[Access]:
    try:
        module = importlib.import_module("accordion.operator.rbac")
    except ModuleNotFoundError:
        return set()
    return {(str(g), str(r), str(v)) for g, r, v in getattr(module, "REQUIRED_ACCESS", ())}


def allowed(rules: Iterable[dict[str, Any]]) -> set[Access]:
    out: set[Access] = set()
    for rule in rules:
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                for verb in rule.get("verbs", []):
                    out.add((group, resource, verb))
    return out


def _all_rules(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for o in objs if o["kind"] in {"ClusterRole", "Role"} for r in o["rules"]]


def test_no_wildcards_and_nothing_dangerous() -> None:
    rules = _all_rules(objects())
    assert rules
    for rule in rules:
        for key in ("apiGroups", "resources", "verbs"):
            assert not any("*" in x for x in rule.get(key, [])), rule
        assert "nonResourceURLs" not in rule
        assert not {"escalate", "bind", "impersonate", "deletecollection"} & set(rule["verbs"])
        assert not {"secrets", "pods/exec", "roles", "rolebindings", "clusterroles"} & set(
            rule["resources"]
        ), rule


def test_a_cluster_role_and_only_the_leader_label_namespaced() -> None:
    """Cluster-wide: the ClusterRole. The one Role patches pods in the release namespace only
    (the leader's label on its own pod), which the ClusterRole does not allow anywhere."""
    objs = objects()
    assert "ClusterRole" in {o["kind"] for o in objs}
    roles = [o for o in objs if o["kind"] == "Role"]
    assert [r["rules"] for r in roles] == [
        [{"apiGroups": [""], "resources": ["pods"], "verbs": ["patch"]}]
    ]
    cluster = allowed(r for o in objs if o["kind"] == "ClusterRole" for r in o["rules"])
    assert ("", "pods", "patch") not in cluster


def test_cluster_wide_rbac_covers_the_operator() -> None:
    granted = allowed(_all_rules(objects()))
    need = required_access(operator_sources()) | exported_access() | KOPF_ACCESS
    need |= KOPF_PEERING
    assert not need - granted, f"missing RBAC: {sorted(need - granted)}"


def test_rbac_covers_what_the_actuator_is_designed_to_do() -> None:
    """Workers and routers are Deployments, Services and ConfigMaps; status is patched."""
    granted = allowed(_all_rules(objects()))
    for resource, group in (("deployments", "apps"), ("services", ""), ("configmaps", "")):
        for verb in ("get", "list", "watch", "create", "patch", "delete"):
            assert (group, resource, verb) in granted
    for resource in ("inferenceservices/status", "devicepools/status"):
        assert ("accordion.dev", resource, "patch") in granted


def test_the_scanner_finds_calls_and_handlers(tmp_path: Path) -> None:
    source = """
import kopf
from kubernetes import client

@kopf.on.create("accordion.dev", "v1alpha1", "inferenceservices")
def created(**_): ...

@kopf.timer("devicepools", interval=10)
def tick(**_): ...

@kopf.on.event("", "v1", "nodes")
def node_seen(**_): ...

def act(ns, body):
    client.AppsV1Api().patch_namespaced_deployment("w", ns, body)
    client.CoreV1Api().create_namespaced_config_map(ns, body)
    client.CustomObjectsApi().patch_namespaced_custom_object_status("g", "v", ns, "p", "n", body)
    kopf.warn(body, reason="Degraded", message="...")
"""
    need = required_access([("sample.py", source)])
    assert ("accordion.dev", "inferenceservices", "watch") in need
    assert ("", "nodes", "watch") in need
    assert ("", "nodes", "patch") not in need
    assert ("accordion.dev", "devicepools", "list") in need
    assert ("apps", "deployments", "patch") in need
    assert ("", "configmaps", "create") in need
    assert ("accordion.dev", "inferenceservices/status", "patch") in need
    assert ("", "events", "create") in need
    granted = allowed(_all_rules(objects()))
    assert not need - granted, sorted(need - granted)


def test_the_scanner_rejects_unknown_calls() -> None:
    with pytest.raises(AssertionError, match="unknown Kubernetes client call"):
        required_access([("x.py", "api.create_namespaced_secret(ns, body)\n")])
