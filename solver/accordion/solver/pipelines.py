"""Pipeline options: a variant cut into stages that run on different pools (PPipe).

Many layers run about as fast on a low-class device as on a high-class one, and a low-class
device is idle when no whole variant fits the SLO on it. A pipeline option runs the first
parts of a variant's model on one pool and the rest on another: the low-class pool takes a
share of every request's work, so each high-class device serves more requests at the same
accuracy. The planner chooses pipeline options next to whole variants, in the same
lexicographic plan; a replica of a pipeline option takes devices in several pools
(`Option.devices`), which is all the optimization model needs to know.

A variant offers pipelines only when its spec lists the parts of its model between candidate
cut points (`VariantSpec.stages`, each with a profile per pool and the size of the tensor it
hands on). A stage that runs parts i..j of the model takes the sum of their profiled latencies
(an upper bound: each part was timed with its own call overhead). Per stage s, for its batch
cap b_s:

    latency     sum_s 2 * latency_s(b_s) + sum_s transfer_s(b_s) <= SLO
    capacity    min_s devices_s * b_s / latency_s(b_s) * utilization

Twice the batch latency per stage is the same worst case as a whole variant's (`capacity`):
a request may wait for the batch in progress, then ride in the next. A transfer hands a batch
to the next stage: `transfer_overhead_s` plus its bytes over `transfer_bytes_per_s`, and caps
the sending stage's rate at that bandwidth too. Devices per stage balance the stages: the
fastest stage gets one device, each other one just under or just over as many as it takes to
keep up with it (at most `MAX_STAGE_DEVICES`). Of all the candidates of a variant, only those
that no other beats on every pool's devices per request per second are kept: the model stays
small (tens of options per variant, not thousands).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass

from accordion.solver.capacity import Option, batch_capacity
from accordion.solver.plan import PlanStage
from accordion.solver.problem import PlannerSettings, Problem, ServiceSpec, StageSpec, VariantSpec

__all__ = [
    "PipelineOption",
    "PipelineStage",
    "downstream_s",
    "pass_latency_s",
    "pipeline_options",
    "plan_stages",
    "transfer_s",
]

MAX_STAGE_DEVICES = 8
"""The most devices one stage of one pipeline replica may take."""
NEAR = 0.05
"""Candidates within this (relative) of each other's devices per request per second are one."""
PER_POOL_SET = 2
"""The most pipeline options of one variant that use one set of pools (`_fewest`)."""


@dataclass(frozen=True)
class PipelineStage:
    """One stage of a pipeline option: parts first..last of the model on `devices` of `pool`."""

    pool: int
    first: str
    last: str
    devices: int
    max_batch_size: int
    latency_s: float
    """Latency of a batch of max_batch_size at the planner's percentile."""
    output_bytes: int
    """Per request, handed to the next stage (0 for the last)."""


@dataclass(frozen=True)
class PipelineOption(Option):
    """A variant served as a pipeline of stages on different pools."""

    stages: tuple[PipelineStage, ...] = ()
    name: str = ""
    latency_s: float = 0.0
    """Worst-case end-to-end latency: twice every stage's batch latency plus the transfers."""
    _devices: tuple[int, ...] = dataclasses.field(init=False, repr=False, compare=False, default=())

    def __post_init__(self) -> None:
        # The model asks for every option's devices many times a plan: computed once.
        devices = tuple(st.pool for st in self.stages for _ in range(st.devices))
        object.__setattr__(self, "_devices", devices)

    def devices(self) -> tuple[int, ...]:
        return self._devices

    def pipeline_id(self) -> str | None:
        return self.name


@dataclass(frozen=True)
class _Segment:
    """Parts first..last of a model on one pool: latency per batch size, bytes handed on."""

    pool: int
    first: str
    last: str
    latency_s: dict[int, float]
    output_bytes: int


def pipeline_options(problem: Problem) -> list[PipelineOption]:
    """Pipeline options of every eligible variant that lists its model's parts, in a
    deterministic order (service, variant, then the order candidates were found)."""
    settings = problem.settings
    if settings.pipeline_max_stages < 2:
        return []
    out: list[PipelineOption] = []
    # Services often share a variant's spec (copies of one model family): its candidates
    # depend on the spec, the SLO, the margin and the target only.
    cache: dict[tuple[int, float, float | None, float | None], list[PipelineOption]] = {}
    for s, svc in enumerate(problem.services):
        for var in sorted(svc.variants, key=lambda v: v.name):
            if len(var.stages) >= 2 and var.accuracy >= svc.accuracy_floor:
                key = (id(var), svc.slo_s, svc.utilization, svc.accuracy_target)
                if key not in cache:
                    cache[key] = _variant_options(problem, s, svc, var)
                out.extend(dataclasses.replace(o, service=s) for o in cache[key])
    return out


def _variant_options(
    problem: Problem, s: int, svc: ServiceSpec, var: VariantSpec
) -> list[PipelineOption]:
    settings = problem.settings
    usable = {i for i, pool in enumerate(problem.pools) if pool.devices > 0}
    utilization = svc.utilization if svc.utilization is not None else settings.utilization
    parts = var.stages
    candidates: list[PipelineOption] = []
    max_stages = min(settings.pipeline_max_stages, len(parts))
    segments_of: dict[tuple[int, int], list[_Segment]] = {}  # parts a..b-1, on every pool
    for a in range(len(parts)):
        for b in range(a + 1, len(parts) + 1):
            segments_of[a, b] = [
                seg
                for pool in sorted(usable)
                if (seg := _segment(parts[a:b], pool, problem.pools[pool].name, settings))
                is not None
            ]
    for count in range(2, max_stages + 1):
        for cuts in itertools.combinations(range(1, len(parts)), count - 1):
            bounds = list(zip((0, *cuts), (*cuts, len(parts)), strict=True))
            choices = [segments_of[a, b] for a, b in bounds]
            for segments in itertools.product(*choices):
                # Neighbours on one pool are one stage cut elsewhere (or not at all).
                if any(x.pool == y.pool for x, y in itertools.pairwise(segments)):
                    continue
                # Pruned per assignment first, before any option is built: the global pass
                # compares far fewer (with cut points between residual blocks, 3 stages
                # try hundreds of thousands of stage layouts).
                fits = _fits(problem, svc, list(segments), utilization)
                kept = _pareto([f.usage for f in fits], [f.latency_s for f in fits])
                candidates.extend(_option(problem, s, svc, var, fits[i]) for i in kept)
    # A pipeline that takes as much or more of every pool per request per second as the whole
    # variant on one of its pools serves nothing that whole replicas cannot serve better.
    whole: list[dict[int, float]] = []
    for pool, points in var.profiles.items():
        index = next(i for i, p in enumerate(problem.pools) if p.name == pool)
        fit = batch_capacity(points, svc.slo_s, settings.latency_percentile, utilization)
        if fit is not None and index in usable:
            whole.append({index: 1.0 / fit[1]})
    useful = []
    for o in _undominated(candidates):
        usage = _usage(o)
        if not any(all(usage.get(p, 0.0) >= w * (1 - 1e-9) for p, w in pw.items()) for pw in whole):
            useful.append(o)
    return _fewest(problem, useful)


def _segment(
    parts: list[StageSpec], pool: int, pool_name: str, settings: PlannerSettings
) -> _Segment | None:
    """The parts' summed latency per batch size profiled for all of them, on one pool."""
    if any(pool_name not in p.profiles for p in parts):
        return None
    sizes = set.intersection(*({pt.batch_size for pt in p.profiles[pool_name]} for p in parts))
    latency = {
        b: sum(
            pt.latency_s(settings.latency_percentile)
            for p in parts
            for pt in p.profiles[pool_name]
            if pt.batch_size == b
        )
        for b in sorted(sizes)
    }
    return _Segment(pool, parts[0].name, parts[-1].name, latency, parts[-1].output_bytes)


@dataclass(frozen=True)
class _Fit:
    """A stage layout that keeps the SLO: batch cap and devices per stage (no option yet)."""

    segments: tuple[_Segment, ...]
    batches: tuple[int, ...]
    devices: tuple[int, ...]
    capacity_qps: float
    latency_s: float
    usage: dict[int, float]
    """Devices per request per second, per pool (`_usage`)."""


def _fits(
    problem: Problem, svc: ServiceSpec, segments: list[_Segment], utilization: float
) -> list[_Fit]:
    """Layouts of one assignment of stages to pools: per batch caps that keep the SLO, the
    devices per stage that balance them."""
    settings = problem.settings
    last = len(segments) - 1
    out: list[_Fit] = []
    for batches in itertools.product(*(sorted(seg.latency_s) for seg in segments)):
        latency = 0.0
        rates: list[float] = []
        for i, (seg, b) in enumerate(zip(segments, batches, strict=True)):
            run_s = seg.latency_s[b]
            latency += 2 * run_s
            rate = b / run_s
            if i < last:
                latency += transfer_s(settings, b, seg.output_bytes)
                if seg.output_bytes > 0:
                    rate = min(rate, settings.transfer_bytes_per_s / seg.output_bytes)
            rates.append(rate * utilization)
        if latency > svc.slo_s:
            continue
        fastest = max(rates)
        spreads = [
            sorted({_clip(math.floor(fastest / r)), _clip(math.ceil(fastest / r))}) for r in rates
        ]
        for devices in itertools.product(*spreads):
            capacity = min(d * r for d, r in zip(devices, rates, strict=True))
            usage: dict[int, float] = {}
            for seg, d in zip(segments, devices, strict=True):
                usage[seg.pool] = usage.get(seg.pool, 0.0) + d / capacity
            out.append(
                _Fit(tuple(segments), tuple(batches), tuple(devices), capacity, latency, usage)
            )
    return out


def _option(
    problem: Problem, s: int, svc: ServiceSpec, var: VariantSpec, fit: _Fit
) -> PipelineOption:
    cap = svc.accuracy_target if svc.accuracy_target is not None else 100.0
    last = len(fit.segments) - 1
    stages = tuple(
        PipelineStage(
            pool=seg.pool,
            first=seg.first,
            last=seg.last,
            devices=d,
            max_batch_size=b,
            latency_s=seg.latency_s[b],
            output_bytes=seg.output_bytes if i < last else 0,
        )
        for i, (seg, b, d) in enumerate(zip(fit.segments, fit.batches, fit.devices, strict=True))
    )
    return PipelineOption(
        service=s,
        variant=var.name,
        pool=fit.segments[0].pool,
        max_batch_size=fit.batches[0],
        capacity_qps=fit.capacity_qps,
        accuracy=var.accuracy,
        value=min(var.accuracy, cap),
        stages=stages,
        name=_name(problem, stages),
        latency_s=fit.latency_s,
    )


def _clip(devices: int) -> int:
    return min(MAX_STAGE_DEVICES, max(1, devices))


def _name(problem: Problem, stages: tuple[PipelineStage, ...]) -> str:
    """The pipeline's id: `first..last@pool*devices` per stage, joined by `>`."""
    return ">".join(
        f"{st.first}..{st.last}@{problem.pools[st.pool].name}*{st.devices}" for st in stages
    )


def _usage(o: PipelineOption) -> dict[int, float]:
    """Devices per request per second, per pool."""
    used: dict[int, float] = {}
    for st in o.stages:
        used[st.pool] = used.get(st.pool, 0.0) + st.devices / o.capacity_qps
    return used


def _undominated(candidates: list[PipelineOption]) -> list[PipelineOption]:
    """The candidates no other one beats (`_pareto`)."""
    kept = _pareto([_usage(o) for o in candidates], [o.latency_s for o in candidates])
    return [candidates[i] for i in kept]


def _pareto(usages: list[dict[int, float]], latencies: list[float]) -> list[int]:
    """Indices, in order, of the candidates no other one beats: within `NEAR` as few devices
    of every pool per request per second. Of candidates that near, the one with the fewest
    devices per request per second in all wins (then the lower worst-case latency, then the
    first found): options a few percent apart only make the model bigger."""
    keys = [
        (sum(u.values()), lat, i) for i, (u, lat) in enumerate(zip(usages, latencies, strict=True))
    ]
    # Only a candidate with a smaller key can beat one: compare each with those before it,
    # the kept ones first (most candidates fall to one of those; the others are asked only
    # when none does, as "near" is not transitive).
    ranked = sorted(range(len(usages)), key=keys.__getitem__)
    kept: list[int] = []
    beaten: list[int] = []

    def beats(j: int, u: dict[int, float]) -> bool:
        v = usages[j]
        return v.keys() <= u.keys() and all(v.get(p, 0.0) <= u[p] * (1 + NEAR) for p in u)

    for i in ranked:
        u = usages[i]
        if any(beats(j, u) for j in kept) or any(beats(j, u) for j in beaten):
            beaten.append(i)
        else:
            kept.append(i)
    return sorted(kept)


def _fewest(problem: Problem, candidates: list[PipelineOption]) -> list[PipelineOption]:
    """At most `PER_POOL_SET` candidates per set of pools used: those that take the smallest
    share of the pools per request per second (sum over pools of devices per request per second
    over the pool's devices: the scarce pool's devices count most), then the lowest device
    cost, then the lowest latency. Every option costs the planner time on every re-plan, at
    thousands of devices mostly in the LP dives."""
    groups: dict[frozenset[int], list[tuple[float, float, float, int]]] = {}
    for i, o in enumerate(candidates):
        usage = _usage(o)
        share = sum(u / max(problem.pools[p].devices, 1) for p, u in usage.items())
        cost = sum(u * problem.pools[p].cost_per_device for p, u in usage.items())
        groups.setdefault(frozenset(usage), []).append((share, cost, o.latency_s, i))
    keep = sorted(entry[-1] for group in groups.values() for entry in sorted(group)[:PER_POOL_SET])
    return [candidates[i] for i in keep]


def plan_stages(problem: Problem, o: Option, replicas: int) -> list[PlanStage]:
    """A plan row's stages for `replicas` of option `o` (none for a whole variant)."""
    if not isinstance(o, PipelineOption):
        return []
    return [
        PlanStage(
            pool=problem.pools[st.pool].name,
            first=st.first,
            last=st.last,
            replicas=st.devices * replicas,
            devices_per_replica=st.devices,
            max_batch_size=st.max_batch_size,
            latency_s=st.latency_s,
            output_bytes=st.output_bytes,
        )
        for st in o.stages
    ]


def transfer_s(settings: PlannerSettings, batch_size: int, output_bytes: int) -> float:
    """Time to hand a batch of `batch_size` to the next stage (the planner's model of it)."""
    return settings.transfer_overhead_s + batch_size * output_bytes / settings.transfer_bytes_per_s


def downstream_s(stages: list[PlanStage], settings: PlannerSettings) -> list[float]:
    """Per stage, the share of a request's budget the stages after it need in the worst case:
    the hand-over from it on, and twice each later stage's batch latency (`latency` in the
    module docstring). A stage's worker batches against the deadline less this, so that the
    planned pipeline keeps the SLO end to end; 0 for the last stage."""
    out: list[float] = []
    for i in range(len(stages)):
        later = stages[i + 1 :]
        hand_overs = stages[i:-1]
        out.append(
            sum(2 * st.latency_s for st in later)
            + sum(transfer_s(settings, st.max_batch_size, st.output_bytes) for st in hand_overs)
        )
    return out


def pass_latency_s(stages: list[PlanStage], settings: PlannerSettings) -> float:
    """One full batch's time through the whole pipeline (every stage's batch latency and the
    hand-overs): the batch latency a router counts on for the pipeline's backlog."""
    return sum(st.latency_s for st in stages) + sum(
        transfer_s(settings, st.max_batch_size, st.output_bytes) for st in stages[:-1]
    )
