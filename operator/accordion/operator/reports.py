"""Routers' reports: demand every second, and routing tables that reach routers at once.

Every router posts a `RouterReport` to the leading operator (`POST /v1/reports`, about once a
second; a steady one stays quiet up to a heartbeat, see `accordion.workers.reporting`): its
service, its pod, its arrivals and the rate of its last window, and the routing table it has
(version and revision). Knative's autoscaler gets its activators' statistics the same way; the
alternative here, Prometheus's `rate(accordion_router_requests_total[1m])` every 15 s, is tens of
seconds late for a burst that grows 7x within a second.

What the operator does with them:

* **Demand** (`ReportBook`, `RouterDemand`). Per service and router it keeps the last report
  (receive time on the operator's clock, arrivals counter, rate, table). A service's rate is
  the sum of the rates of its *live* routers: heard from within `heartbeat_s + 2 x interval_s`
  (a router that stops says so and is dropped at once; a crashed one ages out). A router whose
  counter went back or whose process changed (`instance`) restarted: its entry starts again,
  and its window's rate still counts (a window never spans a restart). Once per demand interval
  `RouterDemand.fold` observes each service's rate into its `DemandTracker` (the asymmetric
  EWMA with the surge and fast-fall rules, fed back with the plan's capacity like every other
  driver's), and the estimates are published when they move by more than `MIN_CHANGE` (status
  would churn otherwise). A report that shows its service's rate above the planned capacity
  (and above the estimate) by more than counting noise folds at once instead (`run`, at most
  every quarter interval): a burst reaches the loop half an interval sooner on average.
* **Burstiness** (`RouterDemand.bursty`). The routers' indices of dispersion are combined
  per service and published when they move (`control.burstiness`) into `DemandView.burstiness`:
  the planner then sizes replicas with its batching model instead of the utilization margin.
* **Precedence** (`RouterDemand.view`). Static services: their `demand.qps`, never reports.
  Prometheus services with their own `demand.query`: Prometheus only (the query may measure
  something else than router arrivals). `Router` services, and Prometheus services without a
  query (whose default query reads the very counter routers report): reports while some router
  of the service is live; else Prometheus's answer when the operator has a Prometheus (the
  driver asks it only for those services, `prometheus_services`); else the last estimate,
  reported as `DemandUnavailable` once the routers have gone silent.
* **Routing** (`RouterDemand.answer`). The answer to a report carries the routing table the
  operator last applied for the service (its routing ConfigMap, as the actuator wrote it) when
  the router's revision is older: a router has a new table about one report interval after the
  write, instead of after the kubelet's sync of the mounted file (up to about a minute). While
  the service's routing is not final, or some live router has not confirmed the table yet, the
  answer asks for a report every interval (`heartbeat_s: 0`).
* **Drain** (`RouterDemand.confirmed`). The loop removes old workers `drain_s` after the final
  routing is in place. `AppliedRouting.applied_at_s` is then the time the last live router
  confirmed the table (reported its version), so the drain counts from when routers really
  route by it. Until they all have, it is "now" (the loop waits and looks again). When no
  router of the service reports (reports are off, or they are silent), routers read the table
  from their mounted ConfigMap, so it is the ConfigMap's write time plus `file_sync_s` (the
  kubelet's sync bound, `config.ROUTING_FILE_SYNC_S`; `file_synced`): removing the old workers
  sooner would leave routers routing by a table whose workers are gone. When they have not
  confirmed within `confirm_timeout_s` (a router that refuses the table), it is the write time.
* **Leadership**: only the leader takes reports; followers answer 503 and their `/readyz` is 503,
  so the report Service (whose endpoints are the ready operator pods) reaches the leader.
* **Authentication** (`report_auth: TokenReview`, the default): a report carries its router's
  projected ServiceAccount token and speaks only for services of that pod's namespace
  (`accordion.operator.reportauth`).

The aiohttp server (`ReportServer`) runs in the operator's process; a request is answered from
memory (the table is parsed once per ConfigMap change), no API call.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from aiohttp import hdrs, web
from pydantic import ValidationError

from accordion.operator.api import DemandSource, InferenceService
from accordion.operator.config import ROUTING_FILE_SYNC_S
from accordion.operator.control.burstiness import BurstinessBook, combine
from accordion.operator.control.demand import SURGE_SIGMAS, DemandTracker, counting_noise_qps
from accordion.operator.control.loop import AppliedRouting, DemandView
from accordion.operator.metrics import REPORTS
from accordion.operator.reportauth import (
    ReviewUnavailableError,
    TokenAuthenticator,
    UnauthenticatedError,
)
from accordion.solver import Burstiness
from accordion.workers.config import REPORT_PATH, ReportAnswer, RouterReport, RoutingTable

log = logging.getLogger(__name__)

MIN_CHANGE = 0.02
"""An estimate is published again when it moved by more than this fraction (as Prometheus's)."""
MAX_ROUTERS_PER_SERVICE = 256
"""Routers kept per service: beyond it a new router is refused (429) until some age out."""
MAX_BODY_BYTES = 16 * 1024
"""A report is a few hundred bytes."""


@dataclass
class RouterState:
    """The last report of one router, on the operator's clock."""

    instance: str
    received_s: float
    requests_total: int
    rate_qps: float | None
    version: str
    revision: int
    version_since_s: float
    """When it first reported `version` (its confirmation of that table)."""
    table_error: str | None = None
    dispersion: tuple[float, float] | None = None
    """Its arrivals' index of dispersion and rate (`accordion.workers.dispersion`)."""
    cold_start_s: float | None = None
    """The last cold start it measured (its activator)."""


@dataclass(frozen=True)
class Confirmation:
    """Where a service's live routers stand with a table version."""

    live: int
    confirmed_at_s: float | None
    """When the last of them confirmed it; None while some have not (or none is live)."""
    pending: tuple[str, ...] = ()


@dataclass
class ReportBook:
    """Per service and router, the last report; rates and confirmations from them (pure)."""

    interval_s: float = 1.0
    heartbeat_s: float = 10.0
    routers: dict[str, dict[str, RouterState]] = field(default_factory=dict)
    restarts: int = 0
    """Routers seen to restart (a new process, or a counter that went back)."""

    @property
    def stale_s(self) -> float:
        """A router not heard from for this long is no longer counted."""
        return self.heartbeat_s + 2.0 * self.interval_s

    def take(self, report: RouterReport, now_s: float) -> None:
        """Keep `report`, received at `now_s`; a stopping router is forgotten at once."""
        service = self.routers.setdefault(report.service, {})
        if report.stopping:
            service.pop(report.router, None)
            return
        prev = service.get(report.router)
        if prev is None and len(service) >= MAX_ROUTERS_PER_SERVICE:
            self.expire(now_s)
            if len(service) >= MAX_ROUTERS_PER_SERVICE:
                raise OverflowError(
                    f"{report.service} has {len(service)} live routers already; "
                    f"at most {MAX_ROUTERS_PER_SERVICE} are counted"
                )
        restarted = prev is not None and (
            prev.instance != report.instance or report.requests_total < prev.requests_total
        )
        if restarted:
            self.restarts += 1
            log.info("router %s of %s restarted", report.router, report.service)
        rate = report.rate_qps
        same_table = prev is not None and prev.version == report.table_version
        service[report.router] = RouterState(
            instance=report.instance,
            received_s=now_s,
            requests_total=report.requests_total,
            rate_qps=rate if rate is not None and math.isfinite(rate) else None,
            version=report.table_version,
            revision=report.table_revision,
            version_since_s=prev.version_since_s if prev is not None and same_table else now_s,
            table_error=report.table_error,
            dispersion=_dispersion(report),
            cold_start_s=report.cold_start_s,
        )

    def live(self, service: str, now_s: float) -> dict[str, RouterState]:
        """The routers of `service` heard from within `stale_s`."""
        return {
            name: state
            for name, state in (self.routers.get(service) or {}).items()
            if now_s - state.received_s <= self.stale_s
        }

    def rate_qps(self, service: str, now_s: float) -> float | None:
        """The service's arrival rate: the sum over its live routers; None without any."""
        rates = [s.rate_qps for s in self.live(service, now_s).values() if s.rate_qps is not None]
        return sum(rates) if rates else None

    def cold_start_s(self, service: str) -> float | None:
        """The longest of the last cold starts its routers measured; None: none yet."""
        values = [
            s.cold_start_s
            for s in (self.routers.get(service) or {}).values()
            if s.cold_start_s is not None
        ]
        return max(values) if values else None

    def burstiness(self, service: str, now_s: float) -> Burstiness | None:
        """The service's burstiness from its live routers (`control.burstiness.combine`)."""
        live = self.live(service, now_s).values()
        return combine(s.dispersion for s in live if s.dispersion is not None)

    def confirmation(self, service: str, version: str, now_s: float) -> Confirmation:
        live = self.live(service, now_s)
        pending = tuple(sorted(n for n, s in live.items() if s.version != version))
        if not live or pending:
            return Confirmation(len(live), None, pending)
        return Confirmation(len(live), max(s.version_since_s for s in live.values()))

    def expire(self, now_s: float) -> None:
        """Forget routers silent for twice `stale_s` (memory; they no longer count anyway)."""
        for service in list(self.routers):
            routers = self.routers[service]
            for name in [n for n, s in routers.items() if now_s - s.received_s > 2 * self.stale_s]:
                del routers[name]
            if not routers:
                del self.routers[service]

    def forget(self, service: str) -> None:
        self.routers.pop(service, None)


@dataclass(frozen=True)
class ServiceRouting:
    """What the operator applied for one service: the table routers should have, and the
    loop's view of it (None: nothing applied yet)."""

    table: RoutingTable | None
    applied: AppliedRouting | None


def takes_reports(service: InferenceService) -> bool:
    """Whether the service's demand comes from its routers' reports (see the precedence)."""
    demand = service.spec.demand
    if demand.source is DemandSource.ROUTER:
        return True
    return demand.source is DemandSource.PROMETHEUS and not demand.query


class UnknownServiceError(LookupError):
    """A report for a service that does not exist (404)."""


@dataclass
class RouterDemand:
    """The operator's side of the reports: demand estimates, answers, confirmations."""

    lookup: Callable[[str], ServiceRouting | None]
    """The routing applied for a service; None for a service that does not exist."""
    clock: Callable[[], float]
    interval_s: float = 1.0
    heartbeat_s: float = 10.0
    confirm_timeout_s: float = 60.0
    file_sync_s: float = ROUTING_FILE_SYNC_S
    """How long a router that does not report takes to read a new table from its file."""
    tracker: DemandTracker = field(default_factory=DemandTracker)
    book: ReportBook = field(init=False)
    published: dict[str, float] = field(default_factory=dict)
    bursty: BurstinessBook = field(default_factory=BurstinessBook)
    _warned: set[tuple[str, str]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.book = ReportBook(self.interval_s, self.heartbeat_s)
        self._surge = asyncio.Event()

    # -- a report --------------------------------------------------------------------------

    def answer(self, report: RouterReport) -> ReportAnswer:
        """Take a report; the answer (a newer table if there is one). `UnknownServiceError`
        for a service that does not exist, `OverflowError` for one router too many."""
        routing = self.lookup(report.service)
        if routing is None:
            raise UnknownServiceError(f"no InferenceService {report.service}")
        now = self.clock()
        self.book.take(report, now)
        if self._surging(report.service, now):
            self._surge.set()
        if report.table_error and (report.service, report.table_error) not in self._warned:
            if len(self._warned) >= 10_000:
                self._warned.clear()  # bounded: say it again rather than grow without end
            self._warned.add((report.service, report.table_error))
            log.warning(
                "router %s of %s refused its routing table: %s",
                report.router,
                report.service,
                report.table_error,
            )
        table = routing.table
        newer = table is not None and table.revision > report.table_revision
        live = self.book.live(report.service, now)
        waiting = (
            newer
            or (routing.applied is not None and not routing.applied.routing.final)
            or (table is not None and any(s.version != table.version for s in live.values()))
        )
        return ReportAnswer(
            table=table if newer else None,
            heartbeat_s=0.0 if waiting else self.heartbeat_s,
            routers=max(1, len(live)),
        )

    def _surging(self, service: str, now_s: float) -> bool:
        """The service's rate is above its planned capacity and its estimate, beyond noise."""
        capacity = self.tracker.capacity_qps.get(service)
        rate = self.book.rate_qps(service, now_s)
        if capacity is None or rate is None:
            return False
        if capacity <= 0 and rate > 0:
            return True  # requests at zero replicas (scale to zero): start one at once
        base = max(capacity, self.published.get(service, 0.0))
        return rate > base + SURGE_SIGMAS * counting_noise_qps(base, self.interval_s)

    # -- demand ----------------------------------------------------------------------------

    async def run(self, tick: Callable[[], None]) -> None:
        """Call `tick` (the driver's fold and check) every interval, and sooner (at most every
        quarter interval) when a report shows a surge; forever."""
        while True:
            started = time.monotonic()
            self._surge.clear()
            try:
                tick()
            except Exception:  # a bad tick must not end the folding
                log.exception("folding the routers' reports failed")
            await asyncio.sleep(self.interval_s / 4)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._surge.wait(), max(0.0, started + self.interval_s - time.monotonic())
                )

    def fold(self, services: Mapping[str, InferenceService]) -> bool:
        """Observe each report-sourced service's rate (once per demand interval); True when a
        published estimate changed."""
        now = self.clock()
        changed = False
        for key in list(self.published):
            if key not in services or not takes_reports(services[key]):
                self.published.pop(key)
                self.tracker.forget(key)
                self.bursty.forget(key)
                changed = True
        for key, svc in services.items():
            if not takes_reports(svc):
                continue
            rate = self.book.rate_qps(key, now)
            if rate is None:
                continue
            estimate = self.tracker.observe(key, now, rate)
            changed |= self.bursty.observe(key, self.book.burstiness(key, now))
            old = self.published.get(key)
            if old is None or abs(estimate - old) > MIN_CHANGE * max(old, 1.0):
                self.published[key] = round(estimate, 3)
                changed = True
        for key in self.book.routers.keys() - services.keys():
            self.book.forget(key)  # a deleted service
        self.book.expire(now)
        return changed

    def reporting(self, service: str) -> bool:
        """Whether some router of `service` is live now."""
        return bool(self.book.live(service, self.clock()))

    def prometheus_services(self, services: Iterable[InferenceService]) -> list[InferenceService]:
        """The services Prometheus should measure: custom queries, and report-sourced services
        none of whose routers reports now."""
        return [
            s
            for s in services
            if s.spec.demand.source is not DemandSource.STATIC
            and not (takes_reports(s) and self.reporting(s.key))
        ]

    def view(self, services: Mapping[str, InferenceService], prometheus: DemandView) -> DemandView:
        """The demand the loop plans for: reports, Prometheus and the last estimates merged
        by the precedence of the module docstring."""
        out = dataclasses.replace(
            prometheus,
            qps=dict(prometheus.qps),
            unavailable=dict(prometheus.unavailable),
            burst=dict(prometheus.burst),
            burstiness=dict(prometheus.burstiness),
            last_arrival_s=dict(prometheus.last_arrival_s),
            cold_start_s=dict(prometheus.cold_start_s),
        )
        bursts = self.tracker.bursts()
        arrivals = self.tracker.last_arrivals()
        now = self.clock()
        for key, svc in services.items():
            if not takes_reports(svc) or key not in self.published:
                continue
            live = bool(self.book.live(key, now))
            measured_elsewhere = key in prometheus.qps or key in prometheus.unavailable
            if live or not measured_elsewhere:
                out.qps[key] = self.published[key]
                if key in bursts:
                    out.burst[key] = bursts[key]
                if key in self.bursty.published:
                    out.burstiness[key] = self.bursty.published[key]
                if key in arrivals:
                    out.last_arrival_s[key] = arrivals[key]
                out.unavailable.pop(key, None)
            cold_start = self.book.cold_start_s(key)
            if cold_start is not None:
                out.cold_start_s[key] = cold_start
            if not live and not measured_elsewhere:
                out.unavailable[key] = (
                    f"no report from the routers of {key} for more than {self.book.stale_s:g} s"
                )
        return out

    # -- the drain -------------------------------------------------------------------------

    def confirmed(self, routing: Mapping[str, AppliedRouting]) -> dict[str, AppliedRouting]:
        """`routing` with `applied_at_s` moved to when the live routers confirmed the table
        (see the module docstring); services without live routers are left as they are."""
        now = self.clock()
        out = dict(routing)
        for key, applied in routing.items():
            svc = self.lookup(key)
            table = svc.table if svc is not None else None
            if table is None:
                continue
            state = self.book.confirmation(key, table.version, now)
            if state.live == 0:  # routers, if any, read the file
                out[key] = file_synced(applied, self.file_sync_s)
                continue
            if state.confirmed_at_s is not None:
                at = max(applied.applied_at_s, state.confirmed_at_s)
            elif now - applied.applied_at_s < self.confirm_timeout_s:
                at = now  # not yet: the loop waits, and looks again
            else:
                at = applied.applied_at_s
                if (key, table.version) not in self._warned:
                    self._warned.add((key, table.version))
                    log.warning(
                        "routers %s of %s have not taken routing table %s within %g s: the "
                        "drain counts from the ConfigMap write",
                        ", ".join(state.pending),
                        key,
                        table.version,
                        self.confirm_timeout_s,
                    )
            if at != applied.applied_at_s:
                out[key] = dataclasses.replace(applied, applied_at_s=at)
        return out


def file_synced(applied: AppliedRouting, sync_s: float) -> AppliedRouting:
    """`applied` as routers that read their table from the mounted ConfigMap have it: in place
    `sync_s` after its write (the kubelet's sync), so that the drain counts from then."""
    return dataclasses.replace(applied, applied_at_s=applied.applied_at_s + sync_s)


# ----------------------------------------------------------------------------------- HTTP


class ReportServer:
    """The aiohttp server of the reports: `POST /v1/reports`, `GET /readyz`.

    `leading()` says whether this operator leads: followers answer 503 to both, so only the
    leader is behind the report Service (its endpoints are the ready pods).

    With `auth` (`accordion.operator.reportauth`) a report is taken only from a router whose
    token the API server vouches for, about a service of its own namespace: 401 without a
    valid token, 403 for another namespace, 503 when the token cannot be reviewed. Every answer
    is counted by its status code (`accordion_operator_reports_total{code}`). The token
    is checked before the body is even read: a caller who cannot authenticate costs no
    parsing and learns nothing from validation errors or which services exist (404); the
    namespace is checked after parsing (it is in the body), before the report is looked at."""

    def __init__(
        self,
        demand: RouterDemand,
        leading: Callable[[], bool],
        auth: TokenAuthenticator | None = None,
    ) -> None:
        self.demand = demand
        self.leading = leading
        self.auth = auth
        self.refused = 0
        """Reports refused for their credentials (401, 403)."""
        self.taken = 0
        self.port: int | None = None
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post(REPORT_PATH, self._report)
        app.router.add_get("/readyz", self._ready)
        return app

    async def _ready(self, _: web.Request) -> web.Response:
        ok = self.leading()
        return web.json_response({"leading": ok}, status=200 if ok else 503)

    async def _report(self, request: web.Request) -> web.Response:
        response = await self._answer(request)
        REPORTS.labels(code=str(response.status)).inc()
        return response

    async def _answer(self, request: web.Request) -> web.Response:
        if not self.leading():
            return _error(503, "this operator is not the leader")
        identity = None
        if self.auth is not None:
            try:
                identity = await self.auth.identity(request.headers.get(hdrs.AUTHORIZATION))
            except UnauthenticatedError as exc:
                self.refused += 1
                return _error(401, str(exc), {hdrs.WWW_AUTHENTICATE: 'Bearer realm="reports"'})
            except ReviewUnavailableError as exc:
                return _error(503, str(exc))
        try:
            report = RouterReport.model_validate_json(await request.read())
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"a report is at most {MAX_BODY_BYTES} bytes")
        except ValidationError as exc:
            return _error(400, f"invalid report: {_reasons(exc)}")
        if identity is not None and (reason := identity.refuses(report.service, report.router)):
            self.refused += 1
            return _error(403, reason)
        try:
            answer = self.demand.answer(report)
        except UnknownServiceError as exc:
            return _error(404, str(exc))
        except OverflowError as exc:
            return _error(429, str(exc))
        self.taken += 1
        return web.Response(
            body=answer.model_dump_json(exclude_none=True), content_type="application/json"
        )

    async def start(self, host: str | None, port: int) -> int:
        """Listen on `host:port` (host None: every interface; port 0: any free port); the
        port bound."""
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1]) if sockets else port
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def _dispersion(report: RouterReport) -> tuple[float, float] | None:
    """A report's (index of dispersion, rate), when it carries a usable one."""
    d, rate = report.arrival_dispersion, report.dispersion_rate_qps
    if d is None or rate is None or not (math.isfinite(d) and math.isfinite(rate)):
        return None
    return d, rate


def _error(status: int, reason: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response({"error": reason}, status=status, headers=headers)


def _reasons(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()[:3]
    )
