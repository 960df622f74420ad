"""Fixtures: kmock's Kubernetes emulator over HTTP, and the real operator as a `kopf run` process.

The emulator runs in its own thread with its own event loop (so tests can be synchronous and
the operator process can be shared by a module's tests); tests act like a user and like a
kubelet through the official `kubernetes` client against it. `Emulator` adds what kopf relies
on and kmock 0.8 lacks (see ../shared/notes/kopf-on-kmock.md): uid, resourceVersion,
creationTimestamp and generation stamping; 422 on a failed JSON-patch test; lists that carry
the current resourceVersion and watches that start from it; and injected API faults.

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

import jsonpatch
import kmock
import pytest
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]


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
        self.log.append((str(request.method).split(".")[-1].upper(), str(request.url.path)))
        status = self._fault(request) if request.resource is not None else None
        if status is not None:
            err = kmock.KubernetesError(status=status, reason="Injected", message=f"{status}")
            return await self._render_error(err)
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
            "ACCORDION_DEBOUNCE_S": "0.05",
            "ACCORDION_DRAIN_S": "0",
            "ACCORDION_RESYNC_INTERVAL_S": "2",
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
