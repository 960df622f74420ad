"""Configuration models of the data plane: what the operator writes and the workers read.

These pydantic models cross a boundary (the operator renders them into ConfigMaps; worker pods
and routers parse them), so they live in a module that imports neither torch nor aiohttp: the
operator imports it without the workers' heavy dependencies.

Units: seconds internally, milliseconds in these user-facing files (the API edge).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

DEADLINE_HEADER = "x-accordion-deadline-ms"
"""Request header carrying the remaining latency budget of a request, in milliseconds."""
OUTCOME_HEADER = "x-accordion-outcome"
"""Response header of the worker and the router: the request's outcome (metric label)."""
SLOWDOWN_HEADER = "x-accordion-slowdown"
SLOWDOWN_MEDIAN_HEADER = "x-accordion-slowdown-median"
"""Response header of the worker: how many times slower than its latency profile it runs now
(`batching.SlowdownMeter`); absent while it has run too few batches to tell. The router's fast
loop corrects the backend's planned capacity with it."""
REPLICA_HEADER = "x-accordion-replica"
"""Response header of the worker: which replica answered (host:port), so that a router that
reaches several replicas through one Service address tells their reports apart."""
BINARY_HEADER = "Inference-Header-Content-Length"
"""KServe v2 binary tensor extension: length of the JSON header before the raw tensor bytes."""
MODEL_LOAD_FAILED_EXIT = 65
"""Exit status of `accordion-worker serve` when its model cannot be loaded (sysexits'
EX_DATAERR); the operator reads it from the pod and reports ModelLoadFailed."""

PolicyName = Literal["slo", "none", "triton", "clipper"]
BatchingMode = Literal["request", "cellular", "node"]


def _positive_profile(value: dict[int, float]) -> dict[int, float]:
    for batch, latency_ms in value.items():
        if batch < 1 or latency_ms <= 0:
            raise ValueError("profile batch sizes must be >= 1 and latencies > 0 ms")
    return value


ProfileMs = Annotated[dict[int, float], AfterValidator(_positive_profile)]
"""Latency (ms) per batch size, as a profile gives it: batch sizes >= 1, latencies > 0."""


def interpolate_profile(profile: Mapping[int, float], size: int) -> float:
    """A latency profile's value at batch `size` (any unit): linear between profiled sizes, the
    last slope (never negative) beyond them, the smallest size's value below it; a profile of
    one size scales in proportion above it. The worker's batcher, the router's fast loop and
    the simulator all read profiles through this one function."""
    points = sorted(profile.items())
    if not points:
        raise ValueError("a latency profile needs at least one batch size")
    if size <= points[0][0] or len(points) == 1:
        b0, l0 = points[0]
        return l0 if size <= b0 else l0 * size / b0
    for (b0, l0), (b1, l1) in itertools.pairwise(points):
        if size <= b1:
            return l0 + (l1 - l0) * (size - b0) / (b1 - b0)
    (b0, l0), (b1, l1) = points[-2], points[-1]
    return l1 + max(0.0, (l1 - l0) / (b1 - b0)) * (size - b1)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BatchingConfig(_Model):
    """How a worker forms batches (Triton's names where the knob is Triton's)."""

    policy: PolicyName = "slo"
    max_batch_size: int = Field(32, ge=1, le=4096)
    max_queue_delay_ms: float = Field(
        5.0, ge=0, description="Triton: longest wait of the oldest request for a batch to fill."
    )
    preferred_batch_sizes: list[int] = Field(default_factory=list)
    margin_ms: float = Field(
        2.0, ge=0, description="SLO batcher: safety margin added to every latency prediction."
    )
    lazy: bool = Field(
        False, description="SLO batcher: wait (LazyBatching) for larger batches when it is safe."
    )
    predictor_window: int = Field(64, ge=1)
    predictor_quantile: float = Field(0.75, gt=0, le=1)
    max_queue: int = Field(
        1024, ge=1, description="Admission bound: beyond it, requests are shed with 503."
    )
    mode: BatchingMode = Field(
        "request",
        description="Granularity of batching: whole requests (`policy` forms the batches), "
        "'cellular' (per step of a recurrent or decoder cell: requests join and leave the "
        "running batch; accordion.workers.cellular) or 'node' (per stage of a feed-forward "
        "model, late requests catch up and merge; accordion.workers.lazy).",
    )
    max_inflight: int | None = Field(
        None,
        ge=1,
        description="cellular: most requests holding state at once (default: max_batch_size).",
    )
    max_state_mb: float | None = Field(
        None, gt=0, description="cellular: most state (hidden states, KV caches) held at once."
    )


class PipelineStageConfig(_Model):
    """This worker serves one stage of a pipeline: parts `first`..`last` (top-level children)
    of its model, and hands its output to the next stage (`accordion.workers.pipeline`)."""

    first: str = Field(min_length=1, description="The first part of the model this stage runs.")
    last: str = Field(min_length=1, description="The last part of the model this stage runs.")
    next_url: str | None = Field(
        None,
        pattern=r"^https?://",
        description="The next stage's v2 infer URL (http://HOST:PORT/v2/models/NAME/infer); "
        "none: the last stage, which answers the client.",
    )
    next_input_name: str = Field("input", description="The next stage's input tensor.")
    next_output_name: str = Field("output", description="The output its answer carries.")
    downstream_ms: float = Field(
        0.0,
        ge=0,
        description="The later stages' share of a request's budget (their batch latency and "
        "the hand-over): this stage batches against the deadline less it, so that it leaves "
        "them their time (the planner's stage latencies).",
    )


SWITCH_INTERVAL_MS = 0.2
"""The worker's thread switch interval (Python's default: 5 ms). The model thread releases the
interpreter lock for every torch kernel and needs it back for the Python between kernels;
while the event loop's thread runs Python (parsing a request: ~0.5 ms of CPU each at the
cellular bench's rates, 0.3 of a core at 560 req/s), the model thread waits for it, so the HTTP
thread's Python lands in the middle of the model's steps. Measured on this project's 2-core
CPU, one torch thread, 2026-12-06: a gru-seq cellular worker at 560 req/s took 1.85-1.95 ms a
step at batch ~54 (0.74 of a core busy, the rest waiting), 1.73 at 0.2 ms (0.82 of a core);
attainment at that rate 97.97% -> 99.04% (max batch 64) and 99.31% -> 99.61% (128); Triton's
batcher on the same worker at 430 req/s 93.3% -> 100%; the request-level SloBatcher on the
batching bench's model at 420 req/s 92.7% -> 97.2%, p99 at 380 req/s 267 -> 228 ms. In a
micro-benchmark (a gru-seq step at batch 54 beside a Python thread busy 30% of the time in
0.5-ms bursts): 1.17 ms alone, 1.75 at 5 ms, 1.39-1.42 at 0.1-0.2 ms, 1.23 beside a busy
process instead (no shared lock)."""


class WorkerConfig(_Model):
    """One worker process: one model variant on one device."""

    model_name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    model: str = Field(
        description="'builtin:NAME' (demo family) or a path to a TorchScript / torch.export file."
    )
    input_name: str = "input"
    input_shape: list[int] | None = Field(
        None, description="Shape of one sample (no batch dimension); builtin models know theirs."
    )
    input_datatype: Literal["FP32", "FP16", "FP64", "INT64", "INT32"] = "FP32"
    output_name: str = "output"
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:\d+)?)$")
    torch_threads: int = Field(1, ge=1)
    switch_interval_ms: float = Field(
        SWITCH_INTERVAL_MS,
        gt=0,
        le=100,
        description="The worker process's thread switch interval (`sys.setswitchinterval`): "
        "the longest the HTTP thread holds the interpreter lock while the model thread waits "
        "for it between kernels (Python's default is 5 ms).",
    )
    slo_ms: float = Field(100.0, gt=0, description="Default deadline when a request has none.")
    accuracy: float | None = Field(None, ge=0, le=1)
    profile_ms: ProfileMs = Field(
        default_factory=dict, description="Latency per batch size (ms), e.g. p99 from a profile."
    )
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    pipeline: PipelineStageConfig | None = Field(
        None, description="One stage of a pipeline (PPipe); none: the whole model."
    )
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    client_header_timeout_ms: float = Field(
        10_000.0,
        gt=0,
        description="A connection's time to send a whole request head; also how long an idle "
        "keep-alive connection stays open (slow clients are closed after it).",
    )
    client_body_timeout_ms: float = Field(
        30_000.0, gt=0, description="A request's time to send its body (408 after it)."
    )
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    grpc_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Port of the v2 gRPC endpoint (inference.GRPCInferenceService; KServe's "
        "is 8081); none: REST only.",
    )
    drain_s: float = Field(
        0.0,
        ge=0,
        le=300,
        description="On SIGTERM, serve on (closing each connection after its answer) for at "
        "most this long, until no request has come for a second "
        "(`accordion.workers.drain`); 0: stop at once.",
    )

    @property
    def slo_s(self) -> float:
        return self.slo_ms / 1000.0

    @property
    def profile_s(self) -> dict[int, float]:
        return {b: ms / 1000.0 for b, ms in self.profile_ms.items()}


class FastLoopBounds(_Model):
    """Limits of the router's fast loop (backlog-driven rerouting between plans)."""

    enabled: bool = True
    max_shift: float = Field(
        0.5,
        ge=0,
        le=1,
        description="At most this share of a backend's planned traffic is moved elsewhere.",
    )
    min_accuracy: float | None = Field(
        None, ge=0, le=1, description="Never reroute to a backend less accurate than this."
    )
    headroom: float = Field(
        1.0, gt=0, description="Shed beyond headroom x the summed planned capacity."
    )
    correct_capacity: bool = Field(
        True,
        description="Count on what each backend is seen to serve when it is less than planned "
        "(online correction of the planned capacity from the answers the router gets).",
    )
    worker_reports: bool = Field(
        True,
        description="Correct from the workers' own reports (x-accordion-slowdown) when they "
        "send them; false: only from the timing of the answers.",
    )
    drop_retries: int = Field(
        1,
        ge=0,
        le=3,
        description="A request a worker drops (its deadline cannot be met there: a 503 with "
        "x-accordion-outcome dropped) is sent again, at most this many times, to another "
        "backend, spare ones included, while the fast loop predicts one answers it in time; "
        "0: the worker's drop is the answer.",
    )


class Backend(_Model):
    """One variant backend of a service (a worker Service URL)."""

    name: str = Field(min_length=1, description="The variant name (metrics label).")
    url: str = Field(pattern=r"^https?://", description="Base URL of the worker, no path.")
    model_name: str | None = Field(None, description="Model name at the worker; default: name.")
    weight: float = Field(ge=0)
    accuracy: float = Field(ge=0, le=1)
    capacity_qps: float | None = Field(
        None, gt=0, description="Planned capacity of all replicas behind this URL."
    )
    max_batch_size: int = Field(1, ge=1)
    batch_latency_ms: float | None = Field(
        None, gt=0, description="Latency of a full batch; with capacity, bounds the backlog."
    )
    profile_ms: ProfileMs = Field(
        default_factory=dict,
        description="Optional latency per batch size (ms) of one device, the profile the plan "
        "used: the router then measures every batch it sees against it, not only full ones.",
    )
    pending: bool = Field(
        False,
        description="Not ready when the table was written (a worker group still loading): the "
        "router leaves it out of the split until it passes a health check, then sends it its "
        "weight without waiting for a new table.",
        # Written only when true: a router older than the field (a rolling upgrade) refuses a
        # table with a field it does not know, so tables without pending backends stay as
        # they were, and such a router keeps its table until the next one.
        exclude_if=lambda pending: not pending,
    )

    @property
    def served_model(self) -> str:
        return self.model_name or self.name


class RoutingTable(_Model):
    """The router's file (mounted from a ConfigMap): backends, plan weights, fast-loop bounds.

    A router also receives tables in the operator's answers to its reports (`RouterReport`):
    of two tables, the one with the higher `revision` wins, wherever it came from (file or
    answer); at equal revisions the file is taken (hand-written tables all have revision 0,
    and a file edit still takes effect)."""

    service: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    namespace: str | None = Field(
        None,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        max_length=63,
        description="The InferenceService's namespace (reports name the service namespace/name"
        "); absent in tables written before reports existed.",
    )
    slo_ms: float = Field(gt=0)
    backends: list[Backend] = Field(min_length=1)
    fast_loop: FastLoopBounds = Field(default_factory=FastLoopBounds)
    version: str = Field("", description="Identity of the table's content (the plan's digest).")
    revision: int = Field(
        0,
        ge=0,
        description="Order of tables: the operator's apply time in milliseconds since the epoch "
        "(it never goes back for a service); 0 for hand-written tables.",
    )

    @model_validator(mode="after")
    def _check(self) -> RoutingTable:
        names = [b.name for b in self.backends]
        if len(set(names)) != len(names):
            raise ValueError("backend names must be unique")
        if sum(b.weight for b in self.backends) <= 0:
            raise ValueError("at least one backend needs a positive weight")
        return self

    @property
    def slo_s(self) -> float:
        return self.slo_ms / 1000.0

    def planned_capacity_qps(self) -> float | None:
        """The planned capacity of the backends with a weight (spare ones left out; pending
        ones in: the operator plans against its plan's capacity, not the part already ready);
        None when one of them has no capacity (a hand-written table)."""
        total = 0.0
        for b in self.backends:
            if b.weight > 0:
                if b.capacity_qps is None:
                    return None
                total += b.capacity_qps
        return total

    @classmethod
    def load(cls, path: Path) -> RoutingTable:
        """Parse a routing table file (JSON, or YAML when PyYAML is installed)."""
        text = path.read_text()
        if path.suffix in {".yaml", ".yml"}:
            import yaml

            return cls.model_validate(yaml.safe_load(text))
        return cls.model_validate_json(text)


# ------------------------------------------------------------------------------- reports

REPORT_PATH = "/v1/reports"
"""Where the operator takes routers' reports (`RouterReport`, POST, JSON)."""
REPORT_URL_ENV = "ACCORDION_REPORT_URL"
"""Environment variable of the router: the operator's report URL (`--report-url`)."""
REPORT_TOKEN_FILE_ENV = "ACCORDION_REPORT_TOKEN_FILE"
"""Environment variable of the router: the file of the token it reports with
(`--report-token-file`, sent as `Authorization: Bearer`)."""
REPORT_AUDIENCE = "accordion-reports"
"""The audience of the routers' projected ServiceAccount tokens, and the one the operator asks
the TokenReview API to check: a token for it is good for reports only (the API server refuses
it), and a token for the API server is no good for reports."""


class _Wire(BaseModel):
    """A report message: unknown fields are ignored, so that routers and operators of
    neighbouring releases still understand each other (the table inside stays strict)."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class RouterReport(_Wire):
    """What a router tells the operator every report interval (`accordion.workers.reporting`):
    its arrivals and the routing table it has. The operator sums the arrival rates of a
    service's live routers into its demand and answers with a newer table if it has one."""

    service: str = Field(
        min_length=3,
        max_length=317,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?/[A-Za-z0-9_.\-]+$",
        description="namespace/name of the InferenceService.",
    )
    router: str = Field(min_length=1, max_length=253, description="The router's pod name.")
    instance: str = Field(
        min_length=1, max_length=64, description="Changes when the router process restarts."
    )
    requests_total: int = Field(
        ge=0,
        description="Requests that arrived since the router started, a batch counting its "
        "samples (accordion_router_requests_total).",
    )
    window_requests: int = Field(ge=0, description="Of those, arrivals in the last window.")
    window_s: float = Field(
        ge=0,
        le=3600,
        description="Length of that window (the router's clock): its rate is "
        "window_requests / window_s.",
    )
    table_version: str = Field("", max_length=128)
    table_revision: int = Field(0, ge=0)
    table_error: str | None = Field(
        None, max_length=1000, description="Why the last table offered to it was refused."
    )
    stopping: bool = Field(False, description="The router is shutting down: forget it now.")
    cold_start_s: float | None = Field(
        None,
        ge=0,
        le=86_400,
        description="The last cold start the router measured (`activator`): from the first "
        "request it held at zero ready replicas to the first ready one, seconds.",
    )
    arrival_dispersion: float | None = Field(
        None,
        ge=0,
        le=1e6,
        description="Index of dispersion (variance / mean) of the router's arrival counts per "
        "0.1 s over the last 60 s (`dispersion`): 1 for Poisson arrivals, more when bursty.",
    )
    dispersion_rate_qps: float | None = Field(
        None, ge=0, le=1e7, description="The arrival rate over that same window."
    )

    @property
    def rate_qps(self) -> float | None:
        """The arrival rate over the window; None for an empty window."""
        return self.window_requests / self.window_s if self.window_s > 0 else None


class ReportAnswer(_Wire):
    """The operator's answer to a report."""

    table: RoutingTable | None = Field(
        None, description="A newer routing table for the router's service, when it has one."
    )
    heartbeat_s: float = Field(
        10.0,
        ge=0,
        description="Longest the router may go without reporting while its rate is steady; "
        "0 while the operator waits for it (a routing change in progress).",
    )
    routers: int = Field(
        1, ge=1, description="Live routers of the service: each sees about 1/routers of it."
    )
