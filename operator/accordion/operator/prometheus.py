"""Demand from Prometheus: the rate of each service's router requests, smoothed.

Every `demand_interval_s` the operator asks Prometheus's HTTP API (`/api/v1/query`, with
aiohttp) for the request rate of each service whose demand source is Prometheus, folds the
answers into the shared estimator (`accordion.operator.control.demand.DemandTracker`, an
asymmetric EWMA), and publishes the estimates the control loop plans for. A service whose query
fails keeps its last estimate (or its spec's `demand.qps`) and is reported as
`DemandUnavailable`, with the reason. Small changes are not published (`min_change`):
re-planning for a 1% drift would only churn status.

Tenants write queries, the operator runs them with its own Prometheus access, so:

* **Isolation.** A `spec.demand.query` may read only its own namespace: it is parsed
  (promql-parser) and every vector selector must carry the matcher `namespace="<the service's
  namespace>"`; otherwise it is not sent at all and the service reports why. The tenant's text
  is sent unchanged, so what was checked is exactly what runs. (Rewriting the query to inject the
  matcher, as prom-label-proxy does, needs a faithful printer; promql-parser's is not one: it
  does not escape quotes in label values and prints `@` inside range selectors, so a rewrite
  could change what a query reads.) The operator's own template (`demand_query`) is trusted.
* **Fair time.** Queries run concurrently, each with its own timeout (`timeout_s`, also sent to
  Prometheus as `timeout`), at most `max_concurrent` at once and at most `max_per_namespace` per
  namespace, fastest-last-time first; a poll waits at most `timeout_s` plus a second. Five slow
  queries of one team hold two of that team's slots for one timeout: every other namespace is
  measured on time, and the team's own queries that could not run are reported, not waited for.
* **Plausible answers.** NaN, infinities, negatives and rates above the API's `MAX_QPS` are
  rejected with the value in the reason; the planner only ever sees bounded numbers.

Secured Prometheus (Thanos, OpenShift monitoring): a bearer token read from a file (re-read
when the file changes, as Prometheus's own `authorization.credentials_file`: a rotated Secret
or projected ServiceAccount token is picked up without a restart), a CA bundle (and an optional
client certificate) for TLS, re-read when they change, or `insecure_skip_verify`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import os
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import promql_parser

from accordion.operator.api import MAX_QPS, DemandSource, InferenceService
from accordion.operator.control.demand import DemandTracker
from accordion.operator.control.loop import DemandView
from accordion.operator.control.timing import DEFAULT_TIMINGS

if TYPE_CHECKING:
    from accordion.operator.config import OperatorConfig


class QueryRejectedError(ValueError):
    """A tenant's `demand.query` that the operator will not run (it is never sent)."""


@functools.lru_cache(maxsize=4096)
def check_scope(query: str, namespace: str) -> str:
    """`query` if every selector in it is confined to `namespace`, else `QueryRejectedError`."""
    try:
        expr = promql_parser.parse(query)
    except ValueError as exc:
        raise QueryRejectedError(f"demand.query is not valid PromQL: {exc}") from None
    problems: list[str] = []

    def visit(node: promql_parser.Expr) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            matchers = node.matchers
            if matchers.or_matchers:
                problems.append(f"{node}: 'or' between label matchers is not allowed")
            elif not any(
                m.name == "namespace"
                and m.op == promql_parser.MatchOp.Equal
                and m.value == namespace
                for m in matchers.matchers
            ):
                problems.append(f'{node}: add namespace="{namespace}"')
        return True

    promql_parser.walk(expr, visit)
    if problems:
        raise QueryRejectedError(
            f"demand.query may read only namespace {namespace!r}: every selector needs the "
            f'matcher namespace="{namespace}" ({"; ".join(problems[:3])})'
        )
    return query


def render_query(template: str, service: InferenceService) -> str:
    """The PromQL of a service's demand: its own (checked) query, else the operator's template."""
    namespace = service.metadata.namespace or "default"
    if service.spec.demand.query:
        return check_scope(service.spec.demand.query, namespace)
    return template.format(namespace=namespace, name=service.metadata.name)


def _plausible(value: float) -> float:
    if not math.isfinite(value) or value < 0 or value > MAX_QPS:
        raise ValueError(f"bad rate {value}: a rate must be finite, >= 0 and <= {MAX_QPS:g}")
    return value


def parse_rate(result: Any) -> float:
    """The value of an instant-vector answer (sum of samples; empty means no requests)."""
    if not isinstance(result, list):
        raise ValueError(f"unexpected Prometheus result: {result!r}"[:200])
    total = 0.0
    for sample in result:
        total += _plausible(float(sample["value"][1]))
    return _plausible(total)


def parse_answer(body: Any) -> float:
    """The rate in a `/api/v1/query` answer: a vector (summed) or a scalar."""
    if not isinstance(body, dict) or body.get("status") != "success":
        raise ValueError(f"unexpected Prometheus answer: {body!r}"[:200])
    data = body.get("data") or {}
    if data.get("resultType") == "scalar":
        return _plausible(float(data["result"][1]))
    if data.get("resultType") != "vector":
        raise ValueError(
            f"the query must return a vector or a scalar, not {data.get('resultType')}"
        )
    return parse_rate(data.get("result"))


def _stamp(paths: Iterable[str | None]) -> tuple[tuple[int, int, int], ...]:
    """What changes when one of `paths` is rewritten (a Secret volume swaps a symlink: inode)."""
    out = []
    for path in paths:
        if path:
            st = os.stat(path)
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


@dataclass
class PrometheusDemand:
    """Polls Prometheus and keeps the smoothed demand of every Prometheus-sourced service."""

    url: str
    query_template: str
    timeout_s: float = 5.0
    rise_half_life_s: float = DEFAULT_TIMINGS.rise_half_life_s
    fall_half_life_s: float = DEFAULT_TIMINGS.fall_half_life_s
    min_change: float = 0.02
    clock: Callable[[], float] = field(default=lambda: 0.0)
    bearer_token_file: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure_skip_verify: bool = False
    max_concurrent: int = 16
    max_per_namespace: int = 2
    tracker: DemandTracker = field(init=False)
    published: dict[str, float] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    query_time_s: dict[str, float] = field(default_factory=dict)
    """How long each service's last query took (a timed-out one counts as `timeout_s`)."""

    def __post_init__(self) -> None:
        self.tracker = DemandTracker(self.rise_half_life_s, self.fall_half_life_s)
        self._token: tuple[tuple[Any, ...], str] | None = None
        self._tls: tuple[tuple[Any, ...], ssl.SSLContext] | None = None

    @classmethod
    def from_config(cls, config: OperatorConfig, clock: Callable[[], float]) -> PrometheusDemand:
        """The reader the operator's configuration describes (`prometheus_*`, `demand_*`)."""
        if not config.prometheus_url:
            raise ValueError("prometheus_url is not set")
        return cls(
            url=config.prometheus_url,
            query_template=config.demand_query,
            timeout_s=config.demand_timeout_s,
            rise_half_life_s=config.demand_rise_half_life_s,
            fall_half_life_s=config.demand_fall_half_life_s,
            clock=clock,
            bearer_token_file=config.prometheus_bearer_token_file,
            ca_file=config.prometheus_ca_file,
            cert_file=config.prometheus_cert_file,
            key_file=config.prometheus_key_file,
            insecure_skip_verify=config.prometheus_insecure_skip_verify,
            max_concurrent=config.demand_max_concurrent_queries,
            max_per_namespace=config.demand_max_queries_per_namespace,
        )

    # -- credentials ---------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        """The bearer token, read again whenever its file changed."""
        if not self.bearer_token_file:
            return {}
        try:
            stamp = _stamp([self.bearer_token_file])
            if self._token is None or self._token[0] != stamp:
                self._token = (stamp, Path(self.bearer_token_file).read_text().strip())
        except OSError as exc:
            raise OSError(
                f"cannot read bearer token file {self.bearer_token_file}: {exc}"
            ) from None
        return {"Authorization": f"Bearer {self._token[1]}"}

    def _ssl(self) -> ssl.SSLContext | bool:
        """TLS of a request: True (the system's CAs), False (no verification) or a context
        with the CA bundle and client certificate, built again whenever their files changed."""
        if self.insecure_skip_verify:
            return False
        if not (self.ca_file or self.cert_file):
            return True
        try:
            stamp = _stamp([self.ca_file, self.cert_file, self.key_file])
            if self._tls is None or self._tls[0] != stamp:
                ctx = ssl.create_default_context(cafile=self.ca_file)
                if self.cert_file:
                    ctx.load_cert_chain(self.cert_file, self.key_file)
                self._tls = (stamp, ctx)
        except (OSError, ssl.SSLError) as exc:
            raise OSError(f"cannot load the TLS files for Prometheus: {exc}") from None
        return self._tls[1]

    # -- querying ------------------------------------------------------------------------------

    async def _query(self, session: aiohttp.ClientSession, promql: str) -> float:
        params = {"query": promql, "timeout": f"{round(self.timeout_s * 1000)}ms"}
        async with session.get(
            f"{self.url.rstrip('/')}/api/v1/query",
            params=params,
            headers=self._headers(),
            ssl=self._ssl(),
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
        ) as resp:
            text = await resp.text()
            if resp.status != 200:
                raise ValueError(f"Prometheus answered {resp.status}: {text.strip()[:200]}")
            try:
                body = await resp.json(content_type=None)
            except ValueError:
                raise ValueError(f"Prometheus answered no JSON: {text[:100]!r}") from None
            return parse_answer(body)

    async def _measure(
        self,
        session: aiohttp.ClientSession,
        service: InferenceService,
        overall: asyncio.Semaphore,
        per_namespace: asyncio.Semaphore,
    ) -> float:
        promql = render_query(self.query_template, service)  # QueryRejectedError: never sent
        async with per_namespace, overall:
            started = time.monotonic()
            try:
                return await self._query(session, promql)
            except TimeoutError:
                raise TimeoutError(f"no answer within {self.timeout_s:g} s") from None
            finally:
                self.query_time_s[service.key] = time.monotonic() - started

    async def poll(self, services: Iterable[InferenceService]) -> bool:
        """Query every Prometheus-sourced service; True when a published estimate changed."""
        changed = False
        now = self.clock()
        # Prometheus-sourced, and Router-sourced ones whose routers do not report (the driver
        # passes those only, `reports.RouterDemand.prometheus_services`).
        wanted = {s.key: s for s in services if s.spec.demand.source is not DemandSource.STATIC}
        for key in list(self.published) + list(self.unavailable):
            if key not in wanted:
                self.published.pop(key, None)
                self.unavailable.pop(key, None)
                self.query_time_s.pop(key, None)
                self.tracker.forget(key)
        overall = asyncio.Semaphore(self.max_concurrent)
        namespaces: dict[str, asyncio.Semaphore] = {}
        # Fastest last time first: a namespace's slow queries wait behind its fast ones.
        order = sorted(wanted, key=lambda k: (self.query_time_s.get(k, 0.0), k))
        tasks: dict[str, asyncio.Task[float]] = {}
        connector = aiohttp.TCPConnector(limit=self.max_concurrent)
        async with aiohttp.ClientSession(connector=connector) as session:
            for key in order:
                svc = wanted[key]
                ns = svc.metadata.namespace or "default"
                sem = namespaces.setdefault(ns, asyncio.Semaphore(self.max_per_namespace))
                tasks[key] = asyncio.create_task(self._measure(session, svc, overall, sem))
            if tasks:
                await asyncio.wait(tasks.values(), timeout=self.timeout_s + 1.0)
            for task in tasks.values():
                task.cancel()
            for task in tasks.values():
                with contextlib.suppress(BaseException):
                    await task
        for key in order:
            task = tasks[key]
            if task.cancelled():
                ns = wanted[key].metadata.namespace or "default"
                self.query_time_s[key] = self.timeout_s
                reason = (
                    f"Prometheus query not answered within {self.timeout_s + 1:g} s: namespace "
                    f"{ns} runs at most {self.max_per_namespace} queries at once, and they "
                    "were slow"
                )
            elif (exc := task.exception()) is not None:
                kind = "rejected" if isinstance(exc, QueryRejectedError) else "failed"
                reason = f"Prometheus query {kind}: {type(exc).__name__}: {exc}"[:400]
            else:
                reason = ""
            if reason:
                if self.unavailable.get(key) != reason:
                    changed = True
                self.unavailable[key] = reason
                continue
            if self.unavailable.pop(key, None) is not None:
                changed = True
            estimate = self.tracker.observe(key, now, task.result())
            old = self.published.get(key)
            if old is None or abs(estimate - old) > self.min_change * max(old, 1.0):
                self.published[key] = round(estimate, 3)
                changed = True
        return changed

    def view(self) -> DemandView:
        return DemandView(
            qps=dict(self.published),
            unavailable=dict(self.unavailable),
            rejected={k for k, why in self.unavailable.items() if "query rejected" in why},
            last_arrival_s=self.tracker.last_arrivals(),
        )
