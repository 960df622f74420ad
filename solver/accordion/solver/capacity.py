"""What one replica of a variant can serve on one pool within the service's SLO.

A request that arrives just after a batch was dispatched waits for that batch to finish, then
rides in the next one: its worst-case latency is twice the batch latency. So the planner caps
each (variant, pool) at the largest profiled batch b with 2 * latency(b) <= SLO, and counts on
b / latency(b) requests per second per replica, derated by the utilization margin. Pairs that
miss the SLO even at batch 1 cannot be used at all and are reported as exclusions. When the
service's arrival burstiness is measured, the capacity is instead the batching model's largest
rate that keeps the percentile within the SLO (`queueing`); the margin stays the fallback.
"""

from __future__ import annotations

from dataclasses import dataclass

from accordion.solver.plan import Exclusion
from accordion.solver.problem import Percentile, Problem, ProfilePoint, ServiceSpec
from accordion.solver.queueing import max_rate_qps


@dataclass(frozen=True)
class Option:
    """One usable (service, variant, pool) triple with its per-replica capacity."""

    service: int
    variant: str
    pool: int
    max_batch_size: int
    capacity_qps: float
    accuracy: float
    value: float
    """Accuracy as the objective counts it: capped at the service's target."""

    def devices(self) -> tuple[int, ...]:
        """The pool of every device one replica takes (a pipeline takes several)."""
        return (self.pool,)

    def pipeline_id(self) -> str | None:
        """The pipeline's id (`pipelines`); None for a whole variant."""
        return None


def batch_capacity(
    points: list[ProfilePoint], slo_s: float, percentile: Percentile, utilization: float
) -> tuple[int, float] | None:
    """(largest batch meeting the SLO, its capacity in QPS), or None when batch 1 misses it."""
    best: tuple[int, float] | None = None
    for point in sorted(points, key=lambda p: p.batch_size):
        latency_s = point.latency_s(percentile)
        if 2 * latency_s <= slo_s:
            best = (point.batch_size, point.batch_size / latency_s * utilization)
    return best


def modelled_capacity(
    points: list[ProfilePoint], fit: tuple[int, float], svc: ServiceSpec, percentile: Percentile
) -> tuple[int, float]:
    """`fit` with its capacity from the batching model (`queueing`) at the service's measured
    burstiness instead of the utilization margin; `fit` itself when the model has no answer."""
    assert svc.burstiness is not None
    rate = max_rate_qps(points, fit[0], svc.slo_s, percentile, svc.burstiness)
    return fit if rate is None else (fit[0], rate)


def options(problem: Problem) -> tuple[list[Option], list[Exclusion]]:
    """Usable options of every eligible variant (accuracy at or above the floor), and exclusions.

    Options are in a deterministic order: by service, variant name, pool name.
    """
    pool_index = {pool.name: i for i, pool in enumerate(problem.pools)}
    settings = problem.settings
    usable: list[Option] = []
    excluded: list[Exclusion] = []
    for s, svc in enumerate(problem.services):
        cap = svc.accuracy_target if svc.accuracy_target is not None else 100.0
        for var in sorted(svc.variants, key=lambda v: v.name):
            for pool_name, points in sorted(var.profiles.items()):
                utilization = (
                    svc.utilization if svc.utilization is not None else (settings.utilization)
                )
                fit = batch_capacity(points, svc.slo_s, settings.latency_percentile, utilization)
                if fit is None:
                    lat = points[0].latency_s(settings.latency_percentile)
                    excluded.append(
                        Exclusion(
                            service=svc.name,
                            variant=var.name,
                            pool=pool_name,
                            reason=f"batch 1 takes {lat:.4g} s at "
                            f"{settings.latency_percentile}: twice that exceeds the SLO of "
                            f"{svc.slo_s:.4g} s",
                        )
                    )
                    continue
                if var.accuracy < svc.accuracy_floor:
                    continue
                if problem.pools[pool_index[pool_name]].devices == 0:
                    continue
                if svc.utilization is None and svc.burstiness is not None:
                    fit = modelled_capacity(points, fit, svc, settings.latency_percentile)
                usable.append(
                    Option(
                        service=s,
                        variant=var.name,
                        pool=pool_index[pool_name],
                        max_batch_size=fit[0],
                        capacity_qps=fit[1],
                        accuracy=var.accuracy,
                        value=min(var.accuracy, cap),
                    )
                )
    return usable, excluded
