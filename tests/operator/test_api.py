"""The API models: the examples round-trip, and every kind of bad input names its field."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from accordion.operator.api import (
    DevicePool,
    InferenceService,
    InvalidResourceError,
    error_path,
    parse_resource,
)
from accordion.operator.manifests import ManifestError, load

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def example_docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def a_service() -> dict[str, Any]:
    return copy.deepcopy(next(d for d in example_docs() if d["kind"] == "InferenceService"))


@pytest.mark.parametrize(
    "doc", example_docs(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}"
)
def test_examples_round_trip(doc: dict[str, Any]) -> None:
    obj = parse_resource(doc)
    dumped = obj.model_dump(by_alias=True, exclude_unset=True, mode="json")
    assert dumped == doc
    assert type(obj).model_validate(dumped) == obj


def test_examples_hold_several_services_and_a_heterogeneous_cluster() -> None:
    manifests = load([EXAMPLES])
    assert len(manifests.services) >= 3
    assert {p.spec.device for p in manifests.pools} == {"cpu", "cuda"}
    assert all(s.metadata.namespace == "default" for s in manifests.services)


def test_defaults_are_applied() -> None:
    doc = a_service()
    del doc["spec"]["demand"]
    del doc["spec"]["accuracy"]
    isvc = parse_resource(doc)
    assert isinstance(isvc, InferenceService)
    assert isvc.spec.demand.source == "Router"
    assert isvc.spec.demand.headroom == pytest.approx(0.1)
    assert isvc.spec.accuracy.floor == 0
    assert isvc.spec.priority == 1


def _errors(doc: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(InvalidResourceError) as info:
        parse_resource(doc, "test")
    return dict(info.value.errors)


def test_negative_latency_names_the_field() -> None:
    doc = a_service()
    doc["spec"]["slo"]["latencyMs"] = -5
    assert "spec.slo.latencyMs" in _errors(doc)


def test_target_below_floor_is_rejected_with_its_path() -> None:
    doc = a_service()
    doc["spec"]["accuracy"] = {"floor": 80, "target": 70}
    errors = _errors(doc)
    assert (
        errors["spec.accuracy.target"]
        == "accuracy.target must be greater than or equal to accuracy.floor"
    )


def test_profile_without_batch_one_is_rejected() -> None:
    doc = a_service()
    doc["spec"]["variants"][1]["profiles"][0]["batches"] = [{"batchSize": 8, "p50Ms": 3.0}]
    errors = _errors(doc)
    assert (
        errors["spec.variants[1].profiles[0].batches"]
        == "a latency profile must include batchSize 1"
    )


def test_empty_variants_rejected() -> None:
    doc = a_service()
    doc["spec"]["variants"] = []
    assert "spec.variants" in _errors(doc)


def test_duplicate_variant_names_rejected() -> None:
    doc = a_service()
    doc["spec"]["variants"][1]["name"] = doc["spec"]["variants"][0]["name"]
    assert _errors(doc)["spec.variants"] == "variant names must be unique"


def test_unknown_field_rejected_like_kubectl_strict() -> None:
    doc = a_service()
    doc["spec"]["slo"]["latencyMS"] = 10
    assert "spec.slo.latencyMS" in _errors(doc)


def test_percentiles_must_be_ordered() -> None:
    doc = a_service()
    doc["spec"]["variants"][0]["profiles"][0]["batches"][0] = {
        "batchSize": 1,
        "p50Ms": 5,
        "p90Ms": 4,
    }
    assert "spec.variants[0].profiles[0].batches[0].p90Ms" in _errors(doc)


def test_wrong_kind_and_version_are_named() -> None:
    doc = a_service()
    doc["apiVersion"] = "accordion.dev/v1"
    assert "apiVersion" in _errors(doc)
    doc = a_service()
    doc["kind"] = "InferenceServce"
    assert "kind" in _errors(doc)


def test_pool_requires_devices() -> None:
    doc = {"apiVersion": "accordion.dev/v1alpha1", "kind": "DevicePool", "metadata": {"name": "x"}}
    doc["spec"] = {"devices": -1}
    assert "spec.devices" in _errors(doc)
    doc["spec"] = {"devices": 2, "resources": {"limits": {"nvidia.com/gpu": 1, "memory": "4Gi"}}}
    pool = parse_resource(doc)
    assert isinstance(pool, DevicePool)
    assert pool.spec.resources.limits == {"nvidia.com/gpu": 1, "memory": "4Gi"}


def test_error_path_rendering() -> None:
    assert error_path(("spec", "variants", 1, "profiles", 0)) == "spec.variants[1].profiles[0]"


def test_manifest_loader_reports_every_bad_document(tmp_path: Path) -> None:
    good = a_service()
    bad1 = a_service()
    bad1["metadata"]["name"] = "other"
    bad1["spec"]["slo"]["latencyMs"] = 0
    bad2 = a_service()
    bad2["metadata"]["name"] = "third"
    bad2["spec"]["priority"] = 0
    other = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ml"}}
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump_all([good, other, bad1, bad2]))
    with pytest.raises(ManifestError) as info:
        load([path])
    problems = info.value.problems
    assert len(problems) == 2
    assert f"{path}[2]" in problems[0]
    assert "spec.slo.latencyMs" in problems[0]
    assert "spec.priority" in problems[1]


def test_manifest_loader_rejects_duplicates_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text(yaml.safe_dump_all([a_service(), a_service()]))
    with pytest.raises(ManifestError, match="duplicate InferenceService default/image-classifier"):
        load([path])
    with pytest.raises(ManifestError, match="no such file"):
        load([tmp_path / "missing.yaml"])
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("kind: [unclosed\n")
    with pytest.raises(ManifestError, match="not valid YAML"):
        load([bad_yaml])
