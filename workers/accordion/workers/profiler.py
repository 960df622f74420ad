"""`accordion profile`: measure a model's execution latency per batch size.

The output is the ``profiles`` block of an InferenceService variant (batch size -> p50/p90/p99
in ms), which is what the planner and the worker's batcher start from. Measurement runs the same
`ModelRunner` the worker runs (same thread setting, same device path), after a warm-up of every
batch size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BatchProfile:
    batch_size: int
    p50_ms: float
    p90_ms: float
    p99_ms: float

    @property
    def throughput_qps(self) -> float:
        return self.batch_size / (self.p50_ms / 1000.0)


def summarize(batch_size: int, latencies_s: list[float]) -> BatchProfile:
    ms = np.asarray(latencies_s) * 1000.0
    p50, p90, p99 = (float(np.percentile(ms, q)) for q in (50, 90, 99))
    return BatchProfile(batch_size, round(p50, 3), round(max(p90, p50), 3), round(max(p99, p90), 3))


def profile_model(
    model: str,
    batch_sizes: list[int],
    *,
    device: str = "cpu",
    torch_threads: int = 1,
    repeats: int = 30,
    input_shape: list[int] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> list[BatchProfile]:
    """Latency percentiles of `model` for each batch size (torch is imported here)."""
    from accordion.workers.models import ModelRunner, load_model

    runner = ModelRunner(load_model(model, input_shape), device, torch_threads)
    try:
        runner.warm_up(sorted(set(batch_sizes)))
        out = []
        for b in batch_sizes:
            out.append(summarize(b, runner.measure(b, repeats)))
            if on_progress is not None:
                on_progress(b)
        return out
    finally:
        runner.close()


def profile_yaml(profiles: list[BatchProfile], pool: str) -> str:
    """The `profiles` entry of an InferenceService variant, as YAML."""
    lines = ["profiles:", f"  - pool: {pool}", "    batches:"]
    for p in profiles:
        lines.append(
            f"      - {{batchSize: {p.batch_size}, p50Ms: {p.p50_ms}, p90Ms: {p.p90_ms}, "
            f"p99Ms: {p.p99_ms}}}"
        )
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------- per-request overhead


@dataclass(frozen=True)
class Overhead:
    """What a request costs on a worker's HTTP path beyond the execution profile, measured by
    `measure_overhead` (seconds); the batching model's `RequestOverhead`."""

    fixed_s: float
    """Latency only: the round trip, client and server, of a lone request."""
    per_request_s: float
    """Work per request the device's batches wait for (parsing and answering on the worker's
    event loop), from a saturated worker."""
    cold_batch_s: float
    """How much longer a batch that starts on an idle device runs than the profile says (from
    lone requests; zero without a profile to compare with)."""
    lone_latency_s: float
    """Mean latency of a lone request, as the client saw it."""
    lone_execution_s: float
    """Mean execution of its batch of one, as the worker measured it."""
    saturated_qps: float
    """Requests answered per second with the worker saturated."""
    saturated_batch: float
    """Mean batch size then."""

    def against(self, profile_s: Mapping[int, float]) -> Overhead:
        """The same measurements split against another profile (batch size -> execution time,
        e.g. the profile as served, `served.held_profile`), as `measure_overhead` splits them:
        a lone batch's execution beyond the profile's batch of one is `cold_batch_s`, the time
        per saturated request beyond the profile's execution at the saturated batch is
        `per_request_s`, the rest of the lone latency `fixed_s`."""
        sizes = sorted(profile_s)
        at = [profile_s[b] for b in sizes]
        cold = max(0.0, self.lone_execution_s - float(np.interp(1, sizes, at)))
        batch = max(1.0, self.saturated_batch)
        per_request = max(
            0.0, 1.0 / self.saturated_qps - float(np.interp(batch, sizes, at)) / batch
        )
        return dataclasses.replace(
            self,
            fixed_s=max(0.0, self.lone_latency_s - self.lone_execution_s - per_request),
            per_request_s=per_request,
            cold_batch_s=cold,
        )


def batch_counters(text: str) -> dict[str, float]:
    """The worker's batch counters from its /metrics text (summed over labels)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name in (
            "accordion_worker_execution_latency_seconds",
            "accordion_worker_batch_size",
        ):
            for sample in family.samples:
                if sample.name.endswith(("_sum", "_count")):
                    out[sample.name] = out.get(sample.name, 0.0) + float(sample.value)
    return out


def _delta(after: dict[str, float], before: dict[str, float], name: str) -> float:
    """A counter's growth (absent: never observed, zero)."""
    return after.get(name, 0.0) - before.get(name, 0.0)


async def measure_overhead(
    base_url: str,
    model: str,
    body: bytes,
    *,
    cap: int,
    lone: int = 100,
    saturate_s: float = 5.0,
    profile_s: dict[int, float] | None = None,
) -> Overhead:
    """The per-request overhead of a running worker's HTTP path (`Overhead`).

    Lone requests, one at a time with the device idle between them: the client's latency less
    the worker's own execution time of those batches (its /metrics) is everything a request
    costs outside the device. Then 4 x `cap` clients in a closed loop saturate the worker for
    `saturate_s`: the time per batch beyond its execution, per request in it, is the work
    the device's batches wait for (zero where the device is the bottleneck); the rest of the
    lone overhead is latency only. With `profile_s` (batch size -> the profile's execution
    time) the split starts from the profile, as the model does: a lone batch's execution beyond
    the profile's batch of one is `cold_batch_s` (a batch that starts on an idle device runs
    slower than the profile's back-to-back repeats), and a saturated batch's execution (back
    to back) is the profile's at the mean batch size, so that a device slowed by the path's
    own CPU use counts as overhead too. The model then gives a lone request the latency
    measured, and a saturated worker the throughput measured."""
    import asyncio

    import aiohttp

    from accordion.workers.config import DEADLINE_HEADER

    url = f"{base_url.rstrip('/')}/v2/models/{model}/infer"
    headers = {DEADLINE_HEADER: "60000", "Content-Type": "application/json"}
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as session:

        async def counters() -> dict[str, float]:
            async with session.get(f"{base_url.rstrip('/')}/metrics") as resp:
                return batch_counters(await resp.text())

        async def one() -> float:
            start = loop.time()
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                resp.raise_for_status()
            return loop.time() - start

        before = await counters()
        latencies = []
        for _ in range(lone):
            latencies.append(await one())
            await asyncio.sleep(0.005)
        after = await counters()
        batches = _delta(after, before, "accordion_worker_batch_size_count")
        executed = _delta(after, before, "accordion_worker_execution_latency_seconds_sum")
        lone_exec = executed / max(1.0, batches)
        lone_batch = _delta(after, before, "accordion_worker_batch_size_sum") / max(1.0, batches)
        lone_latency = float(np.mean(latencies))

        stop = loop.time() + saturate_s
        answered = 0

        async def client() -> None:
            nonlocal answered
            while loop.time() < stop:
                await one()
                answered += 1

        before = await counters()
        began = loop.time()
        await asyncio.gather(*(client() for _ in range(4 * cap)))
        elapsed = loop.time() - began
        after = await counters()
    batches = _delta(after, before, "accordion_worker_batch_size_count")
    requests = _delta(after, before, "accordion_worker_batch_size_sum")
    executed = _delta(after, before, "accordion_worker_execution_latency_seconds_sum")
    cold = 0.0
    if profile_s is not None:
        sizes = sorted(profile_s)
        at = [profile_s[b] for b in sizes]
        cold = max(0.0, lone_exec - float(np.interp(lone_batch, sizes, at)))
        mean_batch = requests / max(1.0, batches)
        executed = batches * float(np.interp(mean_batch, sizes, at))
    per_request = max(0.0, (elapsed - executed) / max(1.0, requests))
    return Overhead(
        fixed_s=max(0.0, lone_latency - lone_exec - per_request),
        per_request_s=per_request,
        cold_batch_s=cold,
        lone_latency_s=lone_latency,
        lone_execution_s=lone_exec,
        saturated_qps=answered / elapsed,
        saturated_batch=requests / max(1.0, batches),
    )


# -------------------------------------------------------------------- staged models


def profile_stages_of(
    model: str,
    batch_sizes: list[int],
    *,
    device: str = "cpu",
    torch_threads: int = 1,
    repeats: int = 5,
    input_shape: list[int] | None = None,
) -> tuple[list[list[BatchProfile]], bool]:
    """Latency percentiles of every stage of `model` per batch size (of its cell's step, for
    recurrent and decoder models: one list), and whether it is a cell. Measured by
    `accordion.workers.stagedworker.profile_stages`, the function the worker starts from."""
    import torch

    from accordion.workers.models import load_model
    from accordion.workers.seqmodels import staged_model
    from accordion.workers.stagedworker import profile_stages

    torch.set_num_threads(torch_threads)
    loaded = load_model(model, input_shape)
    staged = loaded.staged or staged_model(loaded.module, loaded.input_shape, loaded.datatype)
    staged.to(device)
    measured = profile_stages(staged, sorted(set(batch_sizes)), repeats=repeats)
    stages = [[summarize(b, runs) for b, runs in sorted(st.items())] for st in measured]
    return stages, staged.stages == 1 and staged.ragged


def equivalent_request_profile(
    step: list[BatchProfile], lengths: list[int], tail_quantile: float = 0.99
) -> list[BatchProfile]:
    """The per-request profile the planner understands, for a cell batched per step
    (cellular mode), at the workload's length distribution (`lengths`, in steps).

    With b requests in flight, a step takes s(b), a request of n steps takes n s(b) once it
    joined, and it joins within one step. The planner counts b / L(b) requests per second and
    keeps 2 L(b) within the SLO (a request waits for the batch before it, then rides in the
    next). With L(b) = max(mean(n) s(b), (n_tail + 1) s(b) / 2), n_tail the `tail_quantile`
    of the lengths:

    * 2 L(b) <= SLO holds exactly when the tail-length request, joining one step late, meets
      the SLO with b in flight (and twice the mean length does: always true of a tail);
    * b / L(b) is at most the true throughput b / (mean(n) s(b)), less by the factor
      (n_tail + 1) / (2 mean(n)) where the tail term dominates: conservative, never optimistic.

    Each percentile column is converted with its own step percentile."""
    if not lengths or min(lengths) < 1:
        raise ValueError("lengths are request lengths in steps, at least one, each >= 1")
    mean = float(np.mean(lengths))
    tail = float(np.quantile(np.asarray(lengths, dtype=float), tail_quantile))
    factor = max(mean, (tail + 1.0) / 2.0)
    return [
        BatchProfile(
            p.batch_size,
            round(p.p50_ms * factor, 3),
            round(p.p90_ms * factor, 3),
            round(p.p99_ms * factor, 3),
        )
        for p in step
    ]


def summed_stage_profile(stages: list[list[BatchProfile]]) -> list[BatchProfile]:
    """The per-request profile of a model run as stages (node-level mode): a batch runs every
    stage once, so its latency is the sum of its stages' at that batch size (percentiles
    summed: an upper bound of the sum's percentile)."""
    sizes = [p.batch_size for p in stages[0]]
    out = []
    for k, b in enumerate(sizes):
        out.append(
            BatchProfile(
                b,
                round(sum(st[k].p50_ms for st in stages), 3),
                round(sum(st[k].p90_ms for st in stages), 3),
                round(sum(st[k].p99_ms for st in stages), 3),
            )
        )
    return out


def lengths_comment(lengths: list[int] | None) -> str:
    """What the profile block of a cell model is, and the variant's `batching` that goes with
    it: per request at `lengths` (printed as `meanSteps`/`p99Steps`), or per step (none)."""
    if lengths is None:
        return (
            "# per step of the cell: give these profiles with the variant's\n"
            "#   batching: {mode: Cellular, lengths: {meanSteps: M, p99Steps: P}}\n"
            "# (the workload's request lengths in steps), or pass --lengths for the\n"
            "# per-request profile\n"
        )
    mean = float(np.mean(lengths))
    tail = float(np.quantile(np.asarray(lengths, dtype=float), 0.99))
    return (
        f"# per request at lengths meanSteps {mean:.1f}, p99Steps {tail:.1f} (batching: "
        "{mode: Cellular}); or the step profile\n"
        f"# (without --lengths) with batching.lengths {{meanSteps: {mean:.1f}, p99Steps: "
        f"{tail:.1f}}}\n"
    )


def stages_comment(stages: list[list[BatchProfile]], cell: bool) -> str:
    """The per-stage (or per-step) table as YAML comments, printed above the profile block."""
    what = "step of the cell" if cell else "stage"
    lines = [f"# latency per {what} and batch size (p50/p99 ms):"]
    for k, st in enumerate(stages):
        cells = ", ".join(f"{p.batch_size}: {p.p50_ms}/{p.p99_ms}" for p in st)
        lines.append(f"#   {'step' if cell else f'stage {k}'}: {cells}")
    return "\n".join(lines) + "\n"
