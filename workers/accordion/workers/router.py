"""The router: the single entry point of one InferenceService. No torch.

Accepts ``POST /v2/models/{service}/infer`` (KServe v2), validates it as the worker does
(`accordion.workers.protocol`, against the model signature it reads from its backends' metadata,
within the bounds of `accordion.workers.edge`: a malformed request is refused here with a 4xx and
never reaches a worker nor the fast loop's accounting), asks `RoutingDecider` (the pure fast loop
of `accordion.workers.fastloop`) which variant backend serves the request, forwards it with the
remaining deadline in ``x-accordion-deadline-ms``, and answers with the backend's response. A
request of N samples goes to one backend and counts N (demand, backlog). It also serves the rest
of the v2 REST protocol (``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``,
``/v2/models/{service}`` with the model's inputs and outputs, ``/v2/models/{service}/ready``:
200 while it can serve, and the ``/versions/{v}`` forms), ``/metrics``, and with a gRPC port the
same over gRPC (`accordion.workers.grpcserver`, forwarded to the workers over REST).

Request bodies and binary responses pass through untouched: a body in KServe v2's binary tensor
extension (a JSON header, then raw tensor bytes) goes on with its ``Inference-Header-Content-
Length`` and content type, and so does a binary answer.

Every answer also feeds the decider's online capacity correction (`RoutingDecider.finished`
with the outcome: answered, dropped by the worker, or failed), so that a backend serving less
than its plan gets less before it drops.

A worker's drop (a 503 with ``x-accordion-outcome`` ``dropped`` or ``rejected``: its batcher gave
up on the request, or shed it at admission) answered nothing, so the router sends the request
again to another backend, spare (zero-weight) ones included, that the decider predicts answers
it within what is left of its deadline (`RoutingDecider.choose` without the backends that
dropped it), at most ``fast_loop.drop_retries`` times (once by default: Envoy's retry count, but
only for a worker's drop and only within the deadline); with none, the worker's 503 is the
answer. Measured in the simulator (which sends a drop on the same way, `LoopControl.resend`):
fewer violations on every Proteus shape and goal trace at every seed, at most 0.08 points of
accuracy (`bench/proteus/NOTES.md`).

Two background tasks (three with reports): one re-reads the routing table file (mounted from a
ConfigMap) when its content changes: requests in flight keep the backend they were sent to, new
ones follow the new weights, and an invalid file is reported and ignored; with a report URL
(`--report-url`, `ACCORDION_REPORT_URL`; with `--report-token-file` it authenticates with that
token) one reports the router's arrivals and table to the operator
(`accordion.workers.reporting`), whose answer may carry a newer table, adopted at once
with the same validation as the file's (of the file's table and the operator's, the higher
`RoutingTable.revision` wins); the other polls every backend's
``/v2/health/ready`` and takes failing ones out of the split (at once when nothing listens,
after `unhealthy_after` failed checks in a row otherwise, so that a worker slow to answer
during a burst keeps its traffic). A backend out of the split is checked again every
`recheck_s` (not only every `health_interval_s`), so a worker that starts listening after the
router's first check (at startup) rejoins within a tenth of a second, not a second later.

Metrics (what users pay for and get): demand ``accordion_router_requests_total{service}`` (the
signal the operator reads back), outcomes ``accordion_router_outcomes_total{service,variant,
outcome}`` with outcome in ok, late, dropped, shed, rejected (a 4xx from the worker), error (one
per request: a drop sent again counts only as what became of it; the retries are
``accordion_router_retried_total{service,from_variant,to_variant}``), and
``accordion_router_accuracy_served_total{service,variant}``, the sum of the accuracies of
requests answered within their deadline: ``rate(accuracy_served) / rate(requests)`` is the
effective accuracy delivered per request, ``... / rate(outcomes{outcome="ok"})`` the mean
accuracy of what was answered in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from accordion.workers import drain
from accordion.workers.activator import DEFAULT_MAX_QUEUED, Activator
from accordion.workers.config import (
    BINARY_HEADER,
    DEADLINE_HEADER,
    OUTCOME_HEADER,
    REPLICA_HEADER,
    SLOWDOWN_HEADER,
    SLOWDOWN_MEDIAN_HEADER,
    RoutingTable,
)
from accordion.workers.edge import EdgeLimits, edge_app, read_forward
from accordion.workers.fastloop import RoutingDecider
from accordion.workers.grpcserver import V2Endpoint, parse_grpc, render_grpc, start_grpc
from accordion.workers.protocol import (
    MODEL_VERSION,
    InferenceError,
    Signature,
    TensorSpec,
    binary_request,
    decode_json,
    decode_rest_response,
    encode_json,
    parse_deadline_ms,
    server_metadata_doc,
)
from accordion.workers.reporting import Reporter, ReportPolicy

if TYPE_CHECKING:
    from grpc import aio as grpc_aio

    from accordion.workers import grpc_predict_v2_pb2 as pb

log = logging.getLogger(__name__)

MAX_CONNECT_RETRIES = 3
"""Times one request is sent again after a backend refused the connection (nothing was sent):
each refusal takes that backend out of the split until its next passed health check."""
RECHECK_S = 0.1
"""How often a backend out of the split (refused, failing, or pending in the table) is checked
again: a worker group that becomes ready joins within this."""

VARIANT_HEADER = "x-accordion-variant"
OUTCOMES = ("ok", "late", "dropped", "shed", "rejected", "error")
_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
_COLD_START_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)


def parse_table(path: Path, raw: bytes) -> RoutingTable:
    """Parse the content `raw` of the table file `path` (YAML by suffix, else JSON).

    Raises ValueError (pydantic's ValidationError is one) for anything malformed, YAML syntax
    errors included.
    """
    if path.suffix in {".yaml", ".yml"}:
        import yaml

        try:
            data = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ValueError(f"malformed YAML: {exc}") from exc
        return RoutingTable.model_validate(data)
    return RoutingTable.model_validate_json(raw)


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "accordion_router_requests_total",
            "Requests that arrived at the router (demand).",
            ["service"],
            registry=r,
        )
        self.outcomes = Counter(
            "accordion_router_outcomes_total",
            "Requests by outcome (ok, late, dropped, shed, rejected, error) and variant.",
            ["service", "variant", "outcome"],
            registry=r,
        )
        self.accuracy_served = Counter(
            "accordion_router_accuracy_served_total",
            "Sum of the accuracies of requests answered within their deadline.",
            ["service", "variant"],
            registry=r,
        )
        self.rerouted = Counter(
            "accordion_router_rerouted_total",
            "Requests the fast loop sent away from the backend the plan's weights picked.",
            ["service", "from_variant", "to_variant"],
            registry=r,
        )
        self.retried = Counter(
            "accordion_router_retried_total",
            "Requests a worker dropped (its deadline could not be met there) that the router "
            "sent again to another backend (`fast_loop.drop_retries`).",
            ["service", "from_variant", "to_variant"],
            registry=r,
        )
        self.latency = Histogram(
            "accordion_router_request_latency_seconds",
            "Latency of answered requests seen by the router.",
            ["service", "variant"],
            buckets=_BUCKETS_S,
            registry=r,
        )
        self.inflight = Gauge(
            "accordion_router_backend_inflight",
            "Requests sent to a backend and not answered yet (its backlog).",
            ["service", "variant"],
            registry=r,
        )
        self.weight = Gauge(
            "accordion_router_weight",
            "Routing weight per variant: the plan's, and the fast loop's effective one.",
            ["service", "variant", "kind"],
            registry=r,
        )
        self.slowdown = Gauge(
            "accordion_router_backend_slowdown",
            "How many times slower than planned a backend is seen to serve (1: as planned); "
            "the router counts on its planned capacity divided by this.",
            ["service", "variant"],
            registry=r,
        )
        self.healthy = Gauge(
            "accordion_router_backend_healthy",
            "1 if the backend passes its readiness check.",
            ["service", "variant"],
            registry=r,
        )
        self.reloads = Counter(
            "accordion_router_table_reloads_total",
            "Routing table reloads by result (ok, invalid).",
            ["service", "result"],
            registry=r,
        )
        self.cold_start = Histogram(
            "accordion_router_cold_start_seconds",
            "Cold starts: from the first request held at zero ready replicas to the first "
            "ready one (the activator).",
            ["service"],
            buckets=_COLD_START_BUCKETS_S,
            registry=r,
        )
        self.activator_queued = Gauge(
            "accordion_router_activator_queued",
            "Samples held by the activator now, waiting for a ready replica.",
            ["service"],
            registry=r,
        )
        self.activator_requests = Counter(
            "accordion_router_activator_requests_total",
            "Requests the activator held, by result (released, rejected-deadline, "
            "rejected-full, expired).",
            ["service", "result"],
            registry=r,
        )


@dataclass
class Routed:
    """A routed request's answer, whatever transport it goes back on."""

    status: int
    body: bytes
    outcome: str
    content_type: str = "application/json"
    binary_header_length: str | None = None
    variant: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def reason(self) -> str:
        """The error's reason (KServe's ``{"error": ...}``), or the body's start."""
        try:
            doc = decode_json(self.body)
        except InferenceError:
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("error"), str):
            return str(doc["error"])
        return self.body[:200].decode("utf-8", "replace")


class Router:
    """State of one router: the table file, the decider, the HTTP session, the metrics."""

    def __init__(
        self,
        table_path: Path,
        *,
        health_interval_s: float = 1.0,
        unhealthy_after: int = 3,
        recheck_s: float = RECHECK_S,
        reload_interval_s: float = 0.5,
        max_body_bytes: int = 16 * 1024 * 1024,
        header_timeout_s: float = 10.0,
        body_timeout_s: float = 30.0,
        grpc_port: int | None = None,
        seed: int = 0,
        report_url: str | None = None,
        report_policy: ReportPolicy | None = None,
        max_queued: int = DEFAULT_MAX_QUEUED,
        report_token_file: Path | None = None,
    ) -> None:
        self.table_path = table_path
        try:
            raw = table_path.read_bytes()
            table = parse_table(table_path, raw)
        except OSError as exc:
            raise ValueError(f"cannot read routing table {table_path}: {exc}") from exc
        except ValueError as exc:  # pydantic's ValidationError, bad JSON or YAML
            raise ValueError(f"invalid routing table {table_path}: {exc}") from exc
        self._digest = hashlib.sha256(raw).digest()
        self.decider = RoutingDecider(table, seed=seed)
        self.metrics = RouterMetrics()
        self.health_interval_s = health_interval_s
        self.unhealthy_after = max(1, unhealthy_after)
        self.recheck_s = min(recheck_s, health_interval_s)
        self._failures: dict[str, int] = {}
        self.reload_interval_s = reload_interval_s
        self.max_body_bytes = max_body_bytes
        self.limits = EdgeLimits(
            max_body_bytes=max_body_bytes,
            header_timeout_s=header_timeout_s,
            body_timeout_s=body_timeout_s,
        )
        self.host = "127.0.0.1"
        """Where the gRPC endpoint listens (`serve_router` sets the HTTP server's host)."""
        self.grpc_port = grpc_port
        """The gRPC endpoint's port (None: none); the one bound once it listens, for 0."""
        self.signature: Signature | None = None
        """The model's inputs and outputs, as the first backend to answer its metadata says."""
        self._session: aiohttp.ClientSession | None = None
        self.draining = False
        """Terminating (`accordion.workers.drain`): still serving, but not ready."""
        self._tasks: list[asyncio.Task[None]] = []
        self.arrivals = 0
        """Requests that arrived (a batch counts its samples): what reports carry."""
        self.reporter: Reporter | None = None
        self.activator = Activator(
            max_queued=max_queued,
            on_hold=self._wake_reporter,
            on_cold_start=lambda s: self.metrics.cold_start.labels(self.service).observe(s),
        )
        """Holds requests while no backend is ready (`accordion.workers.activator`)."""
        if report_url:
            self.reporter = Reporter(
                report_url,
                table=lambda: self.table,
                requests_total=lambda: self.arrivals,
                adopt=self.adopt,
                policy=report_policy,
                cold_start_s=lambda: self.activator.last_s,
                token_file=report_token_file,
            )
        self._publish_weights()

    @property
    def table(self) -> RoutingTable:
        return self.decider.table

    @property
    def service(self) -> str:
        return self.decider.table.service

    def _read_table(self) -> RoutingTable | None:
        try:
            raw = self.table_path.read_bytes()
        except OSError as exc:
            log.warning("cannot read routing table %s: %s", self.table_path, exc)
            return None
        digest = hashlib.sha256(raw).digest()
        if digest == self._digest:
            return None
        try:
            table = parse_table(self.table_path, raw)  # the bytes digested, not a re-read
        except ValueError as exc:
            log.warning("invalid routing table %s: %s", self.table_path, exc)
            self._digest = digest  # report once per content, keep the old table
            if hasattr(self, "metrics"):
                self.metrics.reloads.labels(self.service, "invalid").inc()
            return None
        self._digest = digest
        return table

    def reload(self) -> bool:
        """Adopt the table file's content if it changed, is valid, and is not older (by
        revision) than the table the router has (the operator may have sent a newer one)."""
        table = self._read_table()
        if table is None:
            return False
        if table.revision < self.table.revision:
            log.debug(
                "routing table file %s has revision %d, older than the %d in use: kept for now",
                self.table_path,
                table.revision,
                self.table.revision,
            )
            return False
        self._use(table)
        return True

    def adopt(self, table: RoutingTable) -> str | None:
        """Adopt a table the operator sent if it is newer (by revision) than the one in use;
        why it was refused, or None. The file's rules apply: a valid `RoutingTable` (the
        answer was parsed as one) of this router's service."""
        if table.service != self.service or (
            table.namespace is not None
            and self.table.namespace is not None
            and table.namespace != self.table.namespace
        ):
            reason = (
                f"a routing table for {table.namespace or '?'}/{table.service}, but this router "
                f"serves {self.table.namespace or '?'}/{self.service}"
            )
            log.warning("refused a routing table from the operator: %s", reason)
            self.metrics.reloads.labels(self.service, "invalid").inc()
            return reason
        if table.revision > self.table.revision:
            self._use(table)
        return None

    def _use(self, table: RoutingTable) -> None:
        was_ready = self.ready()
        known = {b.name for b in self.decider.table.backends}
        self.decider.update_table(table)
        if not was_ready and self._session is not None:
            # A cold start: a backend new to the table is trusted after its first passed check
            # (the health loop's recheck), not at once, so that held requests are not released
            # to a worker still loading its model.
            for b in table.backends:
                if b.name not in known:
                    self.decider.set_healthy(b.name, False)
        self.metrics.reloads.labels(self.service, "ok").inc()
        self._publish_weights()
        self._activate()

    def _activate(self) -> None:
        """Release the activator's held requests once some backend is ready."""
        if self.ready():
            self.activator.ready()

    def _wake_reporter(self) -> None:
        if self.reporter is not None:
            self.reporter.wake()

    def own_latency_s(self) -> float:
        """The least a request takes on a ready backend (its batch latency, by the table)."""
        latencies = [b.batch_latency_ms for b in self.table.backends if b.batch_latency_ms]
        return min(latencies) / 1000.0 if latencies else 0.0

    def _publish_weights(self) -> None:
        plan = self.decider.plan_weights()
        # time.monotonic() is the event loop's clock (loop.time()), the one `infer` passes.
        now = time.monotonic()
        effective = self.decider.effective_weights(now)
        for b in self.table.backends:
            self.metrics.slowdown.labels(self.service, b.name).set(
                self.decider.slowdown(b.name, now)
            )
            self.metrics.weight.labels(self.service, b.name, "plan").set(plan.get(b.name, 0.0))
            self.metrics.weight.labels(self.service, b.name, "effective").set(
                effective.get(b.name, 0.0)
            )
            self.metrics.inflight.labels(self.service, b.name).set(self.decider.inflight(b.name))
            self.metrics.healthy.labels(self.service, b.name).set(
                1 if self.decider.healthy(b.name) else 0
            )

    async def _reload_loop(self) -> None:
        while True:
            await asyncio.sleep(self.reload_interval_s)
            try:
                self.reload()
            except Exception:  # never let one bad reload stop all later ones
                log.exception("reloading routing table %s failed", self.table_path)

    async def check_health(self, only_out: bool = False) -> None:
        """One round of readiness checks of every backend (`only_out`: of those out of the split).

        A backend leaves the split when nothing listens at its address, or after
        `unhealthy_after` failed checks in a row (a slow answer from a worker busy with a burst
        is not a dead worker: one late probe must not move its traffic away); it comes back
        at its first passed check.
        """
        session = self._session
        assert session is not None

        async def probe(name: str, url: str) -> None:
            refused = False
            try:
                timeout = aiohttp.ClientTimeout(total=max(0.5, self.health_interval_s))
                async with session.get(f"{url}/v2/health/ready", timeout=timeout) as resp:
                    ok = resp.status == 200
            except aiohttp.ClientConnectorError:
                ok, refused = False, True
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            failures = 0 if ok else self._failures.get(name, 0) + 1
            self._failures[name] = failures
            if ok:
                self.decider.set_healthy(name, True)
            elif refused or failures >= self.unhealthy_after:
                self.decider.set_healthy(name, False)

        backends = [
            b for b in self.table.backends if not only_out or not self.decider.healthy(b.name)
        ]
        if backends:
            await asyncio.gather(*(probe(b.name, b.url) for b in backends))
            self._publish_weights()
            self._activate()

    async def _health_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_round = loop.time() + self.health_interval_s
        while True:
            await asyncio.sleep(max(0.0, min(self.recheck_s, next_round - loop.time())))
            if loop.time() >= next_round:
                await self.check_health()
                next_round = loop.time() + self.health_interval_s
            else:
                await self.check_health(only_out=True)

    async def start(self) -> None:
        # Idle connections to workers are dropped before a worker's own idle timeout (10 s by
        # default) closes them: reusing one the worker has just closed fails the request.
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=4.0)
        self._session = aiohttp.ClientSession(connector=connector)
        await self.check_health()
        await self.known_signature()
        self._tasks = [
            asyncio.create_task(self._reload_loop(), name="accordion-router-reload"),
            asyncio.create_task(self._health_loop(), name="accordion-router-health"),
        ]
        if self.reporter is not None:
            self.reporter.start()

    async def stop(self) -> None:
        if self.reporter is not None:
            await self.reporter.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()

    # -- the model ---------------------------------------------------------------------------
    def ready(self) -> bool:
        """Whether the router can serve: some backend in the plan passes its checks."""
        return bool(self.decider.plan_weights())

    def accepting(self) -> bool:
        """Whether the router takes requests: it routes them, or holds them until a backend is
        ready (the activator). The server's readiness (its pod's readinessProbe): a router at
        zero replicas must stay in its Service's endpoints, or the request that would start a
        replica never reaches it; not while it drains (terminating, it still serves). The
        model's readiness stays `ready`."""
        return self._session is not None and not self.draining

    def versions(self) -> list[str]:
        """One model version, stable across plans (the plan's is a parameter of the metadata)."""
        return [MODEL_VERSION]

    def check_model(self, name: str, version: str | None = None) -> None:
        """InferenceError 404 unless `name` (and `version`, if given) is what this serves."""
        if name != self.service:
            raise InferenceError(
                404, f"unknown model {name!r}; this router serves {self.service!r}", "error"
            )
        if version is not None and version not in self.versions():
            raise InferenceError(
                404, f"unknown version {version!r} of model {name!r}; it has {self.versions()}"
            )

    async def known_signature(self) -> Signature | None:
        """The model's signature; asked of the backends (healthy ones first) until one says."""
        if self.signature is not None or self._session is None:
            return self.signature
        backends = sorted(self.table.backends, key=lambda b: not self.decider.healthy(b.name))
        for backend in backends:
            url = f"{backend.url}/v2/models/{backend.served_model}"
            try:
                timeout = aiohttp.ClientTimeout(total=2.0)
                async with self._session.get(url, timeout=timeout) as resp:
                    if resp.status != 200:
                        continue
                    doc = decode_json(await resp.read())
                self.signature = Signature(
                    tuple(TensorSpec.from_json(t) for t in doc["inputs"]),
                    tuple(TensorSpec.from_json(t) for t in doc["outputs"]),
                )
                break
            except (aiohttp.ClientError, TimeoutError, InferenceError, ValueError) as exc:
                log.info("no model metadata from %s: %s", url, exc)
            except (KeyError, TypeError) as exc:
                log.warning("malformed model metadata from %s: %s", url, exc)
        return self.signature

    async def metadata(self) -> dict[str, Any]:
        """The v2 model metadata of the service: the backends' signature, the router's name."""
        signature = await self.known_signature()
        if signature is None:
            raise InferenceError(
                503, "no backend has answered its model metadata yet: inputs unknown", "error"
            )
        return {
            "name": self.service,
            "platform": "accordion-router",
            "versions": self.versions(),
            "inputs": [t.to_json() for t in signature.inputs],
            "outputs": [t.to_json() for t in signature.outputs],
            "parameters": {
                "slo_ms": self.table.slo_ms,
                "variants": [b.name for b in self.table.backends],
                "plan_version": self.table.version,
            },
        }

    # -- one request ---------------------------------------------------------------------------
    async def route(
        self,
        body: bytes,
        budget_s: float,
        content_type: str,
        binary_header_length: str | None = None,
        *,
        samples: int = 1,
        arrival_s: float | None = None,
    ) -> Routed:
        """Route one validated request of `samples` samples: `body` as received, with its
        Content-Type and, for a binary tensor extension body, its
        Inference-Header-Content-Length (passed on as is). `budget_s` counts from `arrival_s`
        (default: now)."""
        loop = asyncio.get_running_loop()
        start = loop.time() if arrival_s is None else arrival_s
        service = self.service
        m = self.metrics
        m.requests.labels(service).inc(samples)
        self.arrivals += samples
        refused = 0
        dropped_by: list[str] = []  # backends whose worker dropped it (sent again elsewhere)
        last_drop: Routed | None = None
        while True:
            if not self.ready():
                # No ready replica (scaled to zero, or all restarting): the activator holds it.
                m.activator_queued.labels(service).inc(samples)
                try:
                    held = await self.activator.hold(
                        start + budget_s, samples, self.own_latency_s()
                    )
                finally:
                    m.activator_queued.labels(service).dec(samples)
                m.activator_requests.labels(service, held.result).inc()
                if held.reason is not None:
                    m.outcomes.labels(service, "none", "shed").inc(samples)
                    return Routed(503, _error_body(held.reason), "shed")
            choice = self.decider.choose(
                budget_s - (loop.time() - start), now_s=loop.time(), exclude=dropped_by
            )
            if choice.backend is None:
                if last_drop is not None:  # none other answers in time: the drop stands
                    m.outcomes.labels(service, dropped_by[-1], "dropped").inc(samples)
                    return last_drop
                m.outcomes.labels(service, "none", "shed").inc(samples)
                return Routed(503, _error_body(f"shed: {choice.reason}"), "shed")
            if dropped_by:
                m.retried.labels(service, dropped_by[-1], choice.backend).inc(samples)
            name = choice.backend
            backend = self.decider.backend(name)
            if choice.rerouted_from is not None:
                m.rerouted.labels(service, choice.rerouted_from, name).inc(samples)
            for _ in range(samples):
                self.decider.sent(name, loop.time())
            session = self._session
            assert session is not None
            remaining_ms = max(0.001, (budget_s - (loop.time() - start)) * 1000.0)
            url = f"{backend.url}/v2/models/{backend.served_model}/infer"
            headers = {DEADLINE_HEADER: f"{remaining_ms:.3f}", "Content-Type": content_type}
            if binary_header_length is not None:
                headers[BINARY_HEADER] = binary_header_length
            try:
                # Grace beyond the deadline: a late answer is still an answer (counted as late).
                timeout = aiohttp.ClientTimeout(total=budget_s * 2 + 1.0)
                async with session.post(url, data=body, headers=headers, timeout=timeout) as resp:
                    payload = await resp.read()
                    status = resp.status
                    worker_outcome = resp.headers.get(OUTCOME_HEADER, "")
                    response_type = resp.headers.get("Content-Type", "application/json")
                    response_binary = resp.headers.get(BINARY_HEADER)
                    report = worker_report(resp.headers)
            except aiohttp.ClientConnectorError as exc:
                # No connection, so nothing was sent: safe to send again (Envoy's
                # `connect-failure` retry). The backend leaves the split at once (a worker not
                # listening yet, or gone before the health loop saw it; the loop brings it back
                # at its first passed check) and the request tries another one, or waits in the
                # activator for one to become ready.
                for _ in range(samples):
                    self.decider.finished(name, loop.time(), "failed")
                self.decider.set_healthy(name, False)
                self._publish_weights()
                refused += 1
                if refused <= MAX_CONNECT_RETRIES and loop.time() - start < budget_s:
                    log.info("backend %s refused a connection (%s): sent again", name, exc)
                    continue
                m.outcomes.labels(service, name, "error").inc(samples)
                return Routed(502, _error_body(f"backend {name!r} failed: {exc!r}"), "error")
            except (aiohttp.ClientError, TimeoutError) as exc:
                for _ in range(samples):
                    self.decider.finished(name, loop.time(), "failed")
                self._publish_weights()
                m.outcomes.labels(service, name, "error").inc(samples)
                return Routed(502, _error_body(f"backend {name!r} failed: {exc!r}"), "error")
            except BaseException:  # cancelled (the client went away): the backlog still drains
                for _ in range(samples):
                    self.decider.finished(name, loop.time(), "failed")
                raise
            if (
                status == 503
                and worker_outcome in {"dropped", "rejected"}
                and len(dropped_by) < self.decider.table.fast_loop.drop_retries
                and self.decider.table.fast_loop.enabled
                and loop.time() - start < budget_s
            ):
                # The worker gave up on it (its deadline cannot be met there) or shed it at
                # admission: nothing was answered, so another backend may still answer in
                # time (`RoutingDecider.choose` without the ones that dropped it).
                for _ in range(samples):
                    self.decider.finished(name, loop.time(), "dropped", report)
                self._publish_weights()
                dropped_by.append(name)
                last_drop = Routed(status, payload, "dropped", response_type, response_binary, name)
                continue
            break
        elapsed = loop.time() - start
        if status == 200:
            outcome = "ok" if elapsed <= budget_s else "late"
            m.latency.labels(service, name).observe(elapsed)
            if outcome == "ok":
                m.accuracy_served.labels(service, name).inc(backend.accuracy * samples)
        elif status == 503 and worker_outcome in {"dropped", "rejected"}:
            outcome = "dropped"
        elif 400 <= status < 500:
            outcome = "rejected"  # the worker refused what the router let through
        else:
            outcome = "error"
        for _ in range(samples):
            self.decider.finished(
                name,
                loop.time(),
                "answered" if status == 200 else "dropped" if outcome == "dropped" else "failed",
                report,
            )
        self._publish_weights()
        m.outcomes.labels(service, name, outcome).inc(samples)
        return Routed(
            status,
            payload,
            outcome,
            response_type,
            response_binary,
            name,
        )


def worker_report(headers: Mapping[str, str]) -> tuple[str, float, float | None] | None:
    """(replica, slowdown, median slowdown) from a worker's answer, when it says
    (`SLOWDOWN_HEADER`, `SLOWDOWN_MEDIAN_HEADER`); a value that is no positive number is
    ignored (without a slowdown, the whole report)."""
    slowdown = _positive(headers.get(SLOWDOWN_HEADER))
    if slowdown is None:
        return None
    median = _positive(headers.get(SLOWDOWN_MEDIAN_HEADER))
    return headers.get(REPLICA_HEADER, ""), slowdown, median


def _positive(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


def _error_body(reason: str) -> bytes:
    return encode_json({"error": reason})


class RouterEndpoint(V2Endpoint):
    """The router behind the gRPC endpoint: requests go on to the workers over REST."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.default_budget_s = router.table.slo_s

    def ready(self) -> bool:
        return self.router.accepting()

    def server_metadata(self) -> dict[str, Any]:
        return server_metadata_doc()

    async def model_metadata(self, name: str, version: str) -> dict[str, Any]:
        self.router.check_model(name, version or None)
        return await self.router.metadata()

    def model_ready(self, name: str, version: str) -> bool:
        self.router.check_model(name, version or None)
        return self.router.ready()

    async def infer(
        self, message: pb.ModelInferRequest, budget_s: float, arrival_s: float
    ) -> tuple[pb.ModelInferResponse, str]:
        router = self.router
        router.check_model(message.model_name, message.model_version or None)
        request = parse_grpc(message, await router.known_signature())
        body, header_length = binary_request(request)
        routed = await router.route(
            body,
            budget_s,
            "application/octet-stream",
            str(header_length),
            samples=request.batch_size,
            arrival_s=arrival_s,
        )
        if routed.status != 200:
            raise InferenceError(routed.status, routed.reason(), routed.outcome)
        response = decode_rest_response(routed.body, routed.binary_header_length)
        response.model_name = router.service
        return render_grpc(response, request), routed.outcome


async def start_router_grpc(router: Router, host: str, port: int) -> grpc_aio.Server:
    server, router.grpc_port = await start_grpc(
        RouterEndpoint(router), host, port, router.max_body_bytes
    )
    return server


ROUTER_KEY = web.AppKey("router", Router)


def create_router_app(router: Router) -> web.Application:
    app = edge_app(router.limits)
    app[ROUTER_KEY] = router

    def model(request: web.Request) -> None:
        router.check_model(request.match_info["name"], request.match_info.get("version"))

    async def live(_: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def ready(_: web.Request) -> web.Response:
        ok = router.accepting()
        return web.json_response({"ready": ok}, status=200 if ok else 503)

    async def server_metadata(_: web.Request) -> web.Response:
        return web.json_response(server_metadata_doc())

    async def metadata(request: web.Request) -> web.Response:
        model(request)
        return web.json_response(await router.metadata())

    async def model_ready(request: web.Request) -> web.Response:
        model(request)
        ok = router.ready()
        return web.json_response({"name": router.service, "ready": ok}, status=200 if ok else 503)

    async def infer(request: web.Request) -> web.Response:
        arrival = asyncio.get_running_loop().time()
        model(request)
        budget_s = parse_deadline_ms(request.headers.get(DEADLINE_HEADER), router.table.slo_s)
        header_length = request.headers.get(BINARY_HEADER)
        signature = await router.known_signature()
        body, samples = await read_forward(request, signature)
        routed = await router.route(
            body,
            budget_s,
            request.headers.get("Content-Type") or "application/json",
            header_length,
            samples=samples,
            arrival_s=arrival,
        )
        headers = {"Content-Type": routed.content_type, OUTCOME_HEADER: routed.outcome}
        if routed.variant is not None:
            headers[VARIANT_HEADER] = routed.variant
        if routed.binary_header_length is not None:
            headers[BINARY_HEADER] = routed.binary_header_length
        return web.Response(body=routed.body, status=routed.status, headers=headers)

    async def prometheus(_: web.Request) -> web.Response:
        router._publish_weights()
        return web.Response(
            body=generate_latest(router.metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    grpc_server: list[grpc_aio.Server] = []

    async def on_startup(_: web.Application) -> None:
        await router.start()
        if router.grpc_port is not None:
            grpc_server.append(await start_router_grpc(router, router.host, router.grpc_port))

    async def on_cleanup(_: web.Application) -> None:
        for server in grpc_server:
            await server.stop(grace=1.0)
        await router.stop()

    app.router.add_get("/v2", server_metadata)
    app.router.add_get("/v2/health/live", live)
    app.router.add_get("/v2/health/ready", ready)
    for path in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        app.router.add_get(path, metadata)
        app.router.add_get(f"{path}/ready", model_ready)
        app.router.add_post(f"{path}/infer", infer)
    app.router.add_get("/metrics", prometheus)
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


def serve_router(
    table: Path | Router,
    host: str = "127.0.0.1",
    port: int = 8000,
    grpc_port: int | None = None,
    drain_s: float = 0.0,
) -> None:
    """Run a router (or one on the table file `table`) until SIGINT or SIGTERM; with a gRPC
    endpoint on `grpc_port` (Triton's is 8001) if given.

    `drain_s` > 0: SIGTERM starts a drain of at most that long (`accordion.workers.drain`):
    the router serves on, not ready, closing each connection after its answer, until its
    clients have moved to other replicas; then, as on SIGINT, it finishes the requests in
    flight and exits."""
    router = table if isinstance(table, Router) else Router(table)
    router.host = host
    if grpc_port is not None:
        router.grpc_port = grpc_port
    app = create_router_app(router)
    drain.install(app, router, drain_s, quiet_s=None)
    web.run_app(app, host=host, port=port, print=None)
