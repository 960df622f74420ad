"""Batching inside the model through the product: `spec.variants[].batching` on an
InferenceService reaches the worker's configuration (`batching.mode` and its bounds) in a worker
Deployment that validates against the Kubernetes schemas, and a cellular variant's step
profiles at the workload's lengths become the planner's per-request profile (issue 18)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from accordion.operator.api import (
    CELLULAR_NEEDS_CELL,
    CELLULAR_ONLY,
    NODE_NEEDS_STAGES,
    DevicePool,
    InferenceService,
    InvalidResourceError,
    parse_resource,
)
from accordion.operator.config import OperatorConfig
from accordion.operator.control.desired import worker_specs
from accordion.operator.control.loop import ControlLoop, DemandView, World
from accordion.operator.k8s import worker_deployment
from accordion.operator.planning import to_problem
from accordion.workers.config import WorkerConfig

K8S_VERSION = "1.30.0"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d]


def _service(**batching: Any) -> dict[str, Any]:
    (doc,) = _docs("text-sequences.yaml")
    doc = copy.deepcopy(doc)
    if batching:
        doc["spec"]["variants"][0]["batching"] = batching
    return doc


def _pools() -> list[DevicePool]:
    pools = [parse_resource(d) for d in _docs("cluster.yaml")]
    assert all(isinstance(p, DevicePool) for p in pools)
    return [p for p in pools if isinstance(p, DevicePool)]


def _world(doc: dict[str, Any]) -> World:
    svc = parse_resource(doc)
    assert isinstance(svc, InferenceService)
    svc.metadata.uid = "uid-1"
    return World(services={svc.key: svc}, pools={p.metadata.name: p for p in _pools()})


def _worker_configs(doc: dict[str, Any]) -> list[tuple[int, WorkerConfig]]:
    """The plan's worker Deployments for the service in `doc`: replicas and the worker's
    configuration, each Deployment validated strictly against the Kubernetes schemas."""
    world = _world(doc)
    plan, _, _ = ControlLoop().make_plan(world, DemandView())
    specs = worker_specs(plan, world.services, world.pools)
    assert specs, "the plan has no workers"
    out = []
    for spec in specs.values():
        deployment = worker_deployment(spec, "uid-1", OperatorConfig())
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        config = next(WorkerConfig.model_validate_json(v) for v in env.values() if "{" in v)
        out.append((deployment["spec"]["replicas"], config))
    return out


def test_a_cellular_variant_runs_cellular_workers() -> None:
    configs = _worker_configs(_service())
    assert configs
    for replicas, config in configs:
        assert replicas >= 1
        assert config.model == "builtin:gru-seq"
        assert config.batching.mode == "cellular"
        assert config.batching.max_state_mb == 64
        assert config.batching.max_inflight is None
        # the worker's (and router's) per-request latency: the step p99 at the lengths,
        # max(mean 73, (p99 517 + 1) / 2) = 259 steps
        assert config.profile_ms[32] == pytest.approx(1.03 * 259, abs=1e-3)
        assert config.profile_ms[1] == pytest.approx(0.382 * 259, abs=1e-3)


def test_max_inflight_and_mode_reach_the_worker() -> None:
    doc = _service(mode="Cellular", maxInflight=48)
    ((_, config), *_) = _worker_configs(doc)
    assert (config.batching.mode, config.batching.max_inflight) == ("cellular", 48)
    assert config.batching.max_state_mb is None


def test_without_batching_workers_batch_whole_requests() -> None:
    doc = _service()
    del doc["spec"]["variants"][0]["batching"]
    # the profiles are then per request, as they are written
    ((_, config), *_) = _worker_configs(doc)
    assert config.batching.mode == "request"
    assert config.profile_ms[32] == pytest.approx(1.03)


def test_the_planner_counts_whole_requests_from_step_profiles_at_the_lengths() -> None:
    svc = parse_resource(_service())
    assert isinstance(svc, InferenceService)
    (variant,) = to_problem([svc], _pools()).problem.services[0].variants
    assert set(variant.profiles) == {"cpu"}
    points = {p.batch_size: p for p in variant.profiles["cpu"]}
    assert points[32].p50_s == pytest.approx(0.839e-3 * 259)
    assert points[32].p99_s == pytest.approx(1.03e-3 * 259)
    assert variant.lengths is not None
    assert variant.lengths.factor == 259


def _capacity(doc: dict[str, Any]) -> float:
    world = _world(doc)
    plan, _, _ = ControlLoop().make_plan(world, DemandView())
    (row,) = [r for r in plan.rows if r.replicas > 0]
    return row.capacity_qps_per_replica


def test_longer_requests_lower_the_planned_capacity() -> None:
    short = _capacity(_service(mode="Cellular", lengths={"meanSteps": 20, "p99Steps": 100}))
    long = _capacity(_service(mode="Cellular", lengths={"meanSteps": 73, "p99Steps": 517}))
    # 50.5 against 259 steps counted per request: about 5x the capacity per replica (the
    # largest batch that fits the SLO may differ)
    assert short > 3 * long > 0


@pytest.mark.parametrize(
    ("variant", "path", "message"),
    [
        (
            {
                "model": {"storageUri": "/models/m.pt", "inputShape": [4, 64]},
                "batching": {"mode": "Cellular"},
            },
            "spec.variants[0].batching",
            CELLULAR_NEEDS_CELL,
        ),
        ({"batching": {"mode": "Node"}}, "spec.variants[0].batching", NODE_NEEDS_STAGES),
        (
            {"batching": {"mode": "Request", "maxInflight": 8}},
            "spec.variants[0].batching",
            CELLULAR_ONLY,
        ),
        (
            {"batching": {"mode": "Cellular", "lengths": {"meanSteps": 50, "p99Steps": 10}}},
            "spec.variants[0].batching.lengths.p99Steps",
            "p99Steps must be greater than or equal to meanSteps",
        ),
    ],
)
def test_batching_that_does_not_fit_is_refused_at_its_field(
    variant: dict[str, Any], path: str, message: str
) -> None:
    doc = _service()
    doc["spec"]["variants"][0].update(variant)
    with pytest.raises(InvalidResourceError) as info:
        parse_resource(doc)
    assert (path, message) in info.value.errors


def test_a_decoder_may_be_cellular_and_a_file_model_node_level() -> None:
    doc = _service()
    doc["spec"]["variants"][0]["model"] = {
        "storageUri": "builtin:decoder-tiny",
        "format": "builtin",
    }
    parse_resource(doc)
    doc["spec"]["variants"][0]["model"] = {
        "storageUri": "/models/cnn.pt",
        "inputShape": [3, 32, 32],
    }
    doc["spec"]["variants"][0]["batching"] = {"mode": "Node"}
    parse_resource(doc)
