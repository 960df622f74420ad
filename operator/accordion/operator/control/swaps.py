"""Model swaps: a re-plan that takes serving replicas out of service must pay for itself.

On a full pool a new replica gets a device only when a replica the plan no longer wants has
drained and freed it (Kubernetes schedules one pod per GPU): the device then serves nothing
for a start-up (a pod start and a model load). A re-plan for a rise of demand that needs such
*swaps* pays that capacity loss first and gains only after; a spike shorter than a start-up is
over before a swap has paid back, and the swap made it worse. Re-plans that only add replicas
on free devices (or turn spare replicas into planned ones, which loads nothing) cost no served
capacity and go at once.

The rule (`SwapGate.defer`): a new plan that swaps replicas, made because some services' demand
rose out of their band (`triggers`), is applied only once that rise has lasted as long as a
start-up of the service takes (`StartupMeter`: the time its new replicas took to become ready,
as the loop saw it; `DEFAULT_STARTUP_S` before any was seen). A rise that lasted that long is
likely to last as long again (the older a change of demand, the longer it is expected to go
on); one that did not is left to the spare replicas and the router's fast loop meanwhile. Until
then the plan in force stays, with those of the new plan's additions that fit on the devices it
leaves free (`additions_only`: they cost no served capacity), and the loop plans again at its
next pass (each measurement, while the estimate is out of its band). Re-plans for falling
demand or for a changed world are never deferred.

In overload a second rule applies (`pays_back`): when even the new plan cannot serve every
estimate, each swap takes capacity from demand that is there, and the new plan must gain enough
to make up for it. The planner says how much more the new plan serves than the plan in force
would, routed for the same demand (`SolverStats.gain_over_current_qps`, fair shares weighted as
it plans them); over `LoopSettings.swap_payback_s` that gain must come to at least what the
swaps leave unserved while they start (`swap_loss`: per swapped replica, the load the new plan
routes to it, for a start-up of its service). In lasting overload nearly every pass finds a plan
that serves 1-3% more by moving devices between services, with 5-10 swaps that leave thousands
of requests unserved while they start: 35.0-35.1% of the overload trace's requests were
violations when every such plan was applied, 34.4-35.2% in six runs with the rule (about 0.4
points fewer on average; `bench/proteus/NOTES.md`).
A plan that gains nothing in served demand (within the planner's gap goal) swaps for accuracy
or cost; one that serves every estimate has headroom and spare replicas to absorb a start-up:
only the first rule applies to them. Held back, the plan in force stays with the new plan's
additions on free devices, as above, and the services it leaves short wait, as below.

A service the deferred plan would give more capacity, and that the plan in force leaves short of
its estimate with headroom, is *waiting* (`SwapGate.wait`) from the first pass that deferred for
it until a plan is adopted or it is no longer short: it counts as rising from then on, and the
loop plans again at each measurement while it waits (`ControlLoop.pass_due`). Without this, a
service whose estimate stayed inside its band (the band is around the estimate the last adopted
plan was made for) was short for as long as other services' rises kept starting afresh: at the
peak of the 1.5x trace t5 ran at 94-100% of its capacity for 15 s (82-97 s), one replica where
the deferred plan had two. While it waits, its status's Degraded condition says so and why
(`SwapGate.waiting_reason`), and every plan held back counts in the operator's
`accordion_operator_plans_held_total{reason}` (`SwapGate.held`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from accordion.operator.control.desired import WorkerKey
from accordion.operator.control.world import RunningWorker
from accordion.solver import Plan, PlanRow

DEFAULT_STARTUP_S = 2.0
"""A replica's start-up assumed before the loop saw one (a model load on a warm node)."""
STARTUP_WEIGHT = 0.3
"""Weight of a new start-up in the running estimate (`StartupMeter`)."""
HELD_YOUNG_RISE = "rise_younger_than_startup"
"""`SwapGate.held` reason: the rise of demand the plan was made for is younger than a start-up."""
HELD_NO_PAYBACK = "swaps_not_paid_back"
"""`SwapGate.held` reason: in overload, the plan's gain would not pay for its swaps."""


def swapped_replicas(new: Plan, old: Plan | None, devices: Mapping[str, int]) -> int:
    """New replicas of `new` that need a device a serving replica of `old` holds.

    Per pool: the replicas `new` adds to its worker groups (against `old`'s, spare replicas
    included: a spare replica that becomes a planned one loads nothing) beyond the devices
    `old`'s planned replicas leave free (spare replicas on them go at no cost)."""
    return sum(n for _, n, _ in _swaps_by_pool(new, old, devices))


def swap_loss(
    new: Plan, old: Plan | None, devices: Mapping[str, int], startup: StartupMeter
) -> float:
    """Requests `new`'s swaps leave unserved while they start: per swapped replica, the load
    `new` routes to a replica of its worker group, for a start-up of its service. Which of a
    pool's new replicas are the swapped ones is not known; each group's share of the pool's
    additions is taken."""
    loss = 0.0
    for _, swaps, grown in _swaps_by_pool(new, old, devices):
        added = sum(more for more, _, _ in grown)
        for more, per_replica_qps, service in grown:
            loss += swaps * more / added * per_replica_qps * startup.of(service)
    return loss


def _swaps_by_pool(
    new: Plan, old: Plan | None, devices: Mapping[str, int]
) -> list[tuple[str, int, list[tuple[int, float, str]]]]:
    """Per pool with swaps: the pool, its swapped replicas, and the groups `new` grows there
    (replicas added, the load routed to each of the group's replicas, the service)."""
    if old is None:
        return []
    old_total: dict[_Group, int] = {}
    old_main: dict[str, int] = {}
    for key, total, main in (g for r in old.rows for g in _groups(r)):
        old_total[key] = total
        old_main[key[2]] = old_main.get(key[2], 0) + main
    grow: dict[str, list[tuple[int, float, str]]] = {}
    for row in new.rows:
        for key, _, main in _groups(row):
            more = main - old_total.get(key, 0)
            if more > 0:
                per_replica = row.routed_qps / max(1, row.replicas - row.spare_replicas)
                grow.setdefault(key[2], []).append((more, per_replica, row.service))
    out = []
    for pool, grown in grow.items():
        free = max(0, devices.get(pool, 0) - old_main.get(pool, 0))
        swaps = max(0, sum(more for more, _, _ in grown) - free)
        if swaps:
            out.append((pool, swaps, grown))
    return out


def pays_back(gain_qps: float | None, loss: float, payback_s: float, tolerance_qps: float) -> bool:
    """Whether a plan that serves `gain_qps` more than the plan in force would (at the same
    demand) makes up for the `loss` requests its swaps cost within `payback_s` (see the module
    docstring). True when the planner could not say (`gain_qps` None) and when the plan gains
    nothing to speak of (within `tolerance_qps`): its swaps are then for accuracy or cost, not
    for served demand, and the other rules judge them."""
    if gain_qps is None or gain_qps <= tolerance_qps:
        return True
    return gain_qps * payback_s >= loss


_Group = tuple[str, str, str, str, int]
"""A worker group of a plan: service, variant, pool, pipeline id ("" for a whole variant),
stage index."""


def _groups(row: PlanRow) -> list[tuple[_Group, int, int]]:
    """A row's worker groups with the devices each takes in all and for planned replicas
    (spare ones left out): a pipeline's are its stages, each on its own pool (two pipelines
    of a variant may start on one pool; a later stage's devices are asked for too)."""
    if not row.stages:
        key = (row.service, row.variant, row.pool, "", 0)
        return [(key, row.replicas, row.replicas - row.spare_replicas)]
    return [
        (
            (row.service, row.variant, st.pool, row.pipeline or "", i),
            st.replicas,
            st.replicas - row.spare_replicas * st.devices_per_replica,
        )
        for i, st in enumerate(row.stages)
    ]


@dataclass
class StartupMeter:
    """How long a service's new replicas take to become ready, as the loop sees its workers.

    Each pass: a worker group with fewer ready replicas than it asks for is starting since the
    first pass that saw it so; the pass that sees it complete adds the elapsed time to the
    service's running estimate (an exponentially weighted mean)."""

    startup_s: dict[str, float] = field(default_factory=dict)
    _since: dict[WorkerKey, float] = field(default_factory=dict)

    def observe(self, workers: Mapping[WorkerKey, RunningWorker], now_s: float) -> None:
        for key, worker in workers.items():
            starting = worker.ready_replicas < worker.spec.replicas
            since = self._since.get(key)
            if starting and since is None:
                self._since[key] = now_s
            elif not starting and since is not None:
                del self._since[key]
                sample = now_s - since
                old = self.startup_s.get(key.service)
                self.startup_s[key.service] = (
                    sample if old is None else old + STARTUP_WEIGHT * (sample - old)
                )
        for key in [k for k in self._since if k not in workers]:
            del self._since[key]

    def of(self, service: str) -> float:
        return self.startup_s.get(service, DEFAULT_STARTUP_S)


@dataclass
class SwapGate:
    """When a rise of demand began per service, and whether a swapping plan must wait."""

    rising_since: dict[str, float] = field(default_factory=dict)
    waiting_since: dict[str, float] = field(default_factory=dict)
    """Services short in the plan in force that a deferred plan would serve better, and since
    when (see the module docstring)."""
    deferred: int = 0
    """Plans not applied so far because the rise they were made for was younger than a
    start-up (benchmarks)."""
    unpaid: int = 0
    """Plans not applied so far because their gain would not have paid for their swaps
    (`pays_back`; benchmarks)."""
    last_held: str | None = None
    """Why the last plan held back was (`HELD_YOUNG_RISE`, `HELD_NO_PAYBACK`)."""

    def held(self) -> dict[str, int]:
        """Plans whose swaps were held back so far, by reason (both always present): the
        operator's `accordion_operator_plans_held_total`."""
        return {HELD_YOUNG_RISE: self.deferred, HELD_NO_PAYBACK: self.unpaid}

    def observe(self, rising: Iterable[str], now_s: float) -> None:
        """The services whose estimate is above the band of their plan now."""
        _track(self.rising_since, rising, now_s)

    def wait(self, services: Iterable[str], now_s: float) -> None:
        """The services a deferred plan leaves waiting now (an empty set once one is adopted)."""
        _track(self.waiting_since, services, now_s)

    def defer(self, swaps: int, startup: StartupMeter, now_s: float) -> bool:
        """Whether a plan with `swaps` swapped replicas waits (see the module docstring)."""
        since = dict(self.waiting_since)
        for svc, t in self.rising_since.items():
            since[svc] = min(t, since.get(svc, t))
        if swaps <= 0 or not since:
            return False
        young = all(now_s - t < startup.of(svc) for svc, t in since.items())
        if young:
            self.deferred += 1
            self.last_held = HELD_YOUNG_RISE
        return young

    def hold_unpaid(self) -> None:
        """A plan is held back because its gain would not pay for its swaps (`pays_back`)."""
        self.unpaid += 1
        self.last_held = HELD_NO_PAYBACK

    def waiting_reason(self, service: str, startup: StartupMeter) -> str:
        """Why `service`, short in the plan in force, waits (status); "" when it does not.

        The start-up is given in whole seconds: the meter moves with every replica that becomes
        ready, and a message that followed it to a tenth would write the status again each
        time while nothing the reader acts on changed."""
        if service not in self.waiting_since:
            return ""
        if self.last_held == HELD_NO_PAYBACK:
            why = (
                "in overload its gain would not make up for what its model swaps leave "
                "unserved while they start"
            )
        else:
            why = (
                "its model swaps wait until the rise of demand has lasted a start-up "
                f"(about {max(1, round(startup.of(service)))} s)"
            )
        return f"a new plan that serves more of it is held back: {why}"


def _track(since: dict[str, float], now_in: Iterable[str], now_s: float) -> None:
    """Keep `since` (service -> when it entered a state) for the services in that state now:
    those that left it go, those that entered it start at `now_s`, the others keep their time."""
    current = set(now_in)
    for svc in [s for s in since if s not in current]:
        del since[svc]
    for svc in current:
        since.setdefault(svc, now_s)


def additions_only(new: Plan, old: Plan, devices: Mapping[str, int]) -> Plan | None:
    """While `new`'s swaps wait: `old`'s planned replicas plus those of `new`'s additions that
    fit on devices `old`'s planned replicas leave free (spare replicas left out: the spare plan
    is made again on what remains). Each service's load goes to its most accurate rows first,
    each up to its capacity (the planner's own rule; a row's capacity keeps the utilization
    margin), and its effective accuracy is that routing's. What a burst brings beyond a row's
    share the router's fast loop sends on (`accordion.workers.fastloop`), and a worker's drop
    is sent again to another backend. Before that retry this routing was proportional to
    capacity, since accurate rows run full left no room for a rise on the Proteus bursty
    trace; with it, the proportional split only cost accuracy: on the 1.5x trace a deferred
    plan's yolov5n took 31% of yolo's load where yolov5x had room for all but a fifth
    (`bench/proteus/NOTES.md`). None when nothing fits, or for pipelines (their stages move
    together)."""
    if any(r.stages for r in (*old.rows, *new.rows)):
        return None
    rows = {
        (r.service, r.variant, r.pool): r.model_copy(
            update={
                "replicas": r.replicas - r.spare_replicas,
                "spare_replicas": 0,
                "capacity_qps": (r.replicas - r.spare_replicas) * r.capacity_qps_per_replica,
            }
        )
        for r in old.rows
        if r.replicas > r.spare_replicas
    }
    free = dict(devices)
    for r in rows.values():
        free[r.pool] = free.get(r.pool, 0) - r.replicas
    added = False
    for r in sorted(new.rows, key=lambda r: -r.capacity_qps_per_replica):
        have = rows.get((r.service, r.variant, r.pool))
        # A pool `devices` does not name (a MIG slice profile the plan puts in service this
        # pass) has no free device to add on.
        take = min(
            r.replicas - r.spare_replicas - (have.replicas if have else 0), free.get(r.pool, 0)
        )
        if take <= 0:
            continue
        free[r.pool] -= take
        added = True
        n = take + (have.replicas if have else 0)
        base = have if have is not None else r
        rows[(r.service, r.variant, r.pool)] = base.model_copy(
            update={
                "replicas": n,
                "spare_replicas": 0,
                "capacity_qps": n * base.capacity_qps_per_replica,
            }
        )
    if not added:
        return None
    demand = {s.service: s.demand_qps for s in new.services}
    capacity: dict[str, float] = {}
    for r in rows.values():
        capacity[r.service] = capacity.get(r.service, 0.0) + r.capacity_qps
    left = dict(demand)
    routed_qps: dict[tuple[str, str, str], float] = {}
    routed: dict[str, tuple[float, float]] = {}  # service: (load, load x accuracy)
    for k in sorted(rows, key=lambda k: (k[0], -rows[k].accuracy, k)):
        r = rows[k]
        qps = max(0.0, min(left.get(r.service, 0.0), r.capacity_qps))
        left[r.service] = left.get(r.service, 0.0) - qps
        routed_qps[k] = qps
        load, weighted = routed.get(r.service, (0.0, 0.0))
        routed[r.service] = (load + qps, weighted + qps * r.accuracy)
    out_rows = [rows[k].model_copy(update={"routed_qps": routed_qps[k]}) for k in sorted(rows)]
    services = []
    for s in old.services:
        d = demand.get(s.service, s.demand_qps)
        cap = capacity.get(s.service, 0.0)
        load, weighted = routed.get(s.service, (0.0, 0.0))
        services.append(
            s.model_copy(
                update={
                    "demand_qps": d,
                    "capacity_qps": cap,
                    "served_qps": min(d, cap),
                    "unserved_qps": max(0.0, d - cap),
                    "spare_capacity_qps": 0.0,
                    # This routing's, not the plan in force's: status, the planned-accuracy
                    # metric and the accuracy events read it.
                    "effective_accuracy": weighted / load if load > 0 else None,
                }
            )
        )
    return old.model_copy(update={"rows": out_rows, "services": services})
