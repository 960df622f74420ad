"""A variant's batching inside the model (`spec.variants[].batching`) on its way to the workers
and the planner.

The API names the mode as Kubernetes enums do (Request, Cellular, Node); the worker's
configuration as `accordion.workers.config.BatchingConfig.mode` (request, cellular, node), with
the cellular bounds `max_inflight` and `max_state_mb` (MiB). A cellular variant that gives the
workload's request lengths (`batching.lengths`) lists the latency of one step of its cell in its
profiles: the planner sees the per-request profile `accordion.solver.cellular` derives from them
(`planner_profiles`), and the worker's and router's per-request latencies are derived the same way
(`request_profile_ms`), so every consumer of a profile reads whole requests.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from accordion.operator.api import BatchingModeName, Variant
from accordion.solver.cellular import SequenceLengths
from accordion.solver.problem import ProfilePoint
from accordion.workers.config import BatchingConfig, BatchingMode


class StagedBatching(BaseModel):
    """What a worker group needs of its variant's `batching` (part of its `WorkerSpec`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: BatchingMode
    max_inflight: int | None = Field(default=None, ge=1)
    max_state_mb: float | None = Field(default=None, gt=0)

    @classmethod
    def of(cls, variant: Variant) -> StagedBatching | None:
        """The variant's batching inside the model; None for whole requests (the default)."""
        b = variant.batching
        if b is None or b.mode is BatchingModeName.REQUEST:
            return None
        return cls(
            mode="cellular" if b.mode is BatchingModeName.CELLULAR else "node",
            max_inflight=b.max_inflight,
            max_state_mb=b.max_state_mib,
        )


def worker_batching(staged: StagedBatching | None, max_batch_size: int) -> BatchingConfig:
    """The worker's batching settings: the SLO batcher capped at the plan's batch size, and
    the variant's mode with its bounds."""
    if staged is None:
        return BatchingConfig(policy="slo", max_batch_size=max_batch_size)
    return BatchingConfig(
        policy="slo",
        max_batch_size=max_batch_size,
        mode=staged.mode,
        max_inflight=staged.max_inflight,
        max_state_mb=staged.max_state_mb,
    )


def lengths_of(variant: Variant) -> SequenceLengths | None:
    """The request lengths of a cellular variant whose profiles are per step; else None."""
    b = variant.batching
    if b is None or b.mode is not BatchingModeName.CELLULAR or b.lengths is None:
        return None
    return SequenceLengths(mean_steps=b.lengths.mean_steps, tail_steps=b.lengths.p99_steps)


def planner_profiles(variant: Variant, profiles: dict[str, list[ProfilePoint]]) -> dict[str, Any]:
    """The profile fields of the variant's `VariantSpec`: its profiles as they are, or, for a
    cellular variant with lengths, as step profiles at those lengths (the solver derives the
    per-request profiles)."""
    lengths = lengths_of(variant)
    if lengths is None:
        return {"profiles": profiles}
    return {"step_profiles": profiles, "lengths": lengths}


def request_profile_ms(variant: Variant, profile_ms: dict[int, float]) -> dict[int, float]:
    """A per-batch-size latency (ms) of the variant's profile as whole requests take it."""
    lengths = lengths_of(variant)
    if lengths is None:
        return profile_ms
    return {b: round(ms * lengths.factor, 3) for b, ms in profile_ms.items()}
