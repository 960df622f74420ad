"""The kopf driver of the control loop: watch the cluster, keep a world view, reconcile.

kopf event handlers feed an `ObjectCache` (InferenceServices, DevicePools, and the Deployments,
Services and ConfigMaps the operator owns) and wake the `Driver`. The driver waits for a quiet
moment (`debounce_s`), builds the loop's `World` from the cache, and runs one pass of the
control loop for the whole cluster (the planner is global: services share pools) with the
`KubernetesActuator`. It also re-plans every `resync_interval_s` (the driver's own wait, read
from the configuration, not at import), after a drain
delay the loop asks for, and when a demand estimate leaves its plan's band: that pass waits for
no quiet time, only for `min_pass_interval_s` since the last pass (a rise is what waiting
costs; local mode and the simulator run demand passes the same way), and not even for that when
a service at zero replicas has requests waiting (`ControlLoop.waking`: a cold start).

Demand: with `report_port` the driver serves the routers' reports (`reports`: every router
posts its arrivals about once a second; each second the driver folds each service's summed
rate into its estimate and wakes the loop when one leaves its band; the answers carry newer
routing tables, and the drain counts from the routers' confirmation of a table); Prometheus
(`prometheus_url`) measures custom `demand.query`s, and report-sourced services while none of
their routers reports.

With `watch_nodes` (the default) the driver also watches Nodes: the loop caps each DevicePool
at the devices its ready, schedulable nodes offer (`pools`), a Node wakes the loop only when
what the pools depend on changes (labels, cordon, taints, Ready, allocatable; not heartbeats), and
after each pass the driver writes each pool's status (`matchingNodes`, `allocatedDevices`,
`NodesMissing`/`Ready`) when it changed.

At scale the driver keeps its per-pass work proportional to what changed: InferenceServices
and DevicePools are parsed again only when what is parsed changes (not on every status write),
worker specs, statuses and routing tables only when their objects change, and the control loop
skips services whose inputs are those of a settled pass (see `control.loop`). After a big pass
freed memory is handed back to the system (`memory`). Memory stays proportional too: the cache
holds compact copies (`compact`), lists are read a page and an item at a time, kopf's
per-object workers go after 0.5 s idle, and at start the driver lists and plans only once
kopf's initial listing has gone quiet (`Driver.listing_done`), not on top of it.

Leader election: kopf peering (`--peering`, or `peering_name` in the configuration). A paused
(follower) operator receives no events and runs no timers; the driver, a task of its own, reads
the peering object before every pass and applies kopf's rule (`peering`), so a demoted leader
stops at its next pass. Whenever it stops or starts leading it forgets what it listed (a paused
operator's cache goes stale) and lists everything again before it acts. Without its peering
identity (`POD_ID`, set by the chart) it acts only within a few resync intervals of the last
handler call.

Only event handlers are used (no create/update/delete handlers): kopf then adds no finalizers
and keeps no progress annotations; deletion is noticed from the DELETED event, and the loop
removes what served the service (ownerReferences make the garbage collector do the same).

Run with `kopf run -A -m accordion.operator.handlers` or `python -m accordion.operator`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import kopf
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from accordion.operator import memory
from accordion.operator.actuator import KubernetesActuator, ObjectCache, ref
from accordion.operator.api import (
    DevicePool,
    InferenceService,
    InferenceServiceStatus,
    InvalidResourceError,
    parse_resource,
)
from accordion.operator.compact import ListPage
from accordion.operator.config import OperatorConfig
from accordion.operator.control.demand import DemandTracker
from accordion.operator.control.desired import row_devices
from accordion.operator.control.loop import (
    AppliedRouting,
    ControlLoop,
    DemandView,
    LoopSettings,
    ReconcileResult,
    RunningWorker,
    World,
)
from accordion.operator.k8s import (
    COMPONENT_WORKER,
    LABEL_COMPONENT,
    MANAGED_BY,
    ROUTING_FILE,
    Manifest,
    observe_routing,
    observe_worker,
    observe_worker_failure,
    routing_configmap_name,
    service_url,
    worker_failure_of,
)
from accordion.operator.leaderlabel import LeaderLabel
from accordion.operator.metrics import OperatorMetrics, serve_from_env
from accordion.operator.migactuator import apply_mig
from accordion.operator.peering import Leadership
from accordion.operator.pools import cpu_condition, pool_capacity
from accordion.operator.prometheus import PrometheusDemand
from accordion.operator.reportauth import TokenAuthenticator, token_reviewer
from accordion.operator.reports import ReportServer, RouterDemand, ServiceRouting, file_synced
from accordion.workers.config import RoutingTable

log = logging.getLogger("accordion.operator")
_T = TypeVar("_T")

GROUP, VERSION = "accordion.dev", "v1alpha1"
KIND_ISVC, KIND_POOL = "InferenceService", "DevicePool"
OWNED = {"app.kubernetes.io/managed-by": MANAGED_BY}
TOUCH_INTERVAL_S = 10.0
"""How often a kopf timer tells the driver that this operator is active (`touch`)."""
LIST_PAGE = 500
"""Objects per page when the driver lists a kind (`sync`)."""
KOPF_WORKER_IDLE_S = 0.5
"""kopf's `settings.queueing.idle_timeout` (see `startup`)."""
LISTING_QUIET_S = 0.5
LISTING_WAIT_S = 60.0
"""The driver lists and plans once kopf's initial listing is quiet this long, or after at
most `LISTING_WAIT_S` (`Driver.listing_done`)."""


API_THREADS_BESIDE_WRITES = 4
"""Threads beside the actuator's writes: the listing, the leadership read, a Prometheus query
and the decision (`ControlLoop.reconcile` plans in a thread)."""


def make_api_client(connections: int) -> k8s.ApiClient:
    """In-cluster credentials, or the kubeconfig (KUBECONFIG) outside a cluster; a connection
    pool of at least `connections` (the client's default, 5 per CPU, is 10 on 2 CPUs: below the
    actuator's concurrency, so urllib3 would open and discard connections in a write wave)."""
    loader: Any = k8s_config
    try:
        loader.load_incluster_config()
    except k8s_config.ConfigException:
        loader.load_kube_config()
    configuration = k8s.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = max(
        configuration.connection_pool_maxsize or 0, connections
    )
    return k8s.ApiClient(configuration)


def _significant(kind: str, obj: dict[str, Any]) -> Any:
    """The part of an object whose change calls for a new pass of the loop."""
    meta = obj.get("metadata") or {}
    if kind in (KIND_ISVC, KIND_POOL):
        return (obj.get("spec"), meta.get("generation"), meta.get("deletionTimestamp"))
    if kind == "Deployment":
        status = obj.get("status") or {}
        return (
            (obj.get("spec") or {}).get("replicas"),
            status.get("readyReplicas"),
            meta.get("annotations"),
            meta.get("deletionTimestamp"),
        )
    if kind == "Node":
        return node_significant(obj)
    if kind == "Pod":
        return (observe_worker_failure(obj), meta.get("deletionTimestamp"))
    return (obj.get("data"), meta.get("annotations"), meta.get("deletionTimestamp"))


def node_significant(node: dict[str, Any]) -> Any:
    """What of a Node the pools depend on (`pools.pool_capacity`): labels, cordon, taints, the
    Ready condition's status and the allocatable resources; not heartbeats or other
    conditions."""
    meta = node.get("metadata") or {}
    spec = node.get("spec") or {}
    status = node.get("status") or {}
    ready = [c.get("status") for c in status.get("conditions") or [] if c.get("type") == "Ready"]
    return (
        meta.get("labels"),
        spec.get("unschedulable"),
        spec.get("taints"),
        ready,
        status.get("allocatable"),
        meta.get("deletionTimestamp"),
    )


@dataclass
class Driver:
    """Keeps the world view, wakes on changes, and runs the control loop."""

    config: OperatorConfig
    api_client: k8s.ApiClient
    clock: Callable[[], float] = time.time
    cache: ObjectCache = field(default_factory=ObjectCache)
    concurrency: int = 16
    loop: ControlLoop = field(init=False)
    actuator: KubernetesActuator = field(init=False)
    demand: PrometheusDemand | None = field(init=False, default=None)
    reports: RouterDemand | None = field(init=False, default=None)
    synced: bool = False
    passes: int = 0
    last_result: ReconcileResult | None = None
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    leadership: Leadership | None = None  # None: standalone, or identity unknown (see run)
    standalone: bool = True
    leading: bool = False
    leader_label: LeaderLabel | None = None  # this operator's pod, when it runs in one
    _active_until: float = 0.0
    _listed_at: float = 0.0  # when kopf last delivered an object of its initial listing
    _parsed: dict[tuple[str, str], tuple[Any, Any]] = field(default_factory=dict)
    _touched: set[tuple[str, str]] = field(default_factory=set)
    _conformed: set[str] = field(default_factory=set)  # services whose router is as rendered

    def __post_init__(self) -> None:
        self.loop = ControlLoop(
            LoopSettings.from_timings(self.config.timings(), self.config.planner),
            clock=self.clock,
            url_for=lambda service: service_url(service, self.config),
        )
        self.actuator = KubernetesActuator(self.api_client, self.config, self.cache, self.clock)
        if self.config.prometheus_url:
            self.demand = PrometheusDemand.from_config(self.config, self.clock)
        if self.config.report_port is not None:
            self.reports = RouterDemand(
                self.service_routing,
                self.clock,
                interval_s=self.config.report_interval_s,
                heartbeat_s=self.config.report_heartbeat_s,
                confirm_timeout_s=self.config.report_confirm_timeout_s,
                file_sync_s=self.config.routing_file_sync_s,
                tracker=DemandTracker(
                    self.config.demand_rise_half_life_s, self.config.demand_fall_half_life_s
                ),
            )
        self._tables: dict[str, tuple[Any, ServiceRouting]] = {}
        self._wake = asyncio.Event()
        self._demand_due = False
        """A demand reading left a service's band: the next pass waits for no quiet time."""
        self._last_pass_at = -math.inf
        self._waking = False

    # -- inputs from kopf ----------------------------------------------------------------------

    def touch(self) -> None:
        """A kopf handler ran: this operator is active (not a paused follower)."""
        self._active_until = time.monotonic() + 3 * max(self.config.resync_interval_s, 1.0)

    def active(self) -> bool:
        """Whether this operator acts now, as far as known without asking the API server."""
        if self.leadership is not None:
            return self.leading
        return self.standalone or time.monotonic() < self._active_until

    async def leads(self) -> bool:
        """Whether this operator should act now. With a peering identity: kopf's rule on the
        peering object, read now. A change either way makes the next pass list everything
        again (the cache of a paused operator is stale)."""
        if self.leadership is None:
            return self.active()
        custom: Any = k8s.CustomObjectsApi(self.api_client)
        try:
            verdict = await asyncio.to_thread(self.leadership.read, custom)
        except Exception as exc:
            log.warning("cannot read the peering object, not acting: %s", exc)
            leading, reason = False, "peering object unreadable"
        else:
            leading, reason = verdict.leads, verdict.reason
        if leading != self.leading:
            log.info("%s: %s", "leading" if leading else "standing by", reason)
            self.leading = leading
            self.synced = False
        return leading

    def trigger(self) -> None:
        self.touch()
        self._wake.set()

    def observe(self, kind: str, event_type: str | None, obj: dict[str, Any]) -> None:
        """A watch event: update the cache; wake the loop if something significant changed.

        kopf delivers what its initial listing found with no event type: `sync` waits until
        those have stopped coming (`listing_done`)."""
        self.touch()
        if event_type is None:
            self._listed_at = time.monotonic()
        ns, name = ref(obj)
        old = self.cache.get(kind, ns, name)
        if event_type == "DELETED":
            self.cache.drop(kind, ns, name)
            self.trigger()
            return
        self.cache.put(kind, obj, same_version=False)
        if old is None or _significant(kind, old) != _significant(kind, obj):
            self.trigger()

    # -- the world -----------------------------------------------------------------------------

    async def sync(self) -> None:
        """List everything once, so that the first pass sees the whole cluster.

        Lists are read in pages (`LIST_PAGE` objects) and each page one item at a time
        (`compact.ListPage`), each kept as its compact copy at once: the raw list is never
        decoded whole next to the cache (the memory peak of a start at scale)."""
        custom: Any = k8s.CustomObjectsApi(self.api_client)
        apps: Any = k8s.AppsV1Api(self.api_client)
        core: Any = k8s.CoreV1Api(self.api_client)
        selector = f"app.kubernetes.io/managed-by={MANAGED_BY}"
        page: dict[str, Any] = {"limit": LIST_PAGE, "_preload_content": False}
        lists: list[tuple[str, Callable[[str | None], Any]]] = [
            (
                KIND_ISVC,
                lambda token: custom.list_cluster_custom_object(
                    GROUP, VERSION, "inferenceservices", _continue=token, **page
                ),
            ),
            (
                KIND_POOL,
                lambda token: custom.list_cluster_custom_object(
                    GROUP, VERSION, "devicepools", _continue=token, **page
                ),
            ),
            (
                "Deployment",
                lambda token: apps.list_deployment_for_all_namespaces(
                    label_selector=selector, _continue=token, **page
                ),
            ),
            (
                "Service",
                lambda token: core.list_service_for_all_namespaces(
                    label_selector=selector, _continue=token, **page
                ),
            ),
            (
                "ConfigMap",
                lambda token: core.list_config_map_for_all_namespaces(
                    label_selector=selector, _continue=token, **page
                ),
            ),
            (
                "Pod",
                lambda token: core.list_pod_for_all_namespaces(
                    label_selector=f"{selector},{LABEL_COMPONENT}={COMPONENT_WORKER}",
                    _continue=token,
                    **page,
                ),
            ),
        ]
        if self.config.watch_nodes:
            lists.append(("Node", lambda token: core.list_node(_continue=token, **page)))
        for kind, fn in lists:
            listed: set[tuple[str, str]] = set()
            token: str | None = None
            while True:
                reader = ListPage(await asyncio.to_thread(fn, token))
                for item in reader.items():
                    listed.add(ref(item))
                    if (
                        kind in (KIND_ISVC, KIND_POOL, "Node")
                        or ((item.get("metadata") or {}).get("labels") or {}).get(
                            "app.kubernetes.io/managed-by"
                        )
                        == MANAGED_BY
                    ):
                        item.setdefault("kind", kind)
                        self.cache.put(kind, item, same_version=False)
                token = reader.continue_token
                if token is None:
                    break
            # Gone while this operator was not watching (not what the watch added since).
            self.cache.drop_unlisted(kind, listed, reader.resource_version)
        self.synced = True

    def _parse(self, kind: str, obj: dict[str, Any]) -> Any:
        meta = obj.get("metadata") or {}
        ident = (kind, f"{meta.get('namespace') or ''}/{meta.get('name')}")
        wanted = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": kind,
            "metadata": {
                k: meta[k]
                for k in ("name", "namespace", "labels", "annotations", "uid", "generation")
                if k in meta and meta[k] is not None
            },
            "spec": obj.get("spec"),
        }
        # Keyed on what is parsed, not on resourceVersion: a status write leaves the parsed
        # object (and so the loop's per-service memo, which compares it) as it was.

        def parse() -> Any:
            try:
                return parse_resource(wanted, f"{kind} {ident[1]}")
            except InvalidResourceError as exc:
                return exc

        return self._memo(ident, wanted, parse)

    def _memo(self, ident: tuple[str, str], version: Any, compute: Callable[[], _T]) -> _T:
        """`compute()`, re-used while `version` (not None) equals the one it was computed for."""
        self._touched.add(ident)
        hit = self._parsed.get(ident)
        if hit is not None and version is not None and hit[0] == version:
            cached: _T = hit[1]
            return cached
        value = compute()
        self._parsed[ident] = (version, value)
        return value

    def _worker(self, obj: dict[str, Any]) -> RunningWorker | None:
        """`observe_worker`, cached per resourceVersion (the spec annotation is JSON)."""
        meta = obj.get("metadata") or {}
        ident = ("Deployment", f"{meta.get('namespace')}/{meta.get('name')}")
        return self._memo(ident, meta.get("resourceVersion"), lambda: observe_worker(obj))

    def _status(self, key: str, raw: Any) -> InferenceServiceStatus | None:
        """A service's status, parsed again only when it changed."""
        if not raw:
            return None

        def parse() -> InferenceServiceStatus | None:
            try:
                return InferenceServiceStatus.model_validate(raw)
            except ValueError:
                return None

        return self._memo(("status", key), raw, parse)

    def _routing(self, obj: dict[str, Any]) -> AppliedRouting | None:
        """`observe_routing`, parsed again only when the ConfigMap's annotations changed."""
        meta = obj.get("metadata") or {}
        ident = ("ConfigMap", f"{meta.get('namespace')}/{meta.get('name')}")
        version = (meta.get("annotations"), meta.get("labels"))
        return self._memo(ident, version, lambda: observe_routing(obj))

    def world(self) -> World:
        """The loop's inputs from the cache; parse-cache entries of objects gone are dropped."""
        self._touched = set()
        world = World()
        if self.config.watch_nodes:
            world.nodes = self.cache.of_kind("Node")
        for obj in self.cache.of_kind(KIND_POOL):
            pool = self._parse(KIND_POOL, obj)
            if isinstance(pool, DevicePool):
                world.pools[pool.metadata.name] = pool
            else:
                log.warning("ignoring invalid DevicePool: %s", pool)
        for obj in self.cache.of_kind(KIND_ISVC):
            meta = obj.get("metadata") or {}
            if meta.get("deletionTimestamp"):
                continue
            key = f"{meta.get('namespace') or 'default'}/{meta.get('name')}"
            svc = self._parse(KIND_ISVC, obj)
            if isinstance(svc, InferenceService):
                if svc.metadata.namespace is None:
                    svc.metadata.namespace = "default"
                world.services[key] = svc
            else:
                errors = svc.errors if isinstance(svc, InvalidResourceError) else [("", str(svc))]
                world.invalid[key] = errors
                world.invalid_generation[key] = meta.get("generation")
            status = self._status(key, obj.get("status"))
            if status is not None:
                world.status[key] = status
        for obj in self.cache.of_kind("Deployment"):
            running = self._worker(obj)
            if running is not None:
                world.workers[running.spec.key] = running
        for obj in self.cache.of_kind("ConfigMap"):
            applied = self._routing(obj)
            if applied is not None:
                world.routing[applied.routing.service] = applied
        for obj in self.cache.of_kind("Pod"):
            failing = worker_failure_of(obj)
            if failing is not None and failing[0] not in world.worker_failures:
                world.worker_failures[failing[0]] = failing[1]
        for gone in self._parsed.keys() - self._touched:
            del self._parsed[gone]
        return world

    def demand_view(self, world: World | None = None) -> DemandView:
        """Prometheus's view, merged with the routers' reports (`reports.RouterDemand.view`)."""
        view = self.demand.view() if self.demand is not None else DemandView()
        if self.reports is not None:
            view = self.reports.view((world or self.world()).services, view)
        return view

    def service_routing(self, service: str) -> ServiceRouting | None:
        """For the reports: the routing table last applied for `service` (from its routing
        ConfigMap, parsed again only when the ConfigMap changed); None if there is no such
        InferenceService."""
        ns, _, name = service.partition("/")
        if self.cache.get(KIND_ISVC, ns, name) is None:
            return None
        cm = self.cache.get("ConfigMap", ns, routing_configmap_name(name)) or {}
        version = (
            (cm.get("data") or {}).get(ROUTING_FILE),
            (cm.get("metadata") or {}).get("annotations"),
        )
        hit = self._tables.get(service)
        if hit is not None and hit[0] == version:
            return hit[1]
        table: RoutingTable | None = None
        if version[0]:
            try:
                table = RoutingTable.model_validate_json(version[0])
            except ValueError as exc:
                log.warning("unreadable routing table of %s: %s", service, exc)
        found = ServiceRouting(table, observe_routing(cm) if cm else None)
        self._tables[service] = (version, found)
        return found

    def pool_statuses(self, world: World) -> dict[str, Manifest]:
        """Each pool's status (matching nodes, devices the last plan uses, `NodesMissing`,
        `Ready` and `WorkerCpuLimited`), as it would be written: transition times kept while a
        condition's status stays. Empty when Nodes are not watched."""
        if world.nodes is None:
            return {}
        used: dict[str, int] = {}
        plan = self.loop.last_plan
        for row in plan.rows if plan is not None else []:
            for pool_name, n in row_devices(row):  # a pipeline: each stage's pool
                used[pool_name] = used.get(pool_name, 0) + n
        for gpu in plan.layouts if plan is not None else []:  # a MIG pool's GPUs in use
            used[gpu.pool] = used.get(gpu.pool, 0) + 1
        now = datetime.fromtimestamp(self.clock(), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        out: dict[str, Manifest] = {}
        for name, pool in world.pools.items():
            status = pool_capacity(pool, world.nodes).status(
                used.get(name, 0), pool.metadata.generation
            )
            status.conditions.append(cpu_condition(pool, pool.metadata.generation))
            body = status.model_dump(mode="json", by_alias=True, exclude_none=True)
            have = (self.cache.get(KIND_POOL, "", name) or {}).get("status") or {}
            old = {c.get("type"): c for c in have.get("conditions") or []}
            for cond in body.get("conditions") or []:
                prev = old.get(cond["type"]) or {}
                same = prev.get("status") == cond["status"] and prev.get("lastTransitionTime")
                cond["lastTransitionTime"] = prev["lastTransitionTime"] if same else now
            out[name] = body
        return out

    async def write_pool_statuses(self, world: World) -> None:
        """Patch the status of each pool whose status changed (a failure is logged only)."""
        for name, body in self.pool_statuses(world).items():
            have = (self.cache.get(KIND_POOL, "", name) or {}).get("status") or {}
            if {k: have.get(k) for k in body} == body:
                continue
            try:
                await self.actuator.patch_pool_status(name, body)
            except Exception as exc:
                log.warning("writing the status of DevicePool %s failed: %s", name, exc)

    # -- running -------------------------------------------------------------------------------

    async def listing_done(self) -> None:
        """Wait until kopf has delivered its initial listing: no listed object for
        `LISTING_QUIET_S` (at most `LISTING_WAIT_S`).

        At start kopf lists every watched kind and queues a worker, a queue and the raw body
        per object (thousands at scale) while it works through them. A first pass in the
        middle of that (the driver's own listing, every object parsed, the planner) stacks its
        memory on top of kopf's backlog: the operator's peak. After it, the pass reuses what
        kopf's backlog freed. The pass is as complete either way (`sync` lists everything)."""
        deadline = time.monotonic() + LISTING_WAIT_S
        while time.monotonic() < deadline:
            quiet = time.monotonic() - self._listed_at
            if quiet >= LISTING_QUIET_S:
                return
            await asyncio.sleep(min(LISTING_QUIET_S - quiet, deadline - time.monotonic()))

    async def reconcile_once(self) -> ReconcileResult:
        if not self.synced:
            await self.listing_done()
            await self.sync()
        world = self.world()
        if self.reports is not None:
            # The drain counts from the routers' confirmation of a table (`reports`).
            world.routing = self.reports.confirmed(world.routing)
        else:
            # Routers read their table from the mounted ConfigMap: it counts from its sync.
            sync_s = self.config.routing_file_sync_s
            world.routing = {k: file_synced(a, sync_s) for k, a in world.routing.items()}
        demand = self.demand_view(world)
        result = await self.loop.reconcile(
            world, demand, self.actuator, concurrency=self.concurrency
        )
        try:
            swept = await self.actuator.sweep_worker_services()
        except Exception as error:
            log.warning("deleting the Services of drained worker groups failed: %s", error)
        else:
            if swept:
                log.info("worker groups drained, their Services deleted: %s", ", ".join(swept))
        self.metrics.record(
            world,
            demand,
            result,
            self.loop.plan_time_s,
            self.loop.cost.totals,
            self.loop.idle,
            self.loop.swap_gate.held(),
        )
        # Surges are judged against the plan's capacity, falls are fast while short.
        for tracker in (
            self.demand.tracker if self.demand is not None else None,
            self.reports.tracker if self.reports is not None else None,
        ):
            if tracker is not None:
                tracker.plan_feedback(self.loop.capacity_by_service(), self.loop.short_services())
        await self.write_pool_statuses(world)
        plan = self.loop.last_plan
        # MIG layouts: drain, relabel and release nodes towards the plan's (`mig`); the next
        # step may follow at once (the write's own event finds the cache already updated).
        if (
            world.nodes is not None
            and plan is not None
            and await apply_mig(
                self.actuator,
                self.config.mig_config_namespace,
                world.pools,
                world.nodes,
                plan.layouts,
                self.cache.of_kind("Pod"),
            )
        ):
            self._wake.set()
        await self.conform_routers(world.services)
        self.passes += 1
        self.last_result = result
        if result.decision.planned:
            log.info(
                "planned %d services in %.3f s; decided in %.3f s; %d steps, %d failed%s",
                len(result.decision.routing),
                self.loop.plan_time_s,
                self.loop.decide_time_s,
                len(result.decision.steps),
                len(result.failed),
                ""
                if self.loop.partial_services is None
                else f" (a partial plan: {self.loop.partial_services} planned again)",
            )
        if result.decision.planned or len(result.applied) > 100:
            memory.trim()  # a big pass frees tens of MB; give them back (see `memory`)
        memory.freeze()  # once: what the first pass leaves is long-lived (see `memory`)
        for step, exc in result.failed:
            log.warning("%s failed: %s", type(step).__name__, exc)
        for warning in result.decision.warnings:
            log.info("%s", warning)
        return result

    async def conform_routers(self, services: Iterable[str]) -> None:
        """Once per service in this operator's life: its router as this operator renders it
        (`KubernetesActuator.conform_routers`: after an upgrade, routers whose plan does not
        change would keep the old image and arguments). A failure is tried at the next pass."""
        pending = [s for s in services if s not in self._conformed]
        if not pending:
            return
        try:
            written = await self.actuator.conform_routers(pending)
        except Exception as exc:
            log.warning("bringing routers to this operator's settings failed: %s", exc)
            return
        self._conformed.update(pending)
        if written:
            log.info(
                "%d routers brought to this operator's settings: %s",
                len(written),
                ", ".join(written[:10]) + (" ..." if len(written) > 10 else ""),
            )

    async def run(self) -> None:
        """Wait for changes (debounced) or the resync interval, and reconcile; forever."""
        requeue: float | None = None
        while True:
            resync = self.config.resync_interval_s
            timeout = resync if requeue is None else min(requeue, resync)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            leading = await self.leads()
            if self.leader_label is not None:
                await self.leader_label.mark(self.api_client, leading)
            if not leading:
                self._wake.clear()
                requeue = None
                continue
            await self._settle()
            self._wake.clear()
            self._demand_due = self._waking = False
            self._last_pass_at = time.monotonic()
            try:
                result = await self.reconcile_once()
            except Exception:
                log.exception("reconcile failed")
                self.metrics.record_error()
                requeue = 1.0
                continue
            requeue = result.decision.requeue_after_s
            if result.failed:
                requeue = min(requeue or 1.0, 1.0)
            sweep = self.actuator.sweep_due_in_s()  # a removed group's Service, once drained
            if sweep is not None:
                requeue = sweep if requeue is None else min(requeue, sweep)

    async def _settle(self) -> None:
        """Before a pass: a burst of watch events is let settle (`debounce_s` of quiet, at most
        four times that); a pass for demand that left its band waits for no quiet time (its
        rise is the cost of waiting), only for `min_pass_interval_s` since the last pass, as
        local mode and the simulator run it (`Timings`)."""
        deadline = time.monotonic() + 4 * self.config.debounce_s
        while not self._demand_due and self.config.debounce_s > 0 and time.monotonic() < deadline:
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.config.debounce_s)
            except TimeoutError:
                break
        if self._demand_due and not self._waking:
            wait = self._last_pass_at + self.config.min_pass_interval_s - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)

    def wake_for_demand(self, waking: bool = False) -> None:
        """A demand reading left a service's band: pass soon (`_settle`); `waking`: a service
        at zero replicas has requests waiting in its routers (`ControlLoop.waking`), pass at
        once."""
        self._demand_due = True
        self._waking = self._waking or waking
        self._wake.set()

    async def poll_demand(self) -> None:
        """Ask Prometheus every `demand_interval_s`; wake the loop when a service's estimate
        left the band of its plan (`ControlLoop.pass_due`)."""
        while self.demand is not None:
            if self.active():
                world = self.world()
                services = list(world.services.values())
                if self.reports is not None:
                    services = self.reports.prometheus_services(services)
                await self.demand.poll(services)
                if self.loop.pass_due(world, self.demand_view(world)):
                    self.wake_for_demand(bool(self.loop.waking()))
            await asyncio.sleep(self.config.demand_interval_s)

    def fold_reports(self) -> None:
        """Fold each service's reported rate into its estimate (every report interval, sooner
        on a surge: `RouterDemand.run`); wake the loop when a service's estimate left the band
        of its plan (`ControlLoop.pass_due`)."""
        if self.reports is not None and self.active():
            world = self.world()
            self.reports.fold(world.services)
            if self.loop.pass_due(world, self.demand_view(world)):
                self.wake_for_demand(bool(self.loop.waking()))


# ------------------------------------------------------------------------------------- kopf


def _driver(memo: Any) -> Driver:
    driver = memo.get("driver") if hasattr(memo, "get") else getattr(memo, "driver", None)
    if not isinstance(driver, Driver):
        raise kopf.TemporaryError("the driver is not started yet", delay=1)
    return driver


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    config = OperatorConfig.load()
    settings.posting.enabled = False
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        # kopf logs "Handler '...' succeeded." at INFO for every watch event: about 7,000
        # lines per start at 1,000 services, burying the control loop's own. Its warnings and
        # errors still show; `kopf run --verbose` (or --debug) shows everything.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    # A kopf worker per object lives until the object's events have been idle this long,
    # holding its last event's body and its queue. kopf's 5 s kept one per listed object at
    # start (thousands of bodies next to the cache, the memory peak at scale); events here are
    # handled in microseconds, so a worker that idles half a second can go.
    settings.queueing.idle_timeout = KOPF_WORKER_IDLE_S
    if not settings.peering.standalone and not settings.peering.mandatory:
        # No --peering on the command line: use the configured peering (cluster-wide).
        settings.peering.name = config.peering_name
        settings.peering.priority = config.peering_priority
        settings.peering.clusterwide = True
    serve_from_env()
    threads = Driver.concurrency + API_THREADS_BESIDE_WRITES
    # The synchronous client's calls run in the loop's default executor (`asyncio.to_thread`),
    # whose default size, min(32, CPUs + 4), is 6 on 2 CPUs: it would cap the actuator's
    # concurrent writes far below `Driver.concurrency`.
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=threads, thread_name_prefix="accordion-api")
    )
    driver = Driver(config=config, api_client=make_api_client(threads))
    driver.standalone = bool(settings.peering.standalone)
    driver.leadership = Leadership.from_settings(settings.peering)
    driver.leader_label = LeaderLabel.from_env()
    if not driver.standalone and driver.leadership is None:
        log.warning(
            "peering %r without POD_ID: this operator cannot tell its own peering identity and "
            "acts while kopf delivers it events; set POD_ID (the chart does) for an exact gate",
            settings.peering.name,
        )
    memo["driver"] = driver
    memo["tasks"] = [asyncio.create_task(driver.run(), name="accordion-control-loop")]
    if driver.demand is not None:
        memo["tasks"].append(asyncio.create_task(driver.poll_demand(), name="accordion-demand"))
    if driver.reports is not None and config.report_port is not None:
        auth = None
        if config.report_auth == "TokenReview":
            auth = TokenAuthenticator(token_reviewer(driver.api_client))
        else:
            log.warning("report_auth is None: any pod that reaches the report port may report")
        server = ReportServer(driver.reports, driver.active, auth)
        try:
            port = await server.start(None, config.report_port)
        except OSError as exc:
            log.error("cannot serve reports on port %s: %s", config.report_port, exc)
        else:
            log.info("taking routers' reports on port %d", port)
            memo["report_server"] = server
            memo["tasks"].append(
                asyncio.create_task(
                    driver.reports.run(driver.fold_reports), name="accordion-reports"
                )
            )


@kopf.on.cleanup()
async def cleanup(memo: Any, **_: Any) -> None:
    for task in memo.get("tasks", []):
        task.cancel()
    for task in memo.get("tasks", []):
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    server = memo.get("report_server")
    if isinstance(server, ReportServer):
        await server.stop()


@kopf.on.event(GROUP, VERSION, "inferenceservices")
async def on_service(event: Any, memo: Any, **_: Any) -> None:
    _driver(memo).observe(KIND_ISVC, event.get("type"), event["object"])


@kopf.on.event(GROUP, VERSION, "devicepools")
async def on_pool(event: Any, memo: Any, **_: Any) -> None:
    _driver(memo).observe(KIND_POOL, event.get("type"), event["object"])


@kopf.timer(GROUP, VERSION, "devicepools", interval=TOUCH_INTERVAL_S, idle=0)
async def touch(memo: Any, **_: Any) -> None:
    """Tell the driver this operator is active (kopf runs no timers in a paused follower):
    the leadership fallback without a peering identity (`Driver.active`)."""
    _driver(memo).touch()


def _watching_nodes() -> bool:
    """`watch_nodes` from the configuration, read at import: kopf handlers are registered
    then (a broken configuration is reported by `startup`)."""
    try:
        return OperatorConfig.load().watch_nodes
    except Exception:
        return True


if _watching_nodes():

    @kopf.on.event("", "v1", "nodes")
    async def on_node(event: Any, memo: Any, **_: Any) -> None:
        _driver(memo).observe("Node", event.get("type"), event["object"])


@kopf.on.event("apps", "v1", "deployments", labels=OWNED)
async def on_deployment(event: Any, memo: Any, **_: Any) -> None:
    _driver(memo).observe("Deployment", event.get("type"), event["object"])


@kopf.on.event("", "v1", "services", labels=OWNED)
async def on_k8s_service(event: Any, memo: Any, **_: Any) -> None:
    _driver(memo).observe("Service", event.get("type"), event["object"])


@kopf.on.event("", "v1", "pods", labels={**OWNED, LABEL_COMPONENT: COMPONENT_WORKER})
async def on_worker_pod(event: Any, memo: Any, **_: Any) -> None:
    """Worker pods: a model that cannot be loaded or downloaded, a crash loop (ModelsLoaded)."""
    _driver(memo).observe("Pod", event.get("type"), event["object"])


@kopf.on.event("", "v1", "configmaps", labels=OWNED)
async def on_configmap(event: Any, memo: Any, **_: Any) -> None:
    _driver(memo).observe("ConfigMap", event.get("type"), event["object"])
