"""Node-level batching (LazyBatching, HPCA'21) for feed-forward models run as stages.

With request-level batching a request that arrives just after a batch started waits for the
whole model to run. Here the model is a sequence of stages (an ``nn.Sequential``'s children,
a scripted or exported model's top-level blocks), and the scheduler decides at every stage
boundary which group of requests runs its next stage:

* requests at the same stage form a group (at most `max_batch_size`, earliest deadlines first);
* by default the group holding the earliest deadline runs (EDF at stage granularity: a batch
  in flight keeps going, and an urgent newcomer can go first);
* lazily, a group behind another one (a late request, at stage 0) runs its early stages alone
  to catch up and merges into the group ahead, when that plan keeps every deadline (the
  catch-up delays the group ahead; the merged group runs the rest at the larger batch; any
  other group after them, EDF) and costs less device time than running the two one after the
  other (it pays only where a larger batch is cheaper per request, which CPU kernels may not
  reward);
* requests that cannot make their deadline even alone from where they are are dropped.

Stage latency per batch size comes from the stages' profiles, corrected online.
"""

from __future__ import annotations

from accordion.workers.staged import Job, StageLatency, StageScheduler, StepDecision, hopeless

_Group = tuple[int, list[Job]]  # (stage, members in deadline order)


class NodeScheduler(StageScheduler):
    """Stage-level EDF with lazy merging of late requests; see the module docstring."""

    name = "node"

    def __init__(
        self, latency: StageLatency, stages: int, *, max_batch_size: int, merge: bool = True
    ) -> None:
        super().__init__()
        if stages < 1 or max_batch_size < 1:
            raise ValueError("stages and max_batch_size must be >= 1")
        self.latency = latency
        self.stages = stages
        self.max_batch_size = max_batch_size
        self.merge = merge
        self._jobs: list[Job] = []
        self._busy_until_s = 0.0
        self.merges = 0
        """How many catch-up stages ran (a late group ran to merge into the one ahead)."""

    @property
    def queue_depth(self) -> int:
        return sum(1 for j in self._jobs if j.done == 0)

    @property
    def inflight(self) -> tuple[Job, ...]:
        return tuple(j for j in self._jobs if j.done > 0)

    def enqueue(self, job: Job, now_s: float) -> None:
        self._jobs.append(job)

    def _drop(self, candidates: list[Job], start_s: float, reason: str) -> list[tuple[Job, str]]:
        doomed = hopeless(candidates, start_s, self.latency)
        if doomed:
            gone = set(map(id, doomed))
            self._jobs = [j for j in self._jobs if id(j) not in gone]
        return [(j, reason) for j in doomed]

    def groups(self) -> list[_Group]:
        """Groups of jobs at the same stage, furthest ahead first, each at most a batch."""
        by_stage: dict[int, list[Job]] = {}
        for job in self._jobs:
            by_stage.setdefault(job.done, []).append(job)
        out: list[_Group] = []
        for stage in sorted(by_stage, reverse=True):
            members = sorted(by_stage[stage], key=lambda j: j.deadline_s)
            for k in range(0, len(members), self.max_batch_size):
                out.append((stage, members[k : k + self.max_batch_size]))
        return out

    def decide(self, now_s: float) -> StepDecision:
        if self.busy:
            waiting = [j for j in self._jobs if j.done == 0]
            free_at = max(now_s, self._busy_until_s)
            reason = "deadline cannot be met even alone after the running stage"
            return StepDecision(dropped=tuple(self._drop(waiting, free_at, reason)))
        dropped = self._drop(list(self._jobs), now_s, "deadline cannot be met even alone")
        groups = self.groups()
        if not groups:
            return StepDecision(dropped=tuple(dropped))
        chosen = self._catch_up(groups, now_s) if self.merge else None
        if chosen is None:
            chosen = min(groups, key=lambda g: g[1][0].deadline_s)
        else:
            self.merges += 1
        stage, members = chosen
        run = tuple(members)
        predicted = self.latency.step_s(stage, len(run))
        self._busy_until_s = now_s + predicted
        self._start(run, stage)
        return StepDecision(
            run=run, stage=stage, dropped=tuple(dropped), predicted_latency_s=predicted
        )

    def _catch_up(self, groups: list[_Group], now_s: float) -> _Group | None:
        """The group behind another to run now so that it merges, or None (see the module
        docstring); the rearmost such group first."""
        for t in range(len(groups) - 1, 0, -1):
            behind, ahead = groups[t], groups[t - 1]
            if ahead[0] == behind[0]:
                continue  # an overflow group at the same stage: it cannot merge
            size = len(ahead[1]) + len(behind[1])
            if size > self.max_batch_size:
                continue
            lat = self.latency
            n_t, n_a = len(behind[1]), len(ahead[1])
            catch_s = lat.span_s(behind[0], ahead[0], n_t, margin=False)
            merged_s = lat.span_s(ahead[0], self.stages, size, margin=False)
            apart_s = lat.span_s(ahead[0], self.stages, n_a, margin=False) + lat.span_s(
                behind[0], self.stages, n_t, margin=False
            )
            if catch_s + merged_s >= apart_s:
                continue  # merging costs more device time than running them apart
            end = now_s + catch_s + merged_s
            if any(j.deadline_s < end + lat.margin_s for j in (*ahead[1], *behind[1])):
                continue
            others = sorted(
                (g for k, g in enumerate(groups) if k not in (t, t - 1)),
                key=lambda g: g[1][0].deadline_s,
            )
            feasible = True
            for stage, members in others:
                end += lat.span_s(stage, self.stages, len(members), margin=False)
                if members[0].deadline_s < end + lat.margin_s:
                    feasible = False
                    break
            if feasible:
                return behind
        return None

    def _observe(self, stage: int, size: int, latency_s: float) -> None:
        self.latency.observe(stage, size, latency_s)

    def _leave(self, jobs: list[Job], now_s: float) -> None:
        gone = set(map(id, jobs))
        self._jobs = [j for j in self._jobs if id(j) not in gone]
