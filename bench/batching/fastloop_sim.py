"""The router's fast loop against weights-only routing, on simulated time.

A discrete-event simulation that drives the very objects the pods run: `RoutingDecider` (the
router's decisions) in front of two variant backends, each a device batching with `SloBatcher`.
The plan (weights and capacities) is sized for the base demand; a burst then raises demand by
50% for a few seconds, faster than any planner reacts. Weights-only routing keeps sending the
planned share to the accurate variant, which cannot keep up; the fast loop moves the overflow to
the fast variant while its backlog lasts.

A second scenario makes `big` slower than its profile (as a worker sharing its machine is): the
router's online capacity correction against none.

Usage: .venv/bin/python bench/batching/fastloop_sim.py  (writes bench/results/batching-fastloop.md)
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from accordion.workers.batching import LatencyPredictor, Request, SloBatcher
from accordion.workers.config import Backend, FastLoopBounds, RoutingTable
from accordion.workers.fastloop import RoutingDecider

ROOT = Path(__file__).resolve().parents[2]
SLO_S = 0.100


@dataclass(frozen=True)
class VariantModel:
    name: str
    accuracy: float
    base_s: float
    per_item_s: float
    cap: int

    def latency_s(self, b: int) -> float:
        return self.base_s + self.per_item_s * b

    @property
    def planned_batch(self) -> int:
        """The planner's batch: the largest with 2 L(b) <= SLO."""
        return max(x for x in range(1, self.cap + 1) if 2 * self.latency_s(x) <= SLO_S)

    @property
    def capacity_qps(self) -> float:
        """The planner's capacity: its batch, back to back."""
        return self.planned_batch / self.latency_s(self.planned_batch)


BIG = VariantModel("big", 0.84, 0.008, 0.003, 32)
SMALL = VariantModel("small", 0.75, 0.002, 0.0005, 32)


@dataclass
class SimResult:
    sent: int
    ok: int
    accuracy_sum: float
    shed: int
    dropped: int = 0
    """Given up by a backend's batcher (the router sent them, the worker could not serve them)."""

    @property
    def attainment(self) -> float:
        return self.ok / self.sent

    @property
    def effective_accuracy(self) -> float:
        return self.accuracy_sum / self.sent


def simulate(
    fast_loop: bool,
    rate: Callable[[float], float],
    duration_s: float,
    seed: int,
    *,
    big_slowdown: float = 1.0,
    planned_batches: bool = False,
    correct_capacity: bool = True,
) -> SimResult:
    """`big_slowdown`: `big` really runs that many times slower than its profile (the plan and
    the batcher's starting profile are the profile's; the batcher corrects itself online, as
    the worker's does). `planned_batches`: the table gives each backend the planner's batch and
    its latency (as the router bench's and the operator's tables do) instead of the cap."""
    base = 300.0
    share_big = 0.8

    def backend(v: VariantModel, w: float) -> Backend:
        b = v.planned_batch if planned_batches else v.cap
        return Backend(
            name=v.name,
            url="http://127.0.0.1:1",
            weight=w,
            accuracy=v.accuracy,
            capacity_qps=v.capacity_qps,
            max_batch_size=b,
            batch_latency_ms=v.latency_s(b) * 1000 if planned_batches else None,
            profile_ms={k: v.latency_s(k) * 1000 for k in (1, 2, 4, 8, 16, 32)}
            if planned_batches
            else {},
        )

    table = RoutingTable(
        service="svc",
        slo_ms=SLO_S * 1000,
        backends=[backend(v, w) for v, w in ((BIG, share_big), (SMALL, 1 - share_big))],
        fast_loop=FastLoopBounds(
            enabled=fast_loop, max_shift=0.5, correct_capacity=correct_capacity
        ),
    )
    assert base * share_big <= BIG.capacity_qps  # the plan fits the base demand
    decider = RoutingDecider(table, seed=seed)
    variants = {v.name: v for v in (BIG, SMALL)}
    speed = {BIG.name: big_slowdown, SMALL.name: 1.0}
    policies = {
        v.name: SloBatcher(
            v.cap,
            LatencyPredictor({b: v.latency_s(b) for b in (1, 2, 4, 8, 16, 32)}),
        )
        for v in variants.values()
    }
    rng = random.Random(seed)
    events: list[tuple[float, int, str, str]] = []  # time, seq, kind, backend
    seq = 0

    def push(t: float, kind: str, name: str = "") -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (t, seq, kind, name))

    # Arrivals by thinning a Poisson process at the peak rate.
    peak = max(rate(t / 10) for t in range(int(duration_s * 10) + 1))
    t = 0.0
    while True:
        t += rng.expovariate(peak)
        if t >= duration_s:
            break
        if rng.random() * peak <= rate(t):
            push(t, "arrival")
    running: dict[str, tuple[tuple[Request, ...], float] | None] = dict.fromkeys(variants)
    result = SimResult(0, 0, 0.0, 0)
    ids = 0

    def step(name: str, now: float) -> None:
        decision = policies[name].decide(now)
        for _ in decision.dropped:
            result.dropped += 1
            decider.finished(name, now, "dropped")
        if decision.batch:
            running[name] = (decision.batch, now)
            latency = variants[name].latency_s(len(decision.batch)) * speed[name]
            push(now + latency, "done", name)
        elif decision.wake_at_s is not None:
            push(decision.wake_at_s, "wake", name)

    while events:
        now, _, kind, name = heapq.heappop(events)
        if kind == "arrival":
            result.sent += 1
            choice = decider.choose(SLO_S, now)
            if choice.backend is None:
                result.shed += 1
                continue
            decider.sent(choice.backend, now)
            ids += 1
            policies[choice.backend].enqueue(Request(ids, now, now + SLO_S), now)
            if running[choice.backend] is None:
                step(choice.backend, now)
            else:
                # Early drops while busy: the worker answers them (503), the router hears it.
                for _ in policies[choice.backend].decide(now).dropped:
                    result.dropped += 1
                    decider.finished(choice.backend, now, "dropped")
        elif kind == "done":
            current = running[name]
            assert current is not None
            batch, start = current
            running[name] = None
            policies[name].complete(len(batch), now - start, now)
            for r in batch:
                decider.finished(name, now, "answered")
                if now <= r.deadline_s + 1e-12:
                    result.ok += 1
                    result.accuracy_sum += variants[name].accuracy
            step(name, now)
        elif kind == "wake" and running[name] is None:
            step(name, now)
    return result


def burst(t: float) -> float:
    return 450.0 if 3.0 <= t < 8.0 else 300.0


SLOW_BIG = 1.4
"""The second scenario: `big` runs this many times slower than its profile (as a worker sharing
its machine does, bench/results/router.md)."""


def main() -> None:
    rows = []
    for label, fast in (("weights only", False), ("fast loop", True)):
        r = simulate(fast, burst, 12.0, seed=1)
        rows.append((label, r))
        print(label, r, f"attainment {r.attainment:.3f} accuracy {r.effective_accuracy:.4f}")
    slow_rows = []
    for speed in (1.0, SLOW_BIG):
        for label, fast, correct in (
            ("weights only, no correction", False, False),
            ("weights only, corrected", False, True),
            ("fast loop, no correction", True, False),
            ("fast loop, corrected", True, True),
        ):
            r = simulate(
                fast,
                burst,
                12.0,
                seed=1,
                big_slowdown=speed,
                planned_batches=True,
                correct_capacity=correct,
            )
            slow_rows.append((f"{speed:g}x | {label}", r))
            print(speed, label, r, f"attainment {r.attainment:.3f}")
    lines = [
        "# Router fast loop vs weights-only routing (simulated)",
        "",
        "`bench/batching/fastloop_sim.py`: discrete-event simulation driving the router's "
        "`RoutingDecider` and two `SloBatcher` backends (the objects the pods run). Variant "
        f"`big` (accuracy {BIG.accuracy}, capacity {BIG.capacity_qps:.0f}/s) and `small` "
        f"(accuracy {SMALL.accuracy}, capacity {SMALL.capacity_qps:.0f}/s); plan: 80% / 20% "
        "for 300/s; a burst to 450/s from t=3 s to t=8 s (12 s in all); SLO 100 ms. Effective "
        "accuracy = sum of the accuracies of requests answered in time / requests. Dropped: "
        "given up by a backend's batcher after the router sent them.",
        "",
        "Backends at their profiled speed (the table gives capacities and the batch cap):",
        "",
        "| routing | SLO attainment | effective accuracy | shed | dropped |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, r in rows:
        lines.append(
            f"| {label} | {r.attainment:.1%} | {r.effective_accuracy:.3f} | {r.shed} | "
            f"{r.dropped} |"
        )
    lines += [
        "",
        f"`big` at its profiled speed and {SLOW_BIG}x slower than its profile (the plan and the "
        "batcher's starting profile are the profile's; the batcher corrects its own predictions "
        f"online). The table gives the planner's batch ({BIG.planned_batch}: 2 L(b) <= SLO), its "
        "latency and the profile, as the router bench's does; with `correct_capacity` the "
        "router measures the slowdown from the answers it sees (`RoutingDecider`, online "
        "capacity correction):",
        "",
        "| big's speed | routing | SLO attainment | effective accuracy | shed | dropped |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for label, r in slow_rows:
        lines.append(
            f"| {label} | {r.attainment:.1%} | {r.effective_accuracy:.3f} | {r.shed} | "
            f"{r.dropped} |"
        )
    (ROOT / "bench" / "results" / "batching-fastloop.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
