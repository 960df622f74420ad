"""`accordion up`'s engine: the control loop driven by the routers' own counters.

Every tick (a second by default): supervise the processes (`ProcessActuator.supervise`),
scrape each router's ``/metrics`` (demand ``accordion_router_requests_total``, outcomes,
latency histogram, accuracy served), fold the measured rate into the shared `DemandTracker`,
and run one pass of the SAME `ControlLoop` the operator runs, with the process actuator. What
happened is kept as a timeline (one sample per tick, `timeline.jsonl`), an event log
(`events.jsonl`) and a snapshot (`state.json`) in the run directory; the live view and the demo
read those. A restarted router counts from zero again: that tick gives no rate, and the loop
plans on the last estimate meanwhile (as the operator does when Prometheus does not answer).

Startup checks stop `up` at once with a clear message (`LocalModeError`): invalid manifests,
a model that does not exist, a router port in use, a pool local mode cannot run.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from accordion.local.actuator import HOST, Event, ProcessActuator, port_in_use, service_slug
from accordion.operator.api import DevicePool, InferenceService
from accordion.operator.control.demand import DemandTracker
from accordion.operator.control.loop import ControlLoop, DemandView, RunningWorker, World
from accordion.operator.control.timing import DEFAULT_TIMINGS, Timings
from accordion.operator.manifests import ManifestError, load

log = logging.getLogger(__name__)

BAD_OUTCOMES = ("late", "dropped", "shed", "error")


class LocalModeError(Exception):
    """`accordion up` cannot start (or go on); the message says why and what to do."""


# ------------------------------------------------------------------------------ startup checks


def _known_builtins() -> set[str]:
    """Every builtin a worker loads (`models.load_model`): the demo family, the staged models
    (cellular, node batching) and the models that can be cut into pipeline stages."""
    from accordion.workers.models import DEMO_FAMILY
    from accordion.workers.seqmodels import STAGED_BUILTINS
    from accordion.workers.splitting import SPLIT_BUILTINS

    return set(DEMO_FAMILY) | set(STAGED_BUILTINS) | set(SPLIT_BUILTINS)


def check_models(services: Sequence[InferenceService]) -> None:
    """Every variant's model must exist here: a known builtin name or a readable file."""
    problems = []
    builtins: set[str] | None = None
    for svc in services:
        for v in svc.spec.variants:
            uri = v.model.storage_uri
            if uri.startswith("builtin:"):
                builtins = builtins if builtins is not None else _known_builtins()
                name = uri.removeprefix("builtin:")
                if name not in builtins:
                    problems.append(
                        f"{svc.key}: variant {v.name}: unknown builtin model {name!r} "
                        f"(known: {', '.join(sorted(builtins))})"
                    )
                continue
            path = Path(uri.removeprefix("file://"))
            if not path.is_file():
                problems.append(f"{svc.key}: variant {v.name}: model file {path} does not exist")
    if problems:
        raise LocalModeError("missing models:\n  " + "\n  ".join(problems))


def check_pools(pools: Sequence[DevicePool]) -> None:
    if not pools:
        raise LocalModeError("no DevicePool in the manifests: local mode needs a cpu pool")
    bad = [p.metadata.name for p in pools if p.spec.device != "cpu"]
    if bad:
        raise LocalModeError(
            f"local mode runs CPU pools only; pools {', '.join(bad)} have another device"
        )


def router_ports(services: Sequence[InferenceService], base_port: int) -> dict[str, int]:
    """One router per service on consecutive ports from `base_port` (sorted by key); all free."""
    ports = {svc.key: base_port + i for i, svc in enumerate(sorted(services, key=lambda s: s.key))}
    for key, port in ports.items():
        if not 0 < port < 65536:
            raise LocalModeError(f"router port {port} of {key} is not a valid port")
        if port_in_use(port):
            raise LocalModeError(
                f"port {port} (router of {key}) is in use on {HOST}; stop what uses it or "
                "pass another --port"
            )
    return ports


def load_manifests(paths: Sequence[Path]) -> tuple[list[InferenceService], list[DevicePool]]:
    try:
        manifests = load(paths)
    except ManifestError as exc:
        raise LocalModeError(str(exc)) from None
    if not manifests.services:
        raise LocalModeError(f"no InferenceService in {', '.join(map(str, paths))}")
    return manifests.services, manifests.pools


# ------------------------------------------------------------------------------------ metrics


@dataclass
class RouterCounters:
    """Cumulative counters scraped from one router."""

    requests: float = 0.0
    outcomes: dict[str, float] = field(default_factory=dict)
    accuracy_served: float = 0.0
    latency_buckets: dict[float, float] = field(default_factory=dict)
    per_variant_ok: dict[str, float] = field(default_factory=dict)
    cold_start_sum_s: float = 0.0
    cold_starts: float = 0.0
    """The activator's cold starts (`accordion_router_cold_start_seconds`): sum and count."""
    source: int = 0
    """The pid of the router scraped: a restarted router counts from zero again."""


def parse_router_metrics(text: str) -> RouterCounters:
    out = RouterCounters()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "accordion_router_requests_total":
                out.requests += s.value
            elif s.name == "accordion_router_outcomes_total":
                outcome = s.labels.get("outcome", "")
                out.outcomes[outcome] = out.outcomes.get(outcome, 0.0) + s.value
                if outcome == "ok":
                    v = s.labels.get("variant", "")
                    out.per_variant_ok[v] = out.per_variant_ok.get(v, 0.0) + s.value
            elif s.name == "accordion_router_accuracy_served_total":
                out.accuracy_served += s.value
            elif s.name == "accordion_router_cold_start_seconds_sum":
                out.cold_start_sum_s += s.value
            elif s.name == "accordion_router_cold_start_seconds_count":
                out.cold_starts += s.value
            elif s.name == "accordion_router_request_latency_seconds_bucket":
                le = float(s.labels["le"])
                out.latency_buckets[le] = out.latency_buckets.get(le, 0.0) + s.value
    return out


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' histogram_quantile over cumulative bucket counts (seconds)."""
    items = sorted(buckets.items())
    if not items or items[-1][1] <= 0:
        return None
    rank = q * items[-1][1]
    prev_le, prev_count = 0.0, 0.0
    for le, count in items:
        if count >= rank:
            if math.isinf(le):
                return prev_le
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return prev_le


def _delta(new: dict[float, float], old: dict[float, float]) -> dict[float, float]:
    return {k: max(0.0, v - old.get(k, 0.0)) for k, v in new.items()}


@dataclass(frozen=True)
class TickRates:
    """What happened at one router between two scrapes `dt_s` apart."""

    demand_qps: float
    """Arrivals per second (``requests_total`` counts a request when it arrives)."""
    finished: float
    """Requests that got their outcome (ok, late, dropped, shed or error) in the interval."""
    ok: float
    violations: float
    dt_s: float
    served_accuracy: float | None
    """Effective accuracy delivered per finished request (%; a violation counts 0), or None
    when nothing finished."""

    @property
    def ok_qps(self) -> float:
        return self.ok / self.dt_s

    @property
    def violations_qps(self) -> float:
        return self.violations / self.dt_s


def tick_rates(new: RouterCounters, old: RouterCounters, dt_s: float) -> TickRates:
    """Rates between two scrapes of one router.

    The router adds a request's accuracy to ``accuracy_served_total`` when it is answered, and
    its outcome right after (no await between them), but counts it in ``requests_total`` when
    it arrives. So the delivered accuracy is divided by the requests that *finished* in the
    same interval (the sum of the outcome counters), never by the arrivals: under a falling
    load more requests finish than arrive, and that ratio would read above the best variant's
    accuracy.
    """

    def outcome(name: str) -> float:
        return max(0.0, new.outcomes.get(name, 0.0) - old.outcomes.get(name, 0.0))

    finished = sum(outcome(o) for o in {*new.outcomes, *old.outcomes})
    accuracy = max(0.0, new.accuracy_served - old.accuracy_served)
    return TickRates(
        demand_qps=max(0.0, new.requests - old.requests) / dt_s,
        finished=finished,
        ok=outcome("ok"),
        violations=sum(outcome(o) for o in BAD_OUTCOMES),
        dt_s=dt_s,
        served_accuracy=100.0 * accuracy / finished if finished > 0 else None,
    )


# ------------------------------------------------------------------------------------ runtime


@dataclass
class Sample:
    """One tick of one service, for the timeline (rates over the last tick)."""

    t_s: float
    service: str
    demand_qps: float
    estimate_qps: float
    capacity_qps: float
    planned_accuracy: float | None
    served_accuracy: float | None
    ok_qps: float
    violations_qps: float
    p99_ms: float | None
    slo_ms: float
    replicas: dict[str, int]
    ready: dict[str, int]
    weights: dict[str, float]


@dataclass
class ServiceStats:
    """Running totals since start (for the view and the summary)."""

    requests: float = 0.0
    """Requests that finished (got an outcome)."""
    ok: float = 0.0
    violations: float = 0.0
    replans: int = 0


@dataclass
class RuntimeSettings:
    """Local mode's knobs; the loop's timings default to the operator's and the simulator's
    (`control.timing.DEFAULT_TIMINGS`)."""

    base_port: int = 8000
    interval_s: float = DEFAULT_TIMINGS.demand_interval_s
    rise_half_life_s: float = DEFAULT_TIMINGS.rise_half_life_s
    fall_half_life_s: float = DEFAULT_TIMINGS.fall_half_life_s
    p99_window_s: float = 5.0
    drain_s: float = DEFAULT_TIMINGS.drain_s

    def timings(self) -> Timings:
        return dataclasses.replace(
            DEFAULT_TIMINGS,
            demand_interval_s=self.interval_s,
            rise_half_life_s=self.rise_half_life_s,
            fall_half_life_s=self.fall_half_life_s,
            drain_s=self.drain_s,
        )


class LocalRuntime:
    """Runs the services of some manifests on this machine (see the module docstring)."""

    def __init__(
        self,
        paths: Sequence[Path],
        run_dir: Path,
        settings: RuntimeSettings | None = None,
        *,
        on_event: Callable[[Event], None] | None = None,
    ) -> None:
        from accordion.operator.control.loop import LoopSettings

        self.settings = settings or RuntimeSettings()
        services, pools = load_manifests(paths)
        check_pools(pools)
        check_models(services)
        ports = router_ports(services, self.settings.base_port)
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        self.world = World(
            services={s.key: s for s in services}, pools={p.metadata.name: p for p in pools}
        )
        self.loop = ControlLoop(
            LoopSettings.from_timings(self.settings.timings()),
            url_for=lambda service: f"http://{HOST}:{ports[service]}" if service in ports else None,
        )
        self.tracker = DemandTracker(self.settings.rise_half_life_s, self.settings.fall_half_life_s)
        self.demand = DemandView()
        self.events: list[Event] = []
        self._user_on_event = on_event
        self._events_file = (run_dir / "events.jsonl").open("a")
        self._timeline_file = (run_dir / "timeline.jsonl").open("a")
        self.actuator = ProcessActuator(self.world, run_dir, ports, on_event=self._record)
        self.samples: list[Sample] = []
        self.latest: dict[str, Sample] = {}
        self.stats: dict[str, ServiceStats] = {k: ServiceStats() for k in self.world.services}
        self._counters: dict[str, tuple[float, RouterCounters]] = {}
        self._latency_window: dict[str, list[tuple[float, dict[float, float]]]] = {}
        self._session: aiohttp.ClientSession | None = None
        self.started_at_s = time.time()
        self.ticks = 0
        self.last_plan_s: float | None = None

    def _record(self, ev: Event) -> None:
        self.events.append(ev)
        if ev.reason in {"AccuracyScaledDown", "AccuracyScaledUp", "ReplicasChanged"}:
            self.stats[ev.service].replans += ev.reason == "ReplicasChanged"
        self._events_file.write(json.dumps(asdict(ev)) + "\n")
        self._events_file.flush()
        if self._user_on_event is not None:
            self._user_on_event(ev)

    def router_url(self, service: str) -> str:
        return f"http://{HOST}:{self.actuator.router_ports[service]}"

    # -- one tick ----------------------------------------------------------------------------------

    async def _scrape(self, service: str) -> RouterCounters | None:
        router = self.actuator.routers.get(service)
        if router is None or router.proc is None or router.proc.returncode is not None:
            return None
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0))
        try:
            async with self._session.get(f"http://{HOST}:{router.port}/metrics") as resp:
                if resp.status != 200:
                    return None
                counters = parse_router_metrics(await resp.text())
                counters.source = router.proc.pid
                return counters
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def tick(self) -> None:
        """Supervise, measure, reconcile once, and record a sample per service."""
        await self.actuator.supervise()
        now = time.time()
        measured: dict[str, tuple[TickRates, RouterCounters, RouterCounters]] = {}
        scrapes = await asyncio.gather(*(self._scrape(s) for s in self.world.services))
        for service, counters in zip(self.world.services, scrapes, strict=True):
            if counters is None:
                if service in self.actuator.routers:
                    self.demand.unavailable[service] = "the router's /metrics did not answer"
                continue
            previous = self._counters.get(service)
            self._counters[service] = (now, counters)
            restarted = previous is not None and (
                counters.source != previous[1].source or counters.requests < previous[1].requests
            )
            if previous is None or restarted:
                continue  # first scrape, or the router restarted: no rate yet
            rates = tick_rates(counters, previous[1], max(1e-3, now - previous[0]))
            # An idle service keeps spec.minReplicas workers (default 1), or none after
            # scaleToZeroIdleSeconds with minReplicas 0: the loop decides, as in a cluster.
            self.demand.qps[service] = self.tracker.observe(service, now, rates.demand_qps)
            self.demand.unavailable.pop(service, None)
            if counters.cold_starts > previous[1].cold_starts:  # the last one (status)
                self.demand.cold_start_s[service] = (
                    counters.cold_start_sum_s - previous[1].cold_start_sum_s
                ) / (counters.cold_starts - previous[1].cold_starts)
            measured[service] = (rates, counters, previous[1])

        self.world.workers = {
            key: RunningWorker(spec=group.spec, ready_replicas=group.ready_count())
            for key, group in self.actuator.groups.items()
        }
        self.demand.burst = self.tracker.bursts()
        self.demand.last_arrival_s = self.tracker.last_arrivals()
        result = await self.loop.reconcile(self.world, self.demand, self.actuator)
        self.tracker.plan_feedback(self.loop.capacity_by_service(), self.loop.short_services())
        if result.decision.planned:
            self.last_plan_s = self.loop.plan_time_s
        for step, exc in result.failed:
            self._record(
                Event(now, _step_service(step), "Warning", "StepFailed", f"{step!r}: {exc}")
            )
        for service in self.world.services:
            self._sample(service, now, measured.get(service))
        self.ticks += 1
        self._write_state()

    def _sample(
        self,
        service: str,
        now: float,
        measured: tuple[TickRates, RouterCounters, RouterCounters] | None,
    ) -> None:
        svc = self.world.services[service]
        status = self.world.status.get(service)
        routing = self.world.routing.get(service)
        rates: TickRates | None = None
        p99_ms: float | None = None
        if measured is not None:
            rates, new, old = measured
            stats = self.stats[service]
            stats.requests += rates.finished
            stats.ok += rates.ok
            stats.violations += rates.violations
            window = self._latency_window.setdefault(service, [])
            window.append((now, _delta(new.latency_buckets, old.latency_buckets)))
            while window and window[0][0] < now - self.settings.p99_window_s:
                window.pop(0)
            merged: dict[float, float] = {}
            for _, buckets in window:
                for le, count in buckets.items():
                    merged[le] = merged.get(le, 0.0) + count
            q = histogram_quantile(0.99, merged)
            p99_ms = None if q is None else round(q * 1000.0, 2)
        replicas = {f"{r.variant}@{r.pool}": r.replicas for r in (status.plan if status else [])}
        ready = {
            k.backend_name: g.ready_count()
            for k, g in self.actuator.groups.items()
            if k.service == service
        }
        # A pending backend (still loading) has the plan's weight in the table, not traffic.
        routes = routing.routing.routes if routing else []
        weights = {r.key.backend_name: r.weight for r in routes if not r.pending}
        sample = Sample(
            t_s=round(now - self.started_at_s, 3),
            service=service,
            demand_qps=round(rates.demand_qps, 2) if rates else 0.0,
            estimate_qps=round(self.demand.qps.get(service, 0.0), 2),
            capacity_qps=status.capacity_qps or 0.0 if status else 0.0,
            planned_accuracy=status.effective_accuracy if status else None,
            served_accuracy=(
                round(rates.served_accuracy, 3)
                if rates and rates.served_accuracy is not None
                else None
            ),
            ok_qps=round(rates.ok_qps, 2) if rates else 0.0,
            violations_qps=round(rates.violations_qps, 2) if rates else 0.0,
            p99_ms=p99_ms,
            slo_ms=svc.spec.slo.latency_ms,
            replicas=replicas,
            ready=ready,
            weights=weights,
        )
        self.latest[service] = sample
        self.samples.append(sample)
        self._timeline_file.write(json.dumps(asdict(sample)) + "\n")
        self._timeline_file.flush()

    def _write_state(self) -> None:
        state = {
            "started_at_s": self.started_at_s,
            "t_s": round(time.time() - self.started_at_s, 3),
            "ticks": self.ticks,
            "urls": {s: self.router_url(s) for s in self.world.services},
            "ready": {
                s: bool(
                    self.world.routing.get(s) is not None
                    and s in self.actuator.routers
                    and any(
                        g.ready_count() > 0
                        for k, g in self.actuator.groups.items()
                        if k.service == s
                    )
                )
                for s in self.world.services
            },
            "stats": {s: asdict(v) for s, v in self.stats.items()},
            "status": {
                s: st.model_dump(mode="json", by_alias=True) for s, st in self.world.status.items()
            },
            **self.actuator.describe(),
        }
        tmp = self.run_dir / "state.json.tmp"
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.run_dir / "state.json")

    # -- lifecycle ---------------------------------------------------------------------------------

    async def run(
        self,
        stop: asyncio.Event,
        duration_s: float | None = None,
        on_tick: Callable[[LocalRuntime], None] | None = None,
    ) -> None:
        """Tick until `stop` is set (or `duration_s` passes), then stop every process."""
        deadline = None if duration_s is None else time.monotonic() + duration_s
        try:
            while not stop.is_set():
                started = time.monotonic()
                await self.tick()
                if on_tick is not None:
                    on_tick(self)
                if deadline is not None and time.monotonic() >= deadline:
                    break
                wait = max(0.05, self.settings.interval_s - (time.monotonic() - started))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait)
        finally:
            await self.close()

    async def close(self) -> None:
        await self.actuator.shutdown()
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._write_state()
        self._events_file.close()
        self._timeline_file.close()


def _step_service(step: object) -> str:
    for attr in ("service",):
        value = getattr(step, attr, None)
        if isinstance(value, str):
            return value
    spec = getattr(step, "spec", None)
    key = getattr(step, "key", None) or getattr(spec, "key", None)
    return str(getattr(key, "service", "?"))


__all__ = [
    "LocalModeError",
    "LocalRuntime",
    "RuntimeSettings",
    "Sample",
    "TickRates",
    "service_slug",
    "tick_rates",
]
