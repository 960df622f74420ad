"""The Accordion API, `accordion.dev/v1alpha1`: `InferenceService` and `DevicePool`.

These pydantic models are the single source of truth for the custom resources: the CRD YAML in
`crds/` is generated from them (`accordion crds`, see `accordion.operator.crdgen`), the operator
parses what it watches with them, and the CLI and local mode read manifests with them. Field
descriptions are written for `kubectl explain`. Names follow the Kubernetes API conventions
(camelCase on the wire, `spec`/`status`, conditions), and KServe's where a KServe user would
look for them (`storageUri`, the Open Inference Protocol).

Rules that involve more than one field are written twice on purpose: as CEL
`x-kubernetes-validations` so the API server rejects the object at admission, and as pydantic
validators so that the CLI, local mode and the operator (which may run against a server that
does not enforce CEL) report the same error with the same message and field path
(tests/operator/test_crds.py walks every CEL rule and checks that the models reject the same
input).

Every number a tenant can set is bounded (the schema's `minimum`/`maximum`, named in the field
descriptions), so that whatever a schema-valid object says, the planner's arithmetic stays
finite and well-scaled: demand at most `MAX_QPS` (x11 with the largest headroom) weighted by a
priority of at most `MAX_PRIORITY`, latencies between `MIN_LATENCY_MS` and `MAX_LATENCY_MS` and
batches of at most `MAX_BATCH_SIZE` (so one replica's capacity is at most 4096 / 1 us), pools of
at most `MAX_DEVICES` devices at a cost of at most `MAX_COST_PER_DEVICE` each.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

from accordion.solver.mig import MigSpec
from accordion.workers.storage import (
    STORAGE_URI_MESSAGE,
    STORAGE_URI_PATTERN,
    StorageUriError,
    parse_storage_uri,
)

GROUP = "accordion.dev"
VERSION = "v1alpha1"
API_VERSION: Final = "accordion.dev/v1alpha1"

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
"""RFC 1123 label: what Kubernetes accepts as a name that also becomes part of object names."""

DNS_1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
"""RFC 1035 label: what Kubernetes accepts as a Service name (it starts with a letter). An
InferenceService's name starts the names of its router and worker Services."""

MAX_VARIANTS = 32
MAX_PROFILES = 16
MAX_BATCH_POINTS = 16
MAX_QPS = 1e6
"""Largest demand a service may declare or be measured at, req/s (Prometheus answers above it
are rejected as implausible)."""
MAX_HEADROOM = 10.0
MAX_PRIORITY = 1000
MIN_LATENCY_MS = 0.001
MAX_LATENCY_MS = 600_000.0
MAX_BATCH_SIZE = 4096
MAX_CELL_STEPS = 1_000_000
MAX_STATE_MIB = float(1 << 20)
MAX_DEVICES = 1_000_000
MAX_COST_PER_DEVICE = 1e6
MAX_INPUT_RANK = 8
MAX_INPUT_DIM = 1_000_000
MAX_ALLOWED_NAMESPACES = 256
MAX_MIG_LAYOUTS = 64
MAX_MODEL_STAGES = 32
MAX_TENSOR_BYTES = 1 << 40

POOL_OR_SLICE = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(/[1-7]g\.[0-9]{1,3}gb)?$"
"""A DevicePool name, or a MIG slice of one: `<pool>/<profile>` (`accordion.solver.mig`)."""


class ApiModel(BaseModel):
    """Base for every API object: camelCase on the wire, snake_case in Python, no unknowns."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=False,
    )


def cel(rule: str, message: str, field_path: str | None = None) -> JsonDict:
    """One `x-kubernetes-validations` entry."""
    entry: JsonDict = {"rule": rule, "message": message}
    if field_path is not None:
        entry["fieldPath"] = field_path
    return entry


# ------------------------------------------------------------------------------------- metadata


class ObjectMeta(BaseModel):
    """The part of Kubernetes `ObjectMeta` that Accordion reads; everything else is kept as is."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    name: Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL)]
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    uid: str | None = None
    generation: int | None = None
    resource_version: str | None = None


class ServiceMeta(ObjectMeta):
    """Metadata of an InferenceService: its name must be a DNS-1035 label (a Service name)."""

    name: Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_1035_LABEL)]


class Condition(ApiModel):
    """A status condition, as `metav1.Condition`."""

    type: str = Field(description="Type of the condition, e.g. Ready, Planned, Degraded.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(
        default="", description="One CamelCase word that says why the condition is as it is."
    )
    message: str = Field(default="", description="Human-readable details.")
    last_transition_time: str | None = Field(
        default=None, description="When the condition last changed status (RFC 3339)."
    )
    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation this condition was computed from."
    )


# ---------------------------------------------------------------------------- InferenceService


class ServiceLevelObjective(ApiModel):
    """The latency budget every request must meet, and how many requests must meet it."""

    latency_ms: float = Field(
        ge=MIN_LATENCY_MS,
        le=MAX_LATENCY_MS,
        description=(
            "End-to-end latency budget of one request in milliseconds, queueing and batching "
            "included. A response later than this is an SLO violation. 0.001 to 600000."
        ),
    )
    objective: float = Field(
        default=0.99,
        gt=0,
        lt=1,
        description=(
            "Fraction of requests that must be answered within latencyMs (e.g. 0.99). The "
            "SLO burn-rate alerts measure violations against 1 - objective."
        ),
    )


class AccuracyPolicy(ApiModel):
    """How far Accordion may scale accuracy down under load, and how far up it should go."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.target) || self.target >= self.floor",
                    "accuracy.target must be greater than or equal to accuracy.floor",
                    ".target",
                )
            ]
        }
    )

    floor: float = Field(
        default=0.0,
        ge=0,
        le=100,
        description=(
            "Lowest accuracy a variant may have to serve this service (same scale as "
            "variants[].accuracy). Accordion never routes to a less accurate variant; demand "
            "that cannot be served above the floor is reported as a shortfall (Degraded)."
        ),
    )
    target: float | None = Field(
        default=None,
        ge=0,
        le=100,
        description=(
            "Accuracy beyond which Accordion spends no more devices: above the target, "
            "accuracy is worth nothing to the planner. Unset means the most accurate variant "
            "is always worth its devices."
        ),
    )

    @field_validator("target")
    @classmethod
    def _target_above_floor(cls, target: float | None, info: ValidationInfo) -> float | None:
        floor = info.data.get("floor")
        if target is not None and floor is not None and target < floor:
            raise ValueError("accuracy.target must be greater than or equal to accuracy.floor")
        return target


class DemandSource(StrEnum):
    """Where the demand estimate of a service comes from."""

    STATIC = "Static"
    PROMETHEUS = "Prometheus"
    ROUTER = "Router"


class BurstPolicyName(StrEnum):
    """How a service's spare (burst) capacity is sized."""

    AUTO = "Auto"
    FIXED = "Fixed"
    OFF = "Off"


class CapacityModelName(StrEnum):
    """How the planner sizes a replica's capacity from its latency profile."""

    MARGIN = "Margin"
    BATCHING = "Batching"


class BurstSpec(ApiModel):
    """Spare replicas for bursts, on devices the plan leaves idle.

    The plan serves the estimate plus `demand.headroom`; devices it leaves idle then hold spare
    replicas sized for `headroom` more (of the estimate). The router sends them nothing by
    weight: only its fast loop does, with the requests the planned replicas cannot answer in
    time, so a burst is absorbed at once instead of after a re-plan and a model load. Spare
    replicas never take a device another service's plan needs.
    """

    policy: BurstPolicyName = Field(
        default=BurstPolicyName.AUTO,
        description=(
            "Auto: spare capacity for the larger of `headroom` and the largest burst the "
            "service's own arrivals showed in the last 10 minutes, at most `max`. Fixed: "
            "`headroom` exactly. Off: no spare replicas (cost-sensitive services)."
        ),
    )
    headroom: float = Field(
        default=0.5,
        ge=0,
        le=10,
        description="Spare capacity as a fraction of the estimate (0.5 = +50%). 0 to 10.",
    )
    max: float = Field(
        default=2.0,
        ge=0,
        le=10,
        description="Auto: the learned burst is capped at this fraction of the estimate.",
    )

    def fraction(self, learned: float | None) -> float:
        """The spare capacity to plan, as a fraction of the estimate."""
        if self.policy is BurstPolicyName.OFF:
            return 0.0
        if self.policy is BurstPolicyName.FIXED or learned is None:
            return self.headroom
        return max(self.headroom, min(learned, self.max))


class DemandSpec(ApiModel):
    """Where the planner's demand estimate comes from, and how much headroom to plan for."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.source != 'Static' || has(self.qps)",
                    "demand.qps is required when demand.source is Static",
                    ".qps",
                )
            ]
        }
    )

    @field_validator("qps")
    @classmethod
    def _static_needs_qps(cls, qps: float | None, info: ValidationInfo) -> float | None:
        if info.data.get("source") is DemandSource.STATIC and qps is None:
            raise ValueError("demand.qps is required when demand.source is Static")
        return qps

    source: DemandSource = Field(
        default=DemandSource.ROUTER,
        description=(
            "Router: the arrivals the service's routers report to the operator every second, "
            "smoothed (Prometheus's rate of accordion_router_requests_total while no router "
            "reports, if the operator has a Prometheus). Prometheus: demand.query; without a "
            "query, the same as Router. Static: plan for demand.qps. demand.qps, when set, is "
            "the estimate used until the first measurement and while none can be made."
        ),
    )
    qps: float | None = Field(
        default=None,
        validate_default=True,  # so that a missing qps meets the Static rule
        ge=0,
        le=MAX_QPS,
        description=(
            "Requests per second to plan for (Static), or fallback. 0 to 1000000: a larger "
            "service is several InferenceServices."
        ),
    )
    query: str | None = Field(
        default=None,
        max_length=4096,
        description=(
            "PromQL that returns this service's request rate. Defaults to the operator's "
            "query template over accordion_router_requests_total for this service. It may "
            "read only series of the service's own namespace: every selector must carry "
            'the matcher namespace="<the service\'s namespace>", otherwise the query is not '
            "sent and the service reports DemandUnavailable with the reason. Answers must be "
            "finite and at most 1000000 req/s."
        ),
    )
    headroom: float = Field(
        default=0.1,
        ge=0,
        le=MAX_HEADROOM,
        description=(
            "Extra capacity planned above the estimate, as a fraction (0.1 = +10%). 0 to 10."
        ),
    )
    burst: BurstSpec = Field(
        default_factory=BurstSpec,
        description="Spare replicas for bursts on devices the plan leaves idle.",
    )
    capacity_model: CapacityModelName = Field(
        default=CapacityModelName.MARGIN,
        description=(
            "Margin: a replica is planned at the planner's utilization margin of the "
            "throughput its largest SLO-safe batch gives. Batching: at the largest arrival "
            "rate at which the SLO batcher keeps the service's latency percentile within "
            "the SLO under the burstiness its routers measure (the margin until one is "
            "measured). Batching sizes for bursts of every length as if they lasted: on the "
            "Proteus traces it cost accuracy and violations (bench/results/serverless.md, "
            "proteus.md), so it is opt-in."
        ),
    )


class ModelFormat(StrEnum):
    """How a worker loads a variant's model."""

    TORCHSCRIPT = "torchscript"
    TORCH_EXPORT = "torch-export"
    BUILTIN = "builtin"


InputDatatype = Literal["FP32", "FP16", "FP64", "INT64", "INT32"]
"""Input tensor datatypes a worker accepts, as the Open Inference Protocol names them."""


class ModelRef(ApiModel):
    """Where a worker finds a variant's model. Models are never fetched from a hub at run time."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    f"self.storageUri.matches('{STORAGE_URI_PATTERN}')",
                    STORAGE_URI_MESSAGE,
                    ".storageUri",
                )
            ]
        }
    )

    storage_uri: str = Field(
        min_length=1,
        max_length=2048,
        description=(
            "Location of the model file, as in KServe: s3://BUCKET/KEY (downloaded by an init "
            "container before the worker starts; credentials and an S3-compatible endpoint "
            "from the operator's storage Secret, with KServe's variable names), "
            "http(s)://HOST/PATH (downloaded likewise), pvc://CLAIM/PATH (the claim mounted "
            "read-only, nothing copied), a path inside the worker image or a mounted volume "
            "(file:///models/resnet50.pt or /models/resnet50.pt), or builtin:NAME for "
            "Accordion's demo models. Other schemes (gs://, ...) are rejected."
        ),
    )

    @field_validator("storage_uri")
    @classmethod
    def _supported_storage(cls, uri: str) -> str:
        try:
            parse_storage_uri(uri)
        except StorageUriError:
            raise ValueError(STORAGE_URI_MESSAGE) from None
        return uri

    format: ModelFormat = Field(
        default=ModelFormat.TORCHSCRIPT,
        description="torchscript (torch.jit.save), torch-export (torch.export.save) or builtin.",
    )
    input_shape: list[Annotated[int, Field(ge=1, le=MAX_INPUT_DIM)]] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_INPUT_RANK,
        description=(
            "Shape of one sample, without the batch dimension (e.g. [3, 224, 224]); the "
            "worker allocates inputs of this shape (warm-up, metadata). Needed for "
            "torchscript files, which do not record it (without it their workers fail and the "
            "service reports ModelLoadFailed); a torch-export file records it and builtin "
            "models know theirs. At most 8 dimensions of 1 to 1000000."
        ),
    )
    input_datatype: InputDatatype = Field(
        default="FP32",
        description="Datatype of the input tensor, as the Open Inference Protocol names it.",
    )


class BatchingModeName(StrEnum):
    """Granularity of a worker's batching (`accordion.workers.staged`)."""

    REQUEST = "Request"
    CELLULAR = "Cellular"
    NODE = "Node"


CELL_MODELS = ("builtin:gru-seq", "builtin:decoder-tiny")
"""Models a worker can batch per step of their cell (cellular mode)."""
CELLULAR_NEEDS_CELL = "batching mode Cellular needs a cell model: " + " or ".join(CELL_MODELS)
NODE_NEEDS_STAGES = (
    "batching mode Node needs a model of several stages (an nn.Sequential file, "
    "builtin:cnn-deep), not a cell model"
)
CELLULAR_ONLY = "maxInflight, maxStateMiB and lengths apply to batching mode Cellular only"


class RequestLengths(ApiModel):
    """The workload's request lengths, in steps of the cell (sequence elements; prompt plus
    generated tokens): what a cellular variant's capacity depends on."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.p99Steps >= self.meanSteps",
                    "p99Steps must be greater than or equal to meanSteps",
                    ".p99Steps",
                )
            ]
        }
    )

    mean_steps: float = Field(ge=1, le=MAX_CELL_STEPS, description="Mean request length.")
    p99_steps: float = Field(
        ge=1, le=MAX_CELL_STEPS, description="99th percentile of the request lengths."
    )

    @field_validator("p99_steps")
    @classmethod
    def _p99_above_mean(cls, p99: float, info: ValidationInfo) -> float:
        mean = info.data.get("mean_steps")
        if mean is not None and p99 < mean:
            raise ValueError("p99Steps must be greater than or equal to meanSteps")
        return p99


class VariantBatching(ApiModel):
    """How the variant's workers batch: whole requests, or inside the model (issue 18)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.mode == 'Cellular' || "
                    "(!has(self.maxInflight) && !has(self.maxStateMiB) && !has(self.lengths))",
                    CELLULAR_ONLY,
                )
            ]
        }
    )

    mode: BatchingModeName = Field(
        default=BatchingModeName.REQUEST,
        description=(
            "Request (default): whole requests, batched by the SLO-aware batcher. Cellular: "
            "for recurrent and autoregressive models (builtin:gru-seq, builtin:decoder-tiny), "
            "one step of the cell at a time, requests joining and leaving the running batch "
            "at every step (BatchMaker). Node: for feed-forward models run as stages (an "
            "nn.Sequential's children), a late request catching up with the batch in flight "
            "(LazyBatching)."
        ),
    )
    max_inflight: int | None = Field(
        default=None,
        ge=1,
        le=MAX_BATCH_SIZE,
        description="Cellular: most requests holding state at once (default: the batch cap).",
    )
    max_state_mib: float | None = Field(
        default=None,
        gt=0,
        le=MAX_STATE_MIB,
        alias="maxStateMiB",
        description="Cellular: most state (hidden states, KV caches) held at once, MiB.",
    )
    lengths: RequestLengths | None = Field(
        default=None,
        description=(
            "Cellular: the workload's request lengths. Given, the variant's profiles are the "
            "latency of one step of the cell per batch size (`accordion profile --stages` "
            "prints them), and the planner derives its per-request capacity at these lengths "
            "(accordion.solver.cellular). Absent, the profiles are per request (`accordion "
            "profile --stages --lengths` prints that equivalent profile)."
        ),
    )

    @model_validator(mode="after")
    def _cellular_only(self) -> VariantBatching:
        if self.mode is not BatchingModeName.CELLULAR and (
            self.max_inflight is not None
            or self.max_state_mib is not None
            or self.lengths is not None
        ):
            raise ValueError(CELLULAR_ONLY)
        return self


class BatchLatency(ApiModel):
    """Measured latency of one batch size on one device pool (`accordion profile` prints these)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.p90Ms) || self.p90Ms >= self.p50Ms",
                    "p90Ms must be greater than or equal to p50Ms",
                    ".p90Ms",
                ),
                cel(
                    "!has(self.p99Ms) || self.p99Ms >= (has(self.p90Ms) ? self.p90Ms : self.p50Ms)",
                    "p99Ms must be greater than or equal to p90Ms and p50Ms",
                    ".p99Ms",
                ),
            ]
        }
    )

    batch_size: int = Field(
        ge=1, le=MAX_BATCH_SIZE, description="Number of requests in the batch, 1 to 4096."
    )
    p50_ms: float = Field(
        ge=MIN_LATENCY_MS,
        le=MAX_LATENCY_MS,
        description="Median execution latency of the batch, ms (0.001 to 600000).",
    )
    p90_ms: float | None = Field(
        default=None,
        ge=MIN_LATENCY_MS,
        le=MAX_LATENCY_MS,
        description="90th percentile latency, ms (0.001 to 600000).",
    )
    p99_ms: float | None = Field(
        default=None,
        ge=MIN_LATENCY_MS,
        le=MAX_LATENCY_MS,
        description="99th percentile latency, ms (0.001 to 600000).",
    )

    @field_validator("p90_ms")
    @classmethod
    def _p90_above_p50(cls, p90: float | None, info: ValidationInfo) -> float | None:
        p50 = info.data.get("p50_ms")
        if p90 is not None and p50 is not None and p90 < p50:
            raise ValueError("p90Ms must be greater than or equal to p50Ms")
        return p90

    @field_validator("p99_ms")
    @classmethod
    def _p99_above_p90(cls, p99: float | None, info: ValidationInfo) -> float | None:
        if "p50_ms" not in info.data or "p90_ms" not in info.data:
            return p99  # reported on those fields
        p90 = info.data["p90_ms"]
        lower = p90 if p90 is not None else info.data["p50_ms"]
        if p99 is not None and p99 < lower:
            raise ValueError("p99Ms must be greater than or equal to p90Ms and p50Ms")
        return p99


class LatencyProfile(ApiModel):
    """Latency of a variant on one device pool, per batch size."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.batches.exists(b, b.batchSize == 1)",
                    "a latency profile must include batchSize 1",
                    ".batches",
                )
            ]
        }
    )

    pool: str = Field(
        min_length=1,
        max_length=63 + len("/7g.141gb"),
        pattern=POOL_OR_SLICE,
        description=(
            "Name of the DevicePool this profile was measured on; on a MIG pool, the slice "
            "profile it was measured on: `<pool>/<profile>`, e.g. a100/1g.10gb."
        ),
    )
    batches: list[BatchLatency] = Field(
        min_length=1,
        max_length=MAX_BATCH_POINTS,
        description="Latency per batch size; must include batch size 1.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["batchSize"],
        },
    )

    @field_validator("batches")
    @classmethod
    def _batches_valid(cls, batches: list[BatchLatency]) -> list[BatchLatency]:
        sizes = [b.batch_size for b in batches]
        if 1 not in sizes:
            raise ValueError("a latency profile must include batchSize 1")
        if len(set(sizes)) != len(sizes):
            raise ValueError("batch sizes in a latency profile must be unique")
        return batches


class ModelStage(ApiModel):
    """One part of a variant's model between two candidate cut points (a pipeline stage may
    run one or several consecutive parts). `accordion profile --split` prints these."""

    name: str = Field(
        min_length=1,
        max_length=63,
        # Dotted: a residual block inside a top-level child (layer1.0), as `accordion profile
        # --split` names the parts it cuts between blocks.
        pattern=r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$",
        description="The part's name: a top-level child of the model (e.g. layer1), or a block "
        "inside one (layer1.0).",
    )
    output_bytes: int = Field(
        default=0,
        ge=0,
        le=MAX_TENSOR_BYTES,
        description="Size of the tensor this part hands on, per request (bytes).",
    )
    profiles: list[LatencyProfile] = Field(
        min_length=1,
        max_length=MAX_PROFILES,
        description="The part's latency per device pool; the part runs only on pools listed.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["pool"]},
    )

    @field_validator("profiles")
    @classmethod
    def _unique_pools(cls, profiles: list[LatencyProfile]) -> list[LatencyProfile]:
        pools = [p.pool for p in profiles]
        if len(set(pools)) != len(pools):
            raise ValueError("each pool may have only one latency profile per stage")
        return profiles


class Variant(ApiModel):
    """One model of the family: an accuracy, a model, and its latency on each pool it can use."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.batching) || self.batching.mode != 'Cellular' || "
                    f"self.model.storageUri in [{', '.join(repr(m) for m in CELL_MODELS)}]",
                    CELLULAR_NEEDS_CELL,
                    ".batching",
                ),
                cel(
                    "!has(self.batching) || self.batching.mode != 'Node' || "
                    f"!(self.model.storageUri in [{', '.join(repr(m) for m in CELL_MODELS)}])",
                    NODE_NEEDS_STAGES,
                    ".batching",
                ),
            ]
        }
    )

    name: str = Field(
        min_length=1,
        max_length=40,
        pattern=DNS_LABEL,
        description="Name of the variant, unique in the service (part of worker object names).",
    )
    accuracy: float = Field(
        ge=0,
        le=100,
        description=(
            "Accuracy of the variant on the family's benchmark, in percent (or any 0-100 "
            "scale shared by the service's variants). The planner maximizes it."
        ),
    )
    model: ModelRef = Field(description="Where the worker loads the model from.")
    batching: VariantBatching | None = Field(
        default=None,
        description="How its workers batch (default: whole requests, mode Request).",
    )

    @field_validator("batching")
    @classmethod
    def _batching_fits_the_model(
        cls, batching: VariantBatching | None, info: ValidationInfo
    ) -> VariantBatching | None:
        model = info.data.get("model")
        if batching is None or model is None:
            return batching
        cell = model.storage_uri in CELL_MODELS
        if batching.mode is BatchingModeName.CELLULAR and not cell:
            raise ValueError(CELLULAR_NEEDS_CELL)
        if batching.mode is BatchingModeName.NODE and cell:
            raise ValueError(NODE_NEEDS_STAGES)
        return batching

    profiles: list[LatencyProfile] = Field(
        min_length=1,
        max_length=MAX_PROFILES,
        description=(
            "Latency per device pool. The variant is placed only on the pools listed here, "
            "and only with batch sizes whose worst-case latency fits the SLO."
        ),
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["pool"]},
    )

    @field_validator("profiles")
    @classmethod
    def _unique_pools(cls, profiles: list[LatencyProfile]) -> list[LatencyProfile]:
        pools = [p.pool for p in profiles]
        if len(set(pools)) != len(pools):
            raise ValueError("each pool may have only one latency profile per variant")
        return profiles

    stages: list[ModelStage] = Field(
        default_factory=list,
        max_length=MAX_MODEL_STAGES,
        description=(
            "The model's parts between candidate cut points, in order (`accordion profile "
            "--split`): with two or more, the planner may also serve the variant as a pipeline "
            "whose stages (consecutive parts) run on different pools, each stage a worker "
            "Deployment that hands its output to the next. Empty: whole variants only."
        ),
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )

    @field_validator("stages")
    @classmethod
    def _unique_stages(cls, stages: list[ModelStage]) -> list[ModelStage]:
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise ValueError("stage names must be unique in a variant")
        return stages


class InferenceServiceSpec(ApiModel):
    """Desired state of an InferenceService: one model family under one latency SLO."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.maxReplicas) || !has(self.minReplicas) "
                    "|| self.maxReplicas >= self.minReplicas",
                    "maxReplicas must be greater than or equal to minReplicas",
                    ".maxReplicas",
                )
            ]
        }
    )

    slo: ServiceLevelObjective = Field(description="Latency budget of every request.")
    accuracy: AccuracyPolicy = Field(
        default_factory=AccuracyPolicy, description="Bounds of accuracy scaling."
    )
    demand: DemandSpec = Field(
        default_factory=DemandSpec, description="Where the demand estimate comes from."
    )
    priority: int = Field(
        default=1,
        ge=1,
        le=MAX_PRIORITY,
        description=(
            "Weight of this service's demand when the cluster cannot serve everything: "
            "demand of a higher-priority service is served first. 1 to 1000. A DevicePool "
            "may cap it (spec.maxPriority): the service is planned at the lowest cap among "
            "the pools it may use."
        ),
    )
    min_replicas: int = Field(
        default=1,
        ge=0,
        le=MAX_DEVICES,
        description=(
            "Fewest worker replicas (devices) the service keeps, whatever its demand, as "
            "KServe's minReplicas (default 1). 0 lets the service scale to zero after "
            "scaleToZeroIdleSeconds without requests; its router then holds the requests "
            "that arrive (the activator) until a replica is ready. Met as far as the pools "
            "have free devices: replicas that serve demand are never taken for it. 0 to "
            "1000000."
        ),
    )
    max_replicas: int | None = Field(
        default=None,
        ge=1,
        le=MAX_DEVICES,
        description=(
            "Most worker replicas (devices) the service may take, spare (burst) replicas "
            "included, as KServe's maxReplicas; demand beyond their capacity is served at "
            "lower accuracy or reported as a shortfall. Unset: as many as the pools allow."
        ),
    )
    scale_to_zero_idle_seconds: float = Field(
        default=300.0,
        ge=1,
        le=86_400,
        description=(
            "With minReplicas 0: the longest the service may receive no request before its "
            "last replica is released (Knative's stable window plus retention period, as one "
            "number). Within it the replica goes sooner, after a silence of three measured cold "
            "starts that the service's own traffic would rarely make (seven mean gaps between "
            "its requests). Ignored when minReplicas is 1 or more. 1 to 86400."
        ),
    )
    variants: list[Variant] = Field(
        min_length=1,
        max_length=MAX_VARIANTS,
        description="The model variants Accordion may choose between, at least one.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )

    @field_validator("variants")
    @classmethod
    def _unique_variants(cls, variants: list[Variant]) -> list[Variant]:
        names = [v.name for v in variants]
        if len(set(names)) != len(names):
            raise ValueError("variant names must be unique")
        return variants

    @field_validator("max_replicas")
    @classmethod
    def _max_above_min(cls, max_replicas: int | None, info: ValidationInfo) -> int | None:
        low = info.data.get("min_replicas")
        if max_replicas is not None and low is not None and max_replicas < low:
            raise ValueError("maxReplicas must be greater than or equal to minReplicas")
        return max_replicas

    def replica_floor(self, idle: bool) -> int:
        """Fewest replicas to plan: minReplicas, and one while a scale-to-zero service is not
        idle (it has demand, or had some within scaleToZeroIdleSeconds)."""
        return self.min_replicas if self.min_replicas > 0 or idle else 1


class PipelineStageStatus(ApiModel):
    """One stage of a pipeline row: parts first..last of the model on a pool."""

    pool: str = Field(description="DevicePool name.")
    first: str = Field(description="The first part of the model the stage runs.")
    last: str = Field(description="The last part of the model the stage runs.")
    replicas: int = Field(ge=0, description="Planned worker replicas of the stage.")
    ready_replicas: int = Field(default=0, ge=0, description="Replicas currently ready.")
    max_batch_size: int = Field(ge=1, description="The stage's batch size cap.")


class PlanRowStatus(ApiModel):
    """One (variant, pool) row of the current plan."""

    variant: str = Field(description="Variant name.")
    pool: str = Field(description="DevicePool name.")
    replicas: int = Field(ge=0, description="Planned worker replicas (one device each).")
    ready_replicas: int = Field(default=0, ge=0, description="Replicas currently ready.")
    max_batch_size: int = Field(ge=1, description="Batch size cap that keeps the SLO.")
    capacity_qps: float = Field(ge=0, description="Planned capacity of these replicas, req/s.")
    routed_qps: float = Field(ge=0, description="Demand routed to these replicas, req/s.")
    weight: float = Field(ge=0, le=1, description="Share of the service's traffic routed here.")
    accuracy: float = Field(ge=0, le=100, description="Accuracy of the variant.")
    spare_replicas: int = Field(
        default=0,
        ge=0,
        description="Of replicas, how many are spare (burst) replicas: routed to only by the "
        "router's fast loop, when the planned replicas cannot answer in time.",
    )
    pipeline: str | None = Field(
        default=None,
        description="For a pipeline (the variant cut into stages on several pools), its id "
        "(`first..last@pool*devices` per stage, joined by `>`); pool is its first stage's "
        "and replicas count whole pipelines. None for a whole variant.",
    )
    stages: list[PipelineStageStatus] = Field(
        default_factory=list, description="A pipeline's stages in order; empty otherwise."
    )


class InferenceServiceStatus(ApiModel):
    """Observed state of an InferenceService, written by the operator."""

    # Status is written by controllers (kopf keeps its own bookkeeping there too): never reject it.
    model_config = ConfigDict(extra="ignore")

    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation the status reflects."
    )
    url: str | None = Field(
        default=None,
        description=(
            "The service's endpoint in the cluster (its router, KServe v2 protocol), e.g. "
            "http://NAME.NAMESPACE.svc.cluster.local; POST $url/v2/models/NAME/infer."
        ),
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready, Planned, Degraded, DemandUnavailable, InvalidSpec.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    demand_qps: float | None = Field(
        default=None, description="Demand the current plan was made for (headroom included)."
    )
    capacity_qps: float | None = Field(default=None, description="Planned capacity, req/s.")
    spare_capacity_qps: float | None = Field(
        default=None,
        description="Capacity of the spare (burst) replicas beyond capacityQps, req/s "
        "(spec.demand.burst).",
    )
    served_qps: float | None = Field(default=None, description="Planned served demand, req/s.")
    effective_accuracy: float | None = Field(
        default=None, description="Demand-weighted accuracy of the plan."
    )
    ready_replicas: int | None = Field(default=None, description="Worker replicas ready.")
    plan: list[PlanRowStatus] = Field(default_factory=list, description="The current plan rows.")
    scaled_to_zero: bool | None = Field(
        default=None,
        description="True while the service runs no replica (minReplicas 0, idle).",
    )
    cold_start_seconds: float | None = Field(
        default=None,
        description=(
            "The last cold start its routers measured: from the first request held at zero "
            "ready replicas to the first ready one, seconds."
        ),
    )
    prewarmed: bool | None = Field(
        default=None,
        description=(
            "True while its replica is kept or started ahead of an expected return of its "
            "traffic (minReplicas 0: silences that recur on a schedule, `control.idle`)."
        ),
    )
    prewarms: int | None = Field(
        default=None,
        description="Pre-warms so far (minReplicas 0), since the operator began counting.",
    )
    prewarms_met: int | None = Field(
        default=None,
        description="Of those, the ones its traffic came back within (the rest went unused).",
    )
    device_seconds: float | None = Field(
        default=None,
        description=(
            "Device-seconds the service's workers have held (replicas x time, starting and "
            "spare replicas included), since the operator began counting."
        ),
    )
    cost: float | None = Field(
        default=None,
        description=(
            "Cost of those device-seconds: device-hours x the pools' costPerDevice (read as "
            "a price per device-hour)."
        ),
    )
    cost_per_1k_requests: float | None = Field(
        default=None,
        alias="costPer1kRequests",
        description="cost per 1,000 requests that arrived over the same time.",
    )
    last_plan_time: str | None = Field(default=None, description="When the plan last changed.")


class InferenceService(ApiModel):
    """An ML inference service under a latency SLO, served by a family of model variants."""

    KIND: ClassVar[str] = "InferenceService"
    PLURAL: ClassVar[str] = "inferenceservices"
    SINGULAR: ClassVar[str] = "inferenceservice"
    SHORT_NAMES: ClassVar[list[str]] = ["aisvc"]

    api_version: Literal["accordion.dev/v1alpha1"] = Field(default=API_VERSION)
    kind: Literal["InferenceService"] = "InferenceService"
    metadata: ServiceMeta
    spec: InferenceServiceSpec
    status: InferenceServiceStatus | None = None

    @property
    def key(self) -> str:
        """`namespace/name`, the service's identity in plans and metrics."""
        return f"{self.metadata.namespace or 'default'}/{self.metadata.name}"


# ---------------------------------------------------------------------------------- DevicePool


class Toleration(ApiModel):
    """A pod toleration, as `core/v1 Toleration`."""

    key: str | None = Field(default=None, description="Taint key the toleration applies to.")
    operator: Literal["Exists", "Equal"] | None = Field(
        default=None, description="Exists or Equal (default Equal)."
    )
    value: str | None = Field(default=None, description="Taint value for Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all."
    )
    toleration_seconds: int | None = Field(
        default=None,
        ge=0,
        le=2**31 - 1,
        description="How long a NoExecute taint is tolerated, seconds.",
    )


Quantity = Annotated[
    int | str,
    Field(json_schema_extra={"x-kubernetes-int-or-string": True}),
]


class ResourceRequirements(ApiModel):
    """Compute resources of one worker replica, as `core/v1 ResourceRequirements`."""

    requests: dict[str, Quantity] = Field(
        default_factory=dict, description="Resources requested, e.g. cpu: '2', memory: 4Gi."
    )
    limits: dict[str, Quantity] = Field(
        default_factory=dict, description="Resource limits, e.g. nvidia.com/gpu: 1."
    )


class MigPoolSpec(ApiModel):
    """MIG-capable GPUs: the model, and the layouts the planner may split each GPU into."""

    gpu_model: Literal["A100-40GB", "A100-80GB", "H100-80GB"] = Field(
        description="GPU model; its MIG profiles and placement rules are NVIDIA's "
        "(accordion.solver.mig)."
    )
    layouts: (
        list[Annotated[dict[str, Annotated[int, Field(ge=0, le=7)]], Field(max_length=6)]] | None
    ) = Field(
        default=None,
        max_length=MAX_MIG_LAYOUTS,
        description=(
            "Layouts the planner may give a GPU, each as MIG profile -> instances, the MIG "
            "manager's mig-devices format, e.g. {3g.40gb: 1, 2g.20gb: 2}; each must obey the "
            "model's placement rules. Unset: any valid layout."
        ),
    )

    @field_validator("layouts")
    @classmethod
    def _layouts_valid(
        cls, layouts: list[dict[str, int]] | None, info: ValidationInfo
    ) -> list[dict[str, int]] | None:
        model = info.data.get("gpu_model")
        if layouts is not None and model is not None:
            try:
                MigSpec(gpu_model=model, layouts=layouts)
            except ValidationError as exc:
                raise ValueError(
                    str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
                ) from None
        return layouts


class DevicePoolSpec(ApiModel):
    """A class of identical devices the planner may place workers on."""

    devices: int = Field(
        ge=0,
        le=MAX_DEVICES,
        description=(
            "How many devices of this class the planner may use (one per replica), 0 to 1000000."
        ),
    )
    cost_per_device: float = Field(
        default=1.0,
        ge=0,
        le=MAX_COST_PER_DEVICE,
        description=(
            "Relative cost of one device (e.g. its hourly price), 0 to 1000000. The planner "
            "releases devices that are not worth their accuracy, cheapest plan first among "
            "equals."
        ),
    )
    allowed_namespaces: list[Annotated[str, Field(max_length=63, pattern=DNS_LABEL)]] | None = (
        Field(
            default=None,
            max_length=MAX_ALLOWED_NAMESPACES,
            description=(
                "Namespaces whose InferenceServices may place workers on this pool. Unset: "
                "every namespace. A service of another namespace keeps its other pools; its "
                "profiles for this pool are ignored and its status says so (PoolAccess)."
            ),
            json_schema_extra={"x-kubernetes-list-type": "set"},
        )
    )
    max_priority: int | None = Field(
        default=None,
        ge=1,
        le=MAX_PRIORITY,
        description=(
            "Highest spec.priority a service using this pool is planned with, 1 to 1000. "
            "Priority is one number per service in the plan, so a service that may use "
            "several pools is planned at the lowest maxPriority among them (and its status "
            "says so, PoolAccess). Unset: no cap."
        ),
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels a worker pod of this pool must match."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, description="Tolerations added to the pool's worker pods."
    )
    resources: ResourceRequirements = Field(
        default_factory=ResourceRequirements,
        description="Resources of one worker replica, e.g. limits: {nvidia.com/gpu: 1}.",
    )
    device: Literal["cpu", "cuda"] = Field(
        default="cpu", description="Torch device the workers of this pool run on."
    )
    mig: MigPoolSpec | None = Field(
        default=None,
        description=(
            "MIG-capable GPUs (devices counts GPUs): the planner chooses each GPU's layout "
            "with the variants on its slices, which profiles name `<pool>/<profile>`. The "
            "operator applies layouts through the NVIDIA MIG manager's node label "
            "nvidia.com/mig.config (one node at a time, drained first) and places workers on a "
            "slice (nvidia.com/mig-<profile>) once it is in the node's allocatable."
        ),
    )

    @field_validator("allowed_namespaces")
    @classmethod
    def _unique_namespaces(cls, names: list[str] | None) -> list[str] | None:
        if names is not None and len(set(names)) != len(names):
            raise ValueError("allowedNamespaces must not repeat a namespace")
        return names


class DevicePoolStatus(ApiModel):
    """Observed state of a DevicePool."""

    model_config = ConfigDict(extra="ignore")

    conditions: list[Condition] = Field(
        default_factory=list,
        description="Available: whether nodes matching the selector exist with free devices.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    allocated_devices: int | None = Field(default=None, description="Devices the plan uses.")
    matching_nodes: int | None = Field(default=None, description="Nodes matching the selector.")


class DevicePool(ApiModel):
    """A pool of identical devices (cluster-scoped): GPUs of one type, or CPU slots."""

    KIND: ClassVar[str] = "DevicePool"
    PLURAL: ClassVar[str] = "devicepools"
    SINGULAR: ClassVar[str] = "devicepool"
    SHORT_NAMES: ClassVar[list[str]] = ["dpool"]

    api_version: Literal["accordion.dev/v1alpha1"] = Field(default=API_VERSION)
    kind: Literal["DevicePool"] = "DevicePool"
    metadata: ObjectMeta
    spec: DevicePoolSpec
    status: DevicePoolStatus | None = None


def split_key(key: str) -> tuple[str, str]:
    """`(namespace, name)` of a service key as `InferenceService.key` makes it."""
    namespace, sep, name = key.partition("/")
    if not sep:
        raise ValueError(f"{key!r} is not a namespace/name service key")
    return namespace, name


Resource = InferenceService | DevicePool
KINDS: dict[str, type[InferenceService] | type[DevicePool]] = {
    InferenceService.KIND: InferenceService,
    DevicePool.KIND: DevicePool,
}


# --------------------------------------------------------------------------------- validation


def error_path(loc: tuple[int | str, ...]) -> str:
    """Render a pydantic error location as a Kubernetes field path: `spec.variants[1].accuracy`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in {"function-after", "function-before"} or "[" in str(part):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out


class InvalidResourceError(ValueError):
    """A manifest that does not satisfy the API; `errors` lists (field path, message) pairs."""

    def __init__(self, what: str, errors: list[tuple[str, str]]) -> None:
        self.what = what
        self.errors = errors
        details = "; ".join(f"{path or '<root>'}: {msg}" for path, msg in errors)
        super().__init__(f"{what}: {details}")


def parse_resource(obj: dict[str, Any], what: str = "object") -> Resource:
    """Parse one manifest into its model, or raise `InvalidResourceError` naming every bad field."""
    if not isinstance(obj, dict):
        raise InvalidResourceError(what, [("", "expected a mapping")])
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    if api_version != API_VERSION:
        raise InvalidResourceError(
            what, [("apiVersion", f"expected {API_VERSION}, got {api_version!r}")]
        )
    model = KINDS.get(str(kind))
    if model is None:
        raise InvalidResourceError(
            what, [("kind", f"expected one of {sorted(KINDS)}, got {kind!r}")]
        )
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        errors = [
            (error_path(tuple(e["loc"])), str(e["msg"]).removeprefix("Value error, "))
            for e in exc.errors()
        ]
        raise InvalidResourceError(what, errors) from None
