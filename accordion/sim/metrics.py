"""What a simulation measures, per second and overall.

Every request ends exactly once: ``ok`` (served by its deadline), ``late`` (served after it;
a violation, counted honestly) or ``dropped`` (by a batcher or shed by the router). Per-second
figures are keyed by the request's arrival second, so demand and its outcome line up.

Effective accuracy (the mean accuracy of the requests served in time, as Proteus reports it)
rewards losing requests of the families whose best variant is less accurate: a policy that
drops 15% of a family capped at 94 gains accuracy by it. The mix-weighted accuracy removes that
effect: each family's effective accuracy, weighted by the family's share of the demand.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

OK, LATE, DROPPED = 0, 1, 2


@dataclass
class SecondStats:
    """Outcomes of the requests that arrived in one second, and the cluster during it."""

    second: int
    demand: int = 0
    ok: int = 0
    late: int = 0
    dropped: int = 0
    accuracy_sum: float = 0.0
    capacity_qps: float = 0.0
    devices: float = 0.0

    @property
    def violation_ratio(self) -> float:
        return (self.late + self.dropped) / self.demand if self.demand else 0.0

    @property
    def effective_accuracy(self) -> float | None:
        return self.accuracy_sum / self.ok if self.ok else None


@dataclass(frozen=True)
class Summary:
    """Overall figures of one run (one policy on one trace)."""

    policy: str
    demand: int
    ok: int
    late: int
    dropped: int
    violation_ratio: float
    effective_accuracy: float
    max_accuracy_drop: float
    throughput_qps: float
    device_seconds: float
    replans: int
    planner_time_mean_s: float
    planner_time_max_s: float
    wall_s: float
    mix_accuracy: float = 0.0
    """Per-family effective accuracy weighted by the family's demand (module docstring)."""

    def as_row(self) -> dict[str, float | int | str]:
        return asdict(self)


@dataclass
class Recorder:
    """Accumulates outcomes and per-second statistics; checks conservation."""

    seconds: dict[int, SecondStats] = field(default_factory=dict)
    outcome: dict[int, int] = field(default_factory=dict)
    planner_times_s: list[float] = field(default_factory=list)
    device_seconds: float = 0.0
    served_accuracy_sum: float = 0.0
    family_of: Sequence[int] = ()
    """The family of each request id (for the mix-weighted accuracy); empty: one family."""
    family_demand: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    family_ok: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    family_accuracy_sum: dict[int, float] = field(default_factory=lambda: defaultdict(float))

    def second(self, t_s: float) -> SecondStats:
        sec = math.floor(t_s)
        st = self.seconds.get(sec)
        if st is None:
            st = self.seconds[sec] = SecondStats(sec)
        return st

    def arrival(self, request_id: int, arrival_s: float) -> None:
        self.second(arrival_s).demand += 1
        self.family_demand[self._family(request_id)] += 1

    def _family(self, request_id: int) -> int:
        return self.family_of[request_id] if self.family_of else 0

    def finish(self, request_id: int, arrival_s: float, kind: int, accuracy: float = 0.0) -> None:
        if request_id in self.outcome:
            raise AssertionError(f"request {request_id} ended twice")
        self.outcome[request_id] = kind
        st = self.second(arrival_s)
        if kind == OK:
            st.ok += 1
            st.accuracy_sum += accuracy
            self.served_accuracy_sum += accuracy
            family = self._family(request_id)
            self.family_ok[family] += 1
            self.family_accuracy_sum[family] += accuracy
        elif kind == LATE:
            st.late += 1
        else:
            st.dropped += 1

    def per_second(self) -> list[SecondStats]:
        return [self.seconds[s] for s in sorted(self.seconds)]

    def summary(self, policy: str, wall_s: float, window_s: int = 10) -> Summary:
        rows = self.per_second()
        demand = sum(r.demand for r in rows)
        ok = sum(r.ok for r in rows)
        late = sum(r.late for r in rows)
        dropped = sum(r.dropped for r in rows)
        duration = (rows[-1].second - rows[0].second + 1) if rows else 1
        return Summary(
            policy=policy,
            demand=demand,
            ok=ok,
            late=late,
            dropped=dropped,
            violation_ratio=(late + dropped) / demand if demand else 0.0,
            effective_accuracy=self.served_accuracy_sum / ok if ok else 0.0,
            max_accuracy_drop=max_accuracy_drop(rows, window_s),
            throughput_qps=(ok + late) / duration,
            device_seconds=self.device_seconds,
            replans=len(self.planner_times_s),
            planner_time_mean_s=(
                sum(self.planner_times_s) / len(self.planner_times_s)
                if self.planner_times_s
                else 0.0
            ),
            planner_time_max_s=max(self.planner_times_s, default=0.0),
            wall_s=wall_s,
            mix_accuracy=self.mix_accuracy(),
        )

    def mix_accuracy(self) -> float:
        """Each family's effective accuracy weighted by its demand (families served at all)."""
        served = [f for f, n in self.family_ok.items() if n > 0]
        demand = sum(self.family_demand[f] for f in served)
        if not demand:
            return 0.0
        return (
            sum(
                self.family_demand[f] * self.family_accuracy_sum[f] / self.family_ok[f]
                for f in served
            )
            / demand
        )


def max_accuracy_drop(rows: list[SecondStats], window_s: int = 10) -> float:
    """100 minus the lowest effective accuracy over consecutive `window_s`-second windows."""
    if not rows:
        return 0.0
    start, end = rows[0].second, rows[-1].second
    by_sec = {r.second: r for r in rows}
    worst = 0.0
    for w in range(start, end + 1, window_s):
        ok = sum(by_sec[s].ok for s in range(w, w + window_s) if s in by_sec)
        acc = sum(by_sec[s].accuracy_sum for s in range(w, w + window_s) if s in by_sec)
        if ok:
            worst = max(worst, 100.0 - acc / ok)
    return worst
