"""Every kind of manifest the operator writes, for the example cluster's plan (all replicas
ready): the worker Deployments and Services, and per InferenceService the router Deployment and
Service and the routing ConfigMap. Shared by the schema tests and the compact-cache tests."""

from __future__ import annotations

from accordion.operator.config import OperatorConfig
from accordion.operator.control.desired import service_routing, worker_specs
from accordion.operator.control.loop import ControlLoop, DemandView, World
from accordion.operator.k8s import (
    Manifest,
    router_deployment,
    router_service,
    routing_configmap,
    worker_deployment,
    worker_service,
)
from accordion.operator.manifests import load

APPLIED_AT_S = 1700000000.0
"""The routing ConfigMaps' applied-at time."""


def example_manifests() -> list[Manifest]:
    m = load(["examples"])
    for i, s in enumerate(m.services):
        s.metadata.uid = f"uid-{i}"
    world = World(
        services={s.key: s for s in m.services}, pools={p.metadata.name: p for p in m.pools}
    )
    plan, _, _ = ControlLoop().make_plan(world, DemandView())
    cfg = OperatorConfig()
    targets = worker_specs(plan, world.services, world.pools)
    assert targets, "the example cluster's plan has no workers"
    ready = {k: s.replicas for k, s in targets.items()}
    out: list[Manifest] = []
    for spec in targets.values():
        uid = world.services[spec.key.service].metadata.uid
        out += [worker_deployment(spec, uid, cfg), worker_service(spec.key, uid, cfg)]
    for key, svc in world.services.items():
        mine = {k: s for k, s in targets.items() if k.service == key}
        routing = service_routing(key, svc.spec.slo.latency_ms, plan.rows, mine, {}, ready)
        out += [
            router_deployment(key, svc.metadata.uid, cfg),
            router_service(key, svc.metadata.uid, cfg),
            routing_configmap(routing, svc.metadata.uid, cfg, APPLIED_AT_S),
        ]
    return out
