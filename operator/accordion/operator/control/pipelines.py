"""How far a pipeline row of the plan is ready, for the service's status.

A pipeline (the variant cut into stages on several pools, `desired.worker_specs`) runs as one
worker group per stage. Its status row shows each stage's ready replicas, and as the row's own
`readyReplicas` the pipeline replicas that are ready end to end: a stage with too few ready
replicas bounds the whole pipeline, as it bounds the traffic routed to it
(`desired.pipeline_view`).
"""

from __future__ import annotations

from collections.abc import Mapping

from accordion.operator.api import PlanRowStatus
from accordion.operator.control.desired import WorkerKey
from accordion.operator.control.world import RunningWorker


def pipeline_ready(
    service: str, row: PlanRowStatus, workers: Mapping[WorkerKey, RunningWorker]
) -> int:
    """Fill in the ready replicas of a pipeline row and of its stages; return the stages'
    ready worker replicas in all (pods, as the service's `readyReplicas` counts them)."""
    pods = 0
    whole: int | None = None
    for i, st in enumerate(row.stages):
        key = WorkerKey(
            service=service, variant=row.variant, pool=st.pool, pipeline=row.pipeline, stage=i
        )
        running = workers.get(key)
        st.ready_replicas = min(st.replicas, running.ready_replicas if running else 0)
        pods += st.ready_replicas
        per_pipeline = max(1, st.replicas // max(1, row.replicas))
        n = st.ready_replicas // per_pipeline
        whole = n if whole is None else min(whole, n)
    row.ready_replicas = min(row.replicas, whole or 0)
    return pods
