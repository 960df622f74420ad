"""The operator's own configuration: images, command lines, demand source, timing.

Read once at start from a YAML/JSON file named by `ACCORDION_OPERATOR_CONFIG` (the Helm chart
mounts it from a ConfigMap), with a few environment overrides for the common knobs. Everything
the operator puts into a pod that is not in the InferenceService or DevicePool is here: the
worker and router images and their command lines are settings, not code, so that a new data
plane release needs no operator release.

The worker's configuration (`accordion.workers.config.WorkerConfig`) is passed as JSON in the
environment variable named by `worker_config_env` (the default command writes it to a file for
`accordion-worker serve --config`); the router (`accordion-worker route --table`) reads the
routing table mounted from the service's ConfigMap at `routing_mount_path/routing.json`, and
with `report_url` reports its arrivals to the operator's report server (`report_port`,
`accordion.operator.reports`), whose answers carry newer tables before the kubelet syncs the
file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from accordion.operator.control.timing import DEFAULT_TIMINGS, Timings
from accordion.solver import PlannerSettings

ROUTING_FILE_SYNC_S = 90.0
"""How long the kubelet may take to put a changed ConfigMap into a pod's mounted volume: its
sync period (1 minute by default) plus the propagation of its ConfigMap cache (Kubernetes'
documentation, "Mounted ConfigMaps are updated automatically": the delay can be as long as the
two together; 60-90 s are usual). A router that does not report reads its table from there."""

DEFAULT_DEMAND_QUERY = (
    'sum(rate(accordion_router_requests_total{{namespace="{namespace}",service="{name}"}}[1m]))'
)
"""PromQL template of a service's request rate; `{namespace}` and `{name}` are substituted."""


PullPolicy = Literal["Always", "IfNotPresent", "Never"]


class OperatorConfig(BaseModel):
    """Settings of the operator process."""

    model_config = ConfigDict(extra="forbid")

    worker_image: str = "accordion-worker:0.1.0"
    worker_command: list[str] = Field(
        # `accordion-worker serve` reads its WorkerConfig from $ACCORDION_WORKER_CONFIG.
        default_factory=lambda: ["accordion-worker", "serve"]
    )
    worker_args: list[str] = Field(default_factory=list)
    worker_config_env: str = "ACCORDION_WORKER_CONFIG"
    worker_port: int = Field(8080, ge=1, le=65535)
    router_image: str = "accordion-worker:0.1.0"
    router_command: list[str] = Field(default_factory=lambda: ["accordion-worker", "route"])
    router_args: list[str] = Field(
        default_factory=lambda: [
            "--table",
            "/etc/accordion/routing/routing.json",
            "--host",
            "0.0.0.0",
            "--port",
            "8080",
        ]
    )
    router_port: int = Field(8080, ge=1, le=65535)
    worker_grpc_port: int | None = Field(
        8081, ge=1, le=65535, description="The workers' gRPC port (KServe v2); unset: none."
    )
    router_grpc_port: int | None = Field(
        8001,
        ge=1,
        le=65535,
        description="The routers' gRPC port, also on the service's endpoint; unset: none.",
    )
    router_replicas: int = Field(
        2, ge=1, description="Router replicas per service (a PodDisruptionBudget keeps one up)."
    )
    router_drain_s: float = Field(
        5.0,
        ge=0,
        le=300,
        description=(
            "How long a terminating router serves on at most, not ready and closing "
            "connections, while its Service's endpoints and its clients learn that it goes "
            "(`route --drain-seconds`, `accordion.workers.drain`); its pod's grace period is "
            "this plus 30 s for the requests in flight."
        ),
    )
    worker_drain_s: float = Field(
        5.0,
        ge=0,
        le=300,
        description=(
            "The same for a terminating worker, which stays ready (`WorkerConfig.drain_s`): a "
            "group scaled down or a pod evicted while routers still send to its Service. One "
            "that nobody routes to any more (a plan removed it) stops a second after its last "
            "request."
        ),
    )
    routing_mount_path: str = "/etc/accordion/routing"
    image_pull_policy: PullPolicy = Field(
        "IfNotPresent", description="Pull policy of the worker image (workers and downloads)."
    )
    router_image_pull_policy: PullPolicy = "IfNotPresent"
    image_pull_secrets: list[str] = Field(
        default_factory=list, description="Secrets (in each service's namespace) to pull images."
    )
    worker_startup_timeout_s: float = Field(
        600.0,
        gt=0,
        description=(
            "How long a worker may take to load and warm up its model before its liveness "
            "probe applies (the startup probe's budget); a slower start is restarted."
        ),
    )
    storage_initializer_command: list[str] = Field(
        # `accordion-worker fetch URI --dest DIR`, from the worker image.
        default_factory=lambda: ["accordion-worker", "fetch"]
    )
    storage_secret_name: str | None = Field(
        "accordion-storage",
        description=(
            "Secret, in each service's namespace, whose keys become the model downloader's "
            "environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL or "
            "S3_ENDPOINT, AWS_DEFAULT_REGION, S3_VERIFY_SSL, ...); optional in the pod."
        ),
    )
    cluster_domain: str = "cluster.local"

    prometheus_url: str | None = Field(
        None, description="Base URL of Prometheus; unset: every service uses its static demand."
    )
    demand_query: str = DEFAULT_DEMAND_QUERY
    demand_interval_s: float = Field(15.0, gt=0, description="How often Prometheus is asked.")
    demand_timeout_s: float = Field(5.0, gt=0)
    demand_rise_half_life_s: float = Field(DEFAULT_TIMINGS.rise_half_life_s, gt=0)
    demand_fall_half_life_s: float = Field(DEFAULT_TIMINGS.fall_half_life_s, gt=0)
    demand_max_concurrent_queries: int = Field(
        16, ge=1, description="Prometheus queries in flight at once, all namespaces together."
    )
    demand_max_queries_per_namespace: int = Field(
        2,
        ge=1,
        description=(
            "Prometheus queries in flight at once for the services of one namespace: a team's"
            " slow queries delay only that team's demand."
        ),
    )
    prometheus_bearer_token_file: str | None = Field(
        None,
        description=(
            "File holding a bearer token sent to Prometheus (Authorization: Bearer), read again"
            " when it changes; e.g. the ServiceAccount token for OpenShift monitoring / Thanos."
        ),
    )
    prometheus_ca_file: str | None = Field(
        None, description="CA bundle (PEM) that signs Prometheus's certificate; unset: system CAs."
    )
    prometheus_cert_file: str | None = Field(
        None, description="Client certificate (PEM) for Prometheus endpoints that require mTLS."
    )
    prometheus_key_file: str | None = Field(None, description="Key of prometheus_cert_file.")
    prometheus_insecure_skip_verify: bool = Field(
        False, description="Do not verify Prometheus's certificate (testing only)."
    )

    report_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description=(
            "Port of the operator's report server (POST /v1/reports from the routers, GET "
            "/readyz: 200 while this operator leads); 0: any free port; unset: no server."
        ),
    )
    report_url: str | None = Field(
        None,
        pattern=r"^https?://",
        description=(
            "URL every router reports to (its --report-url): the report Service in front of the "
            "leading operator, e.g. http://accordion-reports.accordion-system.svc:8082/v1/"
            "reports; unset: routers do not report (demand then comes from Prometheus)."
        ),
    )
    report_interval_s: float = Field(
        DEFAULT_TIMINGS.demand_interval_s,
        gt=0,
        description="How often routers report, and the operator folds their rates into demand.",
    )
    report_heartbeat_s: float = Field(
        10.0,
        ge=0,
        description=(
            "Longest silence of a router whose rate is steady; one silent for this plus two "
            "intervals is no longer counted (a router that stops says so at once)."
        ),
    )
    report_auth: Literal["TokenReview", "None"] = Field(
        "TokenReview",
        description=(
            "How the report server authenticates routers: TokenReview (each router sends its "
            "pod's projected ServiceAccount token for the audience accordion-reports and may "
            "report only for services of its namespace; needs tokenreviews create) or None "
            "(any caller that reaches the port; for tests, or a network you trust)."
        ),
    )
    report_confirm_timeout_s: float = Field(
        60.0,
        ge=0,
        description=(
            "How long the drain waits for every live router to confirm a new routing table "
            "before it counts from the ConfigMap write instead (the kubelet's sync bound)."
        ),
    )

    debounce_s: float = Field(
        DEFAULT_TIMINGS.debounce_s, ge=0, description="Quiet time after a change before planning."
    )
    resync_interval_s: float = Field(
        DEFAULT_TIMINGS.resync_interval_s, gt=0, description="Re-plan at least this often."
    )
    min_pass_interval_s: float = Field(
        DEFAULT_TIMINGS.min_pass_interval_s,
        ge=0,
        description="Passes that demand calls for (a service left its band) at most this often.",
    )
    drain_s: float = Field(
        DEFAULT_TIMINGS.drain_s,
        ge=0,
        description=(
            "Wait after the final routing is in place (confirmed by the routers, or the "
            "ConfigMap synced) before old workers are removed; they finish what is in flight "
            "as they stop (`accordion.workers.drain`). 0: as soon as the routers have it "
            "(`control.loop.MIN_SETTLE_S`)."
        ),
    )
    routing_file_sync_s: float = Field(
        ROUTING_FILE_SYNC_S,
        ge=0,
        description=(
            "How long a router that does not report (reports off, or none of the service's "
            "routers heard from) may take to read a new routing table from its mounted "
            "ConfigMap; the drain then counts from the ConfigMap write plus this."
        ),
    )
    hysteresis: float = Field(
        DEFAULT_TIMINGS.hysteresis,
        ge=0,
        lt=1,
        description="A plan follows a falling estimate once it is this fraction below it.",
    )
    swap_payback_s: float = Field(
        DEFAULT_TIMINGS.swap_payback_s,
        gt=0,
        description="In overload, a plan whose model swaps are made to serve more is applied "
        "only if its gain over this long makes up for what the swaps leave unserved while "
        "they start.",
    )
    api_retries: int = Field(5, ge=0, description="Retries of a conflicting or failed API call.")
    api_retry_backoff_s: float = Field(0.2, ge=0)

    planner: PlannerSettings = Field(default_factory=PlannerSettings)

    def timings(self) -> Timings:
        """The control loop's timings as configured (defaults: `DEFAULT_TIMINGS`, shared with
        local mode and the simulator)."""
        return Timings(
            rise_half_life_s=self.demand_rise_half_life_s,
            fall_half_life_s=self.demand_fall_half_life_s,
            resync_interval_s=self.resync_interval_s,
            debounce_s=self.debounce_s,
            min_pass_interval_s=self.min_pass_interval_s,
            drain_s=self.drain_s,
            hysteresis=self.hysteresis,
            swap_payback_s=self.swap_payback_s,
        )

    mig_config_namespace: str = Field(
        "gpu-operator",
        description=(
            "Namespace of the NVIDIA GPU operator, where the operator keeps the MIG manager's "
            "ConfigMap accordion-mig-parted-config (ClusterPolicy spec.migManager.config.name)."
        ),
    )
    watch_nodes: bool = Field(
        True,
        description=(
            "Watch Nodes and cap each DevicePool at the devices its ready, schedulable nodes"
            " offer; off: pools are taken at their declared size (clusters without Node access)."
        ),
    )

    peering_name: str = "accordion"
    peering_priority: int = 0

    @classmethod
    def load(cls, environ: dict[str, str] | None = None) -> OperatorConfig:
        """From `ACCORDION_OPERATOR_CONFIG` (YAML or JSON) and `ACCORDION_*` overrides."""
        env = dict(os.environ if environ is None else environ)
        data: dict[str, object] = {}
        path = env.get("ACCORDION_OPERATOR_CONFIG")
        if path:
            text = Path(path).read_text()
            loaded = yaml.safe_load(text) if not path.endswith(".json") else json.loads(text)
            data.update(loaded or {})
        overrides = {
            "ACCORDION_PROMETHEUS_URL": "prometheus_url",
            "ACCORDION_WORKER_IMAGE": "worker_image",
            "ACCORDION_ROUTER_IMAGE": "router_image",
            "ACCORDION_DEBOUNCE_S": "debounce_s",
            "ACCORDION_RESYNC_INTERVAL_S": "resync_interval_s",
            "ACCORDION_DRAIN_S": "drain_s",
            "ACCORDION_ROUTING_FILE_SYNC_S": "routing_file_sync_s",
            "ACCORDION_DEMAND_INTERVAL_S": "demand_interval_s",
            "ACCORDION_WATCH_NODES": "watch_nodes",
            "ACCORDION_REPORT_PORT": "report_port",
            "ACCORDION_REPORT_URL": "report_url",
            "ACCORDION_REPORT_AUTH": "report_auth",
        }
        for var, name in overrides.items():
            if env.get(var):
                data[name] = env[var]
        return cls.model_validate(data)
