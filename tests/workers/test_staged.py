"""Staged execution (cellular, node-level, request-level) with the real torch models.

Every mode is held to the plain computation of each request alone (``nn.GRU`` over the whole
sequence, the decoder without a KV cache, the CNN whole); the schedulers' behaviour (joins and
leaves, memory bound, EDF, lazy merging, drops) is checked on simulated time with
`replay_staged`, the driver the worker's engine mirrors, and end to end through a worker."""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from accordion.workers import seqmodels
from accordion.workers.batching import LatencyPredictor, SloBatcher, TritonDynamicBatcher
from accordion.workers.cellular import CellularScheduler
from accordion.workers.lazy import NodeScheduler
from accordion.workers.seqmodels import DecoderStaged, GruStaged, cnn_staged
from accordion.workers.staged import (
    Job,
    RequestLevelScheduler,
    StagedModel,
    StageLatency,
    StageScheduler,
    StepDecision,
    StepModel,
    replay_staged,
)

from .conftest import DEVICES, FLOAT_ATOL

STEP_S = 0.001


def flat(stages: int = 1, step_s: float = STEP_S) -> StageLatency:
    """A profile where a step costs `step_s` at batch 1 and 10% more per extra request."""
    return StageLatency([{1: step_s, 32: step_s * 4.1}] * stages)


def cost(step_s: float = STEP_S) -> Callable[[int, int], float]:
    return lambda _stage, size: step_s * (1 + 0.1 * (size - 1))


def jobs_for(
    model: StagedModel, samples: list[Any], arrivals: list[float], budget_s: float = 10.0
) -> list[Job]:
    return [
        Job(i, t, t + budget_s, model.steps(s), model.state_bytes(s), payload=[model.begin(s)])
        for i, (s, t) in enumerate(zip(samples, arrivals, strict=True))
    ]


def execute(
    scheduler: StageScheduler,
    model: StagedModel,
    samples: list[Any],
    arrivals: list[float],
    budget_s: float = 10.0,
) -> tuple[dict[int, np.ndarray[Any, Any]], list[StepDecision], Any]:
    """Replay with the real model: every stage the scheduler starts runs on the states of its
    jobs, batched; the answers of the jobs that finish."""
    jobs = jobs_for(model, samples, arrivals, budget_s)
    steps: list[StepDecision] = []
    answers: dict[int, np.ndarray[Any, Any]] = {}

    def on_step(decision: StepDecision, now_s: float) -> None:
        steps.append(decision)
        with torch.inference_mode():
            states = model.run(decision.stage, [j.payload[0] for j in decision.run])
            for job, state in zip(decision.run, states, strict=True):
                job.payload[0] = state
                if job.done + 1 == job.steps:
                    answers[job.request_id] = model.finish(state)

    outcome = replay_staged(scheduler, jobs, cost(), on_step=on_step)
    return answers, steps, outcome


def request_level(stages: int = 1, slo: bool = True) -> RequestLevelScheduler:
    if slo:
        return RequestLevelScheduler(SloBatcher(8, LatencyPredictor({1: 0.05, 8: 0.1})), stages)
    return RequestLevelScheduler(TritonDynamicBatcher(8, 0.002), stages)


SCHEDULERS: dict[str, Callable[[StagedModel], StageScheduler]] = {
    "cellular": lambda m: CellularScheduler(flat(), max_batch_size=8),
    "request-slo": lambda m: request_level(m.stages),
    "request-triton": lambda m: request_level(m.stages, slo=False),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", sorted(SCHEDULERS))
@pytest.mark.parametrize("build", [GruStaged, DecoderStaged], ids=["gru", "decoder"])
def test_sequence_outputs_equal_running_each_alone(
    mode: str, build: Callable[[], StagedModel], device: str
) -> None:
    model = build()
    model.to(device)
    rng = np.random.default_rng(1)
    lengths = [int(n) for n in rng.integers(3, 30, size=12)]
    samples = [model.example(n, seed=i) for i, n in enumerate(lengths)]
    arrivals = sorted(float(t) for t in rng.uniform(0, 0.05, size=12))
    answers, steps, outcome = execute(SCHEDULERS[mode](model), model, samples, arrivals)
    assert outcome.ok == 12
    assert len(answers) == 12
    assert max(len(s.run) for s in steps) > 1  # they were batched
    for i, sample in enumerate(samples):
        expected = model.alone(sample)
        if isinstance(model, DecoderStaged):
            assert np.array_equal(answers[i], expected), i  # the same tokens generated
        else:
            assert np.allclose(answers[i], expected, atol=FLOAT_ATOL[device]), i


def assert_a_dropped_state_gives_its_place_back(
    model: GruStaged | DecoderStaged, sample: np.ndarray[Any, Any]
) -> None:
    """A request whose state is dropped after a step (dropped in flight) frees its place in the
    model's pool (`weakref.finalize`); the pool is otherwise empty."""
    dropped = model.begin(sample)
    with torch.inference_mode():
        model.run(0, [dropped])
    assert model.pool.taken == 1
    del dropped
    gc.collect()
    assert model.pool.taken == 0


@pytest.mark.parametrize("device", DEVICES)
def test_decoder_kv_pool_any_subsets_equal_running_each_alone(device: str) -> None:
    """The decoder keeps every request's KV cache in one pool: steps of arbitrary subsets of
    the requests in flight (holes among a step's slots), the pool compacting (requests moving
    down to lower slots, in their order) and growing past its first slots, all give each
    request's tokens alone; every slot is free again once they finished, a request in a slot
    used before starts afresh, and a state dropped mid-way gives its slot back."""
    model = DecoderStaged()
    model.to(device)
    pool = model.pool
    assert pool.data.device.type == device
    rng = np.random.default_rng(5)
    samples = [model.example(int(n), seed=i) for i, n in enumerate(rng.integers(3, 40, 20))]
    states = [model.begin(s) for s in samples]
    left = [model.steps(s) for s in samples]
    first_slots = pool.capacity
    holes = moved = 0
    with torch.inference_mode():
        while any(left):
            live = [i for i in range(20) if left[i]]
            size = min(len(live), int(rng.integers(1, 9)))
            chosen = sorted(rng.choice(live, size=size, replace=False))
            before = {i: states[i].slot.index for i in live if states[i].slot is not None}
            ran = sorted(before[i] for i in chosen if i in before)
            holes += len(ran) > 1 and ran[-1] - ran[0] >= len(ran)
            model.run(0, [states[i] for i in chosen])
            moved += any(states[i].slot.index not in (-1, before[i]) for i in before)
            for i in chosen:
                left[i] -= 1
    assert pool.capacity > first_slots  # it grew: 20 requests held slots at once
    assert holes > 0  # some steps' requests did not hold neighbouring slots
    assert moved > 0  # some requests moved down when others left
    assert pool.compactions > 0
    for i, sample in enumerate(samples):
        assert np.array_equal(model.finish(states[i]), model.alone(sample)), i
    assert pool.taken == 0  # every finished request gave its slot back
    short = model.example(3, seed=99)
    again = model.begin(short)  # in a slot the others used
    with torch.inference_mode():
        for _ in range(model.steps(short)):
            model.run(0, [again])
    assert np.array_equal(model.finish(again), model.alone(short))
    assert_a_dropped_state_gives_its_place_back(model, samples[0])


@pytest.mark.parametrize("device", DEVICES)
def test_gru_row_pool_any_subsets_equal_running_each_alone(device: str) -> None:
    """The GRU keeps every request's hidden state as a row of one pool: steps of arbitrary
    subsets of the requests in flight, more of them than the pool's first rows (it grows),
    all give each request's answer alone; every row is free again once they finished, requests
    in rows used before start from zeros, and a state dropped mid-way gives its row back."""
    model = GruStaged()
    model.to(device)
    pool = model.pool
    first_rows = pool.data.shape[0]
    rng = np.random.default_rng(8)
    n = first_rows + 10
    samples = [model.example(int(k), seed=i) for i, k in enumerate(rng.integers(2, 12, n))]
    states = [model.begin(s) for s in samples]
    left = [model.steps(s) for s in samples]
    with torch.inference_mode():
        model.run(0, states)  # every request in flight at once: the pool must grow
        left = [k - 1 for k in left]
        assert pool.data.shape[0] > first_rows
        assert pool.taken == sum(1 for k in left if k)
        while any(left):
            live = [i for i in range(n) if left[i]]
            chosen = sorted(
                rng.choice(live, size=min(len(live), int(rng.integers(1, 20))), replace=False)
            )
            model.run(0, [states[i] for i in chosen])
            for i in chosen:
                left[i] -= 1
    for i, sample in enumerate(samples):
        assert np.allclose(model.finish(states[i]), model.alone(sample), atol=FLOAT_ATOL[device]), i
    assert pool.taken == 0  # every finished request gave its row back
    again = [model.example(5, seed=100 + i) for i in range(4)]  # in rows the others used
    later = [model.begin(s) for s in again]
    with torch.inference_mode():
        for _ in range(5):
            model.run(0, later)
    for sample, state in zip(again, later, strict=True):
        assert np.allclose(model.finish(state), model.alone(sample), atol=FLOAT_ATOL[device])
    assert_a_dropped_state_gives_its_place_back(model, samples[0])


def test_decoder_attends_each_request_over_about_its_own_context(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The bench's shape: long requests in flight while short ones join and leave at every
    step. The step attends in groups of neighbouring slots of similar contexts, not every row
    over the batch's longest context: it attends over less than half the positions a padded
    batch would, and every request still generates the tokens it generates alone (holes,
    compactions and all)."""
    plans: list[tuple[int, int, int]] = []  # (padded positions, attended positions, groups)
    plan_of = seqmodels._attention_plan

    def recorded(slots: list[int], contexts: list[int]) -> Any:
        plan = plan_of(slots, contexts)
        attended = sum((hi - lo) * longest for lo, hi, _, longest, _ in plan.groups)
        plans.append((len(slots) * max(contexts), attended, len(plan.groups)))
        return plan

    monkeypatch.setattr(seqmodels, "_attention_plan", recorded)
    model = DecoderStaged()
    rng = np.random.default_rng(3)
    samples = [model.example(400, seed=100), model.example(150, seed=101)]
    samples += [model.example(int(n), seed=i) for i, n in enumerate(rng.integers(4, 40, 200))]
    queue = list(range(len(samples)))
    running: dict[int, Any] = {}
    states: dict[int, Any] = {}
    left = {i: model.steps(s) for i, s in enumerate(samples)}
    with torch.inference_mode():
        while queue or running:
            while queue and len(running) < 12:  # a finished request is replaced at once
                i = queue.pop(0)
                running[i] = states[i] = model.begin(samples[i])
            model.run(0, list(running.values()))
            for i in list(running):
                left[i] -= 1
                if not left[i]:
                    del running[i]
    assert model.pool.compactions > 0
    padded = sum(p for p, _, _ in plans)
    attended = sum(a for _, a, _ in plans)
    assert attended < 0.5 * padded, (attended, padded)
    assert max(g for _, _, g in plans) > 1
    for i, sample in enumerate(samples):
        assert np.array_equal(model.finish(states[i]), model.alone(sample)), i


def test_attention_plan_covers_every_row_with_its_own_positions() -> None:
    """Random steps (slots with holes, contexts in any order): every row is in exactly one
    group, which spans its slot; the row attends exactly its own context's positions (its
    group's mask, or no mask when all of the group's slots hold that context); a plan never
    attends more positions than one padded group over all the slots, plus the calls' worth."""
    rng = np.random.default_rng(11)
    for _ in range(300):
        b = int(rng.integers(1, 70))
        slots = sorted(int(x) for x in rng.choice(160, size=b, replace=False))
        if rng.random() < 0.5:  # the pool's usual order: older (longer) first
            contexts = sorted((int(x) for x in rng.integers(1, 512, b)), reverse=True)
        else:
            contexts = [int(x) for x in rng.integers(1, 512, b)]
        plan = seqmodels._attention_plan(slots, contexts)
        offsets = []
        for slot, context in zip(slots, contexts, strict=True):
            mine = [g for g in plan.groups if g[0] <= slot < g[1]]
            assert len(mine) == 1
            lo, _, offset, longest, masked = mine[0]
            row = offset + slot - lo
            offsets.append(row)
            assert longest >= context
            if masked:
                assert plan.mask is not None
                attends = plan.mask[row, 0, 0, :longest]
                assert int(attends.sum()) == context
                assert bool(attends[:context].all())
            else:
                assert context == longest
        assert plan.size == sum(hi - lo for lo, hi, *_ in plan.groups)
        if plan.at is None:
            assert offsets == list(range(b))
        else:
            assert plan.at.tolist() == offsets
        attended = sum((hi - lo) * longest for lo, hi, _, longest, _ in plan.groups)
        one = (slots[-1] + 1 - slots[0]) * max(contexts)
        assert attended <= one + len(plan.groups) * seqmodels.SPLIT_MIN_POSITIONS


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["node", "request-slo", "request-triton"])
def test_cnn_outputs_equal_running_each_alone(mode: str, device: str) -> None:
    model = cnn_staged()
    model.to(device)
    scheduler: StageScheduler = (
        NodeScheduler(flat(model.stages), model.stages, max_batch_size=8)
        if mode == "node"
        else request_level(model.stages, slo=mode == "request-slo")
    )
    samples = [model.example(0, seed=i) for i in range(6)]
    arrivals = [0.0, 0.0005, 0.0031, 0.004, 0.0042, 0.02]
    answers, steps, outcome = execute(scheduler, model, samples, arrivals)
    assert outcome.ok == 6
    assert max(len(s.run) for s in steps) > 1
    for i, sample in enumerate(samples):
        assert np.allclose(answers[i], model.alone(sample), atol=FLOAT_ATOL[device]), i


def test_cellular_requests_join_the_running_batch_and_leave_it() -> None:
    model = GruStaged()
    samples = [model.example(n, seed=i) for i, n in enumerate([40, 5, 20])]
    arrivals = [0.0, 0.010, 0.012]  # the first is 10 steps in when the others arrive
    _answers, steps, outcome = execute(
        CellularScheduler(flat(), max_batch_size=8), model, samples, arrivals
    )
    assert outcome.ok == 3
    members = [{j.request_id for j in s.run} for s in steps]
    assert members[0] == {0}
    assert {0, 1} in members  # 1 joined while 0 was mid-sequence
    assert {0, 1, 2} in members
    first_with_2 = next(k for k, m in enumerate(members) if 2 in m)
    assert 1 not in members[-1]
    assert members[-1] == {0}
    assert outcome.finish_order == [1, 2, 0]
    assert first_with_2 < 40  # nobody waited for 0's 40 steps


def test_request_level_batches_never_take_anyone_mid_way() -> None:
    model = GruStaged()
    samples = [model.example(n, seed=i) for i, n in enumerate([40, 5, 20])]
    _, steps, outcome = execute(request_level(), model, samples, [0.0, 0.010, 0.012])
    members = [{j.request_id for j in s.run} for s in steps]
    assert outcome.ok == 3
    assert all(m == {0} for m in members[:40])  # 0 ran alone to its end
    assert {1, 2} in members[40:]


def test_cellular_memory_bound_holds_and_everyone_is_served() -> None:
    model = DecoderStaged()
    rng = np.random.default_rng(3)
    samples = [model.example(int(n), seed=i) for i, n in enumerate(rng.integers(4, 40, 30))]
    per_request = max(model.state_bytes(s) for s in samples)
    bound = int(2.5 * per_request)
    jobs = jobs_for(model, samples, [0.0] * 30, budget_s=100.0)
    scheduler = CellularScheduler(flat(), max_batch_size=16, max_state_bytes=bound)
    outcome = replay_staged(scheduler, jobs, cost())
    assert outcome.ok == 30
    assert 0 < outcome.peak_state_bytes <= bound
    assert outcome.peak_inflight >= 2  # the bound, not a batch of one, limited it
    unbounded = replay_staged(
        CellularScheduler(flat(), max_batch_size=16, max_inflight=5),
        jobs_for(model, samples, [0.0] * 30, budget_s=100.0),
        cost(),
    )
    assert unbounded.peak_inflight == 5
    assert unbounded.ok == 30


def test_cellular_admits_earliest_deadline_first() -> None:
    budgets = [0.9, 0.3, 0.7, 0.1, 0.5]
    jobs = [Job(i, 0.0, b, steps=10) for i, b in enumerate(budgets)]
    outcome = replay_staged(
        CellularScheduler(flat(), max_batch_size=1, max_inflight=1), jobs, cost()
    )
    assert outcome.ok == 5
    assert outcome.finish_order == [3, 1, 4, 2, 0]


def test_cellular_join_never_makes_a_request_in_flight_late() -> None:
    # 0 has just enough slack for its steps at batch 1; 1 joining would make 0 late.
    jobs = [Job(0, 0.0, 0.0205, steps=20), Job(1, 0.001, 1.0, steps=5)]
    outcome = replay_staged(CellularScheduler(flat(), max_batch_size=8), jobs, cost())
    assert outcome.ok == 2  # 0 made its deadline
    assert outcome.stage_sizes[:10] == [1] * 10  # 1 did not join while 0 had no slack for it
    assert 2 in outcome.stage_sizes  # it joined once 0's remaining steps left room


def test_cellular_a_request_behind_after_a_stall_does_not_hold_joins_back() -> None:
    # 0 and 1 run at batch 2 (1.1 ms a step); the first step stalls 195 ms (the machine), so 0
    # is behind at batch 2 (105 ms left for 99 steps: 1.06 ms each) though not hopeless alone
    # (1 ms each). Refusing joins cannot put 0 back on time; 2 (10 steps, arrived during the
    # stall, 20 ms left after it) must join at once, not wait for 0 and be dropped.
    calls = iter(range(10**6))

    def stalled_first_step(_stage: int, size: int) -> float:
        return 0.195 if next(calls) < 2 else cost()(0, size)  # the start and end of step 1

    jobs = [Job(0, 0.0, 0.3, steps=100), Job(1, 0.0, 1.0, steps=300), Job(2, 0.1, 0.215, steps=10)]
    outcome = replay_staged(CellularScheduler(flat(), max_batch_size=8), jobs, stalled_first_step)
    assert 2 in outcome.finish_order[:1]  # 2 joined after the stall and made its deadline
    assert outcome.stage_sizes[1] == 3
    assert outcome.ok == 2  # 1 and 2; 0 was lost to the stall either way


def test_cellular_drops_a_request_that_cannot_make_it_even_alone() -> None:
    jobs = [Job(0, 0.0, 0.005, steps=50), Job(1, 0.0, 1.0, steps=5)]
    outcome = replay_staged(CellularScheduler(flat(), max_batch_size=8), jobs, cost())
    assert outcome.dropped == 1
    assert outcome.ok == 1


def test_cellular_drops_a_hopeless_waiting_request_behind_others_due_earlier() -> None:
    """A waiting request that cannot finish even alone is dropped at the next decision,
    though requests due earlier wait ahead of it (the sweep reads the queue up to the horizon of
    the longest request seen, not only what is overdue); one whose state exceeds the memory
    bound is refused at the next decision too; the others keep waiting."""
    scheduler = CellularScheduler(flat(), max_batch_size=2, max_state_bytes=100)
    for i in range(2):
        scheduler.enqueue(Job(i, 0.0, 10.0, steps=1000), 0.0)  # they hold the batch
    assert len(scheduler.decide(0.0).run) == 2
    scheduler.complete(STEP_S, STEP_S)
    for i in range(2, 12):
        scheduler.enqueue(Job(i, STEP_S, 0.5, steps=3), STEP_S)  # due soon, easy alone
    scheduler.enqueue(Job(99, STEP_S, 0.6, steps=700), STEP_S)  # 0.7 s alone: hopeless
    scheduler.enqueue(Job(100, STEP_S, 5.0, steps=3, state_bytes=1000), STEP_S)
    decision = scheduler.decide(STEP_S)
    assert {j.request_id: reason for j, reason in decision.dropped} == {
        99: "deadline cannot be met even alone",
        100: "its state exceeds the worker's memory bound",
    }
    assert scheduler.queue_depth == 10


def cheap_batches(_stage: int, size: int) -> float:
    return STEP_S  # a stage costs the same whatever the batch: merging halves the work


def test_node_level_late_request_catches_up_and_merges() -> None:
    stages = 10
    latency = StageLatency([{1: STEP_S, 8: STEP_S}] * stages)
    scheduler = NodeScheduler(latency, stages, max_batch_size=8)
    jobs = [Job(0, 0.0, 1.0, stages), Job(1, 0.0035, 1.0, stages)]  # 1 arrives at stage 4
    seen: list[tuple[int, frozenset[int]]] = []
    outcome = replay_staged(
        scheduler,
        jobs,
        cheap_batches,
        on_step=lambda d, _: seen.append((d.stage, frozenset(j.request_id for j in d.run))),
    )
    assert outcome.ok == 2
    assert scheduler.merges == 4
    assert seen[4:8] == [(k, frozenset({1})) for k in range(4)]  # 1 caught up alone
    assert seen[8:] == [(k, frozenset({0, 1})) for k in range(4, 10)]  # then they merged
    assert len(seen) == 14  # 20 stage runs apart


def test_node_level_does_not_merge_when_it_would_cost_a_deadline() -> None:
    stages = 10
    latency = StageLatency([{1: STEP_S, 8: STEP_S}] * stages)
    scheduler = NodeScheduler(latency, stages, max_batch_size=8)
    jobs = [Job(0, 0.0, 0.0105, stages), Job(1, 0.0035, 1.0, stages)]  # 0 has no slack
    seen: list[frozenset[int]] = []
    outcome = replay_staged(
        scheduler,
        jobs,
        cheap_batches,
        on_step=lambda d, _: seen.append(frozenset(j.request_id for j in d.run)),
    )
    assert outcome.ok == 2
    assert scheduler.merges == 0
    assert seen == [frozenset({0})] * 10 + [frozenset({1})] * 10


def test_node_level_runs_the_earliest_deadline_group_first() -> None:
    stages = 4
    scheduler = NodeScheduler(flat(stages), stages, max_batch_size=1)
    jobs = [Job(i, 0.0, b, stages) for i, b in enumerate([0.9, 0.2, 0.5])]
    outcome = replay_staged(scheduler, jobs, cost())
    assert outcome.finish_order == [1, 2, 0]


def test_step_predictions_of_a_size_seen_often_are_its_own() -> None:
    """A batch size with enough fresh observations predicts their median, whatever the
    machine's speed says for the others, and holds the larger sizes up: size 8 observed at
    0.9x its profile (most observations: the speed is 0.9x), size 16 at 3 ms (2.4x); sizes
    below 8 predict 0.9x their profile, sizes above 16 no less than 3 ms."""
    profile = {1: 0.001, 64: 0.002}
    model, plain = StepModel(profile), StepModel(profile)
    for k in range(46):
        if k % 3 == 2 or k >= 44:  # 16 of size 16
            model.observe(16, 0.003)
        else:
            model.observe(8, 0.9 * plain.predict_s(8))
    assert model.speed == pytest.approx(0.9)
    assert model.predict_s(4) == pytest.approx(0.9 * plain.predict_s(4))
    assert model.predict_s(8) == pytest.approx(0.9 * plain.predict_s(8))
    assert model.predict_s(16) == pytest.approx(0.003)
    assert model.predict_s(32) == pytest.approx(0.003)  # 0.9x its profile is less
    assert model.predict_s(64) == pytest.approx(0.003)


def test_step_predictions_survive_the_machines_stalls() -> None:
    # Steps of ~1 ms, some stalled 100-400 ms (as measured on a loaded machine): a size seen
    # rarely, twice stalled among its first observations, must not inflate the predictions
    # (with the request batcher's predictor, 4 samples and a 0.75 quantile, it went to 16x
    # and no join fitted any deadline any more).
    latency = StageLatency([{1: 0.001, 32: 0.002}])
    rng = np.random.default_rng(0)

    def real(size: int) -> float:
        return 0.001 + size * 0.00003

    rare = iter([real(5), 0.3, real(5), 0.2, real(5), real(5)])
    for k in range(600):
        if k % 100 == 50:
            latency.observe(0, 5, next(rare))
        size = int(rng.choice([1, 8, 32]))
        stalled = rng.random() < 0.03
        latency.observe(0, size, float(rng.uniform(0.1, 0.4)) if stalled else real(size))
    for size in (1, 5, 8, 32):
        assert latency.step_s(0, size) < 1.5 * real(size), size


def test_step_predictions_recover_after_a_slow_phase_of_the_machine() -> None:
    # A 3x slow phase (another job on the machine) while the batch ran at size 16; after it,
    # at sizes 1 and 32 only, at full speed. A size seen only during the phase must not keep
    # its slow estimate, nor hold larger sizes up with it (joins refused, requests dropped
    # long after the machine recovered).
    latency = StageLatency([{1: 0.001, 32: 0.002}])

    def real(size: int) -> float:
        return 0.001 + (size - 1) * 0.001 / 31

    for _ in range(300):
        latency.observe(0, 16, 3 * real(16))
    assert latency.step_s(0, 16) > 2.5 * real(16)  # the phase is seen
    for k in range(600):  # 0.6 s of steps
        size = 1 if k % 2 else 32
        latency.observe(0, size, real(size))
    for size in (1, 16, 32):
        assert latency.step_s(0, size) < 1.2 * real(size), size
