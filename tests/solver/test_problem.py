"""Bad input is rejected when the Problem is built, with the path of the field at fault."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from accordion.solver import Allocation, PoolSpec, Problem, ProfilePoint, ServiceSpec, VariantSpec


def _variant(pools: tuple[str, ...] = ("gpu",), name: str = "v") -> VariantSpec:
    return VariantSpec(
        name=name,
        accuracy=90,
        profiles={p: [ProfilePoint(batch_size=1, p50_s=0.01)] for p in pools},
    )


def _service(**kw: object) -> ServiceSpec:
    fields: dict[str, object] = {
        "name": "ns/a",
        "demand_qps": 10,
        "slo_s": 0.1,
        "variants": [_variant()],
    }
    return ServiceSpec.model_validate({**fields, **kw})


def test_unknown_pool_names_the_field_path() -> None:
    with pytest.raises(ValidationError, match=r"services\[0\]\.variants\[1\]\.profiles\.gpu-x"):
        Problem(
            pools=[PoolSpec(name="gpu", devices=1)],
            services=[_service(variants=[_variant(), _variant(("gpu-x",), name="w")])],
        )


def test_profile_without_batch_one_is_rejected() -> None:
    with pytest.raises(ValidationError, match="batch size 1"):
        VariantSpec(
            name="v", accuracy=1, profiles={"gpu": [ProfilePoint(batch_size=2, p50_s=0.01)]}
        )


def test_duplicate_batch_sizes_are_rejected() -> None:
    point = ProfilePoint(batch_size=1, p50_s=0.01)
    with pytest.raises(ValidationError, match="duplicate batch sizes"):
        VariantSpec(name="v", accuracy=1, profiles={"gpu": [point, point]})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("demand_qps", -1),
        ("slo_s", 0),
        ("variants", []),
        ("priority", 0),
        ("accuracy_target", 120),
    ],
)
def test_bad_service_fields_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as info:
        _service(**{field: value})
    assert field in str(info.value)


def test_target_below_floor_is_rejected() -> None:
    with pytest.raises(ValidationError, match="accuracy_target"):
        _service(accuracy_floor=80, accuracy_target=70)


def test_duplicate_names_are_rejected() -> None:
    with pytest.raises(ValidationError, match="duplicate variant names"):
        _service(variants=[_variant(), _variant()])
    with pytest.raises(ValidationError, match="duplicate service names"):
        Problem(pools=[PoolSpec(name="gpu", devices=1)], services=[_service(), _service()])
    with pytest.raises(ValidationError, match="duplicate pool names"):
        Problem(pools=[PoolSpec(name="gpu", devices=1)] * 2, services=[_service()])


def test_current_allocation_must_reference_known_things() -> None:
    with pytest.raises(ValidationError, match=r"current\[0\]"):
        Problem(
            pools=[PoolSpec(name="gpu", devices=1)],
            services=[_service()],
            current=[Allocation(service="ns/a", variant="nope", pool="gpu", replicas=1)],
        )


def test_latency_falls_back_to_the_nearest_lower_percentile() -> None:
    point = ProfilePoint(batch_size=1, p50_s=0.01, p90_s=0.02)
    assert point.latency_s("p99") == 0.02
    assert point.latency_s("p90") == 0.02
    assert point.latency_s("p50") == 0.01
