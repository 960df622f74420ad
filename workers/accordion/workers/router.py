"""The router: the single entry point of one InferenceService. No torch.

Accepts ``POST /v2/models/{service}/infer`` (KServe v2), asks `RoutingDecider` (the pure fast
loop of `accordion.workers.fastloop`) which variant backend serves the request, forwards it with
the remaining deadline in ``x-accordion-deadline-ms``, and answers with the backend's response.
It also serves ``/v2/health/live``, ``/v2/health/ready``, ``/v2/models/{service}`` and
``/metrics``.

Request bodies and binary responses pass through untouched: a body in KServe v2's binary tensor
extension (a JSON header, then raw tensor bytes) goes on with its ``Inference-Header-Content-
Length`` and content type, and so does a binary answer.

Every answer also feeds the decider's online capacity correction (`RoutingDecider.finished`
with the outcome: answered, dropped by the worker, or failed), so that a backend serving less
than its plan gets less before it drops.

Two background tasks: one re-reads the routing table file (mounted from a ConfigMap) when its
content changes: requests in flight keep the backend they were sent to, new ones follow the
new weights, and an invalid file is reported and ignored; the other polls every backend's
``/v2/health/ready`` and takes failing ones out of the split (at once when nothing listens,
after `unhealthy_after` failed checks in a row otherwise, so that a worker slow to answer
during a burst keeps its traffic). A backend out of the split is checked again every
`recheck_s` (not only every `health_interval_s`), so a worker that starts listening after the
router's first check (at startup) rejoins within a tenth of a second, not a second later.

Metrics (what users pay for and get): demand ``accordion_router_requests_total{service}`` (the
signal the operator reads back), outcomes ``accordion_router_outcomes_total{service,variant,
outcome}`` with outcome in ok, late, dropped, shed, error, and
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
from pathlib import Path

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

from accordion.workers.config import (
    BINARY_HEADER,
    DEADLINE_HEADER,
    OUTCOME_HEADER,
    REPLICA_HEADER,
    SLOWDOWN_HEADER,
    RoutingTable,
)
from accordion.workers.fastloop import RoutingDecider

log = logging.getLogger(__name__)

VARIANT_HEADER = "x-accordion-variant"
OUTCOMES = ("ok", "late", "dropped", "shed", "error")
_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


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
            "Requests by outcome (ok, late, dropped, shed, error) and variant.",
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


class Router:
    """State of one router: the table file, the decider, the HTTP session, the metrics."""

    def __init__(
        self,
        table_path: Path,
        *,
        health_interval_s: float = 1.0,
        unhealthy_after: int = 3,
        recheck_s: float = 0.1,
        reload_interval_s: float = 0.5,
        max_body_bytes: int = 16 * 1024 * 1024,
        seed: int = 0,
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
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
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
        """Adopt the table file's content if it changed and is valid."""
        table = self._read_table()
        if table is None:
            return False
        self.decider.update_table(table)
        self.metrics.reloads.labels(self.service, "ok").inc()
        self._publish_weights()
        return True

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
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
        self._session = aiohttp.ClientSession(connector=connector)
        await self.check_health()
        self._tasks = [
            asyncio.create_task(self._reload_loop(), name="accordion-router-reload"),
            asyncio.create_task(self._health_loop(), name="accordion-router-health"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()

    # -- one request ---------------------------------------------------------------------------
    async def infer(
        self,
        body: bytes,
        budget_s: float,
        content_type: str,
        binary_header_length: str | None = None,
    ) -> web.Response:
        """Route one request: `body` as received, with its Content-Type and, for a binary
        tensor extension body, its Inference-Header-Content-Length (passed on as is)."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        service = self.service
        m = self.metrics
        m.requests.labels(service).inc()
        choice = self.decider.choose(budget_s, now_s=start)
        if choice.backend is None:
            m.outcomes.labels(service, "none", "shed").inc()
            return _json_error(503, f"shed: {choice.reason}", "shed")
        name = choice.backend
        backend = self.decider.backend(name)
        if choice.rerouted_from is not None:
            m.rerouted.labels(service, choice.rerouted_from, name).inc()
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
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.decider.finished(name, loop.time(), "failed")
            self._publish_weights()
            m.outcomes.labels(service, name, "error").inc()
            return _json_error(502, f"backend {name!r} failed: {exc!r}", "error")
        except BaseException:  # cancelled (the client went away): the backlog still drains
            self.decider.finished(name, loop.time(), "failed")
            raise
        elapsed = loop.time() - start
        if status == 200:
            outcome = "ok" if elapsed <= budget_s else "late"
            m.latency.labels(service, name).observe(elapsed)
            if outcome == "ok":
                m.accuracy_served.labels(service, name).inc(backend.accuracy)
        elif status == 503 and worker_outcome in {"dropped", "rejected"}:
            outcome = "dropped"
        else:
            outcome = "error"
        self.decider.finished(
            name,
            loop.time(),
            "answered" if status == 200 else "dropped" if outcome == "dropped" else "failed",
            report,
        )
        self._publish_weights()
        m.outcomes.labels(service, name, outcome).inc()
        out_headers = {"Content-Type": response_type, OUTCOME_HEADER: outcome, VARIANT_HEADER: name}
        if response_binary is not None:
            out_headers[BINARY_HEADER] = response_binary
        return web.Response(body=payload, status=status, headers=out_headers)


def worker_report(headers: Mapping[str, str]) -> tuple[str, float] | None:
    """(replica, slowdown) from a worker's answer, when it says (`SLOWDOWN_HEADER`); a value
    that is no positive number is ignored."""
    text = headers.get(SLOWDOWN_HEADER)
    if text is None:
        return None
    try:
        slowdown = float(text)
    except ValueError:
        return None
    if not math.isfinite(slowdown) or slowdown <= 0:
        return None
    return headers.get(REPLICA_HEADER, ""), slowdown


def _json_error(status: int, reason: str, outcome: str) -> web.Response:
    return web.json_response({"error": reason}, status=status, headers={OUTCOME_HEADER: outcome})


ROUTER_KEY = web.AppKey("router", Router)


def create_router_app(router: Router) -> web.Application:
    app = web.Application(client_max_size=router.max_body_bytes)
    app[ROUTER_KEY] = router

    async def live(_: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def ready(_: web.Request) -> web.Response:
        ok = bool(router.decider.plan_weights())
        return web.json_response({"ready": ok}, status=200 if ok else 503)

    async def metadata(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name != router.service:
            return _json_error(404, f"unknown model {name!r}; this router serves "
                               f"{router.service!r}", "error")  # fmt: skip
        return web.json_response(
            {
                "name": router.service,
                "platform": "accordion-router",
                "versions": [router.table.version or "1"],
                "parameters": {
                    "slo_ms": router.table.slo_ms,
                    "variants": [b.name for b in router.table.backends],
                },
            }
        )

    async def infer(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name != router.service:
            return _json_error(404, f"unknown model {name!r}; this router serves "
                               f"{router.service!r}", "error")  # fmt: skip
        header = request.headers.get(DEADLINE_HEADER)
        budget_s = router.table.slo_s
        if header is not None:
            try:
                budget_s = float(header) / 1000.0
            except ValueError:
                return _json_error(400, f"{DEADLINE_HEADER} must be a number of ms", "error")
            if not (budget_s > 0 and math.isfinite(budget_s)):
                return _json_error(400, f"{DEADLINE_HEADER} must be positive and finite", "error")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _json_error(
                413, f"request body exceeds the limit of {router.max_body_bytes} bytes", "error"
            )
        return await router.infer(
            body,
            budget_s,
            request.headers.get("Content-Type") or "application/json",
            request.headers.get(BINARY_HEADER),
        )

    async def prometheus(_: web.Request) -> web.Response:
        router._publish_weights()
        return web.Response(
            body=generate_latest(router.metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    async def on_startup(_: web.Application) -> None:
        await router.start()

    async def on_cleanup(_: web.Application) -> None:
        await router.stop()

    app.router.add_get("/v2/health/live", live)
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_get("/v2/models/{name}", metadata)
    app.router.add_post("/v2/models/{name}/infer", infer)
    app.router.add_get("/metrics", prometheus)
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


def serve_router(table: Path | Router, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run a router (or one on the table file `table`) until SIGINT or SIGTERM."""
    router = table if isinstance(table, Router) else Router(table)
    web.run_app(create_router_app(router), host=host, port=port, print=None)
