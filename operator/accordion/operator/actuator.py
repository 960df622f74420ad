"""The Kubernetes actuator: carries the control loop's steps out with the `kubernetes` client.

Each step becomes a few idempotent API calls (create, or JSON merge-patch when the object
exists; delete ignoring 404). Writes go through `ObjectCache`, the driver's copy of the objects
it owns, so that the next pass of the loop sees what was just written even before the watch
event arrives, and an unchanged object is never written again (zero churn). Conflicts (409) and
server errors (5xx, 429) are retried with backoff; what still fails is raised to the loop,
which then holds back the service's "break" steps.

The client is synchronous; calls run in worker threads (`asyncio.to_thread`) so that the kopf
event loop never blocks on the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar, assert_never

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from accordion.operator.api import split_key
from accordion.operator.compact import compact
from accordion.operator.config import OperatorConfig
from accordion.operator.control.loop import (
    ApplyRouting,
    EnsureWorker,
    RecordEvent,
    RemoveService,
    RemoveWorker,
    Step,
    UpdateStatus,
)
from accordion.operator.k8s import (
    ANNOTATION_APPLIED_AT,
    COMPONENT_WORKER,
    LABEL_COMPONENT,
    MANAGED_BY,
    ROUTING_FILE,
    Manifest,
    is_managed,
    router_deployment,
    router_name,
    router_pdb,
    router_service,
    routing_configmap,
    routing_configmap_name,
    worker_deployment,
    worker_name,
    worker_service,
    workers_pdb,
    workers_pdb_name,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
GROUP, VERSION, PLURAL = "accordion.dev", "v1alpha1", "inferenceservices"
MERGE = "application/merge-patch+json"

ObjKey = tuple[str, str, str]
"""(kind, namespace, name) of an object the operator owns."""


def _rv(obj: Manifest) -> int | None:
    raw = (obj.get("metadata") or {}).get("resourceVersion")
    try:
        return int(str(raw))
    except (TypeError, ValueError):
        return None


def ref(obj: Manifest) -> tuple[str, str]:
    """(namespace, name) of an object; "" for what it lacks (cluster-scoped: no namespace)."""
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


@dataclass
class ObjectCache:
    """The watched objects: InferenceServices, DevicePools, Nodes and the owned Deployments,
    Services and ConfigMaps.

    Fed by watch events and by the actuator's own writes; an event older than what is cached
    (by resourceVersion) is ignored, so a write is never undone by a late event. What is kept
    is a compact copy (`compact.compact`: interned strings, no managedFields, a Node's
    essentials), never the caller's dict; cached objects are read, not changed in place.
    """

    objects: dict[ObjKey, Manifest] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def put(self, kind: str, obj: Manifest, same_version: bool = True) -> None:
        """Keep (a compact copy of) `obj` unless what is cached is newer. With `same_version`
        False, also unless it is the same version: what a watch or a list delivers again is
        not copied again (a version of an object never changes on the server)."""
        key = (kind, *ref(obj))
        new_rv = _rv(obj)
        if not same_version and new_rv is not None:
            have = self.get(*key)
            if have is not None and _rv(have) == new_rv:
                return
        slim = compact(kind, obj)
        with self.lock:
            old = self.objects.get(key)
            old_rv = _rv(old) if old is not None else None
            if old is not None and new_rv is not None and old_rv is not None and new_rv < old_rv:
                return
            self.objects[key] = slim

    def drop(self, kind: str, namespace: str, name: str) -> None:
        with self.lock:
            self.objects.pop((kind, namespace, name), None)

    def drop_unlisted(
        self, kind: str, listed: set[tuple[str, str]], list_version: int | None
    ) -> None:
        """Drop the objects of a kind a complete listing did not contain, except those newer
        than the listing (`list_version`, its resourceVersion): the watch added them since."""
        with self.lock:
            for key, obj in list(self.objects.items()):
                if key[0] != kind or (key[1], key[2]) in listed:
                    continue
                rv = _rv(obj)
                if list_version is not None and rv is not None and rv > list_version:
                    continue
                del self.objects[key]

    def get(self, kind: str, namespace: str, name: str) -> Manifest | None:
        with self.lock:
            return self.objects.get((kind, namespace, name))

    def of_kind(self, kind: str) -> list[Manifest]:
        with self.lock:
            return [o for (k, _, _), o in self.objects.items() if k == kind]


def _differs(desired: Any, actual: Any) -> bool:
    """True when `actual` lacks something of `desired` (extra server-set fields are fine)."""
    if isinstance(desired, dict):
        if not isinstance(actual, dict):
            return True
        return any(_differs(v, actual.get(k)) for k, v in desired.items())
    if isinstance(desired, list):
        if not isinstance(actual, list) or len(desired) != len(actual):
            return True
        return any(_differs(d, a) for d, a in zip(desired, actual, strict=True))
    if isinstance(desired, int | float) and isinstance(actual, int | float):
        return bool(desired != actual)
    return bool(desired != actual)


@dataclass
class ApiStats:
    """Counts of API writes, by verb (benchmarks and tests read them)."""

    writes: dict[str, int] = field(default_factory=dict)
    retries: int = 0

    def count(self, verb: str) -> None:
        self.writes[verb] = self.writes.get(verb, 0) + 1

    def total(self) -> int:
        return sum(self.writes.values())


class KubernetesActuator:
    """Implements `accordion.operator.control.loop.Actuator` against a Kubernetes API server."""

    def __init__(
        self,
        api_client: k8s.ApiClient,
        config: OperatorConfig,
        cache: ObjectCache,
        clock: Callable[[], float],
    ) -> None:
        self.config = config
        self.cache = cache
        self.clock = clock
        # Typed loosely: the client's annotations want its models, we send plain manifests.
        self.apps: Any = k8s.AppsV1Api(api_client)
        self.core: Any = k8s.CoreV1Api(api_client)
        self.policy: Any = k8s.PolicyV1Api(api_client)
        self.custom: Any = k8s.CustomObjectsApi(api_client)
        self.stats = ApiStats()
        self._pdb_lock = asyncio.Lock()
        self._pdbs_listed = False
        self._draining: dict[tuple[str, str], float] = {}
        """Removed worker groups whose Service stays until their pods' drain ends (on this
        actuator's clock): `_remove_worker`, `sweep_worker_services`."""

    # -- plumbing ------------------------------------------------------------------------------

    async def _call(self, verb: str, fn: Callable[[], T]) -> T:
        """Run a client call in a thread; retry conflicts and server errors with backoff."""
        delay = self.config.api_retry_backoff_s
        for attempt in range(self.config.api_retries + 1):
            try:
                result = await asyncio.to_thread(fn)
                self.stats.count(verb)
                return result
            except ApiException as exc:
                retriable = exc.status in (409, 429, 500, 502, 503, 504)
                if verb == "create" and exc.status == 409:
                    raise
                if not retriable or attempt == self.config.api_retries:
                    raise
                self.stats.retries += 1
                log.info("API %s failed with %s, retrying in %.2fs", verb, exc.status, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")

    @staticmethod
    def _body(resp: Any) -> Manifest:
        data = getattr(resp, "data", resp)
        if isinstance(data, bytes | str):
            loaded = json.loads(data) if data else {}
            return loaded if isinstance(loaded, dict) else {}
        return {}

    async def _ensure(
        self,
        kind: str,
        desired: Manifest,
        create: Callable[[Manifest], Any],
        patch: Callable[[Manifest], Any],
    ) -> None:
        meta = desired["metadata"]
        have = self.cache.get(kind, meta["namespace"], meta["name"])
        if have is not None and not _differs(desired, have):
            return
        if have is None:
            try:
                resp = await self._call("create", lambda: create(desired))
                self.cache.put(kind, self._body(resp) or desired)
                return
            except ApiException as exc:
                if exc.status != 409:
                    raise
        resp = await self._call("patch", lambda: patch(desired))
        body = self._body(resp)
        self.cache.put(kind, body if body else desired)

    async def _delete(self, kind: str, namespace: str, name: str, fn: Callable[[], Any]) -> None:
        try:
            await self._call("delete", fn)
        except ApiException as exc:
            if exc.status != 404:
                raise
        self.cache.drop(kind, namespace, name)

    # -- kinds ---------------------------------------------------------------------------------

    async def _deployment(self, desired: Manifest) -> None:
        ns, name = desired["metadata"]["namespace"], desired["metadata"]["name"]
        await self._ensure(
            "Deployment",
            desired,
            lambda b: self.apps.create_namespaced_deployment(ns, b, _preload_content=False),
            lambda b: self.apps.patch_namespaced_deployment(
                name, ns, b, _content_type=MERGE, _preload_content=False
            ),
        )

    async def _service(self, desired: Manifest) -> None:
        ns, name = desired["metadata"]["namespace"], desired["metadata"]["name"]
        await self._ensure(
            "Service",
            desired,
            lambda b: self.core.create_namespaced_service(ns, b, _preload_content=False),
            lambda b: self.core.patch_namespaced_service(
                name, ns, b, _content_type=MERGE, _preload_content=False
            ),
        )

    async def _pdb(self, desired: Manifest) -> None:
        """A service's PodDisruptionBudget (its router's, its workers'): created once, never
        changed (its spec is constant). It is not watched: Accordion's budgets are listed once,
        at the first one wanted
        (`_list_pdbs`), so a restarted operator does not POST one per service; one made since
        by someone else answers 409, which means it is there."""
        ns, name = desired["metadata"]["namespace"], desired["metadata"]["name"]
        if self.cache.get("PodDisruptionBudget", ns, name) is not None:
            return
        async with self._pdb_lock:
            if not self._pdbs_listed:
                self._pdbs_listed = True
                await self._list_pdbs()
        if self.cache.get("PodDisruptionBudget", ns, name) is not None:
            return
        try:
            await self._call(
                "create",
                lambda: self.policy.create_namespaced_pod_disruption_budget(
                    ns, desired, _preload_content=False
                ),
            )
        except ApiException as exc:
            if exc.status != 409:
                raise
        self.cache.put("PodDisruptionBudget", desired)

    async def _list_pdbs(self) -> None:
        """Cache Accordion's PodDisruptionBudgets (routers' and workers') in every namespace
        (one list call, not counted as a write). Where the operator may not list them (RBAC of
        an older chart), each budget is created on its service's first routing, as before."""
        selector = f"app.kubernetes.io/managed-by={MANAGED_BY}"
        try:
            resp = await asyncio.to_thread(
                lambda: self.policy.list_pod_disruption_budget_for_all_namespaces(
                    label_selector=selector, _preload_content=False
                )
            )
        except ApiException as exc:
            log.info("cannot list PodDisruptionBudgets (%s): creating each as needed", exc.status)
            return
        for item in self._body(resp).get("items") or []:
            self.cache.put("PodDisruptionBudget", item)

    async def _configmap(self, desired: Manifest) -> None:
        ns, name = desired["metadata"]["namespace"], desired["metadata"]["name"]
        patch_body = desired
        if ROUTING_FILE not in desired["data"]:
            # A merge patch keeps keys it does not mention: remove the old table explicitly.
            patch_body = {**desired, "data": {ROUTING_FILE: None}}
        await self._ensure(
            "ConfigMap",
            desired,
            lambda b: self.core.create_namespaced_config_map(ns, b, _preload_content=False),
            lambda b: self.core.patch_namespaced_config_map(
                name, ns, patch_body, _content_type=MERGE, _preload_content=False
            ),
        )

    # -- steps ---------------------------------------------------------------------------------

    async def apply(self, step: Step) -> None:
        match step:
            case EnsureWorker():
                uid = self._uid(step.spec.key.service)
                self._draining.pop((step.spec.key.namespace, worker_name(step.spec.key)), None)
                await self._deployment(worker_deployment(step.spec, uid, self.config))
                await self._service(worker_service(step.spec.key, uid, self.config))
            case RemoveWorker():
                await self._remove_worker(step.key.namespace, worker_name(step.key))
            case ApplyRouting():
                await self._apply_routing(step)
            case RemoveService():
                await self._remove_service(step)
            case UpdateStatus():
                await self._update_status(step)
            case RecordEvent():
                await self._record_event(step)
            case _:
                assert_never(step)

    async def _remove_service(self, step: RemoveService) -> None:
        ns, name = split_key(step.service)
        for key in step.workers:  # its router goes too: nothing routes to their Services
            await self._remove_worker(ns, worker_name(key), drain=False)
        rname, cname = router_name(name), routing_configmap_name(name)
        await self._delete(
            "Deployment",
            ns,
            rname,
            lambda: self.apps.delete_namespaced_deployment(rname, ns, _preload_content=False),
        )
        await self._delete_service(ns, name)
        await self._delete(
            "ConfigMap",
            ns,
            cname,
            lambda: self.core.delete_namespaced_config_map(cname, ns, _preload_content=False),
        )
        for budget in (rname, workers_pdb_name(name)):

            def delete(budget: str = budget) -> Any:
                return self.policy.delete_namespaced_pod_disruption_budget(
                    budget, ns, _preload_content=False
                )

            await self._delete("PodDisruptionBudget", ns, budget, delete)

    async def conform_routers(self, services: Iterable[str]) -> list[str]:
        """Bring each service's existing router (Deployment and Service) to what this
        operator's settings render, and return the services whose router was written.

        A router is written when its routing changes (`ApplyRouting`); after an operator
        upgrade (a new router image, arguments, resources) a service whose plan stays as it
        was would otherwise keep the old one. Objects already as rendered are not written
        (`_differs` on the cache); a service with no router yet is left to `ApplyRouting`."""
        written: list[str] = []
        for service in services:
            ns, name = split_key(service)
            uid = self._uid(service)
            if uid is None or self.cache.get("Deployment", ns, router_name(name)) is None:
                continue
            before = self.stats.total()
            await self._deployment(router_deployment(service, uid, self.config))
            await self._service(router_service(service, uid, self.config))
            if self.stats.total() != before:
                written.append(service)
        return written

    def _uid(self, service: str) -> str | None:
        ns, name = split_key(service)
        isvc = self.cache.get("InferenceService", ns, name)
        uid = ((isvc or {}).get("metadata") or {}).get("uid")
        return str(uid) if uid else None

    async def _remove_worker(self, ns: str, name: str, drain: bool = True) -> None:
        """Delete a worker group: its Deployment now, its Service once its pods have drained.

        A group can go while its routers' loaded table still names it: a device released for
        another service's new replica (`ControlLoop._make_room`) goes in the pass that writes
        the new table, and routers take it up to a reload later. Its pods drain meanwhile
        (`accordion.workers.drain`: they stay ready and serve until a second passes without a
        request, `worker_drain_s` at most), and those routers reach them only through the
        group's Service (as serving, terminating endpoints). Deleted at once, the Service
        would leave their requests to a name or an address nothing answers. So it stays for
        `worker_drain_s` (`sweep_worker_services` deletes it then), unless `drain` is False
        (the whole InferenceService goes, router included)."""
        await self._delete(
            "Deployment",
            ns,
            name,
            lambda: self.apps.delete_namespaced_deployment(name, ns, _preload_content=False),
        )
        if drain and self.config.worker_drain_s > 0:
            self._draining[(ns, name)] = self.clock() + self.config.worker_drain_s
            return
        self._draining.pop((ns, name), None)
        await self._delete_service(ns, name)

    async def _delete_service(self, ns: str, name: str) -> None:
        await self._delete(
            "Service",
            ns,
            name,
            lambda: self.core.delete_namespaced_service(name, ns, _preload_content=False),
        )

    async def sweep_worker_services(self) -> list[str]:
        """Delete the worker Services whose Deployment is gone and whose drain is over (or
        was never seen: one left by a predecessor that stopped meanwhile); return them as
        namespace/name. Run once per pass, after the loop's steps."""
        now = self.clock()
        deleted: list[str] = []
        for svc in self.cache.of_kind("Service"):
            labels = (svc.get("metadata") or {}).get("labels") or {}
            if labels.get(LABEL_COMPONENT) != COMPONENT_WORKER or not is_managed(svc):
                continue
            ns, name = ref(svc)
            if self._draining.get((ns, name), now) > now:
                continue
            if self.cache.get("Deployment", ns, name) is not None:  # a group's, same name
                continue
            self._draining.pop((ns, name), None)
            await self._delete_service(ns, name)
            deleted.append(f"{ns}/{name}")
        return deleted

    def sweep_due_in_s(self) -> float | None:
        """Seconds until the next drain ends (`sweep_worker_services` has work then)."""
        if not self._draining:
            return None
        return max(0.0, min(self._draining.values()) - self.clock())

    async def _apply_routing(self, step: ApplyRouting) -> None:
        uid = step.uid or self._uid(step.service)
        await self._deployment(router_deployment(step.service, uid, self.config))
        await self._pdb(router_pdb(step.service, uid))
        await self._pdb(workers_pdb(step.service, uid))
        await self._service(router_service(step.service, uid, self.config))
        # The apply time is the table's revision (routers take the higher one): it never goes
        # back for a service, even on an operator whose clock is behind its predecessor's.
        applied_at = self.clock()
        ns, name = split_key(step.service)
        have = self.cache.get("ConfigMap", ns, routing_configmap_name(name))
        before = ((have or {}).get("metadata") or {}).get("annotations") or {}
        with contextlib.suppress(KeyError, TypeError, ValueError):
            applied_at = max(applied_at, float(before[ANNOTATION_APPLIED_AT]) + 0.001)
        await self._configmap(routing_configmap(step.routing, uid, self.config, applied_at))

    async def _update_status(self, step: UpdateStatus) -> None:
        ns, name = split_key(step.service)
        status = step.status.model_dump(mode="json", by_alias=True, exclude_none=True)
        body = {"status": status}
        resp = await self._call(
            "patch-status",
            lambda: self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, ns, PLURAL, name, body, _preload_content=False
            ),
        )
        returned = self._body(resp)
        have = self.cache.get("InferenceService", ns, name)
        if returned.get("metadata"):
            self.cache.put("InferenceService", returned)
        elif have is not None:
            self.cache.put("InferenceService", {**have, "status": status})

    async def patch_pool_status(self, name: str, status: Manifest) -> None:
        """Write a DevicePool's status (the driver's, from `pools.PoolCapacity.status`)."""
        body = {"status": status}
        resp = await self._call(
            "patch-status",
            lambda: self.custom.patch_cluster_custom_object_status(
                GROUP, VERSION, "devicepools", name, body, _preload_content=False
            ),
        )
        returned = self._body(resp)
        have = self.cache.get("DevicePool", "", name)
        if returned.get("metadata"):
            self.cache.put("DevicePool", returned)
        elif have is not None:
            self.cache.put("DevicePool", {**have, "status": status})

    async def _record_event(self, step: RecordEvent) -> None:
        ns, name = split_key(step.service)
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{name}.{uuid.uuid4().hex[:12]}", "namespace": ns},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "InferenceService",
                "name": name,
                "namespace": ns,
                "uid": self._uid(step.service) or "",
            },
            "type": step.type,
            "reason": step.reason,
            "message": step.message[:1024],
            "source": {"component": "accordion-operator"},
            "reportingComponent": "accordion.dev/operator",
            "reportingInstance": "accordion-operator",
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self._call(
                "event",
                lambda: self.core.create_namespaced_event(ns, body, _preload_content=False),
            )
        except ApiException as exc:  # events are best effort
            log.warning("could not record event %s for %s: %s", step.reason, step.service, exc)
