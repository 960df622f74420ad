"""Fixtures: kmock's Kubernetes emulator over HTTP, and the real operator as a `kopf run` process.

The emulator runs in its own thread with its own event loop (so tests can be synchronous and
the operator process can be shared by a module's tests); tests act like a user and like a
kubelet through the official `kubernetes` client against it. `Emulator` adds what kopf relies
on and kmock 0.8 lacks (see ../shared/notes/kopf-on-kmock.md): uid, resourceVersion,
creationTimestamp and generation stamping; 422 on a failed JSON-patch test; lists that carry
the current resourceVersion and watches that start from it; injected API faults; and the
TokenReview API for the ServiceAccount tokens it issues (`Emulator.issue_token`).

What the emulator does not do (tested another way, see test_operator.py): schema validation and
defaulting (manifests are validated with kubernetes-validate, specs against the CRD schema in
test_crds.py), server-side apply, owner-reference garbage collection (the operator deletes what
it owns explicitly, and the manifests carry ownerReferences), label selectors (the operator
filters by label itself), status-subresource isolation.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aiohttp.web
import jsonpatch
import kmock
import pytest
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from accordion.workers.config import REPORT_AUDIENCE

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
TOKEN_REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"


class Emulator(kmock.KubernetesEmulator):
    """kmock's emulator with the API-server behaviour kopf and the operator depend on."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.rv = itertools.count(1)
        self.last_rv = 0
        self.faults: list[tuple[str, str, int]] = []
        self.faults_served: list[tuple[str, str, int]] = []
        self.fault_lock = threading.Lock()
        self.log: list[tuple[str, str]] = []
        self.timed_log: list[tuple[float, str, str]] = []
        self.tokens: dict[str, dict[str, Any]] = {}
        """The ServiceAccount tokens this API server issued (`issue_token`): token ->
        `status` of a TokenReview that names one of its audiences."""

    def issue_token(self, namespace: str, account: str = "default", pod: str | None = None) -> str:
        """A token for `system:serviceaccount:<namespace>:<account>` (bound to `pod`), for
        the reports' audience, as the kubelet would project it."""
        token = uuid.uuid4().hex
        user: dict[str, Any] = {"username": f"system:serviceaccount:{namespace}:{account}"}
        if pod is not None:
            user["extra"] = {"authentication.kubernetes.io/pod-name": [pod]}
        self.tokens[token] = {"authenticated": True, "user": user, "audiences": [REPORT_AUDIENCE]}
        return token

    def _review(self, body: Any) -> Any:
        """A TokenReview's answer: the issued token's user if an audience asked for is its."""
        body = body if isinstance(body, dict) else {}
        spec = body.get("spec") or {}
        status = self.tokens.get(str(spec.get("token")))
        if status is None or not set(spec.get("audiences") or []) & set(status["audiences"]):
            status = {"authenticated": False, "error": "invalid bearer token"}
        return aiohttp.web.json_response({**body, "status": status}, status=201)

    def _next_rv(self) -> str:
        self.last_rv = next(self.rv)
        return str(self.last_rv)

    def inject(self, method: str, plural: str, status: int, times: int = 1) -> None:
        """Answer the next `times` requests of `method` on `plural` with `status`."""
        with self.fault_lock:
            self.faults.extend([(method.upper(), plural, status)] * times)

    def _fault(self, request: kmock.Request) -> int | None:
        resource = request.resource
        plural = getattr(resource, "plural", None) if resource is not None else None
        with self.fault_lock:
            for i, (method, want, status) in enumerate(self.faults):
                if method == str(request.method).upper().split(".")[-1] and want == plural:
                    self.faults_served.append(self.faults.pop(i))
                    return status
        return None

    async def _handle(self, request: kmock.Request) -> Any:
        return await self._handle_and_forget(request)

    async def _handle_tracked(self, request: kmock.Request) -> Any:
        method = str(request.method).split(".")[-1].upper()
        path = str(request.url.path)
        if method == "POST" and isinstance(request.data, dict):
            path += "/" + str(request.data.get("metadata", {}).get("name"))  # what was created
        self.log.append((method, path))
        self.timed_log.append((time.monotonic(), method, path))
        status = self._fault(request) if request.resource is not None else None
        if status is not None:
            err = kmock.KubernetesError(status=status, reason="Injected", message=f"{status}")
            return await self._render_error(err)
        if method == "POST" and str(request.url.path) == TOKEN_REVIEWS:
            return self._review(request.data)  # answered, not stored (as the API server)
        if request.resource is not None and isinstance(request.data, dict | list):
            if request.action == kmock.action.CREATE and isinstance(request.data, dict):
                meta = request.data.setdefault("metadata", {})
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("creationTimestamp", datetime.now(UTC).isoformat())
                meta.setdefault("generation", 1)
                if request.namespace and not meta.get("namespace"):
                    meta["namespace"] = request.namespace
                meta["resourceVersion"] = self._next_rv()
            elif request.action == kmock.action.UPDATE:
                if isinstance(request.data, dict):
                    meta = request.data.setdefault("metadata", {})
                    meta["resourceVersion"] = self._next_rv()
                    if "spec" in request.data and not str(request.url.path).endswith("/status"):
                        key: Any = (request.resource, request.namespace, request.name)
                        with contextlib.suppress(Exception):
                            old = self.objects[key].raw.get("metadata", {}).get("generation", 1)
                            meta["generation"] = int(old) + 1
                else:
                    request.data.append(
                        {
                            "op": "add",
                            "path": "/metadata/resourceVersion",
                            "value": self._next_rv(),
                        }
                    )
        try:
            return await super()._handle(request)
        except (jsonpatch.JsonPatchTestFailed, jsonpatch.JsonPatchConflict) as exc:
            err = kmock.KubernetesError(status=422, reason="Invalid", message=str(exc))
            return await self._render_error(err)

    # kmock 0.8 is quadratic in the number of requests and linear in the number of objects per
    # request: every request is matched against its reactions by scanning the whole request
    # history (`request in source` iterates it), and fetch/create/patch/delete find their object
    # by scanning every stored object. At a thousand services (~7,000 objects, tens of thousands
    # of requests) that made the emulator, not the operator, the bottleneck. The two overrides
    # below keep only the requests in flight in the history (this emulator's own `log` and
    # `timed_log` are what the tests read) and look an object up by its key.

    async def _handle_and_forget(self, request: kmock.Request) -> Any:
        try:
            return await self._handle_tracked(request)
        finally:
            history: list[Any] = self._requests
            for i in range(len(history) - 1, -1, -1):
                if history[i] is request:
                    del history[i]
                    break

    def _KubernetesEmulator__get_obj(self, request: kmock.Request, strict: bool) -> Any:  # noqa: N802
        if strict and request.name is not None and request.resource is not None:
            key: Any = (request.resource, request.namespace, request.name)
            if key in self.objects:
                return self.objects[key]
        return kmock.KubernetesEmulator._KubernetesEmulator__get_obj(  # type: ignore[attr-defined]
            self, request, strict
        )

    async def _serve_list(self, request: kmock.Request) -> Any:
        result: Any = await super()._serve_list(request)
        result["metadata"] = {"resourceVersion": str(self.last_rv)}
        return result

    async def _serve_watch(self, request: kmock.Request) -> Any:
        since = int(request.params.get("resourceVersion") or 0)
        async for event in super()._serve_watch(request):
            if isinstance(event, dict):
                raw = event.get("object", {}).get("metadata", {}).get("resourceVersion")
                with contextlib.suppress(TypeError, ValueError):
                    if int(raw) <= since and event.get("type") == "ADDED":
                        continue
            yield event


CRUD = {"create", "delete", "get", "list", "patch", "update", "watch"}


class EmulatorThread:
    """The emulator served over HTTP on 127.0.0.1 from a thread with its own event loop."""

    def __init__(self) -> None:
        self.url = ""
        self.emulator: Emulator | None = None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="kmock", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with Emulator() as emu, kmock.Server(emu) as srv:
            emu.resources.load_bundled()
            for plural, kind, namespaced in (
                ("inferenceservices", "InferenceService", True),
                ("devicepools", "DevicePool", False),
            ):
                emu.resources[f"accordion.dev/v1alpha1/{plural}"] = kmock.ResourceInfo(
                    kind=kind,
                    singular=kind.lower(),
                    namespaced=namespaced,
                    verbs=CRUD,
                    subresources={"status"},
                )
            for plural, kind, namespaced in (
                ("kopfpeerings", "KopfPeering", True),
                ("clusterkopfpeerings", "ClusterKopfPeering", False),
            ):
                emu.resources[f"kopf.dev/v1/{plural}"] = kmock.ResourceInfo(
                    kind=kind, singular=kind.lower(), namespaced=namespaced, verbs=CRUD
                )
            self.emulator = emu
            self.url = str(srv.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the emulator did not start")

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def call(self, fn: Callable[[Emulator], T]) -> T:
        """Run `fn(emulator)` on the emulator's loop (thread-safe access to its objects)."""
        assert self.emulator is not None
        emu = self.emulator

        async def run() -> T:
            return fn(emu)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)


def wait_for(
    what: str, fn: Callable[[], T | None], timeout_s: float = 30.0, interval_s: float = 0.05
) -> T:
    """Poll `fn` until it returns something truthy; fail with `what` after the deadline."""
    deadline = time.monotonic() + timeout_s
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = fn()
            if value:
                return value
        except Exception as exc:
            last_exc = exc
        time.sleep(interval_s)  # polling a condition with a deadline, not a fixed wait
    raise AssertionError(f"timed out waiting for {what}" + (f": {last_exc}" if last_exc else ""))


class Operator:
    """The real operator, `kopf run`, as a subprocess."""

    def __init__(self, kubeconfig: Path, log_path: Path, env: dict[str, str]) -> None:
        self.kubeconfig, self.log_path, self.env = kubeconfig, log_path, env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str) -> None:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PYTHONUNBUFFERED": "1",
            "ACCORDION_DEBOUNCE_S": "0.05",
            "ACCORDION_DRAIN_S": "0",
            # No router runs here: the drain need not wait for a kubelet to sync a table file.
            "ACCORDION_ROUTING_FILE_SYNC_S": "0",
            "ACCORDION_RESYNC_INTERVAL_S": "2",
            # The emulator has no Nodes: pools are taken at their declared size, unless a
            # test seeds Nodes and turns this on.
            "ACCORDION_WATCH_NODES": "0",
            **self.env,
        }
        args = extra or ("--standalone",)
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kopf",
                "run",
                "-A",
                *args,
                "-m",
                "accordion.operator.handlers",
            ],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @contextlib.contextmanager
    def configured(self, **env: str) -> Iterator[None]:
        """The operator restarted with these `ACCORDION_*` overrides, and again without them
        afterwards (the module's other tests share the process)."""
        self.stop()
        self.env.update(env)
        try:
            self.start()
            yield
        finally:
            self.stop()
            for name in env:
                del self.env[name]
            self.start()


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorThread]:
    thread = EmulatorThread()
    thread.start()
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def kubeconfig(emulator: EmulatorThread, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("kube") / "config"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "kmock", "cluster": {"server": emulator.url}}],
                "users": [{"name": "test", "user": {"token": "test"}}],
                "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "test"}}],
                "current-context": "kmock",
            }
        )
    )
    return path


@pytest.fixture(scope="module")
def api(kubeconfig: Path) -> k8s.ApiClient:
    loader: Any = k8s_config
    configuration = k8s.Configuration()
    loader.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    return k8s.ApiClient(configuration)


GROUP, VERSION = "accordion.dev", "v1alpha1"


def isvc(name: str, ns: str, pool: str, qps: float, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferenceService",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "slo": {"latencyMs": 100},
            "demand": {"source": "Static", "qps": qps, "headroom": 0.0},
            "variants": [
                {
                    "name": "big",
                    "accuracy": 80,
                    "model": {"storageUri": "/models/big.pt"},
                    "profiles": [{"pool": pool, "batches": [{"batchSize": 1, "p50Ms": 20}]}],
                },
                {
                    "name": "small",
                    "accuracy": 70,
                    "model": {"storageUri": "/models/small.pt"},
                    "profiles": [{"pool": pool, "batches": [{"batchSize": 1, "p50Ms": 5}]}],
                },
            ],
            **spec,
        },
    }


def device_pool(name: str, devices: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "DevicePool",
        "metadata": {"name": name},
        "spec": {"devices": devices, "resources": {"limits": {"nvidia.com/gpu": 1}}},
    }


class Cluster:
    """The user's and the kubelet's view of the emulator, through the kubernetes client."""

    def __init__(self, api: k8s.ApiClient, emulator: EmulatorThread) -> None:
        self.emulator = emulator
        self.custom: Any = k8s.CustomObjectsApi(api)
        self.apps: Any = k8s.AppsV1Api(api)
        self.core: Any = k8s.CoreV1Api(api)

    @staticmethod
    def _json(resp: Any) -> Any:
        return json.loads(resp.data)

    def token(self, namespace: str, account: str = "default", pod: str | None = None) -> str:
        """A ServiceAccount token the emulator's TokenReview vouches for (`issue_token`)."""
        return self.emulator.call(lambda emu: emu.issue_token(namespace, account, pod))

    def create_pool(self, name: str, devices: int) -> None:
        self.custom.create_cluster_custom_object(
            GROUP, VERSION, "devicepools", device_pool(name, devices)
        )

    def patch_pool(self, name: str, devices: int) -> None:
        self.custom.patch_cluster_custom_object(
            GROUP, VERSION, "devicepools", name, {"spec": {"devices": devices}}
        )

    def create(self, body: dict[str, Any]) -> None:
        ns = body["metadata"]["namespace"]
        self.custom.create_namespaced_custom_object(GROUP, VERSION, ns, "inferenceservices", body)

    def patch(self, ns: str, name: str, body: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, ns, "inferenceservices", name, body
        )

    def delete(self, ns: str, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, ns, "inferenceservices", name)

    def get(self, ns: str, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, ns, "inferenceservices", name
        )
        return obj

    def status(self, ns: str, name: str) -> dict[str, Any]:
        return dict(self.get(ns, name).get("status") or {})

    def conditions(self, ns: str, name: str) -> dict[str, dict[str, Any]]:
        return {c["type"]: c for c in self.status(ns, name).get("conditions") or []}

    def _in(self, items: list[dict[str, Any]], ns: str) -> list[dict[str, Any]]:
        return [i for i in items if i["metadata"].get("namespace") == ns]

    def deployments(self, ns: str) -> list[dict[str, Any]]:
        items = self._json(self.apps.list_namespaced_deployment(ns, _preload_content=False))
        return self._in(items["items"], ns)

    def workers(self, ns: str) -> dict[str, dict[str, Any]]:
        """Worker Deployments by variant."""
        return {
            d["metadata"]["labels"]["accordion.dev/variant"]: d
            for d in self.deployments(ns)
            if d["metadata"]["labels"].get("app.kubernetes.io/component") == "worker"
        }

    def services(self, ns: str) -> list[dict[str, Any]]:
        items = self._json(self.core.list_namespaced_service(ns, _preload_content=False))
        return self._in(items["items"], ns)

    def configmaps(self, ns: str) -> list[dict[str, Any]]:
        items = self._json(self.core.list_namespaced_config_map(ns, _preload_content=False))
        return self._in(items["items"], ns)

    def events(self, ns: str) -> list[dict[str, Any]]:
        items = self._json(self.core.list_namespaced_event(ns, _preload_content=False))
        return self._in(items["items"], ns)

    def routing(self, ns: str, name: str) -> dict[str, Any] | None:
        for cm in self.configmaps(ns):
            if cm["metadata"]["name"] == f"{name}-routing":
                raw = (cm.get("data") or {}).get("routing.json")
                return json.loads(raw) if raw else None
        return None

    def weights(self, ns: str, name: str) -> dict[str, float]:
        """The router's split as the table starts it: pending backends (not ready when it was
        written) are out until their health check passes."""
        table = self.routing(ns, name) or {"backends": []}
        split = {
            b["name"].split("@")[0]: b["weight"] for b in table["backends"] if not b.get("pending")
        }
        total = sum(split.values())
        return {k: round(w / total, 4) for k, w in split.items()} if total > 0 else split

    def pending(self, ns: str, name: str) -> set[str]:
        """The variants the table names as pending (their groups still loading)."""
        table = self.routing(ns, name) or {"backends": []}
        return {b["name"].split("@")[0] for b in table["backends"] if b.get("pending")}

    def mark_ready(self, ns: str, variant: str | None = None) -> None:
        """Act as the kubelet: every replica of the worker Deployments is ready."""
        for v, d in self.workers(ns).items():
            if variant is not None and v != variant:
                continue
            n = d["spec"]["replicas"]
            self.apps.patch_namespaced_deployment_status(
                d["metadata"]["name"],
                ns,
                {"status": {"replicas": n, "readyReplicas": n, "availableReplicas": n}},
            )

    def versions(self, ns: str) -> dict[str, str]:
        """resourceVersion of every object in the namespace (to detect churn)."""
        out = {}
        for kind, items in (
            ("Deployment", self.deployments(ns)),
            ("Service", self.services(ns)),
            ("ConfigMap", self.configmaps(ns)),
        ):
            for o in items:
                out[f"{kind}/{o['metadata']['name']}"] = o["metadata"]["resourceVersion"]
        isvcs = self.custom.list_namespaced_custom_object(GROUP, VERSION, ns, "inferenceservices")
        for o in isvcs["items"]:
            if o["metadata"].get("namespace") == ns:
                out[f"InferenceService/{o['metadata']['name']}"] = o["metadata"]["resourceVersion"]
        return out


def request_log(cluster: Cluster) -> list[tuple[str, str]]:
    """(method, path) of every request the emulator served, in order."""
    return cluster.emulator.call(lambda emu: list(emu.log))


@pytest.fixture(scope="module")
def operator(
    emulator: EmulatorThread, kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator]:
    op = Operator(kubeconfig, tmp_path_factory.mktemp("operator") / "operator.log", {})
    op.start()
    yield op
    op.stop()


@pytest.fixture
def cluster(api: k8s.ApiClient, emulator: EmulatorThread, operator: Operator) -> Iterator[Cluster]:
    c = Cluster(api, emulator)
    yield c
    if operator.proc is None or operator.proc.poll() is not None:
        print(operator.log()[-5000:])
