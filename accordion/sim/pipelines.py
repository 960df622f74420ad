"""Pipeline rows of a plan in the simulator, run as the data plane runs them (issue 19).

The operator turns a pipeline row into one worker group per stage, each wired to the next
(`accordion.operator.control.desired`: `StageWiring`); the driver (`accordion.sim.driver`)
creates their replicas like any group's, and this module gives a stage's replicas what its
worker does (`accordion.workers.pipeline`, `server.Worker.infer`):

* the router sends to the first stage's group only (the plan's routing already names it);
* each stage's batcher (the worker's SLO batcher, on the stage's own profile) batches a
  request against its deadline less the later stages' share (`downstream_ms`), with the
  request's arrival at that stage as its arrival (`StageHandover.admit`);
* when a stage that is not the last finishes a batch, its requests go on to the next stage's
  group after the hand-over of the batch's tensors over the link (`Link.transfer_s`: the
  planner's model of the link, the same fixed cost and bandwidth by default), each request to
  that group's next ready replica in turn (kube-proxy behind the next stage's Service), its
  deadline unchanged; a request with no time left, or whose next stage has no ready replica,
  is dropped there (the worker answers 503 / 502);
* the last stage answers as a whole variant's replica does (the engine records it, on time or
  late, against the request's own deadline).

A stage's execution times come from its parts' profiles summed (`stage_variant`), the same
sum the planner planned with. Two simplifications, said here so that results can be read:
a request answered or dropped at a later stage is counted in the per-second rows at the second
it reached that stage (totals are exact); and the router's fast loop hears of an answer from
the last stage's replica (in a cluster the first stage's worker relays it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from accordion.operator.control.desired import WorkerKey, WorkerSpec
from accordion.sim.metrics import DROPPED
from accordion.solver import PlannerSettings, ProfilePoint, VariantSpec
from accordion.solver.problem import StageSpec
from accordion.workers.batching import Request

if TYPE_CHECKING:
    from accordion.sim.driver import Group
    from accordion.sim.engine import Replica, Simulator

_DEFAULTS = PlannerSettings()


@dataclass(frozen=True)
class Link:
    """The network between two stages' devices: a fixed cost per hand-over and a bandwidth."""

    bytes_per_s: float = _DEFAULTS.transfer_bytes_per_s
    overhead_s: float = _DEFAULTS.transfer_overhead_s

    def transfer_s(self, batch_size: int, output_bytes: int) -> float:
        """The time a batch's tensors take to reach the next stage."""
        return self.overhead_s + batch_size * output_bytes / self.bytes_per_s


def stage_parts(variant: VariantSpec, first: str, last: str) -> list[StageSpec]:
    """The variant's parts `first`..`last` (its `stages`, in order); [] when the names do not
    span parts of it."""
    names = [st.name for st in variant.stages]
    if first not in names or last not in names or names.index(first) > names.index(last):
        return []
    return list(variant.stages[names.index(first) : names.index(last) + 1])


def stage_variant(variant: VariantSpec, first: str, last: str, pool: str) -> VariantSpec:
    """The variant as one stage's replica on `pool` runs it: its profile there is the sum of
    parts `first`..`last` (p50 and p90 each), at the batch sizes profiled for all of them."""
    parts = stage_parts(variant, first, last)
    if not parts or any(pool not in part.profiles for part in parts):
        raise ValueError(f"{variant.name}: no parts {first}..{last} profiled on {pool}")
    per_part = [{p.batch_size: p for p in part.profiles[pool]} for part in parts]
    sizes = sorted(set.intersection(*(set(p) for p in per_part)))
    points = [
        ProfilePoint(
            batch_size=b,
            p50_s=sum(p[b].p50_s for p in per_part),
            p90_s=sum(p[b].p90_s if p[b].p90_s is not None else p[b].p50_s for p in per_part),
        )
        for b in sizes
    ]
    return variant.model_copy(update={"profiles": {pool: points}, "stages": []})


def stages_doc(
    variant: VariantSpec, batches: Callable[[StageSpec, str], list[dict[str, float]]]
) -> dict[str, Any]:
    """The variant's parts in the API's form (`Variant.stages`, as `accordion profile --split`
    prints them; `batches` renders a part's points on a pool); {} for a variant without."""
    if not variant.stages:
        return {}
    return {
        "stages": [
            {
                "name": st.name,
                "outputBytes": st.output_bytes,
                "profiles": [
                    {"pool": pool, "batches": batches(st, pool)} for pool in sorted(st.profiles)
                ],
            }
            for st in variant.stages
        ]
    }


def output_bytes(variant: VariantSpec, last: str) -> int:
    """The size of the tensor part `last` hands on, per request."""
    return next((st.output_bytes for st in variant.stages if st.name == last), 0)


class StageHandover:
    """Wires a stage's replicas to the next stage's group (see the module docstring)."""

    def __init__(
        self,
        sim: Simulator,
        groups: Mapping[WorkerKey, Group],
        finished: Callable[[Replica, Request, str], None],
        link: Link | None = None,
    ) -> None:
        self.sim = sim
        self.groups = groups
        self.finished = finished
        """The control's `finished` (the router hears of a request dropped on the way)."""
        self.link = link or Link()
        self.handed = 0
        """Requests handed on to a next stage so far."""

    def wire(self, replica: Replica, spec: WorkerSpec, variant: VariantSpec) -> None:
        """Make `replica` (of the group `spec`, a pipeline stage) run as its worker would."""
        stage = spec.stage
        if stage is None:
            return
        replica.admit = partial(self.admit, stage.downstream_ms / 1000.0)
        if stage.next is not None:
            out = output_bytes(variant, stage.last)
            replica.hand_on = partial(
                self.hand_on, replica, stage.next, stage.downstream_ms / 1000.0, out
            )

    def admit(self, downstream_s: float, request: Request) -> Request:
        """The request as the stage's batcher sees it: arrived now, due when the later stages
        still have their share of the budget (`server.Worker.infer`)."""
        now = self.sim.now_s
        return Request(request.request_id, now, request.deadline_s - downstream_s, request.payload)

    def hand_on(
        self,
        replica: Replica,
        next_key: WorkerKey,
        downstream_s: float,
        out_bytes: int,
        batch: tuple[Request, ...],
    ) -> None:
        """A finished batch of `replica`: its requests reach the next stage after the link's
        transfer time, each with its own deadline (this stage saw it `downstream_s` earlier)."""
        now = self.sim.now_s
        going: list[Request] = []
        for req in batch:
            deadline = req.deadline_s + downstream_s
            if deadline - now <= 0:  # "dropped: no time left for the next stage"
                self._drop(replica, req)
            else:
                going.append(Request(req.request_id, req.arrival_s, deadline, req.payload))
        if going:
            at = now + self.link.transfer_s(len(going), out_bytes)
            self.sim.call_at(at, lambda: self._arrive(replica, next_key, going))

    def _arrive(self, sender: Replica, key: WorkerKey, requests: list[Request]) -> None:
        group = self.groups.get(key)
        active = group.active() if group is not None else []
        for req in requests:
            if group is None or not active:  # "next stage unreachable": no endpoint
                self._drop(sender, req)
                continue
            target = active[group.cursor % len(active)]
            group.cursor += 1
            self.handed += 1
            self.sim.enqueue(target, req)

    def _drop(self, replica: Replica, request: Request) -> None:
        self.sim.recorder.finish(request.request_id, request.arrival_s, DROPPED)
        self.finished(replica, request, "dropped")
