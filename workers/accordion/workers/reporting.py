"""Reports from a router to the operator: its arrivals, and the routing table it has.

Why: the operator plans from each service's arrival rate, measured every second
(`Timings.demand_interval_s`), and re-plans at once when a burst leaves the plan's band. Read
back from Prometheus (a scrape every 15 s, a `rate()` over a minute) the rate comes tens of
seconds late; a ConfigMap mounted as a file reaches the router only after the kubelet's sync
(up to about a minute). So each router reports to the operator itself, as Knative's activators
send their request statistics to its autoscaler, and the operator's answer carries the
service's newer routing table, if there is one, as Envoy gets its routes over xDS. The file
stays the durable source: the table at start, and whatever the kubelet syncs while the
operator cannot be reached; of two tables the higher `RoutingTable.revision` wins.

`ReportPolicy` is the pure part (what a report says, when one is due), on an injected clock.
Every `interval_s` the router closes a window (arrivals since the last one, a batch counting
its samples, as ``accordion_router_requests_total``) and reports unless all of these hold, so
that a thousand services at a steady load do not cost the operator two thousand requests a
second:

* its rate moved less than `min_change` (10%) from the rate it last reported, or less than
  `NOISE_SIGMAS` standard deviations of the counting noise of the two rates (at low rates
  Poisson noise alone moves a one-second rate by more than 10%);
* its last report was acknowledged less than a heartbeat ago (`heartbeat_s`; the operator may
  shorten it, down to every interval while it waits for this router to take a new table);
* its arrivals are within its share of the table's planned capacity (the capacity over the
  number of routers of the service), give or take counting noise (arrivals beyond it are
  reported every interval: that is a burst);
* its table is the one it last reported, and the last report did not fail.

A report for a moved rate carries the last window only, so the first report after a quiet spell
shows the new rate undiluted; any other report (a heartbeat, a new table) carries the arrivals
since the last acknowledged report, a long average that is a better base for the next
comparison than a one-second sample.

Every report also carries the burstiness of the arrivals when known: the index of dispersion of
the counts per 0.1 s over the last 60 s (`dispersion.DispersionMeter`, fed by `Reporter.sample`
every bin), for the planner's batching model; an operator that does not know the fields
ignores them.

`Reporter` is the HTTP part: a background task of the router that posts the report (JSON,
`RouterReport`) and hands a table in the answer (`ReportAnswer`) to the router, which validates
it as it validates its file. With a token file (`--report-token-file`: the pod's projected
ServiceAccount token for `REPORT_AUDIENCE`, which the kubelet rotates) every report carries
`Authorization: Bearer <token>`, read again when the file changes (`accordion.workers.tokenfile`)
and after the operator refused it (401); the operator checks it with the TokenReview API.
Failures are logged at debug level (a change between reachable and not at info) and the report
is retried at the next interval; requests never wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from accordion.workers.config import ReportAnswer, RouterReport, RoutingTable
from accordion.workers.dispersion import DispersionMeter
from accordion.workers.tokenfile import TokenFile

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 1.0
"""How often a router closes a window and may report (the control loop's demand interval)."""
DEFAULT_HEARTBEAT_S = 10.0
"""Longest silence of a router whose rate is steady (the operator's liveness window is
longer)."""
MIN_CHANGE = 0.1
"""A rate that moved by less than this fraction of the last reported one may go unreported."""
NOISE_SIGMAS = 2.0
"""... or by less than this many standard deviations of counting noise at that rate."""


@dataclass(frozen=True)
class Window:
    """One closed window: the arrivals in it, its length, and why to report (None: skip)."""

    requests: int
    seconds: float
    reason: str | None

    @property
    def rate_qps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


class ReportPolicy:
    """When a router reports (see the module docstring); pure, on an injected clock."""

    def __init__(
        self,
        interval_s: float = DEFAULT_INTERVAL_S,
        heartbeat_s: float = DEFAULT_HEARTBEAT_S,
        min_change: float = MIN_CHANGE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval_s <= 0 or heartbeat_s < 0 or min_change < 0:
            raise ValueError("interval_s must be > 0, heartbeat_s and min_change >= 0")
        self.interval_s = interval_s
        self.heartbeat_s = heartbeat_s
        self.min_change = min_change
        self.clock = clock
        self._window_start_s = clock()
        self._window_start_total = 0
        self._reported_rate: float | None = None
        self._reported_s: float | None = None
        self._reported_window_s = 1.0
        self._reported_total = 0
        self._reported_table: tuple[str, int] | None = None
        self._failed = False
        self.operator_heartbeat_s: float | None = None
        """The heartbeat the operator's last answer asked for (None: none yet)."""
        self.routers = 1
        """Live routers of the service, as the operator's last answer said."""
        self.urgent = False
        """A request arrived while no replica is ready (`Reporter.wake`): report the next
        window whatever the quiet rule says, so the operator starts one at once."""

    def close_window(
        self, requests_total: int, table: tuple[str, int], capacity_qps: float | None
    ) -> Window:
        """Close the window at `requests_total` arrivals; say whether to report it, and what.

        `table`: (version, revision) of the table the router has; `capacity_qps`: its planned
        capacity for the whole service (`RoutingTable.planned_capacity_qps`). A report for a
        moved rate carries the last window alone (undiluted); any other report carries the
        arrivals since the last acknowledged one (a long average: less counting noise)."""
        now = self.clock()
        seconds = max(0.0, now - self._window_start_s)
        requests = max(0, requests_total - self._window_start_total)
        self._window_start_s, self._window_start_total = now, requests_total
        last = Window(requests, seconds, None)
        if self.urgent:
            # A wake-up from idle (no arrivals reported last) counts over one interval at least:
            # the first request of a cold start a moment into the window would otherwise read
            # as a rate of hundreds per second (one request in 10 ms), and the operator would
            # plan replicas for it. A service with traffic (starved: no replica planned)
            # reports its true window.
            self.urgent = False
            if not self._reported_rate:
                seconds = max(seconds, self.interval_s)
            return Window(requests, seconds, "cold-start")
        if self._reported_s is None or self._reported_rate is None:
            return Window(requests, seconds, "first")
        moved = self._moved(last, capacity_qps)
        reason = moved
        if self._failed:
            reason = "retry"
        elif table != self._reported_table:
            reason = "table"
        elif moved is None and now - self._reported_s >= self._heartbeat() - self.interval_s / 2:
            # Windows close every interval: the last close before the heartbeat is due.
            reason = "heartbeat"
        if reason is None or moved is not None:
            return Window(requests, seconds, reason)
        return Window(max(0, requests_total - self._reported_total), now - self._reported_s, reason)

    def _heartbeat(self) -> float:
        if self.operator_heartbeat_s is None:
            return self.heartbeat_s
        return min(self.heartbeat_s, self.operator_heartbeat_s)

    def _moved(self, window: Window, capacity_qps: float | None) -> str | None:
        """Why `window`'s rate is news to the operator: beyond capacity, or moved."""
        assert self._reported_rate is not None
        rate = window.rate_qps
        if capacity_qps is not None:
            # This router's share of the capacity, plus counting noise: 2 sigma here is a
            # little more sensitive than the operator's surge rule (3 sigma over all routers).
            share = capacity_qps / self.routers
            noise = NOISE_SIGMAS * math.sqrt(max(share, 1.0) / max(window.seconds, 1e-3))
            if rate > share + noise:
                return "over-capacity"
        before = self._reported_rate
        # Counting noise of both rates: the reported one over its window, this one over its.
        variance = max(before, 1.0) * (
            1.0 / max(window.seconds, 1e-3) + 1.0 / max(self._reported_window_s, 1e-3)
        )
        if abs(rate - before) > max(self.min_change * before, NOISE_SIGMAS * math.sqrt(variance)):
            return "rate"
        return None

    def delivered(self, window: Window, table: tuple[str, int], answer: ReportAnswer) -> None:
        """The report of `window` was acknowledged with `answer`."""
        self._reported_s = self.clock()
        self._reported_rate = window.rate_qps
        self._reported_window_s = window.seconds
        self._reported_total = self._window_start_total
        self._reported_table = table
        self._failed = False
        self.operator_heartbeat_s = answer.heartbeat_s
        self.routers = answer.routers

    def failed(self) -> None:
        """The report was not acknowledged: report again at the next window."""
        self._failed = True


def pod_name() -> str:
    """The router's identity in reports: its pod's name (POD_NAME), else the host name."""
    return os.environ.get("POD_NAME") or socket.gethostname()


class Reporter:
    """Posts the router's reports to the operator and hands newer tables to the router.

    `table()` gives the router's current table, `requests_total()` its arrivals so far, and
    `adopt(table)` offers it a table from an answer (it returns why it refused one, or None).
    """

    def __init__(
        self,
        url: str,
        table: Callable[[], RoutingTable],
        requests_total: Callable[[], int],
        adopt: Callable[[RoutingTable], str | None],
        policy: ReportPolicy | None = None,
        router: str | None = None,
        namespace: str | None = None,
        cold_start_s: Callable[[], float | None] = lambda: None,
        token_file: str | Path | None = None,
    ) -> None:
        self.url = url
        self.token = TokenFile(token_file) if token_file else None
        """The bearer token sent with every report (None: none)."""
        self._cold_start_s = cold_start_s
        self.policy = policy or ReportPolicy()
        self._table = table
        self._requests_total = requests_total
        self._adopt = adopt
        self.router = router or pod_name()
        self.instance = uuid.uuid4().hex[:12]
        self.namespace = namespace or os.environ.get("POD_NAMESPACE")
        self.table_error: str | None = None
        self.sent = 0
        """Reports acknowledged so far."""
        self.bytes_sent = 0
        """Bytes of report bodies posted so far."""
        self.reachable: bool | None = None
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Task[str | None] | None = None
        self._warned_no_namespace = False
        self.dispersion = DispersionMeter()
        """Burstiness of the arrivals, sampled every bin by `sample` (reported with them)."""
        self._sampler: asyncio.Task[None] | None = None

    def service_key(self) -> str | None:
        """namespace/name of the service, from the table (or POD_NAMESPACE); None if unknown."""
        table = self._table()
        namespace = table.namespace or self.namespace
        if not namespace:
            if not self._warned_no_namespace:
                log.warning(
                    "not reporting to %s: the routing table names no namespace and POD_NAMESPACE"
                    " is not set",
                    self.url,
                )
                self._warned_no_namespace = True
            return None
        return f"{namespace}/{table.service}"

    def report(self, window: Window, stopping: bool = False) -> RouterReport | None:
        """The report of `window`, None when the service cannot be named."""
        service = self.service_key()
        if service is None:
            return None
        table = self._table()
        burstiness = self.dispersion.value()
        return RouterReport(
            service=service,
            router=self.router,
            instance=self.instance,
            requests_total=self._requests_total(),
            window_requests=window.requests,
            window_s=window.seconds,
            table_version=table.version,
            table_revision=table.revision,
            table_error=self.table_error,
            stopping=stopping,
            arrival_dispersion=None if burstiness is None else round(burstiness[0], 4),
            dispersion_rate_qps=None if burstiness is None else round(burstiness[1], 4),
            cold_start_s=self._cold_start_s(),
        )

    async def post(self, report: RouterReport) -> ReportAnswer:
        """Post one report; the operator's answer (raises on any failure)."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        body = report.model_dump_json(exclude_defaults=True).encode()
        self.bytes_sent += len(body)
        timeout = aiohttp.ClientTimeout(total=max(0.5, min(self.policy.interval_s, 5.0)))
        headers = {"Content-Type": "application/json"}
        if self.token is not None:
            headers.update(self.token.header())  # OSError: the file cannot be read
        async with self._session.post(
            self.url, data=body, headers=headers, timeout=timeout
        ) as resp:
            raw = await resp.read()
            if resp.status == 401 and self.token is not None:
                self.token.forget()  # rotated under us, perhaps: read it again next time
            if resp.status != 200:
                raise ValueError(f"HTTP {resp.status}: {raw[:200].decode('utf-8', 'replace')}")
        return ReportAnswer.model_validate_json(raw)

    async def step(self) -> str | None:
        """Close a window and report it if due; the reason it was reported, or None."""
        table = self._table()
        key = (table.version, table.revision)
        window = self.policy.close_window(self._requests_total(), key, table.planned_capacity_qps())
        if window.reason is None:
            return None
        report = self.report(window)
        if report is None:
            return None
        try:
            answer = await self.post(report)
        except (aiohttp.ClientError, TimeoutError, ValueError, OSError) as exc:
            self.policy.failed()
            log.debug("report to %s failed: %s", self.url, exc)
            if self.reachable is not False:
                log.info("the operator at %s does not take reports now: %s", self.url, exc)
            self.reachable = False
            return window.reason
        if self.reachable is not True:
            log.info("reporting to %s", self.url)
        self.reachable = True
        self.sent += 1
        self.policy.delivered(window, key, answer)
        if answer.table is not None:
            self.table_error = self._adopt(answer.table)
        return window.reason

    def wake(self) -> None:
        """Report now, whatever the quiet rule says: a request waits at zero ready replicas
        (`accordion.workers.activator`), and the operator must start one. One at a time."""
        if self._task is None or (self._wake is not None and not self._wake.done()):
            return
        self.policy.urgent = True
        self._wake = asyncio.create_task(self.step(), name="accordion-router-wake")

    async def run(self) -> None:
        """Report every interval until cancelled (a failure never stops it)."""
        loop = asyncio.get_running_loop()
        next_s = loop.time() + self.policy.interval_s
        while True:
            await asyncio.sleep(max(0.0, next_s - loop.time()))
            next_s += self.policy.interval_s
            if next_s < loop.time():  # fell behind (a slow answer): skip, don't burst
                next_s = loop.time() + self.policy.interval_s
            try:
                await self.step()
            except Exception:  # never let one bad report stop the later ones
                log.exception("reporting to %s failed", self.url)

    async def sample(self) -> None:
        """Read the arrivals counter into `dispersion` once per bin, until cancelled."""
        loop = asyncio.get_running_loop()
        bin_s = self.dispersion.bin_s
        last = self._requests_total()
        next_s = loop.time()
        self.dispersion.add(next_s, 0)
        while True:
            next_s += bin_s
            await asyncio.sleep(max(0.0, next_s - loop.time()))
            total = self._requests_total()
            self.dispersion.add(max(next_s, loop.time() - bin_s / 2), total - last)
            last = total

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="accordion-router-report")
        self._sampler = asyncio.create_task(self.sample(), name="accordion-router-dispersion")

    async def stop(self) -> None:
        """Stop reporting; tell the operator this router is going (best effort)."""
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
        for task in (self._task, self._wake):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self.reachable:
            window = self.policy.close_window(self._requests_total(), ("", 0), None)
            report = self.report(window, stopping=True)
            if report is not None:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError, OSError):
                    await self.post(report)
        if self._session is not None:
            await self._session.close()
