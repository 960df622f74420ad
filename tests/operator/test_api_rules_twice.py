"""Every admission rule of the CRDs is also a rule of the pydantic models, with the same message.

The API module promises that each rule spanning several fields is written twice: as CEL for the
API server and as a pydantic validator for the CLI, local mode and the operator. This test walks
the committed CRDs, finds every CEL rule and every list-type (`map` keys, `set`) constraint, and
for each one puts a value that breaks it into an example document: the CEL rule (evaluated with
cel-python) must reject the value, and `parse_resource` must reject the document at the same field
path, with the CEL rule's message. A new CEL rule without a counterexample here fails the test,
so the two copies cannot drift apart unnoticed.

It also checks the bounds that keep the planner finite (schema maximums, DNS-1035 service names)
in both the CRD schema and the models.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
import pytest

from accordion.operator.api import InvalidResourceError, parse_resource
from accordion.workers.storage import STORAGE_URI_PATTERN

from .test_crds import _cel_rules, _holds, _walk, examples, schema_of

KINDS = ("InferenceService", "DevicePool")

# A value that breaks each CEL rule, keyed by (schema path, rule).
BREAKS: dict[tuple[str, str], Any] = {
    (
        ".spec.accuracy",
        "!has(self.target) || self.target >= self.floor",
    ): {"floor": 80.0, "target": 70.0},
    (
        ".spec.demand",
        "self.source != 'Static' || has(self.qps)",
    ): {"source": "Static", "headroom": 0.1},
    (
        ".spec.variants[].profiles[]",
        "self.batches.exists(b, b.batchSize == 1)",
    ): {"pool": "gpu-a100", "batches": [{"batchSize": 4, "p50Ms": 1.0}]},
    (
        ".spec.variants[].profiles[].batches[]",
        "!has(self.p90Ms) || self.p90Ms >= self.p50Ms",
    ): {"batchSize": 1, "p50Ms": 5.0, "p90Ms": 4.0},
    (
        ".spec.variants[].profiles[].batches[]",
        "!has(self.p99Ms) || self.p99Ms >= (has(self.p90Ms) ? self.p90Ms : self.p50Ms)",
    ): {"batchSize": 1, "p50Ms": 5.0, "p99Ms": 4.0},
    (
        ".spec.variants[].stages[].profiles[]",
        "self.batches.exists(b, b.batchSize == 1)",
    ): {"pool": "cpu", "batches": [{"batchSize": 2, "p50Ms": 1.0}]},
    (
        ".spec.variants[].stages[].profiles[].batches[]",
        "!has(self.p90Ms) || self.p90Ms >= self.p50Ms",
    ): {"batchSize": 1, "p50Ms": 5.0, "p90Ms": 4.0},
    (
        ".spec.variants[].stages[].profiles[].batches[]",
        "!has(self.p99Ms) || self.p99Ms >= (has(self.p90Ms) ? self.p90Ms : self.p50Ms)",
    ): {"batchSize": 1, "p50Ms": 5.0, "p99Ms": 4.0},
    (
        ".spec.variants[].model",
        f"self.storageUri.matches('{STORAGE_URI_PATTERN}')",
    ): {"storageUri": "gs://models/resnet50.pt", "format": "torchscript"},
}

# An item for list-type rules whose list the examples leave empty.
ITEMS: dict[str, Any] = {".spec.allowedNamespaces": "team-a"}


def _example(kind: str, path: str | None = None) -> dict[str, Any]:
    """The first example of `kind`; with `path`, the first one that has it (a variant's
    `batching` is in examples/text-sequences.yaml only)."""
    docs = [d for d in examples() if d["kind"] == kind]
    having = [d for d in docs if path is not None and _get(d, path) is not None]
    return copy.deepcopy((having or docs)[0])


# minReplicas <= maxReplicas is a rule of the whole spec: the counterexample is the example's
# spec with the two crossed.
BREAKS[
    (
        ".spec",
        "!has(self.maxReplicas) || !has(self.minReplicas) || self.maxReplicas >= self.minReplicas",
    )
] = {**_example("InferenceService")["spec"], "minReplicas": 3, "maxReplicas": 2}

# Batching inside the model (`spec.variants[].batching`): a variant whose mode does not fit its
# model, cellular bounds on another mode, lengths whose tail is below their mean.
_CELLS = "['builtin:gru-seq', 'builtin:decoder-tiny']"
_ONE_PROFILE = [{"pool": "cpu", "batches": [{"batchSize": 1, "p50Ms": 1.0}]}]
BREAKS[
    (
        ".spec.variants[]",
        f"!has(self.batching) || self.batching.mode != 'Cellular' || "
        f"self.model.storageUri in {_CELLS}",
    )
] = {
    "name": "file-model",
    "accuracy": 70.0,
    "model": {"storageUri": "/models/gru.pt", "format": "torchscript", "inputShape": [8, 64]},
    "batching": {"mode": "Cellular"},
    "profiles": _ONE_PROFILE,
}
BREAKS[
    (
        ".spec.variants[]",
        f"!has(self.batching) || self.batching.mode != 'Node' || "
        f"!(self.model.storageUri in {_CELLS})",
    )
] = {
    "name": "cell-model",
    "accuracy": 70.0,
    "model": {"storageUri": "builtin:gru-seq", "format": "builtin"},
    "batching": {"mode": "Node"},
    "profiles": _ONE_PROFILE,
}
BREAKS[
    (
        ".spec.variants[].batching",
        "self.mode == 'Cellular' || "
        "(!has(self.maxInflight) && !has(self.maxStateMiB) && !has(self.lengths))",
    )
] = {"mode": "Request", "maxStateMiB": 64}
BREAKS[(".spec.variants[].batching.lengths", "self.p99Steps >= self.meanSteps")] = {
    "meanSteps": 100,
    "p99Steps": 50,
}


def _place(doc: dict[str, Any], path: str, value: Any) -> str:
    """Put `value` at the first place `path` (`.spec.variants[].profiles[]`) exists in `doc`.

    Returns the concrete field path (`spec.variants[0].profiles[0]`). Missing objects on the
    way are created; a missing list gets one item from `ITEMS`.
    """
    parts = [p for p in path.replace("[]", ".[]").split(".") if p]
    node: Any = doc
    concrete = ""
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "[]":
            if last:
                node[0] = value
            else:
                node = node[0]
            concrete += "[0]"
            continue
        concrete += ("." if concrete else "") + part
        if last:
            node[part] = value
        else:
            if part not in node:
                node[part] = [] if parts[i + 1] == "[]" else {}
            node = node[part]
    return concrete


def _get(doc: dict[str, Any], path: str) -> Any:
    node: Any = doc
    for part in [p for p in path.replace("[]", ".[]").split(".") if p]:
        node = node[0] if part == "[]" else node.get(part)
        if node is None:
            return None
    return node


def _errors(doc: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(InvalidResourceError) as info:
        parse_resource(doc, "test")
    return info.value.errors


def _rejects(doc: dict[str, Any], at: str) -> None:
    """`doc` is rejected with an error at field path `at` (or inside it)."""
    errors = _errors(doc)
    assert any(p == at or p.startswith((at + ".", at + "[")) for p, _ in errors), (at, errors)


def _list_rules(kind: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        (path, node)
        for path, node in _walk(schema_of(kind)["properties"]["spec"], ".spec")
        if node.get("x-kubernetes-list-type") in {"map", "set"}
    ]


@pytest.mark.parametrize("kind", KINDS)
def test_every_cel_rule_has_a_counterexample_here(kind: str) -> None:
    rules = {(path, r["rule"]) for path, r in _cel_rules(kind)}
    missing = rules - set(BREAKS)
    assert not missing, f"CEL rules of {kind} without a pydantic counterpart checked: {missing}"


@pytest.mark.parametrize(
    ("path", "rule"), sorted(BREAKS), ids=[f"{p} {r[:30]}" for p, r in sorted(BREAKS)]
)
def test_the_models_reject_what_each_cel_rule_rejects(path: str, rule: str) -> None:
    kind = next(k for k in KINDS if (path, rule) in {(p, r["rule"]) for p, r in _cel_rules(k)})
    entry = next(r for p, r in _cel_rules(kind) if (p, r["rule"]) == (path, rule))
    value = BREAKS[(path, rule)]
    assert not _holds(rule, value), "the counterexample must break the CEL rule"
    doc = _example(kind, path)
    assert _holds(rule, _get(doc, path)), "the example itself must keep the rule"
    at = _place(doc, path, value)
    # The schema alone accepts it (this is a rule across fields, not a bound) ...
    jsonschema.Draft4Validator(schema_of(kind)).validate(doc)
    # ... and the models reject it at the field the CEL rule names, with the same message.
    errors = _errors(doc)
    assert (at + entry.get("fieldPath", ""), entry["message"]) in errors, errors


@pytest.mark.parametrize("kind", KINDS)
def test_the_models_reject_duplicates_in_every_list_map_and_set(kind: str) -> None:
    rules = _list_rules(kind)
    assert rules
    for path, node in rules:
        doc = _example(kind, path)
        items = _get(doc, path) or [ITEMS[path]]
        at = _place(doc, path, [items[0], copy.deepcopy(items[0])])
        _rejects(doc, at)
        assert node.get("x-kubernetes-list-type") != "map" or node["x-kubernetes-list-map-keys"]


def _service() -> dict[str, Any]:
    return _example("InferenceService")


@pytest.mark.parametrize("name", ["1svc", "-a", "a-", "A", "a.b", "a" * 64])
def test_service_names_are_dns_1035_labels_in_schema_and_models(name: str) -> None:
    doc = _service()
    doc["metadata"]["name"] = name
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft4Validator(schema_of("InferenceService")).validate(doc)
    _rejects(doc, "metadata.name")


def test_a_dns_1035_service_name_is_accepted() -> None:
    doc = _service()
    doc["metadata"]["name"] = "svc-1"
    jsonschema.Draft4Validator(schema_of("InferenceService")).validate(doc)
    parse_resource(doc)


HOSTILE_NUMBERS: list[tuple[str, Any]] = [
    (".spec.demand.qps", 1e30),
    (".spec.demand.qps", 1.7e308),
    (".spec.demand.headroom", 1e9),
    (".spec.priority", 10**12),
    (".spec.slo.latencyMs", 1e-300),
    (".spec.variants[].profiles[].batches[].p50Ms", 1e-300),
    (".spec.variants[].profiles[].batches[].p99Ms", 1e300),
    (".spec.variants[].profiles[].batches[].batchSize", 10**9),
    (".spec.variants[].model.inputShape", [0]),
    (".spec.variants[].model.inputShape", [1] * 9),
    (".spec.variants[].model.inputShape", [10**9]),
]


@pytest.mark.parametrize(("path", "value"), HOSTILE_NUMBERS)
def test_numbers_out_of_bounds_are_rejected_by_schema_and_models(path: str, value: Any) -> None:
    doc = _service()
    at = _place(doc, path, value)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft4Validator(schema_of("InferenceService")).validate(doc)
    _rejects(doc, at)


@pytest.mark.parametrize(
    ("path", "value"),
    [(".spec.costPerDevice", 1e300), (".spec.devices", 10**7), (".spec.maxPriority", 1001)],
)
def test_pool_numbers_out_of_bounds_are_rejected(path: str, value: Any) -> None:
    doc = _example("DevicePool")
    at = _place(doc, path, value)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft4Validator(schema_of("DevicePool")).validate(doc)
    _rejects(doc, at)


def test_every_tenant_number_has_a_maximum() -> None:
    """No number or integer in an InferenceService spec is unbounded above."""
    spec = schema_of("InferenceService")["properties"]["spec"]
    unbounded = [
        path
        for path, node in _walk(spec, ".spec")
        if node.get("type") in {"number", "integer"} and "maximum" not in node
    ]
    assert unbounded == []
