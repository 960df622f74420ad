"""The API of MIG pools: a DevicePool names its GPU model and layouts, profiles name slices.

A layout that breaks NVIDIA's placement rules is refused at the edge with its field path, in
the model and (its shape) in the generated CRD schema.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from accordion.operator.api import (
    DevicePool,
    InferenceService,
    InvalidResourceError,
    parse_resource,
)
from accordion.operator.planning import to_problem

ROOT = Path(__file__).resolve().parents[2]


def _pool(mig: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "accordion.dev/v1alpha1",
        "kind": "DevicePool",
        "metadata": {"name": "a100"},
        "spec": {"devices": 4, "device": "cuda", "mig": mig},
    }


def _errors(doc: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(InvalidResourceError) as exc:
        parse_resource(doc)
    return dict(exc.value.errors)


def test_a_mig_pool_with_layouts_parses() -> None:
    pool = parse_resource(
        _pool({"gpuModel": "A100-80GB", "layouts": [{"3g.40gb": 1, "2g.20gb": 2}, {"7g.80gb": 1}]})
    )
    assert isinstance(pool, DevicePool)
    assert pool.spec.mig is not None
    assert pool.spec.mig.gpu_model == "A100-80GB"
    assert pool.spec.mig.layouts == [{"3g.40gb": 1, "2g.20gb": 2}, {"7g.80gb": 1}]
    any_layout = parse_resource(_pool({"gpuModel": "H100-80GB"}))
    assert isinstance(any_layout, DevicePool)
    assert any_layout.spec.mig is not None
    assert any_layout.spec.mig.layouts is None


def test_a_layout_that_breaks_the_placement_rules_names_its_field() -> None:
    errors = _errors(_pool({"gpuModel": "A100-80GB", "layouts": [{"4g.40gb": 1, "3g.40gb": 2}]}))
    assert "no placement obeys the MIG placement rules" in errors["spec.mig.layouts"]
    errors = _errors(_pool({"gpuModel": "A100-40GB", "layouts": [{"1g.10gb": 7}]}))
    assert "1g.10gb" in errors["spec.mig.layouts"]
    errors = _errors(_pool({"gpuModel": "A100-40GB", "layouts": [{"1g.20gb": 1}]}))
    assert "unknown profiles ['1g.20gb']" in errors["spec.mig.layouts"]
    assert "spec.mig.gpuModel" in _errors(_pool({"gpuModel": "V100"}))


def _service(pool: str) -> dict[str, Any]:
    return {
        "apiVersion": "accordion.dev/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": "small", "namespace": "default"},
        "spec": {
            "slo": {"latencyMs": 100},
            "variants": [
                {
                    "name": "tiny",
                    "accuracy": 70,
                    "model": {"storageUri": "file:///models/tiny.pt"},
                    "profiles": [{"pool": pool, "batches": [{"batchSize": 1, "p50Ms": 5}]}],
                }
            ],
        },
    }


def test_profiles_name_a_slice_of_a_mig_pool() -> None:
    isvc = parse_resource(_service("a100/1g.10gb"))
    assert isinstance(isvc, InferenceService)
    assert isvc.spec.variants[0].profiles[0].pool == "a100/1g.10gb"
    for bad in ("a100/1g", "a100/8g.80gb", "a100/1g.10gb/x", "A100/1g.10gb"):
        assert "spec.variants[0].profiles[0].pool" in _errors(_service(bad)), bad


def test_the_crd_schema_carries_the_same_shapes() -> None:
    crd = yaml.safe_load((ROOT / "crds" / "accordion.dev_devicepools.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    mig = spec["properties"]["mig"]
    assert mig["required"] == ["gpuModel"]
    assert mig["properties"]["gpuModel"]["enum"] == ["A100-40GB", "A100-80GB", "H100-80GB"]
    counts = mig["properties"]["layouts"]["items"]["additionalProperties"]
    assert (counts["minimum"], counts["maximum"]) == (0, 7)
    isvc = yaml.safe_load((ROOT / "crds" / "accordion.dev_inferenceservices.yaml").read_text())
    text = yaml.safe_dump(isvc)
    pattern = re.search(r"pattern: (\^\[a-z0-9\].*gb\)\?\$)", text)
    assert pattern is not None
    assert re.fullmatch(pattern.group(1), "a100/1g.10gb")
    assert re.fullmatch(pattern.group(1), "a100")
    assert not re.fullmatch(pattern.group(1), "a100/1g")


def test_the_operator_plans_slices_of_a_mig_pool() -> None:
    pool = parse_resource(_pool({"gpuModel": "A100-80GB"}))
    isvc = parse_resource(_service("a100/1g.10gb"))
    docs = [_service("a100"), _service("b200/1g.10gb")]
    docs[0]["metadata"]["name"], docs[1]["metadata"]["name"] = "whole", "other"
    whole, other = (parse_resource(d) for d in docs)
    assert isinstance(pool, DevicePool)
    assert isinstance(isvc, InferenceService)
    assert isinstance(whole, InferenceService)
    assert isinstance(other, InferenceService)
    build = to_problem([isvc, whole, other], [pool], mig_current={"a100": [{"7g.80gb": 1}]})
    assert "pool" not in " ".join(build.by_service.get("default/small", []))
    assert "a MIG pool, used through its slices" in build.by_service["default/whole"][0]
    assert "which does not exist" in build.by_service["default/other"][0]
    (spec,) = build.problem.pools
    assert spec.devices == 4
    assert spec.mig is not None
    assert spec.mig.gpu_model == "A100-80GB"
    assert spec.mig.current == [{"7g.80gb": 1}]
    small = next(s for s in build.problem.services if s.name == "default/small")
    assert set(small.variants[0].profiles) == {"a100/1g.10gb"}
