"""Kubernetes objects of the data plane: pure builders, and the way back from objects to a World.

The builders turn the control loop's abstract desired state (`WorkerSpec`, `Routing`) into
plain manifests (dicts, as the API server takes them): per worker group a Deployment and a
Service; per InferenceService a router Deployment, a PodDisruptionBudget for it, a Service named
after the InferenceService (the user's endpoint, `service_url`) and the routing-table ConfigMap.
A worker pod gets its model as `accordion.workers.storage` says: an init container that
downloads `s3://` and `http(s)://` models into an emptyDir (KServe's storage initializer, with
the storage Secret's variables), a read-only mount for `pvc://`, nothing for paths in the image.
Pods survive production: a startup probe sized to model loading keeps the liveness probe from
killing a worker that is still loading, the router runs several replicas spread over nodes
behind a PodDisruptionBudget, and image pull secrets reach every pod.

They are pure so that tests validate every one of them against the Kubernetes schemas
(`kubernetes-validate`), and so that the actuator can compare what it would write with what is
there.

The way back (`observe_*`) reads the objects the operator owns into the loop's `World`: a
worker Deployment carries the `WorkerSpec` it was made from in an annotation, and the routing
ConfigMap carries the abstract `Routing` and when it was applied; so an operator that restarts
sees exactly what it decided before and changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from accordion.operator.api import split_key
from accordion.operator.config import OperatorConfig
from accordion.operator.control.desired import Routing, WorkerKey, WorkerSpec, routing_table
from accordion.operator.control.loop import AppliedRouting, RunningWorker
from accordion.operator.mig import pool_from_label, pool_label
from accordion.workers.config import MODEL_LOAD_FAILED_EXIT, REPORT_AUDIENCE
from accordion.workers.storage import (
    MODELS_DIR,
    PVC_DIR,
    StorageKind,
    StorageUri,
    StorageUriError,
    parse_storage_uri,
)

Manifest = dict[str, Any]

GROUP = "accordion.dev"
LABEL_SERVICE = f"{GROUP}/service"
LABEL_VARIANT = f"{GROUP}/variant"
LABEL_POOL = f"{GROUP}/pool"
LABEL_STAGE = f"{GROUP}/pipeline-stage"
ANNOTATION_PIPELINE = f"{GROUP}/pipeline"
ANNOTATION_SPEC = f"{GROUP}/worker-spec"
ANNOTATION_ROUTING = f"{GROUP}/routing"
ANNOTATION_APPLIED_AT = f"{GROUP}/applied-at"
MANAGED_BY = "accordion-operator"
ROUTING_FILE = "routing.json"
COMPONENT_WORKER = "worker"
LABEL_COMPONENT = "app.kubernetes.io/component"
COMPONENT_ROUTER = "router"
ROUTER_STARTUP_TIMEOUT_S = 60.0
"""The router loads no model: a minute covers a slow image start on a busy node."""
GRACE_S = 30
"""A terminating router's or worker's time, after its drain (`OperatorConfig.router_drain_s`,
`worker_drain_s`), to answer the requests in flight before the kubelet kills it: Kubernetes'
default grace period."""
REPORT_TOKEN_DIR = "/var/run/secrets/accordion/reports"
"""Where a router's projected ServiceAccount token for its reports is mounted (`token`)."""
REPORT_TOKEN_EXPIRATION_S = 3600
"""The token's lifetime; the kubelet replaces it at 80% of it (`reportauth`)."""


# ------------------------------------------------------------------------------------- names


def _fit(base: str, limit: int = 63) -> str:
    if len(base) <= limit:
        return base
    digest = hashlib.sha256(base.encode()).hexdigest()[:8]
    return f"{base[: limit - 9].rstrip('-')}-{digest}"


def worker_name(key: WorkerKey) -> str:
    """`<service>-<variant>-<pool>-<hash>`: unique (the hash disambiguates dashes), <= 63 chars.
    A pipeline stage's: `<service>-<variant>-s<stage>-<pool>-<hash>`, the hash over the
    pipeline's id too."""
    ident = f"{key.service}/{key.variant}/{key.pool}"
    base = f"{key.service_name}-{key.variant}-{key.pool}"
    if key.pipeline is not None:
        ident += f"/{key.pipeline}/{key.stage}"
        base = f"{key.service_name}-{key.variant}-s{(key.stage or 0) + 1}-{key.pool}"
    digest = hashlib.sha256(ident.encode()).hexdigest()[:5]
    base = base.replace("/", "-").replace(".", "-")  # a MIG slice sub-pool: `<pool>/<profile>`
    return f"{base[: 63 - 6].rstrip('-')}-{digest}"


def router_name(service_name: str) -> str:
    return _fit(f"{service_name}-router")


def routing_configmap_name(service_name: str) -> str:
    return _fit(f"{service_name}-routing")


def service_url(service: str, config: OperatorConfig) -> str:
    """The InferenceService's endpoint in the cluster (`status.url`): its router's Service.

    KServe v2 clients send `POST {url}/v2/models/{name}/infer`; the Service listens on port 80.
    """
    namespace, name = split_key(service)
    return f"http://{name}.{namespace}.svc.{config.cluster_domain}"


def worker_url(key: WorkerKey, config: OperatorConfig) -> str:
    return (
        f"http://{worker_name(key)}.{key.namespace}.svc.{config.cluster_domain}:"
        f"{config.worker_port}"
    )


# ------------------------------------------------------------------------------------ common


def owner_reference(service_name: str, uid: str) -> Manifest:
    return {
        "apiVersion": "accordion.dev/v1alpha1",
        "kind": "InferenceService",
        "name": service_name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _meta(
    name: str,
    namespace: str,
    labels: dict[str, str],
    owner: tuple[str, str] | None,
    annotations: dict[str, str] | None = None,
) -> Manifest:
    meta: Manifest = {"name": name, "namespace": namespace, "labels": labels}
    if annotations:
        meta["annotations"] = annotations
    if owner is not None and owner[1]:
        meta["ownerReferences"] = [owner_reference(*owner)]
    return meta


WORKER_APP_NAME = "accordion-worker"
"""`app.kubernetes.io/name` of every worker's objects and of a service's workers' budget."""


def worker_labels(key: WorkerKey) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": WORKER_APP_NAME,
        "app.kubernetes.io/instance": worker_name(key),
        LABEL_COMPONENT: COMPONENT_WORKER,
        "app.kubernetes.io/part-of": "accordion",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        LABEL_SERVICE: key.service_name,
        LABEL_VARIANT: key.variant,
        LABEL_POOL: pool_label(key.pool),
        # A pipeline's id does not fit a label value; its stage index does.
        **({LABEL_STAGE: str(key.stage)} if key.pipeline is not None else {}),
    }


ROUTER_APP_NAME = "accordion-router"
"""`app.kubernetes.io/name` of every router's objects."""


def router_labels(service_name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": ROUTER_APP_NAME,
        "app.kubernetes.io/instance": router_name(service_name),
        "app.kubernetes.io/component": COMPONENT_ROUTER,
        "app.kubernetes.io/part-of": "accordion",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        LABEL_SERVICE: service_name,
    }


def _selector(labels: dict[str, str]) -> dict[str, str]:
    return {k: labels[k] for k in ("app.kubernetes.io/name", "app.kubernetes.io/instance")}


POD_SECURITY_CONTEXT: Manifest = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "runAsGroup": 65532,
    "fsGroup": 65532,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY_CONTEXT: Manifest = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def _probe(path: str, port: str, period_s: int, failures: int = 3) -> Manifest:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period_s,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


STARTUP_PROBE_PERIOD_S = 5


def startup_probe(timeout_s: float) -> Manifest:
    """A startup probe that allows `timeout_s` to start (a worker loads and warms its model
    before it listens): until it succeeds, the liveness probe does not run, so a slow load is
    not killed and restarted in a loop; past `timeout_s` the container is restarted."""
    failures = max(1, math.ceil(timeout_s / STARTUP_PROBE_PERIOD_S))
    return _probe("/v2/health/live", "http", STARTUP_PROBE_PERIOD_S, failures)


def _pull_secrets(config: OperatorConfig) -> list[Manifest]:
    return [{"name": name} for name in config.image_pull_secrets]


def _quantities(values: dict[str, int | str]) -> dict[str, str]:
    return {k: str(v) for k, v in sorted(values.items())}


# ----------------------------------------------------------------------------------- workers


def worker_deployment(spec: WorkerSpec, uid: str | None, config: OperatorConfig) -> Manifest:
    """The Deployment of a worker group: one variant on one pool, `spec.replicas` pods."""
    key = spec.key
    labels = worker_labels(key)
    # A pipeline stage hands on to the next stage's Service (`desired.StageWiring`).
    next_url = None
    if spec.stage is not None and spec.stage.next is not None:
        next_url = worker_url(spec.stage.next, config)
    worker_config = spec.worker_config(
        host="0.0.0.0", port=config.worker_port, next_url=next_url
    ).model_copy(update={"grpc_port": config.worker_grpc_port, "drain_s": config.worker_drain_s})
    source = _storage(spec.model_uri)
    if source is not None and source.kind in (StorageKind.S3, StorageKind.HTTP, StorageKind.PVC):
        worker_config = worker_config.model_copy(update={"model": source.local_path()})
    placement = spec.placement
    resources: Manifest = {}
    if placement.resources.requests:
        resources["requests"] = _quantities(placement.resources.requests)
    if placement.resources.limits:
        resources["limits"] = _quantities(placement.resources.limits)
    container: Manifest = {
        "name": "worker",
        "image": config.worker_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": list(config.worker_command),
        "args": list(config.worker_args),
        "env": [{"name": config.worker_config_env, "value": worker_config.model_dump_json()}],
        "ports": _ports(config.worker_port, config.worker_grpc_port),
        "startupProbe": startup_probe(config.worker_startup_timeout_s),
        "readinessProbe": _probe("/v2/health/ready", "http", 2),
        "livenessProbe": _probe("/v2/health/live", "http", 10),
        "resources": resources,
        "securityContext": CONTAINER_SECURITY_CONTEXT,
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
        # The worker's last line says why it stopped (a model that cannot load): it becomes the
        # container's termination message, which `observe_worker_failure` reads back.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod_spec: Manifest = {
        "securityContext": POD_SECURITY_CONTEXT,
        "automountServiceAccountToken": False,
        # The drain, then the requests in flight (each within its SLO's budget).
        "terminationGracePeriodSeconds": math.ceil(config.worker_drain_s) + GRACE_S,
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }
    if source is not None:
        _mount_model(pod_spec, container, source, config)
    if config.image_pull_secrets:
        pod_spec["imagePullSecrets"] = _pull_secrets(config)
    if placement.node_selector:
        pod_spec["nodeSelector"] = dict(sorted(placement.node_selector.items()))
    if placement.tolerations:
        pod_spec["tolerations"] = [
            t.model_dump(by_alias=True, exclude_none=True) for t in placement.tolerations
        ]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(
            worker_name(key),
            key.namespace,
            labels,
            (key.service_name, uid or ""),
            {ANNOTATION_SPEC: spec.model_dump_json()},
        ),
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": _selector(labels)},
            # New pods come up before old ones go: a settings change never drops capacity.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {"metadata": _pod_meta(key, labels), "spec": pod_spec},
        },
    }


def _pod_meta(key: WorkerKey, labels: dict[str, str]) -> Manifest:
    """A worker pod's labels, and a pipeline stage's pipeline id (for `worker_failure_of`)."""
    meta: Manifest = {"labels": labels}
    if key.pipeline is not None:
        meta["annotations"] = {ANNOTATION_PIPELINE: key.pipeline}
    return meta


def _storage(uri: str) -> StorageUri | None:
    """The storage URI of a worker's model; None for one the API would refuse (an object
    admitted before the rule existed): the worker then reports the path it cannot load."""
    try:
        return parse_storage_uri(uri)
    except StorageUriError:
        return None


MODEL_VOLUME = "model-store"
STORAGE_INITIALIZER = "storage-initializer"


def _mount_model(
    pod_spec: Manifest, container: Manifest, source: StorageUri, config: OperatorConfig
) -> None:
    """Give a worker pod its model: download it first (s3, http), or mount its claim (pvc)."""
    if source.kind is StorageKind.PVC:
        volume = f"pvc-{hashlib.sha256(source.location.encode()).hexdigest()[:10]}"
        pod_spec["volumes"].append(
            {
                "name": volume,
                "persistentVolumeClaim": {"claimName": source.location, "readOnly": True},
            }
        )
        container["volumeMounts"].append(
            {"name": volume, "mountPath": f"{PVC_DIR}/{source.location}", "readOnly": True}
        )
        return
    if not source.downloaded:
        return
    pod_spec["volumes"].append({"name": MODEL_VOLUME, "emptyDir": {}})
    container["volumeMounts"].append(
        {"name": MODEL_VOLUME, "mountPath": MODELS_DIR, "readOnly": True}
    )
    init: Manifest = {
        "name": STORAGE_INITIALIZER,
        "image": config.worker_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": list(config.storage_initializer_command),
        "args": [source.uri, "--dest", MODELS_DIR],
        "resources": {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"memory": "1Gi"},
        },
        "securityContext": CONTAINER_SECURITY_CONTEXT,
        "volumeMounts": [
            {"name": MODEL_VOLUME, "mountPath": MODELS_DIR},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    if config.storage_secret_name:
        # The Secret's keys become the downloader's environment (AWS_ACCESS_KEY_ID, ...), as
        # KServe's storage initializer reads them; optional, so public stores need none.
        init["envFrom"] = [{"secretRef": {"name": config.storage_secret_name, "optional": True}}]
    pod_spec["initContainers"] = [init]


def worker_service(key: WorkerKey, uid: str | None, config: OperatorConfig) -> Manifest:
    labels = worker_labels(key)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(worker_name(key), key.namespace, labels, (key.service_name, uid or "")),
        "spec": {
            "type": "ClusterIP",
            "selector": _selector(labels),
            "ports": _service_ports(
                (config.worker_port, "http"),
                (config.worker_grpc_port, "grpc") if config.worker_grpc_port else None,
            ),
        },
    }


def _ports(http: int, grpc: int | None) -> list[Manifest]:
    """A container's ports: http, and grpc when set."""
    ports: list[Manifest] = [{"name": "http", "containerPort": http, "protocol": "TCP"}]
    if grpc:
        ports.append({"name": "grpc", "containerPort": grpc, "protocol": "TCP"})
    return ports


def _service_ports(*ports: tuple[int, str] | None) -> list[Manifest]:
    """A Service's ports by (port, container port name); gRPC ones say so (appProtocol)."""
    out: list[Manifest] = []
    for entry in ports:
        if entry is None:
            continue
        port, name = entry
        item: Manifest = {"name": name, "port": port, "targetPort": name, "protocol": "TCP"}
        if name == "grpc":
            item["appProtocol"] = "grpc"
        out.append(item)
    return out


# ------------------------------------------------------------------------------------ router


def router_deployment(service: str, uid: str | None, config: OperatorConfig) -> Manifest:
    """The router of one InferenceService: the single entry point that splits traffic."""
    namespace, name = split_key(service)
    labels = router_labels(name)
    args = list(config.router_args)
    if config.router_drain_s > 0:
        args += ["--drain-seconds", f"{config.router_drain_s:g}"]
    if config.router_grpc_port:
        args += ["--grpc-port", str(config.router_grpc_port)]
    if config.report_url:
        args += [
            *("--report-url", config.report_url),
            *("--report-interval", f"{config.report_interval_s:g}"),
            *("--report-heartbeat", f"{config.report_heartbeat_s:g}"),
        ]
    token = _report_token(config)
    if token is not None:
        args += ["--report-token-file", f"{REPORT_TOKEN_DIR}/token"]
    container: Manifest = {
        "name": "router",
        "image": config.router_image,
        "imagePullPolicy": config.router_image_pull_policy,
        "command": list(config.router_command),
        "args": args,
        # Its identity in reports (`accordion.workers.reporting`).
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {
                "name": "POD_NAMESPACE",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
            },
        ],
        "ports": _ports(config.router_port, config.router_grpc_port),
        "startupProbe": startup_probe(ROUTER_STARTUP_TIMEOUT_S),
        "readinessProbe": _probe("/v2/health/ready", "http", 2),
        "livenessProbe": _probe("/v2/health/live", "http", 10),
        "resources": {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"memory": "512Mi"},
        },
        "securityContext": CONTAINER_SECURITY_CONTEXT,
        "volumeMounts": [
            {"name": "routing", "mountPath": config.routing_mount_path, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
            *(
                [{"name": "report-token", "mountPath": REPORT_TOKEN_DIR, "readOnly": True}]
                if token is not None
                else []
            ),
        ],
    }
    pod_spec: Manifest = {
        "securityContext": POD_SECURITY_CONTEXT,
        "automountServiceAccountToken": False,
        # The drain, then the requests in flight (each within its SLO's budget).
        "terminationGracePeriodSeconds": math.ceil(config.router_drain_s) + GRACE_S,
        "containers": [container],
        "volumes": [
            {
                "name": "routing",
                "configMap": {"name": routing_configmap_name(name), "optional": True},
            },
            {"name": "tmp", "emptyDir": {}},
            *([token] if token is not None else []),
        ],
        # Replicas on different nodes where the cluster allows it: a node drain or failure
        # then leaves the service an entry point.
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": _selector(labels)},
            }
        ],
    }
    if config.image_pull_secrets:
        pod_spec["imagePullSecrets"] = _pull_secrets(config)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(router_name(name), namespace, labels, (name, uid or "")),
        "spec": {
            "replicas": config.router_replicas,
            "selector": {"matchLabels": _selector(labels)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


def _report_token(config: OperatorConfig) -> Manifest | None:
    """The router's token for its reports (`report_auth: TokenReview`): a projected
    ServiceAccount token for `REPORT_AUDIENCE` only, useless against the API server (the pod
    mounts no API token), rotated by the kubelet. None: routers do not authenticate."""
    if not config.report_url or config.report_auth != "TokenReview":
        return None
    source = {
        "audience": REPORT_AUDIENCE,
        "expirationSeconds": REPORT_TOKEN_EXPIRATION_S,
        "path": "token",
    }
    return {"name": "report-token", "projected": {"sources": [{"serviceAccountToken": source}]}}


def router_pdb(service: str, uid: str | None) -> Manifest:
    """The router's PodDisruptionBudget: a voluntary disruption (a node drain, an upgrade)
    evicts at most one router replica at a time, so the service keeps an entry point."""
    namespace, name = split_key(service)
    labels = router_labels(name)
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(router_name(name), namespace, labels, (name, uid or "")),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _selector(labels)}},
    }


def workers_pdb_name(service_name: str) -> str:
    return f"{service_name}-workers"


def workers_pdb(service: str, uid: str | None) -> Manifest:
    """The PodDisruptionBudget of a service's workers, over all its groups: a voluntary
    disruption (a node drain, a node upgrade) evicts at most one of the service's worker
    replicas at a time, and the next only once its replacement is ready (its model loaded),
    so a drain never takes all the replicas of a variant at once. A replica that is not ready
    may always be evicted (`unhealthyPodEvictionPolicy: AlwaysAllow`): a failing worker never
    holds up a node drain. The operator's own scale-downs and deletions are no evictions."""
    namespace, name = split_key(service)
    labels = {
        "app.kubernetes.io/name": WORKER_APP_NAME,
        "app.kubernetes.io/instance": workers_pdb_name(name),
        LABEL_COMPONENT: COMPONENT_WORKER,
        "app.kubernetes.io/part-of": "accordion",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        LABEL_SERVICE: name,
    }
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(workers_pdb_name(name), namespace, labels, (name, uid or "")),
        "spec": {
            "maxUnavailable": 1,
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
            "selector": {
                "matchLabels": {"app.kubernetes.io/name": WORKER_APP_NAME, LABEL_SERVICE: name}
            },
        },
    }


def router_service(service: str, uid: str | None, config: OperatorConfig) -> Manifest:
    """The user's endpoint: a Service named after the InferenceService, in front of the router."""
    namespace, name = split_key(service)
    labels = router_labels(name)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, namespace, labels, (name, uid or "")),
        "spec": {
            "type": "ClusterIP",
            "selector": _selector(labels),
            "ports": _service_ports(
                (80, "http"),
                (config.router_grpc_port, "grpc") if config.router_grpc_port else None,
            ),
        },
    }


def routing_configmap(
    routing: Routing, uid: str | None, config: OperatorConfig, applied_at_s: float
) -> Manifest:
    """The routing table of one service (the router's file) and the loop's view of it.

    The table names its namespace and carries its revision, the apply time in milliseconds
    (`RoutingTable.revision`): a router takes the newer of its file and the table the
    operator's answer to its report carries (`reports`)."""
    namespace, name = routing.service.split("/", 1)
    table = routing_table(routing, lambda k: worker_url(k, config))
    if table is not None:
        table = table.model_copy(
            update={"namespace": namespace, "revision": table_revision(applied_at_s)}
        )
    data = {ROUTING_FILE: table.model_dump_json(indent=1)} if table is not None else {}
    labels = router_labels(name)
    labels["app.kubernetes.io/component"] = "routing-table"
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(
            routing_configmap_name(name),
            namespace,
            labels,
            (name, uid or ""),
            {
                ANNOTATION_ROUTING: routing.model_dump_json(),
                ANNOTATION_APPLIED_AT: f"{applied_at_s:.3f}",
            },
        ),
        "data": data,
    }


def table_revision(applied_at_s: float) -> int:
    """A routing table's revision: its apply time in milliseconds since the epoch."""
    return max(0, round(applied_at_s * 1000.0))


# ------------------------------------------------------------------------- the way back


def _annotations(obj: Manifest) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("annotations") or {})


def _labels(obj: Manifest) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("labels") or {})


def is_managed(obj: Manifest) -> bool:
    return _labels(obj).get("app.kubernetes.io/managed-by") == MANAGED_BY


def observe_worker(deployment: Manifest) -> RunningWorker | None:
    """A worker Deployment back into (spec, ready replicas); None if it is not ours/unreadable."""
    labels = _labels(deployment)
    if not is_managed(deployment) or labels.get("app.kubernetes.io/component") != COMPONENT_WORKER:
        return None
    raw = _annotations(deployment).get(ANNOTATION_SPEC)
    if not raw:
        return None
    try:
        spec = WorkerSpec.model_validate_json(raw)
    except ValueError:
        return None
    # The spec's replicas are what the operator asked for; a user's `kubectl scale` shows up
    # as a different .spec.replicas and is corrected on the next pass.
    asked = (deployment.get("spec") or {}).get("replicas")
    if isinstance(asked, int) and asked != spec.replicas:
        spec = spec.with_replicas(asked)
    status = deployment.get("status") or {}
    ready = int(status.get("readyReplicas") or 0)
    return RunningWorker(spec=spec, ready_replicas=min(ready, spec.replicas))


@dataclass(frozen=True)
class WorkerFailure:
    """Why a worker pod does not run: what its status says, for a condition and an event."""

    reason: str
    """ModelLoadFailed (the worker exited MODEL_LOAD_FAILED_EXIT), ModelDownloadFailed (the
    storage initializer failed), or the kubelet's reason (CrashLoopBackOff, ErrImagePull...)."""
    message: str
    restarts: int = 0


_WAITING_FAILURES = {
    "CrashLoopBackOff",
    "ErrImagePull",
    "ImagePullBackOff",
    "CreateContainerConfigError",
    "InvalidImageName",
}


def observe_worker_failure(pod: Manifest) -> WorkerFailure | None:
    """The failure of a worker pod (its containers' states), or None while it runs or starts.

    A model that cannot be loaded is told apart from other crashes by the worker's exit status;
    its message is the worker's last log line (`terminationMessagePolicy:
    FallbackToLogsOnError`). The kubelet already backs restarts off (CrashLoopBackOff); this is
    what the InferenceService's status should say meanwhile, instead of nothing.
    """
    status = pod.get("status") or {}
    for init in status.get("initContainerStatuses") or []:
        term = (init.get("state") or {}).get("terminated") or (init.get("lastState") or {}).get(
            "terminated"
        )
        if term and term.get("exitCode"):
            return WorkerFailure(
                "ModelDownloadFailed",
                _last_line(term.get("message")) or f"{init.get('name')} exited {term['exitCode']}",
                int(init.get("restartCount") or 0),
            )
    for cs in status.get("containerStatuses") or []:
        if cs.get("name") != "worker":
            continue
        state, last = cs.get("state") or {}, cs.get("lastState") or {}
        term = state.get("terminated") or last.get("terminated")
        waiting = state.get("waiting") or {}
        restarts = int(cs.get("restartCount") or 0)
        if term and term.get("exitCode") == MODEL_LOAD_FAILED_EXIT:
            message = _last_line(term.get("message")) or "the model cannot be loaded"
            return WorkerFailure("ModelLoadFailed", message, restarts)
        if waiting.get("reason") in _WAITING_FAILURES:
            detail = _last_line((term or {}).get("message")) or waiting.get("message") or ""
            return WorkerFailure(str(waiting["reason"]), detail, restarts)
    return None


def _last_line(text: Any) -> str:
    lines = [line.strip() for line in str(text or "").splitlines() if line.strip()]
    return lines[-1][:500] if lines else ""


def observe_routing(configmap: Manifest) -> AppliedRouting | None:
    if not is_managed(configmap):
        return None
    ann = _annotations(configmap)
    raw = ann.get(ANNOTATION_ROUTING)
    if not raw:
        return None
    try:
        routing = Routing.model_validate_json(raw)
        applied_at = float(ann.get(ANNOTATION_APPLIED_AT) or 0.0)
    except ValueError:
        return None
    return AppliedRouting(routing=routing, applied_at_s=applied_at)


def routing_from_json(raw: str) -> Routing:
    return Routing.model_validate(json.loads(raw))


def worker_failure_of(pod: Manifest) -> tuple[WorkerKey, tuple[str, str]] | None:
    """The worker group of a failing worker pod and its failure (reason, message), or None."""
    failure = observe_worker_failure(pod)
    if failure is None:
        return None
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    try:
        key = WorkerKey(
            service=f"{meta.get('namespace') or 'default'}/{labels[LABEL_SERVICE]}",
            variant=labels[LABEL_VARIANT],
            pool=pool_from_label(labels[LABEL_POOL]),
            pipeline=(meta.get("annotations") or {}).get(ANNOTATION_PIPELINE),
            stage=int(labels[LABEL_STAGE]) if LABEL_STAGE in labels else None,
        )
    except (KeyError, ValueError):
        return None
    message = failure.message + (f" ({failure.restarts} restarts)" if failure.restarts else "")
    return key, (failure.reason, message)
