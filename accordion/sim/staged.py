"""Cellular batching in the simulator: a replica of a cellular variant runs the worker's own
`CellularScheduler` one step of its cell at a time (issue 18).

A variant with step profiles and request lengths (`VariantSpec.step_profiles`, `.lengths`; the
API's `batching: {mode: Cellular, lengths}`) is planned with the per-request profile derived
from them (`accordion.solver.cellular`), but a worker serves it per step: requests join the
running batch at every step boundary and leave when their last step has run. The engine
drives a replica's policy through the batching protocol (enqueue / decide / complete);
`CellularReplicaPolicy` adapts the scheduler to it: a decision's batch is the requests in
flight that run the step, its execution time is drawn from the step profile
(`execution_points`), and only those whose last step it was are answered when it ends
(`answered`).

Requests carry no length in a workload, so each gets one drawn from a lognormal with the
variant's mean and p99 (`length_of`), keyed by the request id so that every policy and replica
sees the same lengths. The fit is an assumption of the simulator (a long-tailed distribution
with the stated mean and tail), not a measurement.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from accordion.solver import VariantSpec
from accordion.solver.cellular import SequenceLengths
from accordion.solver.problem import ProfilePoint
from accordion.workers.batching import BatchingPolicy, Decision, Dropped, Request, make_policy
from accordion.workers.cellular import CellularScheduler
from accordion.workers.config import WorkerConfig
from accordion.workers.staged import Job, StageLatency

if TYPE_CHECKING:
    from accordion.sim.engine import Replica

Z99 = 2.3263478740408408
"""The standard normal's 0.99 quantile."""


def length_of(lengths: SequenceLengths, seed: int = 0) -> Callable[[int], int]:
    """A request's length in steps, by request id: a lognormal with mean `mean_steps` and p99
    `tail_steps` (sigma the smaller root of ln(p99 / mean) = z s - s^2 / 2; the largest
    sigma, z, when the tail is too long for any), at least one step."""
    gap = math.log(lengths.tail_steps / lengths.mean_steps)
    disc = Z99 * Z99 - 2 * gap
    sigma = Z99 - math.sqrt(disc) if disc > 0 else Z99
    mu = math.log(lengths.mean_steps) - sigma * sigma / 2

    def draw(request_id: int) -> int:
        rng = random.Random(request_id * 1_000_003 + seed)
        return max(1, round(math.exp(rng.gauss(mu, sigma))))

    return draw


class CellularReplicaPolicy(BatchingPolicy):
    """`CellularScheduler` behind the batching protocol the simulator's engine drives."""

    name = "cellular"

    def __init__(self, scheduler: CellularScheduler, steps_of: Callable[[int], int]) -> None:
        super().__init__(scheduler.max_batch_size)
        self.scheduler = scheduler
        self.steps_of = steps_of
        self._requests: dict[int, Request] = {}
        self._finishing: tuple[Request, ...] = ()

    def enqueue(self, request: Request, now_s: float) -> None:
        self._requests[request.request_id] = request
        job = Job(
            request.request_id,
            request.arrival_s,
            request.deadline_s,
            self.steps_of(request.request_id),
        )
        self.scheduler.enqueue(job, now_s)

    @property
    def queue_depth(self) -> int:
        """Requests waiting or holding state (a retiring replica drains both)."""
        return self.scheduler.queue_depth + len(self.scheduler.inflight)

    def decide(self, now_s: float) -> Decision:
        d = self.scheduler.decide(now_s)
        dropped = tuple(
            Dropped(self._requests.pop(job.request_id), reason) for job, reason in d.dropped
        )
        batch = tuple(self._requests[j.request_id] for j in d.run)
        if batch:
            self._start(batch)
            self._finishing = tuple(
                self._requests[j.request_id] for j in d.run if j.done + 1 >= j.steps
            )
        return Decision(batch, dropped, d.wake_at_s, d.predicted_latency_s)

    def complete(self, batch_size: int, latency_s: float, now_s: float) -> None:
        super().complete(batch_size, latency_s, now_s)
        for job in self.scheduler.complete(latency_s, now_s):
            self._requests.pop(job.request_id, None)

    def answered(self) -> tuple[Request, ...]:
        """The requests whose last step is the one running (answered when it ends)."""
        return self._finishing


def replica_policy(config: WorkerConfig, variant: VariantSpec, pool: str) -> BatchingPolicy:
    """The batching a replica of `variant` on `pool` runs, as its worker would: cellular per
    step when the configuration says so and the variant has a step profile there and lengths;
    otherwise the configured request batcher (`make_policy`)."""
    steps = variant.step_profiles.get(pool)
    if config.batching.mode != "cellular" or steps is None or variant.lengths is None:
        return make_policy(config.batching, config.profile_s, config.slo_s)
    latency = StageLatency(
        [{p.batch_size: p.p50_s for p in steps}], margin_s=config.batching.margin_ms / 1000.0
    )
    scheduler = CellularScheduler(
        latency,
        max_batch_size=config.batching.max_batch_size,
        max_inflight=config.batching.max_inflight,
    )
    return CellularReplicaPolicy(scheduler, length_of(variant.lengths))


def execution_points(replica: Replica) -> list[ProfilePoint]:
    """What the engine draws a run's execution time from: a step of the cell for a cellular
    replica, a whole batch otherwise."""
    if isinstance(replica.policy, CellularReplicaPolicy):
        return replica.variant.step_profiles[replica.pool]
    return replica.variant.profiles[replica.pool]


def answered(replica: Replica, batch: tuple[Request, ...]) -> tuple[Request, ...]:
    """The requests a run answers when it ends: its last-step requests for a cellular
    replica, the whole batch otherwise."""
    if isinstance(replica.policy, CellularReplicaPolicy):
        return replica.policy.answered()
    return batch


def cellular_variant(
    variant: VariantSpec,
    doc: dict[str, Any],
    batches: Callable[[VariantSpec, str], list[dict[str, float]]],
) -> dict[str, Any]:
    """A variant of the simulated family in the API's form (`doc`), made cellular when the
    variant has step profiles and lengths: a cell model, `batching: {mode: Cellular,
    lengths}`, its step profiles (`batches` renders a pool's points as the API's batches)."""
    if not variant.step_profiles or variant.lengths is None:
        return doc
    steps = variant.model_copy(update={"profiles": variant.step_profiles})
    return {
        **doc,
        "model": {"storageUri": "builtin:gru-seq", "format": "builtin"},
        "batching": {
            "mode": "Cellular",
            "lengths": {
                "meanSteps": variant.lengths.mean_steps,
                "p99Steps": variant.lengths.tail_steps,
            },
        },
        "profiles": [
            {"pool": pool, "batches": batches(steps, pool)} for pool in sorted(steps.profiles)
        ],
    }
