"""The desired state of the data plane, computed from a plan: workers, routing weights, status.

Everything here is a pure function of its arguments, shared by every driver of the control loop
(the kopf operator, local mode). The vocabulary is abstract on purpose: a worker is a
`WorkerKey` (service, variant, pool) with a `WorkerSpec` (replicas and the settings that
determine its pods), and routing is a list of weights per `WorkerKey`. The drivers decide what a
worker *is* (a Deployment and a Service; a process on a port) and how a key becomes a URL
(`routing_table(routing, url_for)`).

Routing follows the capacity of *ready* replicas: a new backend receives traffic only as its
replicas become ready, and the backends the plan no longer wants keep the rest until the new
ones can take it all. Only then does the routing equal the plan's (`Routing.final`), and only
after that may the loop scale the old backends down (make before break, see `loop`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from accordion.operator.api import (
    DevicePool,
    InferenceService,
    InputDatatype,
    ModelFormat,
    ResourceRequirements,
    Toleration,
    Variant,
)
from accordion.operator.mig import slice_device_pool
from accordion.operator.staged import StagedBatching, request_profile_ms, worker_batching
from accordion.operator.stages import stage_profile_ms
from accordion.solver import Plan, PlannerSettings, PlanRow
from accordion.solver.pipelines import downstream_s, pass_latency_s
from accordion.workers.config import (
    Backend,
    PipelineStageConfig,
    RoutingTable,
    WorkerConfig,
)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class WorkerKey(_Frozen):
    """Identity of a worker group: one variant of one service on one device pool."""

    service: str = Field(description="`namespace/name` of the InferenceService.")
    variant: str
    pool: str
    pipeline: str | None = Field(
        default=None,
        description="A pipeline stage's group: the pipeline's id (its plan row's); None for a "
        "whole variant.",
    )
    stage: int | None = Field(default=None, ge=0, description="The stage's index, from 0.")

    @property
    def namespace(self) -> str:
        return self.service.split("/", 1)[0]

    @property
    def service_name(self) -> str:
        return self.service.split("/", 1)[1]

    @property
    def backend_name(self) -> str:
        """The backend's name in the routing table (and the router's metric label); a
        pipeline's is its id, and a later stage's says which stage it is."""
        if self.pipeline is None:
            return f"{self.variant}@{self.pool}"
        suffix = f"#{self.stage + 1}" if self.stage else ""
        return f"{self.variant}@{self.pipeline}{suffix}"

    def sort_key(self) -> tuple[str, str, str, int, str]:
        """Service, variant, then whole variants before pipelines, a pipeline's later stages
        before its earlier ones (make steps in this order create the stage a stage hands on to
        first), then the pool."""
        return (self.service, self.variant, self.pipeline or "", -(self.stage or 0), self.pool)

    def entry(self) -> WorkerKey:
        """The group the router sends to: a pipeline's first stage; a whole variant itself."""
        return self if not self.stage else self.model_copy(update={"stage": 0})


class Placement(_Frozen):
    """Where and with what the pods of a pool run (from the DevicePool)."""

    device: str = "cpu"
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements)

    @classmethod
    def of(cls, pool: DevicePool) -> Placement:
        return cls(
            device=pool.spec.device,
            node_selector=dict(pool.spec.node_selector),
            tolerations=list(pool.spec.tolerations),
            resources=pool.spec.resources,
        )


class StageWiring(_Frozen):
    """A worker group that is one stage of a pipeline: which parts of the model it runs, the
    group it hands its output to, and its share of the pipeline (`worker_specs`)."""

    first: str
    last: str
    next: WorkerKey | None = Field(description="The next stage's group; None for the last.")
    downstream_ms: float = Field(
        ge=0, description="What the later stages need of a request's budget (batch, hand-over)."
    )
    devices_per_replica: int = Field(
        ge=1, description="This stage's replicas per replica of the whole pipeline."
    )
    pass_latency_ms: float = Field(
        ge=0, description="A full batch's time through the whole pipeline (the router's)."
    )


class WorkerSpec(_Frozen):
    """A worker group as the plan wants it: replicas, and every setting that shapes its pods.

    Two equal specs give identical pods, so drivers compare the running spec with the desired
    one to decide whether anything must change (the same inputs never cause churn).
    """

    key: WorkerKey
    replicas: int = Field(ge=0)
    max_batch_size: int = Field(ge=1)
    capacity_qps_per_replica: float = Field(ge=0)
    accuracy: float = Field(ge=0, le=100)
    slo_ms: float = Field(gt=0)
    model_uri: str
    model_format: ModelFormat = ModelFormat.TORCHSCRIPT
    input_shape: tuple[int, ...] | None = None
    """One sample's shape (`model.inputShape`): a TorchScript file does not record it."""
    input_datatype: InputDatatype = "FP32"
    profile_ms: dict[int, float] = Field(default_factory=dict)
    batching: StagedBatching | None = None
    """Batching inside the model (the variant's `batching`); None: whole requests."""
    placement: Placement = Field(default_factory=Placement)
    stage: StageWiring | None = None
    """One stage of a pipeline; None: the whole variant."""

    def with_replicas(self, replicas: int) -> WorkerSpec:
        return self.model_copy(update={"replicas": replicas})

    def worker_config(
        self, *, host: str = "0.0.0.0", port: int = 8080, next_url: str | None = None
    ) -> WorkerConfig:
        """The worker process's configuration (`accordion.workers.config.WorkerConfig`).

        A pipeline stage's worker runs its parts of the model and hands on to `next_url` (the
        next stage's base URL, as the driver reaches it; the caller gives it when
        `stage.next` is set)."""
        model = self.model_uri.removeprefix("file://")
        pipeline = None
        if self.stage is not None:
            pipeline = PipelineStageConfig(
                first=self.stage.first,
                last=self.stage.last,
                next_url=(
                    None
                    if next_url is None
                    else f"{next_url.rstrip('/')}/v2/models/{self.key.variant}/infer"
                ),
                downstream_ms=self.stage.downstream_ms,
            )
        return WorkerConfig(
            model_name=self.key.variant,
            model=model,
            input_shape=None if self.input_shape is None else list(self.input_shape),
            input_datatype=self.input_datatype,
            device="cuda" if self.placement.device == "cuda" else "cpu",
            slo_ms=self.slo_ms,
            accuracy=round(self.accuracy / 100.0, 6),
            profile_ms=dict(self.profile_ms),
            batching=worker_batching(self.batching, self.max_batch_size),
            host=host,
            port=port,
            pipeline=pipeline,
        )

    def digest(self) -> str:
        """A short hash of the spec, for annotations and change detection."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]


class Route(_Frozen):
    """One backend of a service's routing: a worker group and its share of the traffic."""

    key: WorkerKey
    weight: float = Field(ge=0, le=1)
    capacity_qps: float = Field(ge=0, description="Capacity of the ready replicas, req/s.")
    accuracy: float = Field(ge=0, le=100)
    max_batch_size: int = Field(ge=1)
    batch_latency_ms: float | None = None
    profile_ms: dict[int, float] = Field(
        default_factory=dict,
        description="One replica's latency per batch size (ms), the plan's profile: the router "
        "predicts a short queue's wait from its batch size, not from a full batch's.",
    )
    pending: bool = Field(
        default=False,
        description="A group the plan wants with no ready replica yet: named so that the "
        "router sends to it from its first ready replica on (its health check), not only "
        "from the next table; `weight` and `capacity_qps` are the plan's for it.",
        exclude_if=lambda pending: not pending,  # routings without one dump as before
    )


class Routing(_Frozen):
    """How one service's router splits traffic. Equal routings give equal routing tables."""

    service: str
    slo_ms: float = Field(gt=0)
    routes: list[Route] = Field(default_factory=list)
    final: bool = Field(
        default=True,
        description="True when this is the plan's routing: every planned replica is ready and "
        "no backend outside the plan carries traffic.",
    )

    def keys(self) -> set[WorkerKey]:
        """The groups that carry traffic now (pending ones do not yet)."""
        return {r.key for r in self.routes if r.weight > 0 and not r.pending}

    def digest(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]


def routing_table(routing: Routing, url_for: Callable[[WorkerKey], str]) -> RoutingTable | None:
    """The router's file for a routing; None when no backend can take traffic."""
    routes = [r for r in routing.routes if r.weight > 0 or r.capacity_qps > 0]
    if not routes or sum(r.weight for r in routes) <= 0:
        return None
    return RoutingTable(
        # The router serves /v2/models/<name>/infer and labels its metrics service=<name>.
        service=routing.service.split("/", 1)[-1],
        slo_ms=routing.slo_ms,
        backends=[
            Backend(
                name=r.key.backend_name,
                url=url_for(r.key),
                model_name=r.key.variant,
                weight=r.weight,
                accuracy=round(r.accuracy / 100.0, 6),
                capacity_qps=r.capacity_qps if r.capacity_qps > 0 else None,
                max_batch_size=r.max_batch_size,
                batch_latency_ms=r.batch_latency_ms,
                profile_ms=r.profile_ms,
                pending=r.pending,
            )
            for r in routes
        ],
        version=routing.digest(),
    )


# ------------------------------------------------------------------------------ from the plan


def _profile_ms(service: InferenceService, variant: str, pool: str) -> dict[int, float]:
    for v in service.spec.variants:
        if v.name != variant:
            continue
        for prof in v.profiles:
            if prof.pool == pool:
                return request_profile_ms(
                    v,
                    {
                        b.batch_size: b.p99_ms or b.p90_ms or b.p50_ms
                        for b in sorted(prof.batches, key=lambda b: b.batch_size)
                    },
                )
    return {}


def batch_latency_ms(profile_ms: Mapping[int, float], max_batch_size: int) -> float | None:
    """Latency of the largest profiled batch not above the cap (the router bounds backlog)."""
    fitting = [b for b in profile_ms if b <= max_batch_size]
    return profile_ms[max(fitting)] if fitting else None


def worker_specs(
    plan: Plan | Sequence[PlanRow],
    services: Mapping[str, InferenceService],
    pools: Mapping[str, DevicePool],
    planner: PlannerSettings | None = None,
) -> dict[WorkerKey, WorkerSpec]:
    """The worker groups the plan (or some of its rows) wants, keyed by (service, variant, pool)
    and, for a pipeline's stages, the pipeline and the stage (`planner`: the settings it was
    planned with, for the stages' share of the budget)."""
    out: dict[WorkerKey, WorkerSpec] = {}
    for row in plan.rows if isinstance(plan, Plan) else plan:
        svc = services.get(row.service)
        # A MIG slice sub-pool runs on its pool, asking one slice (`mig.slice_device_pool`).
        pool = pools.get(row.pool) or slice_device_pool(pools, row.pool)
        if row.replicas <= 0 or svc is None or pool is None:
            continue
        variant = next((v for v in svc.spec.variants if v.name == row.variant), None)
        if variant is None:
            continue
        if row.stages:
            out.update(_stage_specs(row, svc, variant, pools, planner))
            continue
        key = WorkerKey(service=row.service, variant=row.variant, pool=row.pool)
        out[key] = WorkerSpec(
            key=key,
            replicas=row.replicas,
            max_batch_size=row.max_batch_size,
            capacity_qps_per_replica=round(row.capacity_qps_per_replica, 6),
            accuracy=row.accuracy,
            slo_ms=svc.spec.slo.latency_ms,
            **_model_fields(variant),
            profile_ms=_profile_ms(svc, row.variant, row.pool),
            batching=StagedBatching.of(variant),
            placement=Placement.of(pool),
        )
    return out


def _model_fields(variant: Variant) -> dict[str, Any]:
    """The WorkerSpec fields that say which model a variant's workers load, and its input."""
    model = variant.model
    return {
        "model_uri": model.storage_uri,
        "model_format": model.format,
        "input_shape": None if model.input_shape is None else tuple(model.input_shape),
        "input_datatype": model.input_datatype,
    }


def _share(values: Mapping[WorkerKey, float]) -> dict[WorkerKey, float]:
    total = sum(values.values())
    if total <= 0:
        return dict.fromkeys(values, 0.0)
    return {k: round(v / total, 4) for k, v in values.items()}


def service_routing(
    service: str,
    slo_ms: float,
    rows: Iterable[PlanRow],
    targets: Mapping[WorkerKey, WorkerSpec],
    running: Mapping[WorkerKey, WorkerSpec],
    ready: Mapping[WorkerKey, int],
) -> Routing:
    """Routing weights of one service that follow the capacity of ready replicas.

    `targets` are the worker groups the plan wants, `running` those that exist now (with the
    spec they run), `ready` their ready replica counts. When every target is ready at its
    planned size, the weights are the plan's routed shares (`final`). Before that, each target
    takes at most what its ready replicas can serve, the backends being replaced carry the rest
    as far as their ready replicas can, and whatever is left goes to the ready replicas that
    targets the plan routes to have beyond their share. Burst-buffer groups (spare replicas
    only) get no weight; they are in the table with their capacity for the router's fast loop,
    unless nothing else has a ready replica: then they take the traffic by their capacity.
    A target with no ready replica yet is named as `pending`, with the plan's share and
    capacity: routers leave it out of the split until its health check passes (they recheck
    every tenth of a second), so new capacity serves from its first ready replica rather than
    from the next table, which takes a pass and a reload (up to a second or more). Not a
    pipeline, whose first stage can pass its check before the later stages are ready.
    (With a weight, after a one-second spike raised an estimate, zipf-p50 of the Proteus
    benchmark sent a share of every request to a spare of accuracy 72 for three seconds while
    the planned replicas had room: 0.08 of the run's effective accuracy.)
    """
    targets, running, ready = pipeline_view(targets, running, ready)
    planned = {row_key(r): r.routed_qps for r in rows if r.service == service and r.replicas > 0}
    planned = {k: v for k, v in planned.items() if k in targets}
    demand = sum(planned.values())
    specs: dict[WorkerKey, WorkerSpec] = {**running, **targets}

    def ready_capacity(key: WorkerKey, cap_replicas: int | None = None) -> float:
        n = ready.get(key, 0)
        if cap_replicas is not None:
            n = min(n, cap_replicas)
        return n * specs[key].capacity_qps_per_replica

    all_ready = all(ready.get(k, 0) >= spec.replicas for k, spec in targets.items())
    routed: dict[WorkerKey, float] = {}
    if all_ready:
        routed = {k: planned.get(k, 0.0) for k in targets}
        if demand <= 0:  # nothing planned to route: spread by capacity so the router works
            routed = {k: ready_capacity(k) for k in targets}
    else:
        for k, spec in targets.items():
            routed[k] = min(planned.get(k, 0.0), ready_capacity(k, spec.replicas))
        left = demand - sum(routed.values())
        old = {k: ready_capacity(k) for k in running if k not in targets and ready.get(k, 0) > 0}
        old_total = sum(old.values())
        if left > 0 and old_total > 0:
            take = min(left, old_total)
            for k, cap in old.items():
                routed[k] = take * cap / old_total
            left -= take
        if left > 0:
            # Only groups the plan routes to: a burst-buffer group (spare replicas alone) is
            # the router's fast loop's, which sends it the requests the planned replicas
            # cannot answer in time; a weight would send it a share of every request and pay
            # its lower accuracy also for those the planned replicas answer in time.
            spare = {k: ready_capacity(k) - routed[k] for k in targets if planned.get(k, 0.0) > 0}
            spare_total = sum(v for v in spare.values() if v > 0)
            if spare_total > 0:
                take = min(left, spare_total)
                for k, v in spare.items():
                    if v > 0:
                        routed[k] += take * v / spare_total
        if demand > 0 and sum(routed.values()) <= 0:
            # Nothing the plan routes to and no backend being replaced has a ready replica
            # (a swap's new replicas load after the old ones made room for them,
            # `ControlLoop._make_room`, which counts spare replicas as the service's ready
            # capacity). With no weight anywhere there is no table (`routing_table`): the
            # router would refuse or hold every request while spare replicas stand ready.
            # They carry the traffic by their ready capacity until a planned replica is ready.
            routed = {k: ready_capacity(k, targets[k].replicas) for k in targets}
    # Targets with no ready replica are named as pending at the plan's share and capacity:
    # the router sends to one from its first passed health check, not from the next table.
    # Not a pipeline: its first stage's check says nothing of the later stages' readiness.
    pending = {k for k in targets if not all_ready and ready.get(k, 0) <= 0 and k.pipeline is None}
    weights = _share({k: planned.get(k, 0.0) if k in pending else v for k, v in routed.items()})
    routes = []
    for k in sorted(routed, key=WorkerKey.sort_key):
        spec = specs[k]
        in_plan = k in targets
        if not in_plan and weights[k] <= 0:
            continue
        if in_plan and k not in pending and ready.get(k, 0) <= 0 and weights[k] <= 0:
            continue  # a pipeline not yet ready end to end
        n_ready = min(ready.get(k, 0), spec.replicas) if in_plan else ready.get(k, 0)
        if k in pending:
            n_ready = spec.replicas  # the plan's capacity, for when it is ready
        routes.append(
            Route(
                key=k,
                weight=weights[k],
                pending=k in pending,
                capacity_qps=round(n_ready * spec.capacity_qps_per_replica, 3),
                accuracy=spec.accuracy,
                max_batch_size=spec.max_batch_size,
                batch_latency_ms=(
                    batch_latency_ms(spec.profile_ms, spec.max_batch_size)
                    if spec.stage is None
                    else spec.stage.pass_latency_ms
                ),
                # A pipeline's first stage or a staged model answers after more than its pass:
                # only a whole model's profile says when a batch of its size is answered.
                profile_ms=(
                    {b: ms for b, ms in spec.profile_ms.items() if b <= spec.max_batch_size}
                    if spec.stage is None
                    else {}
                ),
            )
        )
    return Routing(service=service, slo_ms=slo_ms, routes=routes, final=all_ready)


# ------------------------------------------------------------------------------ pipelines


def row_key(row: PlanRow) -> WorkerKey:
    """The worker group a plan row is routed to: its variant on its pool, or a pipeline's
    first stage."""
    if not row.stages:
        return WorkerKey(service=row.service, variant=row.variant, pool=row.pool)
    return WorkerKey(
        service=row.service,
        variant=row.variant,
        pool=row.stages[0].pool,
        pipeline=row.pipeline,
        stage=0,
    )


def row_devices(row: PlanRow) -> list[tuple[str, int]]:
    """The devices a plan row takes, per pool: a pipeline's in each of its stages' pools
    (`PlanRow.pool` and `replicas` name its first pool and its pipeline replicas only)."""
    return [(st.pool, st.replicas) for st in row.stages] or [(row.pool, row.replicas)]


def spare_by_group(rows: Iterable[PlanRow]) -> dict[WorkerKey, int]:
    """Spare (burst) replicas of a plan's rows per worker group: a pipeline's in each of its
    stages' groups, as devices of that stage (`spare_replicas` counts pipeline replicas)."""
    out: dict[WorkerKey, int] = {}
    for r in rows:
        if r.spare_replicas <= 0:
            continue
        if not r.stages:
            out[WorkerKey(service=r.service, variant=r.variant, pool=r.pool)] = r.spare_replicas
        for i, st in enumerate(r.stages):
            key = WorkerKey(
                service=r.service, variant=r.variant, pool=st.pool, pipeline=r.pipeline, stage=i
            )
            out[key] = r.spare_replicas * st.devices_per_replica
    return out


def _stage_specs(
    row: PlanRow,
    svc: InferenceService,
    variant: Variant,
    pools: Mapping[str, DevicePool],
    planner: PlannerSettings | None,
) -> dict[WorkerKey, WorkerSpec]:
    """One worker group per stage of a pipeline row, each on its own pool and wired to the
    next; none when a stage's pool is unknown (the pipeline cannot run in part)."""
    if any(st.pool not in pools for st in row.stages):
        return {}
    settings = planner or PlannerSettings()
    downstream = downstream_s(row.stages, settings)
    pass_ms = round(pass_latency_s(row.stages, settings) * 1000.0, 3)
    keys = [
        WorkerKey(
            service=row.service, variant=row.variant, pool=st.pool, pipeline=row.pipeline, stage=i
        )
        for i, st in enumerate(row.stages)
    ]
    out: dict[WorkerKey, WorkerSpec] = {}
    for i, (key, st) in enumerate(zip(keys, row.stages, strict=True)):
        out[key] = WorkerSpec(
            key=key,
            replicas=st.replicas,
            max_batch_size=st.max_batch_size,
            # Each of a stage's replicas carries its share of a pipeline replica's capacity:
            # ready replicas x this is what the stage can pass on (`pipeline_view`).
            capacity_qps_per_replica=round(
                row.capacity_qps_per_replica / st.devices_per_replica, 6
            ),
            accuracy=row.accuracy,
            slo_ms=svc.spec.slo.latency_ms,
            **_model_fields(variant),
            profile_ms=stage_profile_ms(variant, st.first, st.last, st.pool),
            placement=Placement.of(pools[st.pool]),
            stage=StageWiring(
                first=st.first,
                last=st.last,
                next=keys[i + 1] if i + 1 < len(keys) else None,
                downstream_ms=round(downstream[i] * 1000.0, 3),
                devices_per_replica=st.devices_per_replica,
                pass_latency_ms=pass_ms,
            ),
        )
    return out


def pipeline_view(
    targets: Mapping[WorkerKey, WorkerSpec],
    running: Mapping[WorkerKey, WorkerSpec],
    ready: Mapping[WorkerKey, int],
) -> tuple[dict[WorkerKey, WorkerSpec], dict[WorkerKey, WorkerSpec], dict[WorkerKey, int]]:
    """The worker groups as routing sees them: a pipeline is its first stage, ready as far as
    every stage is: its ready replicas count only whole pipelines that are ready end to end
    (min over stages of ready replicas / replicas per pipeline replica). So a pipeline gets
    traffic only once its later stages are ready, and keeps it while they are."""
    specs = {**running, **targets}
    stages = {key for key in specs if key.pipeline is not None and not key.stage}
    if not stages:
        return dict(targets), dict(running), dict(ready)
    view_ready = dict(ready)
    for entry in stages:
        view_ready[entry] = _whole_pipelines(entry, specs, ready) * devices_per_replica(
            specs[entry]
        )

    def entries(of: Mapping[WorkerKey, WorkerSpec]) -> dict[WorkerKey, WorkerSpec]:
        return {k: v for k, v in of.items() if not k.stage}

    return entries(targets), entries(running), view_ready


def devices_per_replica(spec: WorkerSpec) -> int:
    """The devices of its group one replica of the service takes: a pipeline stage's devices
    per pipeline replica, 1 for a whole variant."""
    return spec.stage.devices_per_replica if spec.stage is not None else 1


def serving_replicas(
    specs: Mapping[WorkerKey, WorkerSpec], ready: Mapping[WorkerKey, int]
) -> dict[WorkerKey, int]:
    """Per worker group, its ready replicas that serve: a whole variant's ready replicas; a
    pipeline stage's only as far as they make pipeline replicas ready in every stage (as
    `pipeline_view` counts them), the rest wait for a stage that is not ready."""
    whole = {
        (k.service, k.variant, k.pipeline): _whole_pipelines(k, specs, ready)
        for k in specs
        if k.pipeline is not None and not k.stage
    }
    return {
        key: ready.get(key, 0)
        if key.pipeline is None
        else min(
            ready.get(key, 0),
            whole.get((key.service, key.variant, key.pipeline), 0) * devices_per_replica(spec),
        )
        for key, spec in specs.items()
    }


def _whole_pipelines(
    entry: WorkerKey, specs: Mapping[WorkerKey, WorkerSpec], ready: Mapping[WorkerKey, int]
) -> int:
    """Pipeline replicas ready end to end, following the stages' wiring from `entry`; 0 when
    a stage the wiring names does not exist."""
    complete: int | None = None
    key: WorkerKey | None = entry
    while key is not None:
        spec = specs.get(key)
        if spec is None:
            return 0
        n = ready.get(key, 0) // devices_per_replica(spec)
        complete = n if complete is None else min(complete, n)
        key = spec.stage.next if spec.stage is not None else None
    return complete or 0
