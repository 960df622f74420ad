"""The generated CRDs: in sync with the models, structural, valid, and enforcing the same rules.

The emulator used elsewhere in the tests enforces no schema, so the schema itself is checked
here: validated as a CustomResourceDefinition against the real Kubernetes schemas
(kubernetes-validate), the examples validated against each CRD's OpenAPI schema, and every CEL
rule evaluated (cel-python) on good and bad objects, expecting the same verdict as the models.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import kubernetes_validate
import pytest
import yaml

from accordion.operator import crdgen

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "crds"
EXAMPLES = ROOT / "examples"


def committed() -> dict[str, dict[str, Any]]:
    return {p.name: yaml.safe_load(p.read_text()) for p in sorted(CRD_DIR.glob("*.yaml"))}


def schema_of(kind: str) -> dict[str, Any]:
    for crd in committed().values():
        if crd["spec"]["names"]["kind"] == kind:
            schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
            return schema
    raise KeyError(kind)


def examples() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def test_committed_crds_are_up_to_date() -> None:
    assert crdgen.stale(CRD_DIR) == [], "run `make crds` and commit crds/"
    assert set(committed()) == set(crdgen.crds())


def test_stale_detects_a_change(tmp_path: Path) -> None:
    crdgen.write(tmp_path)
    assert crdgen.stale(tmp_path) == []
    target = next(tmp_path.glob("*inferenceservices.yaml"))
    target.write_text(target.read_text().replace("latencyMs", "latencyMillis"))
    assert crdgen.stale(tmp_path) == [target.name]


@pytest.mark.parametrize("version", ["1.30.0", "1.37.0"])
@pytest.mark.parametrize("name", sorted(crdgen.crds()))
def test_crds_validate_as_customresourcedefinitions(name: str, version: str) -> None:
    kubernetes_validate.validate(committed()[name], version, strict=True)


def _walk(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = [(path, node)]
    for key, sub in node.get("properties", {}).items():
        out.extend(_walk(sub, f"{path}.{key}"))
    if "items" in node:
        out.extend(_walk(node["items"], f"{path}[]"))
    if isinstance(node.get("additionalProperties"), dict):
        out.extend(_walk(node["additionalProperties"], f"{path}{{}}"))
    return out


@pytest.mark.parametrize("kind", ["InferenceService", "DevicePool"])
def test_schemas_are_structural(kind: str) -> None:
    for path, node in _walk(schema_of(kind)):
        for combinator in ("$ref", "anyOf", "allOf"):
            assert combinator not in node, path
        assert (
            "type" in node
            or node.get("x-kubernetes-int-or-string")
            or node.get("x-kubernetes-preserve-unknown-fields")
        ), f"{path} has no type"
        if node.get("type") == "array":
            assert "items" in node, path


def test_status_subresource_printer_columns_and_short_names() -> None:
    for crd in committed().values():
        version = crd["spec"]["versions"][0]
        assert version["subresources"] == {"status": {}}
        assert any(c["name"] == "Age" for c in version["additionalPrinterColumns"])
        assert crd["spec"]["names"]["shortNames"]
    isvc = next(c for c in committed().values() if c["spec"]["names"]["kind"] == "InferenceService")
    cols = {c["name"] for c in isvc["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert {"Demand", "Capacity", "Accuracy", "Ready", "Age"} <= cols
    assert isvc["spec"]["scope"] == "Namespaced"


@pytest.mark.parametrize("doc", examples(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_examples_validate_against_crd_schema(doc: dict[str, Any]) -> None:
    jsonschema.Draft4Validator(schema_of(doc["kind"])).validate(doc)


def test_crd_schema_rejects_out_of_bounds() -> None:
    doc = copy.deepcopy(next(d for d in examples() if d["kind"] == "InferenceService"))
    doc["spec"]["slo"]["latencyMs"] = 0
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft4Validator(schema_of("InferenceService")).validate(doc)


def _cel_rules(kind: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        (path, rule)
        for path, node in _walk(schema_of(kind))
        for rule in node.get("x-kubernetes-validations", [])
    ]


def _values_at(doc: Any, path: str) -> list[Any]:
    """The values in `doc` at a schema path like `.spec.variants[].profiles[]`."""
    values = [doc]
    for part in [p for p in path.replace("[]", ".[]").split(".") if p]:
        nxt = []
        for v in values:
            if part == "[]":
                nxt.extend(v if isinstance(v, list) else [])
            elif isinstance(v, dict) and part in v:
                nxt.append(v[part])
        values = nxt
    return values


def _holds(rule: str, value: Any) -> bool:
    env = celpy.Environment()
    program = env.program(env.compile(rule))
    cel_value = celpy.json_to_cel(value)  # type: ignore[attr-defined]
    return bool(program.evaluate({"self": cel_value}))


def test_every_cel_rule_holds_on_the_examples() -> None:
    rules = _cel_rules("InferenceService")
    assert len(rules) >= 4
    checked = 0
    for doc in (d for d in examples() if d["kind"] == "InferenceService"):
        for path, rule in rules:
            for value in _values_at(doc, path):
                assert _holds(rule["rule"], value), (path, rule["rule"], value)
                checked += 1
    assert checked > 20


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (".spec.accuracy", {"floor": 80.0, "target": 70.0}),
        (".spec.demand", {"source": "Static", "headroom": 0.1}),
        (".spec.variants[].profiles[]", {"pool": "x", "batches": [{"batchSize": 4, "p50Ms": 1}]}),
        (".spec.variants[].profiles[].batches[]", {"batchSize": 1, "p50Ms": 5.0, "p90Ms": 4.0}),
    ],
)
def test_cel_rules_reject_what_the_models_reject(path: str, value: dict[str, Any]) -> None:
    rules = [r["rule"] for p, r in _cel_rules("InferenceService") if p == path]
    assert rules, path
    assert not all(_holds(rule, value) for rule in rules)
