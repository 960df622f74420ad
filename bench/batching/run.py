"""Batching benchmark: our SLO batcher against no batching, Triton's and Clipper's, in one run.

One real torch model on this machine's CPU (one torch thread), the same worker server (a
separate process per configuration, `python -m accordion.workers serve`: real HTTP, KServe v2),
the same open-loop load from this process, for every policy:

* the model: demo-xl (the largest built-in MLP) applied to a sequence of 4 tokens per request
  (input [4, 256], output the mean over tokens), built here and served as a TorchScript file.
  Bench-only: per request it costs ~4x demo-xl's compute, so that at the rates it sustains the
  HTTP/JSON work of client and server is a small share of the 2 shared cores, and what limits
  throughput is the model, not the event loops;
* SLO 300 ms (the SLO of the Proteus traces);
* each baseline at its best configuration: every candidate (Triton max batch x
  max_queue_delay, Clipper max batch) is simulated first on the latency profile measured in
  this run (`policy_sim.py`, the same policy objects), and the best `TOP` per baseline are then
  measured on the real server; the best measured is reported. Ours: one configuration, the
  largest profiled batch that fits the SLO as cap (its own rule limits batches online);
* two arrival processes: Poisson, and bursty (a Proteus trace replayed at the mean rate);
* per process and policy: the highest mean rate with >= 99% of requests within the SLO at the
  client (a bracket from the simulated estimate, then bisection; policies interleaved round by
  round so the background load hits all alike), p99 there, and goodput at 2x that rate, with
  the worker's own counts (ok, late, dropped, shed; mean batch size) for the diagnosis.

The physical limit is the model's peak batched throughput, max_b b / p50(b), measured with the
worker's runner and thread count, before and after the runs (the higher is kept).
Results: bench/results/batching.md, batching.json and batching.png.

Usage: flock /tmp/accordion-heavy.lock .venv/bin/python bench/batching/run.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from accordion.workers.config import BatchingConfig, WorkerConfig
from accordion.workers.loadgen import LoadReport, build_binary_body, run_load
from accordion.workers.profiler import BatchProfile, profile_model
from bench.batching.policy_sim import (
    TRACE,
    Arrivals,
    best_configs,
    fluid_limit,
    load_proteus_trace,
    physical_limit,
)

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
TOKENS, FEATURES = 4, 256
MODEL_LABEL = f"demo-xl over {TOKENS} tokens per request (bench-only TorchScript)"
SLO_MS = 300.0
TARGET = 0.99
TOP = {"Poisson": 2, "bursty (Proteus trace)": 1}  # configurations per baseline measured here
TRACE_DURATION_S = 6.0  # a window of the trace long enough to hold a burst
SIZES = [1, 2, 4, 8, 16, 32, 48, 64, 96, 128]  # throughput plateaus by 96-128


def build_model(directory: Path) -> Path:
    """demo-xl over a sequence of tokens: [b, TOKENS, 256] -> [b, 100] (mean over tokens)."""
    import torch

    from accordion.workers.models import build_demo

    class TokenMlp(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mlp = build_demo("demo-xl")

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.mlp(x).mean(dim=1)
            return out

    path = directory / "demo-xl-tokens.pt"
    example = torch.zeros(1, TOKENS, FEATURES)
    traced = torch.jit.trace(TokenMlp().eval(), example)  # type: ignore[no-untyped-call]
    torch.jit.save(traced, str(path))
    return path


@dataclass
class Contender:
    """One policy configuration on one worker process, and what was measured for it."""

    family: str
    label: str
    batching: BatchingConfig
    simulated_qps: dict[str, float] = field(default_factory=dict)
    url: str = ""
    pid: int = 0
    curve: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    sustainable_qps: dict[str, float] = field(default_factory=dict)
    p99_ms: dict[str, float] = field(default_factory=dict)
    overload: dict[str, dict[str, Any]] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def worker_process(
    batching: BatchingConfig, model: Path, profile_ms: dict[int, float]
) -> Iterator[tuple[str, int]]:
    config = WorkerConfig(
        model_name="bench",
        model=str(model),
        input_shape=[TOKENS, FEATURES],
        slo_ms=SLO_MS,
        profile_ms=profile_ms,
        batching=batching,
        port=free_port(),
    )
    with serve_worker(config) as served:
        yield served


@contextlib.contextmanager
def serve_worker(config: WorkerConfig) -> Iterator[tuple[str, int]]:
    """`accordion.workers serve` with `config` (one torch thread), until it is ready: its URL
    and pid. Stopped (terminate, then kill after 10 s) on exit."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        f.write(config.model_dump_json())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "accordion.workers", "serve", "--config", f.name],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{config.port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"worker exited: {err}")
            try:
                with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("worker did not become ready")
            time.sleep(0.2)
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        os.unlink(f.name)


def thread_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds per thread of a process (Linux /proc), keyed by thread id."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[tid] = (int(fields[11]) + int(fields[12])) / tick
    return out


def cpu_split(pid: int, before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """The worker's CPU over an interval: its main thread (event loop) and the rest (model)."""
    used = {t: after[t] - before.get(t, 0.0) for t in after}
    loop_s = used.pop(str(pid), 0.0)
    return {"event_loop_s": loop_s, "model_and_other_threads_s": sum(used.values())}


def worker_counts(url: str) -> dict[str, float]:
    """The worker's request outcomes and batch-size sum/count, from its /metrics."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r'accordion_worker_requests_total\{.*outcome="(\w+)"\} (\S+)', line)
        if m:
            out[m.group(1)] = float(m.group(2))
        m = re.match(r"accordion_worker_batch_size_(sum|count)\{.*\} (\S+)", line)
        if m:
            out[f"batch_{m.group(1)}"] = float(m.group(2))
    return out


BODY, BODY_HEADER_LENGTH = build_binary_body("input", "FP32", [TOKENS, FEATURES])


def measure(url: str, arrivals: Arrivals, rate: float, duration_s: float) -> LoadReport:
    schedule = arrivals.schedule(rate, duration_s, seed=1)
    return asyncio.run(
        run_load(
            url,
            "bench",
            schedule,
            slo_ms=SLO_MS,
            body=BODY,
            binary_header_length=BODY_HEADER_LENGTH,
            max_duration_s=duration_s,
        )
    )


class Search:
    """Bracket the sustainable rate from an estimate (steps of `step`), then bisect."""

    def __init__(self, estimate: float, step: float = 0.1, refine: int = 2) -> None:
        self.lo, self.hi = 0.0, float("inf")
        self.next_rate: float | None = max(estimate, 1.0)
        self.step, self.refine = step, refine
        self.best_p99 = float("nan")

    def record(self, rate: float, ok: bool, p99_ms: float) -> None:
        if ok:
            self.lo, self.best_p99 = max(self.lo, rate), p99_ms
        else:
            self.hi = min(self.hi, rate)
        if self.hi == float("inf"):
            self.next_rate = rate * (1 + self.step)
        elif self.lo == 0.0:
            self.next_rate = rate * (1 - self.step) if rate > 2.0 else None
        elif self.refine > 0:
            self.refine -= 1
            self.next_rate = (self.lo + self.hi) / 2
        else:
            self.next_rate = None


def evaluate(
    contenders: list[Contender], arrivals: Arrivals, duration_s: float, refine: int
) -> None:
    """Every contender searched in interleaved rounds; then each at 2x its sustainable rate."""
    key = arrivals.name
    searches = {c.label: Search(c.simulated_qps[key], refine=refine) for c in contenders}
    for c in contenders:
        c.curve[key] = []
    while True:
        todo = [c for c in contenders if searches[c.label].next_rate is not None]
        if not todo:
            break
        for c in todo:
            s = searches[c.label]
            rate = s.next_rate
            assert rate is not None
            report = measure(c.url, arrivals, rate, duration_s)
            c.curve[key].append((rate, report.attainment))
            print(f"  [{key}] {c.label:45s} {rate:6.1f}/s {report.summary()}", flush=True)
            s.record(rate, report.attainment >= TARGET, report.percentile_ms(99))
    for c in contenders:
        s = searches[c.label]
        c.sustainable_qps[key], c.p99_ms[key] = s.lo, s.best_p99
        rate = 2 * s.lo if s.lo > 0 else 10.0
        before = worker_counts(c.url)
        cpu_before, client_before = thread_cpu_s(c.pid), time.process_time()
        wall_before = time.monotonic()
        report = measure(c.url, arrivals, rate, duration_s)
        cpu_after, client_cpu = thread_cpu_s(c.pid), time.process_time() - client_before
        wall_s = time.monotonic() - wall_before
        after = worker_counts(c.url)
        diff = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
        batches = diff.pop("batch_count", 0.0)
        mean_batch = diff.pop("batch_sum", 0.0) / batches if batches else 0.0
        c.overload[key] = {
            "rate": rate,
            "goodput_qps": report.goodput_qps,
            "attainment": report.attainment,
            "client": {"ok": report.within_slo, "late": report.late, "failed": report.failed},
            "worker": {k: int(v) for k, v in diff.items()},
            "mean_batch": mean_batch,
            "cpu_s": {
                **cpu_split(c.pid, cpu_before, cpu_after),
                "client_s": client_cpu,
                "wall_s": wall_s,
            },
        }
        c.curve[key].append((rate, report.attainment))
        c.curve[key].sort()
        print(f"  [{key}] {c.label:45s} 2x {rate:6.1f}/s {c.overload[key]}", flush=True)


def profile(model: Path, repeats: int) -> list[BatchProfile]:
    return profile_model(str(model), SIZES, repeats=repeats, input_shape=[TOKENS, FEATURES])


def main() -> None:
    # SIGTERM ends the run through `finally` blocks, so no worker process outlives it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="shorter runs (smoke test)")
    args = parser.parse_args()
    duration_s = 3.0 if args.quick else 5.0
    trace_duration_s = 4.0 if args.quick else TRACE_DURATION_S
    refine = 1 if args.quick else 2
    started = time.monotonic()
    load_before = os.getloadavg()

    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(Path(tmp))
        profiles = profile(model, 8 if args.quick else 12)
        p50 = {p.batch_size: p.p50_ms for p in profiles}
        print("profile p50 ms:", p50, flush=True)
        profile_ms = {p.batch_size: p.p90_ms for p in profiles}  # what the workers get
        slo_s = SLO_MS / 1000
        processes = [Arrivals("Poisson")]
        if TRACE.is_file():
            processes.append(Arrivals("bursty (Proteus trace)", tuple(load_proteus_trace())))
        # Simulated ranking of every configuration, on this run's profile (p50, noise 0.1).
        contenders: dict[str, Contender] = {}
        ranking: dict[str, dict[str, list[tuple[float, str]]]] = {}
        durations = {"Poisson": duration_s, "bursty (Proteus trace)": trace_duration_s}
        for arrivals in processes:
            ranked = best_configs(arrivals, p50, slo_s, max(10.0, durations[arrivals.name]), 0.1)
            ranking[arrivals.name] = {f: [(r, lab) for r, lab, _ in v] for f, v in ranked.items()}
            for family, rows in ranked.items():
                if family == "none" and arrivals is not processes[0]:
                    continue  # far behind under Poisson already: not measured again
                for rate, label, cfg in rows[
                    : 1 if family in ("none", "slo") else TOP[arrivals.name]
                ]:
                    c = contenders.setdefault(label, Contender(family, label, cfg))
                    c.simulated_qps[arrivals.name] = rate
        print("contenders:", [c.label for c in contenders.values()], flush=True)
        with contextlib.ExitStack() as stack:
            for c in contenders.values():
                c.url, c.pid = stack.enter_context(worker_process(c.batching, model, profile_ms))
            for c in contenders.values():  # warm every server and its policy's state
                measure(c.url, processes[0], 0.5 * min(c.simulated_qps.values()), 2.0)
            for arrivals in processes:
                evaluate(
                    [c for c in contenders.values() if arrivals.name in c.simulated_qps],
                    arrivals,
                    durations[arrivals.name],
                    refine,
                )
        again = profile(model, 8 if args.quick else 12)
    limit = max(max(p.throughput_qps for p in profiles), max(p.throughput_qps for p in again))
    fastest = max((profiles, again), key=lambda ps: max(p.throughput_qps for p in ps))
    feasible = max(
        (p.throughput_qps for p in fastest if 2 * p.p50_ms <= SLO_MS), default=float("nan")
    )
    # No policy serves faster than its largest batch that runs within the SLO at all.
    ceiling = max((p.throughput_qps for p in fastest if p.p50_ms <= SLO_MS), default=float("nan"))
    best_b = max([*profiles, *again], key=lambda p: p.throughput_qps).batch_size
    # What any policy could sustain on the very arrivals measured (seed 1), at the limit.
    bounds = {a.name: fluid_limit(a, limit, SLO_MS / 1000, durations[a.name]) for a in processes}
    load_after = os.getloadavg()
    # The raw measurements first, so a failure in the report below loses nothing.
    raw = [c.__dict__ | {"batching": c.batching.model_dump()} for c in contenders.values()]
    (Path(tempfile.gettempdir()) / "accordion-batching-raw.json").write_text(json.dumps(raw))
    write_results(
        list(contenders.values()),
        [a.name for a in processes],
        limit,
        best_b,
        (feasible, ceiling),
        bounds,
        profiles,
        again,
        ranking,
        physical_limit(p50),
        time.monotonic() - started,
        args.quick,
        (load_before, load_after),
    )


def write_results(
    contenders: list[Contender],
    processes: list[str],
    limit: float,
    best_b: int,
    limits: tuple[float, float],
    bounds: dict[str, float],
    profiles: list[BatchProfile],
    again: list[BatchProfile],
    ranking: dict[str, dict[str, list[tuple[float, str]]]],
    sim_limit: float,
    elapsed_s: float,
    quick: bool,
    load: tuple[tuple[float, ...], tuple[float, ...]],
) -> None:
    feasible, ceiling = limits
    best_p50 = min(p.p50_ms for p in [*profiles, *again] if p.batch_size == best_b)
    RESULTS.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Batching benchmark",
        "",
        f"`bench/batching/run.py`{' --quick' if quick else ''} (run under "
        "`flock /tmp/accordion-heavy.lock`): model "
        f"{MODEL_LABEL}: demo-xl's MLP applied to an input of [{TOKENS}, {FEATURES}] per "
        "request, built in the bench and served from a TorchScript file, so each request costs "
        "about 4x demo-xl's compute and the HTTP/JSON work of client and server stays a small "
        "share of the CPU at the rates reached. This machine's CPU, one torch thread, served by "
        "the KServe v2 worker (one process per configuration); open-loop load from one client "
        "process on loopback (pre-encoded body, keep-alive connections); SLO "
        f"{SLO_MS:.0f} ms end to end at the client. Sustainable rate: the highest mean arrival "
        "rate with >= 99% of requests answered within the SLO (bracketed from the simulated "
        "estimate, then bisected; contenders interleaved round by round). Overload: the same "
        f"configuration at 2x its sustainable rate. Run time {elapsed_s / 60:.1f} min. The "
        "machine has 2 cores shared with other work: 1/5/15-minute load averages "
        f"{'/'.join(f'{x:.2f}' for x in load[0])} at the start, "
        f"{'/'.join(f'{x:.2f}' for x in load[1])} at the end.",
        "",
        "Baselines at their best configuration: every candidate (Triton max batch x "
        "max_queue_delay in {1, 5, 20} ms; Clipper max batch) was simulated on this run's "
        "profile (`policy_sim.py`, the same policy objects), and the best of each ("
        + ", ".join(f"{n} {p}" for p, n in TOP.items())
        + ") were measured here; the table reports each family's best measured. Requests and "
        "responses use KServe v2's binary tensor extension (JSON header + raw bytes, as Triton "
        "clients do): measured on this machine, with the 1,024 floats of a request as JSON the "
        "worker's event loop spent ~1.1 ms of CPU per request (json.loads alone ~0.3 ms), a "
        "third of the model's ~3.4 ms per request at its best batch; with the extension ~0.4 "
        f"ms. Poisson points last {5.0 if not quick else 3.0:g} s; bursty points "
        f"{TRACE_DURATION_S if not quick else 4.0:g} s "
        "(a window of the Proteus `medium-normal_load` mobilenet trace, Twitter-shaped, "
        "replayed at the target mean rate: the same window for every policy).",
        "",
        f"Physical limit (max over b of b / p50 latency(b), the better of a measurement before "
        f"and one after the runs): **{limit:.0f}/s** (batch {best_b}).",
    ]
    summary: dict[str, dict[str, Any]] = {}
    for proc in processes:
        racing = [c for c in contenders if proc in c.sustainable_qps]
        best_of: dict[str, Contender] = {}
        for c in racing:
            if c.family not in best_of or c.sustainable_qps[proc] > best_of[
                c.family
            ].sustainable_qps.get(proc, 0.0):
                best_of[c.family] = c
        ours = best_of["slo"]
        baselines = [c for f, c in best_of.items() if f != "slo"]
        best = max(baselines, key=lambda c: c.sustainable_qps[proc])
        rate = ours.sustainable_qps[proc]
        ratio = rate / best.sustainable_qps[proc] if best.sustainable_qps[proc] else float("inf")
        keep = ours.overload[proc]["goodput_qps"] / rate if rate else 0.0
        summary[proc] = {
            "sustainable": rate,
            "best_baseline": best.sustainable_qps[proc],
            "ratio": ratio,
            "of_limit": rate / limit,
            "overload_keep": keep,
        }
        lines += [
            "",
            f"## {proc} arrivals",
            "",
            "| policy (configuration) | sustainable (/s) | vs best baseline | of physical limit "
            "| p99 at sustainable (ms) | goodput at 2x (/s) | at 2x / sustainable "
            "| worker at 2x: ok / late / dropped / shed, mean batch |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for c in sorted(racing, key=lambda c: ("none", "triton", "clipper", "slo").index(c.family)):
            r = c.sustainable_qps[proc]
            o = c.overload[proc]
            w = o["worker"]
            lines.append(
                f"| {c.label}{'' if best_of[c.family] is c else ' (runner-up)'} | {r:.0f} | "
                f"{r / best.sustainable_qps[proc]:.2f}x | {r / limit:.0%} | "
                f"{c.p99_ms[proc]:.0f} | {o['goodput_qps']:.0f} | "
                f"{o['goodput_qps'] / r if r else float('nan'):.0%} | "
                f"{w.get('ok', 0)} / {w.get('late', 0)} / {w.get('dropped', 0)} / "
                f"{w.get('rejected', 0)}, {o['mean_batch']:.1f} |"
            )
        lines += ["", "CPU during the 2x point (s of CPU over the point's wall time, until the "
                  "last response): worker event loop / worker model thread / load generator:",
                  ""]  # fmt: skip
        for c in racing:
            cpu = c.overload[proc]["cpu_s"]
            lines.append(
                f"- {c.label}: {cpu['event_loop_s']:.1f} / {cpu['model_and_other_threads_s']:.1f}"
                f" / {cpu['client_s']:.1f} over {cpu['wall_s']:.1f} s"
            )
        lines += ["", "Attainment per rate:", ""]
        for c in racing:
            pts = ", ".join(f"{x:.0f}/s: {a:.1%}" for x, a in c.curve[proc])
            lines.append(f"- {c.label}: {pts}")
    goals = [
        ("sustainable rate >= 1.3x the best baseline's", "ratio", 1.3, "{:.2f}x"),
        ("sustainable rate >= 85% of the physical limit", "of_limit", 0.85, "{:.0%}"),
        ("goodput at 2x overload >= 90% of sustainable", "overload_keep", 0.9, "{:.0%}"),
    ]
    lines += ["", "## Goals (each arrival process on its own)", ""]
    for text, key, threshold, fmt in goals:
        parts = [
            f"{proc}: {fmt.format(s[key])} ({'met' if s[key] >= threshold else 'NOT met'})"
            for proc, s in summary.items()
        ]
        lines.append(f"- {text}: " + "; ".join(parts))
    lines.append(
        f"- for reference, not a goal: the SLO-feasible limit (best b / p50(b) with "
        f"2 p50(b) <= SLO, the planner's capacity rule) is {feasible:.0f}/s; ours reached "
        + ", ".join(f"{p}: {s['sustainable'] / feasible:.0%}" for p, s in summary.items())
        + " of it"
    )
    lines.append(
        f"- for reference, not a goal: a ceiling for every policy, whatever it does: the best "
        f"b / p50(b) among the batches that run within the SLO at all (no queueing, every "
        f"batch full) is {ceiling:.0f}/s, "
        + ", ".join(
            f"{p}: {ceiling / s['best_baseline']:.2f}x"
            for p, s in summary.items()
            if s["best_baseline"]
        )
        + " the best baseline's sustainable rate"
    )
    lines.append(
        "- for reference, not a goal: the most any policy can sustain on these very arrivals "
        "(the same schedule as measured) with the device at its physical limit: a fluid "
        "server at the limit that skips only what it cannot finish in time "
        "(`policy_sim.fluid_on_time`, an upper bound for every batching policy): "
        + ", ".join(
            f"{p}: {bounds[p]:.0f}/s ({bounds[p] / limit:.0%} of the limit; ours reached "
            f"{s['sustainable'] / bounds[p]:.0%} of it, the best baseline "
            f"{s['best_baseline'] / bounds[p]:.0%})"
            for p, s in summary.items()
        )
    )
    lines += [
        "",
        "## Latency profile (execution only, ms; before the runs / after them)",
        "",
        "| batch | p50 | p90 | p99 | b / p50 (/s) | p50 after | b / p50 after (/s) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p, q in zip(profiles, again, strict=True):
        lines.append(
            f"| {p.batch_size} | {p.p50_ms:.1f} | {p.p90_ms:.1f} | {p.p99_ms:.1f} "
            f"| {p.throughput_qps:.0f} | {q.p50_ms:.1f} | {q.throughput_qps:.0f} |"
        )
    lines += ["", "## Simulated ranking of the configurations (this run's profile)", ""]
    lines.append(
        f"Sustainable rate on simulated time (p50 profile x log-normal noise 0.1, 10 s), "
        f"physical limit {sim_limit:.0f}/s; the top of each family was measured above."
    )
    for proc, families in ranking.items():
        lines += ["", f"{proc}:", ""]
        for family, rows in families.items():
            shown = ", ".join(f"{label} {r:.0f}/s" for r, label in rows[:4])
            lines.append(f"- {family}: {shown}{' ...' if len(rows) > 4 else ''}")
    lines += [
        "",
        "## Notes",
        "",
        "- Why the previous run (demo-xl, JSON bodies, every policy capped at batch 8) kept only "
        "85% of its sustainable rate at 2x: measured during development with the bench model "
        "(not in this run), a JSON request of 1,024 floats cost the worker's event loop 1.1-1.2 "
        "ms of CPU and the load generator 0.7-0.9 ms, on 2 cores shared with the model thread "
        "and other work, so at 2x the HTTP work took CPU from the model; with the binary "
        "extension both cost ~0.4 ms. And under overload every batch is sized to its earliest "
        "deadline, so a batch slower than the typical prediction was late as a whole: the "
        "batcher now fits batches with the prediction's recent tail (p90 of observed / "
        "predicted). The worker's counts at 2x (table) and the CPU split above show what "
        "remains.",
        f"- The physical limit is the model's, whatever the SLO: its best batch (b = {best_b}) "
        f"runs in {best_p50:.0f} ms (p50) against the {SLO_MS:.0f} ms SLO, and a request may "
        "wait for the batch before its own; the SLO-feasible figure above says how close ours "
        "comes to what the SLO permits.",
        "",
        "![attainment vs rate](batching.png)",
        "",
        "See also `batching-sim.md` (the same policy objects on simulated time: repeatable, "
        "free of the background load) and `batching-fastloop.md` (the router's fast loop "
        "against weights-only routing).",
        "",
    ]
    (RESULTS / "batching.md").write_text("\n".join(lines))
    (RESULTS / "batching.json").write_text(
        json.dumps(
            {
                "physical_qps": limit,
                "slo_ms": SLO_MS,
                "model": MODEL_LABEL,
                "load": load,
                "summary": summary,
                "fluid_bound_qps": bounds,
                "contenders": [
                    {k: v for k, v in c.__dict__.items() if k not in ("url", "pid", "batching")}
                    | {"batching": c.batching.model_dump()}
                    for c in contenders
                ],
            },
            indent=1,
        )
    )
    plot(contenders, processes, limit, RESULTS / "batching.png")
    print("\n".join(lines))


def plot(contenders: list[Contender], processes: list[str], limit: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(processes), figsize=(6.5 * len(processes), 4.4), sharey=True)
    axes = [axes] if len(processes) == 1 else list(axes)
    colors = {c.label: f"C{i}" for i, c in enumerate(contenders)}  # one color per policy
    for ax, proc in zip(axes, processes, strict=True):
        for c in contenders:
            if c.curve.get(proc):
                xs, ys = zip(*c.curve[proc], strict=True)
                ax.plot(
                    xs,
                    [100 * y for y in ys],
                    marker="o",
                    markersize=3,
                    label=c.label,
                    color=colors[c.label],
                )
        ax.axhline(100 * TARGET, color="grey", linestyle=":", linewidth=1)
        ax.axvline(limit, color="black", linestyle="--", linewidth=1, label="physical limit")
        ax.set_xlabel(f"mean arrival rate (requests/s), {proc}")
        ax.set_ylim(0, 102)
        ax.set_title(f"{proc}: SLO {SLO_MS:.0f} ms, CPU 1 thread, KServe v2 worker", fontsize=9)
        ax.legend(loc="lower left", fontsize=6)
    axes[0].set_ylabel(f"requests within the {SLO_MS:.0f} ms SLO (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
