"""Capacity of a variant batched per step of its cell (cellular batching), for the planner.

A recurrent or decoder model served in cellular mode (`accordion.workers.cellular`) runs one
step of its cell for every request in flight; a request of n steps joins the running batch at
the next step boundary, takes n steps, and leaves. Its latency profile is therefore a *step*
profile s(b) (one step with b requests in flight, `accordion profile --stages`), and what a
replica serves depends on the workload's request lengths. The planner reasons about whole
requests (a batch of b takes L(b), throughput b / L(b), the SLO rule 2 L(b) <= SLO), so such a
variant's per-request profile is derived here from its step profile at the length distribution:

    L(b) = max(mean(n), (n_tail + 1) / 2) * s(b)

* 2 L(b) <= SLO holds exactly when a tail-length request, joining one step late, meets the SLO
  with b in flight (twice the mean always does when the tail term dominates);
* b / L(b) never exceeds what the worker serves (b requests in flight finish at mean(n) s(b)
  each); it is lower by (n_tail + 1) / (2 mean(n)) where the tail dominates: conservative.

The same rule as `accordion profile --stages --lengths` (the workers' profiler, which the
layering keeps from importing the solver); `tests/solver/test_cellular.py` holds both to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from accordion.solver.problem import ProfilePoint


class SequenceLengths(BaseModel):
    """The workload's request lengths in steps of the cell (elements of a sequence, tokens of
    prompt plus output): their mean and a tail quantile (p99)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mean_steps: float = Field(ge=1, description="Mean request length, in steps.")
    tail_steps: float = Field(ge=1, description="The p99 request length, in steps.")

    @model_validator(mode="after")
    def _tail_above_mean(self) -> SequenceLengths:
        if self.tail_steps < self.mean_steps:
            raise ValueError(
                f"tail_steps ({self.tail_steps:g}) must be at least mean_steps "
                f"({self.mean_steps:g})"
            )
        return self

    @property
    def factor(self) -> float:
        """Steps the planner counts per request: max(mean, (tail + 1) / 2)."""
        return max(self.mean_steps, (self.tail_steps + 1.0) / 2.0)


def equivalent_profile(
    step: Sequence[ProfilePoint], lengths: SequenceLengths
) -> list[ProfilePoint]:
    """The per-request profile of a cell batched per step, from its step profile at
    `lengths` (module docstring): every percentile scaled by the same factor."""
    f = lengths.factor
    return [
        p.model_copy(
            update={
                "p50_s": p.p50_s * f,
                "p90_s": None if p.p90_s is None else p.p90_s * f,
                "p99_s": None if p.p99_s is None else p.p99_s * f,
            }
        )
        for p in step
    ]


def derive_profiles(
    step_profiles: dict[str, list[ProfilePoint]], lengths: SequenceLengths
) -> dict[str, list[ProfilePoint]]:
    """Per pool, the per-request profile of `equivalent_profile`."""
    return {pool: equivalent_profile(points, lengths) for pool, points in step_profiles.items()}
