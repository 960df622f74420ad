"""A pipeline stage's latency profile, from the parts of a variant's model in its spec.

A variant that lists its model's parts (`Variant.stages`, as `accordion profile --split` prints
them) may be planned as a pipeline whose stages each run consecutive parts on one pool. A stage's
worker needs the profile of what it runs, per batch size, for its batcher's predictions (as a
whole variant's worker gets the variant's profile on its pool): the sum of its parts' latencies,
the same sum the planner made the plan with (`accordion.solver.pipelines`, an upper bound: each
part was timed with its own call overhead).
"""

from __future__ import annotations

from accordion.operator.api import BatchLatency, Variant


def _latency_ms(b: BatchLatency) -> float:
    """The percentile the operator hands workers (as for whole variants): p99, else p90, p50."""
    return b.p99_ms or b.p90_ms or b.p50_ms


def stage_profile_ms(variant: Variant, first: str, last: str, pool: str) -> dict[int, float]:
    """Latency per batch size (ms) of parts `first`..`last` of the variant's model on `pool`,
    at the batch sizes profiled for every one of them; empty when a part is not profiled there
    or the names do not span parts of the spec."""
    names = [st.name for st in variant.stages]
    if first not in names or last not in names or names.index(first) > names.index(last):
        return {}
    parts = variant.stages[names.index(first) : names.index(last) + 1]
    per_part: list[dict[int, float]] = []
    for part in parts:
        profile = next((p for p in part.profiles if p.pool == pool), None)
        if profile is None:
            return {}
        per_part.append({b.batch_size: _latency_ms(b) for b in profile.batches})
    sizes = sorted(set.intersection(*(set(p) for p in per_part)))
    return {b: round(sum(p[b] for p in per_part), 6) for b in sizes}
