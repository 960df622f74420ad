"""Cellular batching (BatchMaker, EuroSys'18) for recurrent and autoregressive models.

A recurrent or decoder model runs one cell (a step with shared weights) per element of a
request, and requests differ in length. Batching whole requests makes a short request wait for
the longest one of its batch and every new arrival wait for the whole batch. Batching per cell
instead: at every step boundary the scheduler lets waiting requests join the running batch and
finished ones leave, so the batch stays full and nobody waits for a stranger's tail (what
iteration-level batching of LLM decoders does today).

The scheduler, per step boundary:

* drops requests that cannot make their deadline even running alone from now on (they would
  only take capacity from the others), waiting or in flight;
* admits waiting requests, earliest deadline first, while the memory bound allows (at most
  `max_inflight` requests holding state, at most `max_state_bytes` of state: a request counts
  the largest state it will hold, so the bound holds at every step) and while every request in
  flight, and the newcomer, still finishes within its deadline at the larger batch's step
  latency (SLA-aware: a join never makes anyone late, as predicted). A request in flight that
  is already behind at the current batch size (a stall of the machine took its slack) does not
  hold joins back: refusing them would not put it back on time, only make the queue wait;
* runs one step of the requests in flight, earliest deadline first, at most `max_batch_size`.

Step latency per batch size comes from the cell's profile, corrected online (`StageLatency`).
"""

from __future__ import annotations

import bisect
import itertools
import math

from accordion.workers.staged import Job, StageLatency, StageScheduler, StepDecision, hopeless


class CellularScheduler(StageScheduler):
    """Per-step batching of a cell; see the module docstring."""

    name = "cellular"

    def __init__(
        self,
        latency: StageLatency,
        *,
        max_batch_size: int,
        max_inflight: int | None = None,
        max_state_bytes: int | None = None,
    ) -> None:
        super().__init__()
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self.latency = latency
        self.max_batch_size = max_batch_size
        self.max_inflight = max_inflight or max_batch_size
        self.max_state_bytes = max_state_bytes
        self._waiting: list[tuple[float, int, Job]] = []
        self._seq = itertools.count()
        self._active: list[Job] = []
        self._busy_until_s = 0.0
        self._refused: list[tuple[Job, str]] = []  # refused at arrival, dropped at next decide
        self._longest = 0  # the most steps of any request enqueued

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def inflight(self) -> tuple[Job, ...]:
        return tuple(self._active)

    @property
    def state_bytes(self) -> int:
        return sum(j.state_bytes for j in self._active)

    def enqueue(self, job: Job, now_s: float) -> None:
        if self.max_state_bytes is not None and job.state_bytes > self.max_state_bytes:
            self._refused.append((job, "its state exceeds the worker's memory bound"))
            return
        self._longest = max(self._longest, job.steps)
        bisect.insort(self._waiting, (job.deadline_s, next(self._seq), job))

    def _step_s(self, inflight: int) -> float:
        """Safe time one request waits per step with `inflight` requests in flight (more than
        a batch take turns, earliest deadline first: at worst, every turn)."""
        size = min(inflight, self.max_batch_size)
        return self.latency.step_s(0, size) * math.ceil(inflight / self.max_batch_size)

    def _drop_waiting(self, start_s: float, reason: str) -> list[tuple[Job, str]]:
        """The waiting requests to drop: those refused at arrival (their state exceeds the
        memory bound), and those that cannot finish even alone from `start_s` on. Only those
        due before the horizon of the longest request seen can be hopeless, and the queue is
        sorted by deadline: the sweep reads that prefix, not the queue (at 300 waiting, the
        whole queue cost ~60 us a step)."""
        out, self._refused = self._refused, []
        horizon = start_s + self.latency.margin_s + self._longest * self.latency.step_s(0, 1)
        due = bisect.bisect_left(self._waiting, (horizon,))
        doomed = hopeless((j for _, _, j in self._waiting[:due]), start_s, self.latency)
        if doomed:
            gone = set(map(id, doomed))
            out += [(job, reason) for job in doomed]
            self._waiting = [e for e in self._waiting if id(e[2]) not in gone]
        return out

    def decide(self, now_s: float) -> StepDecision:
        if self.busy:
            free_at = max(now_s, self._busy_until_s)
            return StepDecision(
                dropped=tuple(
                    self._drop_waiting(free_at, "deadline cannot be met even alone after the step")
                )
            )
        dropped = self._drop_waiting(now_s, "deadline cannot be met even alone")
        late = hopeless(self._active, now_s, self.latency)
        if late:
            gone = set(map(id, late))
            self._active = [j for j in self._active if id(j) not in gone]
            dropped += [(j, "deadline cannot be met any more, even alone") for j in late]
        self._admit(now_s)
        if not self._active:
            return StepDecision(dropped=tuple(dropped))
        run = tuple(
            self._active  # all of them run: no need to order them
            if len(self._active) <= self.max_batch_size
            else sorted(self._active, key=lambda j: j.deadline_s)[: self.max_batch_size]
        )
        predicted = self.latency.step_s(0, len(run))
        self._busy_until_s = now_s + predicted
        self._start(run, 0)
        return StepDecision(run=run, dropped=tuple(dropped), predicted_latency_s=predicted)

    def _admit(self, now_s: float) -> None:
        """Waiting requests join, earliest deadline first, within the memory bound and while
        every deadline still holds at the larger batch (see the module docstring)."""
        # The tightest time per step a request in flight can afford (the margin kept aside),
        # among those the batch as it is keeps on time: one already behind at the current
        # size (a long request after a stall of the machine) is not saved by refusing joins,
        # and protecting it would hold everyone waiting back until it finishes.
        margin_s = self.latency.margin_s
        n = len(self._active)
        now_step = self._step_s(n) if n else 0.0
        budgets = [
            (j.deadline_s - now_s - margin_s) / (j.steps - j.done)
            for j in self._active
            if j.steps > j.done
        ]
        tightest = min((b for b in budgets if b >= now_step), default=math.inf)
        used = self.state_bytes
        kept: list[tuple[float, int, Job]] = []
        for k, entry in enumerate(self._waiting):
            job = entry[2]
            n = len(self._active)
            if n >= self.max_inflight or (
                self.max_state_bytes is not None and used + job.state_bytes > self.max_state_bytes
            ):
                kept += self._waiting[k:]
                break
            step = self._step_s(n + 1)
            if step > tightest:  # it would make a request in flight late: nobody joins now
                kept += self._waiting[k:]
                break
            own = (job.deadline_s - now_s - margin_s) / max(1, job.remaining)
            if step > own:  # it would be late itself at this batch size: it waits
                kept.append(entry)
                continue
            self._active.append(job)
            used += job.state_bytes
            tightest = min(tightest, own)
        self._waiting = kept

    def _observe(self, stage: int, size: int, latency_s: float) -> None:
        self.latency.observe(0, size, latency_s)

    def _leave(self, jobs: list[Job], now_s: float) -> None:
        gone = set(map(id, jobs))
        self._active = [j for j in self._active if id(j) not in gone]
