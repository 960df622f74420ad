"""The router's fast loop against weights-only routing, with real processes on this machine.

Two workers (`accordion-worker serve`, torch on the CPU, one torch thread each): an accurate,
slow variant (builtin:demo-xl, batches capped at `--accurate-cap`) and a fast one
(builtin:demo-s). One router (`accordion route`) in front of them, with a routing table whose
plan weights favour the accurate variant and whose capacities come from profiling both models
at the start of the run (`accordion.workers.profiler`, the planner's rule: the largest batch b
with 2 L(b) <= SLO, at p90 latency). `accordion load` replays one open-loop trace: a base rate
the plan serves, then a burst that pushes the accurate variant's planned share above its
capacity, then the base rate again.

The same trace runs with the fast loop on and off (weights only: the router still sheds what it
predicts cannot make its deadline), with the router's online capacity correction on and off
(`--correction`: the table's `fast_loop.correct_capacity`; the isolated profile overstates what a
worker serves while it shares 2 cores with the router and the load generator, and the
correction measures the difference from the answers), each time on fresh processes, for
`--rounds` rounds in alternating order, since the machine is shared and noisy, and at each table
headroom of `--headroom` (the share of the profiled capacity the router counts on). The table
carries each variant's profile (`profile_ms`). The load starts once the router has every
backend in its split. Reported per run: the client's
report (attainment, p99), the router's counters (ok, late, dropped, shed, error per variant; the
accuracy served), and attainment over time from the router's counters scraped every
`--sample-s`, plotted to bench/results/router.png.

Usage (about 5 minutes; under the shared heavy lock):
    flock /tmp/accordion-heavy.lock .venv/bin/python bench/router/run.py
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

from accordion.workers.config import (
    Backend,
    BatchingConfig,
    FastLoopBounds,
    RoutingTable,
    WorkerConfig,
)
from accordion.workers.loadgen import poisson_schedule
from accordion.workers.profiler import BatchProfile, profile_model

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "accordion.workers"]
SERVICE = "classifier"
OUTCOMES = ("ok", "late", "dropped", "shed", "error")
CORRECTIONS = {
    "on": "corrected (worker reports)",
    "answers": "corrected (answer timing)",
    "off": "plan trusted",
}
"""--correction choices and their labels: the router's capacity correction from the workers'
reports, from the timing of the answers only, or none."""


@dataclass(frozen=True)
class Variant:
    name: str
    model: str
    accuracy: float  # the demo family's illustrative accuracy
    cap: int
    weight: float


@dataclass
class Planned:
    variant: Variant
    profile: list[BatchProfile]
    batch: int
    capacity_qps: float
    batch_latency_ms: float


def plan_capacity(variant: Variant, slo_ms: float, repeats: int) -> Planned:
    sizes = [b for b in (1, 2, 4, 8, 16, 32) if b <= variant.cap]
    profile = profile_model(variant.model, sizes, torch_threads=1, repeats=repeats)
    fitting = [p for p in profile if 2 * p.p90_ms <= slo_ms] or profile[:1]
    best = max(fitting, key=lambda p: p.batch_size / p.p90_ms)
    capacity = best.batch_size / (best.p90_ms / 1000.0)
    return Planned(variant, profile, best.batch_size, capacity, best.p90_ms)


def burst_trace(args: argparse.Namespace) -> list[float]:
    """Base rate, a burst from `burst_start_s` to `burst_end_s`, base rate again."""
    out: list[float] = []
    segments = (
        (0.0, args.burst_start_s, args.base_qps),
        (args.burst_start_s, args.burst_end_s, args.burst_qps),
        (args.burst_end_s, args.duration_s, args.base_qps),
    )
    for k, (start, end, rate) in enumerate(segments):
        out += [start + t for t in poisson_schedule(rate, end - start, args.seed + k)]
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


def wait_all_in_split(
    proc: subprocess.Popen[bytes], router_url: str, names: list[str], timeout_s: float = 30.0
) -> None:
    """Wait until the router has every backend in its split (its first health check may have
    found a worker not listening yet)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        m = parse_metrics(get(f"{router_url}/metrics"))
        if all(total(m, "accordion_router_backend_healthy", variant=n) == 1 for n in names):
            return
        time.sleep(0.05)
    raise RuntimeError(f"the router at {router_url} does not have {names} in its split")


def wait_ready(proc: subprocess.Popen[bytes], url: str, timeout_s: float = 60.0) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            get(f"{url}/v2/health/ready")
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout_s} s")


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Prometheus text format -> {(name, labels): value} (counters and gauges only)."""
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, value = line.rsplit(" ", 1)
        name, _, rest = head.partition("{")
        labels = frozenset(
            (k, v.strip('"'))
            for k, v in (p.split("=", 1) for p in rest.rstrip("}").split(",") if p)
        )
        out[(name, labels)] = float(value)
    return out


def total(
    metrics: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **want: str
) -> float:
    return sum(v for (n, labels), v in metrics.items() if n == name and set(want.items()) <= labels)


@dataclass
class RunResult:
    fast_loop: bool
    correct: str  # the --correction choice: on, answers or off
    headroom: float
    round: int
    load1: float  # 1-minute load average when the run started
    client: dict[str, Any]
    router: dict[str, Any]
    workers: dict[str, dict[str, float]]
    timeline: list[dict[str, float]] = field(default_factory=list)
    cpu_s: dict[str, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.mode + f", round {self.round}"

    @property
    def mode(self) -> str:
        routing = "fast loop" if self.fast_loop else "weights only"
        return f"{routing}, {CORRECTIONS[self.correct]}, headroom {self.headroom:g}"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_once(
    args: argparse.Namespace,
    planned: list[Planned],
    trace: Path,
    fast_loop: bool,
    correct: str,
    headroom: float,
    round_: int,
    workdir: Path,
) -> RunResult:
    procs: list[subprocess.Popen[bytes]] = []
    urls: dict[str, str] = {}
    load1 = os.getloadavg()[0]
    try:
        for p in planned:
            port = free_port()
            cfg = WorkerConfig(
                model_name=p.variant.name,
                model=p.variant.model,
                torch_threads=1,
                slo_ms=args.slo_ms,
                accuracy=p.variant.accuracy,
                profile_ms={b.batch_size: b.p90_ms for b in p.profile},
                batching=BatchingConfig(max_batch_size=p.variant.cap, max_queue=1024),
                port=port,
            )
            env = {**os.environ, "ACCORDION_WORKER_CONFIG": cfg.model_dump_json()}
            procs.append(subprocess.Popen([*CLI, "serve"], env=env, start_new_session=True))
            urls[p.variant.name] = f"http://127.0.0.1:{port}"
        table = RoutingTable(
            service=SERVICE,
            slo_ms=args.slo_ms,
            version="bench",
            backends=[
                Backend(
                    name=p.variant.name,
                    url=urls[p.variant.name],
                    weight=p.variant.weight,
                    accuracy=p.variant.accuracy,
                    capacity_qps=round(p.capacity_qps, 1),
                    max_batch_size=p.batch,
                    batch_latency_ms=p.batch_latency_ms,
                    profile_ms={b.batch_size: b.p90_ms for b in p.profile},
                )
                for p in planned
            ],
            fast_loop=FastLoopBounds(
                enabled=fast_loop,
                max_shift=args.max_shift,
                headroom=headroom,
                correct_capacity=correct != "off",
                worker_reports=correct == "on",
            ),
        )
        table_path = workdir / f"routing-{fast_loop}-{correct}-{headroom}-{round_}.json"
        table_path.write_text(table.model_dump_json(indent=2))
        rport = free_port()
        router_url = f"http://127.0.0.1:{rport}"
        procs.append(
            subprocess.Popen(
                [*CLI, "route", "--table", str(table_path), "--port", str(rport)],
                start_new_session=True,
            )
        )
        for proc, url in zip(procs, [*urls.values(), router_url], strict=True):
            wait_ready(proc, url)
        wait_all_in_split(procs[-1], router_url, [p.variant.name for p in planned])

        timeline: list[dict[str, float]] = []
        stop = threading.Event()

        def sample() -> None:
            begin = time.monotonic()
            while not stop.is_set():
                m = parse_metrics(get(f"{router_url}/metrics"))
                row = {"t": time.monotonic() - begin}
                row["requests"] = total(m, "accordion_router_requests_total")
                for outcome in OUTCOMES:
                    row[outcome] = total(m, "accordion_router_outcomes_total", outcome=outcome)
                row["accuracy"] = total(m, "accordion_router_accuracy_served_total")
                for p in planned:
                    name = p.variant.name
                    row[f"ok_{name}"] = total(
                        m, "accordion_router_outcomes_total", outcome="ok", variant=name
                    )
                    row[f"healthy_{name}"] = total(
                        m, "accordion_router_backend_healthy", variant=name
                    )
                    row[f"slowdown_{name}"] = total(
                        m, "accordion_router_backend_slowdown", variant=name
                    )
                timeline.append(row)
                stop.wait(args.sample_s)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        load = subprocess.run(
            [
                *(*CLI, "load", "--url", router_url, "--model", SERVICE, "--trace", str(trace)),
                *("--slo-ms", str(args.slo_ms), "--input-shape", "256"),
                *("--duration-s", str(args.duration_s + 1)),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        time.sleep(args.sample_s * 1.5)
        stop.set()
        sampler.join()
        client = json.loads(load.stdout)
        m = parse_metrics(get(f"{router_url}/metrics"))
        router: dict[str, Any] = {
            "requests": total(m, "accordion_router_requests_total"),
            "accuracy_served": round(total(m, "accordion_router_accuracy_served_total"), 2),
            "rerouted": total(m, "accordion_router_rerouted_total"),
            # Samples (every --sample-s) in which the router had a backend out of the split.
            "unhealthy_samples": ", ".join(
                f"{p.variant.name} {n}"
                for p in planned
                if (n := sum(1 for row in timeline if row[f"healthy_{p.variant.name}"] < 1))
            )
            or "0",
            # The router's capacity correction: median during the burst, and largest.
            "slowdown": {
                p.variant.name: slowdown_figures(timeline, p.variant.name, args) for p in planned
            },
        }
        for outcome in OUTCOMES:
            router[outcome] = total(m, "accordion_router_outcomes_total", outcome=outcome)
        router["ok_by_variant"] = {
            p.variant.name: total(
                m, "accordion_router_outcomes_total", outcome="ok", variant=p.variant.name
            )
            for p in planned
        }
        workers: dict[str, dict[str, float]] = {}
        for name, url in urls.items():
            wm = parse_metrics(get(f"{url}/metrics"))
            workers[name] = {
                o: total(wm, "accordion_worker_requests_total", outcome=o)
                for o in ("ok", "late", "dropped", "rejected")
            }
            count = total(wm, "accordion_worker_batch_size_count")
            workers[name]["mean_batch"] = (
                round(total(wm, "accordion_worker_batch_size_sum") / count, 2) if count else 0.0
            )
        cpu = {
            name: cpu_seconds(proc.pid) for name, proc in zip([*urls, "router"], procs, strict=True)
        }
        return RunResult(
            fast_loop, correct, headroom, round_, load1, client, router, workers, timeline, cpu
        )
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def slowdown_figures(
    timeline: list[dict[str, float]], name: str, args: argparse.Namespace
) -> tuple[float, float]:
    """The router's correction of `name`: its median over the burst's samples, and its largest
    value during the run (time 0: the first sample that saw a request)."""
    rows = [r for r in timeline if r["requests"] > 0]
    if not rows:
        return 1.0, 1.0
    t0 = rows[0]["t"]
    burst = [
        r[f"slowdown_{name}"] for r in rows if args.burst_start_s <= r["t"] - t0 <= args.burst_end_s
    ]
    return (median(burst) if burst else 1.0), max(r[f"slowdown_{name}"] for r in rows)


def corrections(args: argparse.Namespace) -> list[str]:
    return list(args.correction)


def binned(timeline: list[dict[str, float]], width_s: float) -> tuple[list[float], list[float]]:
    """Attainment per time bin from the router's counters: ok / all outcomes counted in the bin.

    Time 0 is the first sample that saw a request (within `--sample-s` of the trace's start).
    """
    rows = [r for r in timeline if r["requests"] > 0]
    if not rows:
        return [], []
    t0 = rows[0]["t"]
    xs, ys = [], []
    start = 0
    for i in range(1, len(rows)):
        if rows[i]["t"] - rows[start]["t"] >= width_s or i == len(rows) - 1:
            done = sum(rows[i][o] - rows[start][o] for o in OUTCOMES)
            if done > 0:
                xs.append((rows[i]["t"] + rows[start]["t"]) / 2 - t0)
                ys.append((rows[i]["ok"] - rows[start]["ok"]) / done)
            start = i
    return xs, ys


def effective_accuracy(r: RunResult) -> float:
    """Accuracy served within the deadline per request (the router's counters)."""
    m = r.router
    return float(m["accuracy_served"] / m["requests"]) if m["requests"] else 0.0


def plot(results: list[RunResult], args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(c, h) for h in args.headroom for c in corrections(args)]
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(3.6 * len(panels), 3.2),
        dpi=100,
        sharey=True,
        squeeze=False,
    )
    axes = axes[0]
    for ax, (correct, headroom) in zip(axes, panels, strict=True):
        ax.axvspan(args.burst_start_s, args.burst_end_s, color="0.9", label="burst")
        for r in results:
            if (r.correct, r.headroom) != (correct, headroom):
                continue
            xs, ys = binned(r.timeline, 1.0)
            ax.plot(
                xs,
                ys,
                marker="o",
                markersize=2,
                color="tab:blue" if r.fast_loop else "tab:orange",
                alpha=0.8,
                linewidth=1,
                label=("fast loop" if r.fast_loop else "weights only") if r.round == 0 else None,
            )
        ax.set_xlabel("time (s)")
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{CORRECTIONS[correct]}, headroom {headroom:g}", fontsize=9)
        ax.legend(loc="lower left", fontsize=7)
    axes[0].set_ylabel("SLO attainment (1 s bins)")
    fig.suptitle(
        f"router: {args.base_qps:g}/s, burst {args.burst_qps:g}/s, SLO {args.slo_ms:g} ms",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path)


def report(
    results: list[RunResult],
    planned: list[Planned],
    args: argparse.Namespace,
    load: tuple[tuple[float, ...], tuple[float, ...]],
    elapsed_s: float,
) -> str:
    lines = [
        "# Router fast loop vs weights-only routing (real processes)",
        "",
        "`bench/router/run.py`: two `accordion-worker serve` processes (one torch thread each, "
        "CPU) behind one `accordion route` process, driven by `accordion load --trace`; each "
        "routing mode runs on fresh processes with the same trace. Effective accuracy = the "
        "router's `accuracy_served` / requests (illustrative demo accuracies).",
        "",
        f"Command: `flock /tmp/accordion-heavy.lock .venv/bin/python bench/router/run.py "
        f"{' '.join(sys.argv[1:])}`".rstrip()
        + f" ({elapsed_s:.0f} s).",
        f"Machine: {os.cpu_count()} CPUs; load average before {load[0][0]:.2f} / "
        f"{load[0][1]:.2f} / {load[0][2]:.2f}, after {load[1][0]:.2f} / {load[1][1]:.2f} / "
        f"{load[1][2]:.2f} (1/5/15 min).",
        "",
        f"Load: Poisson {args.base_qps:g}/s, burst {args.burst_qps:g}/s from "
        f"{args.burst_start_s:g} s to {args.burst_end_s:g} s, {args.duration_s:g} s in all; "
        f"SLO {args.slo_ms:g} ms.",
        "",
        "Plan (profiled at the start of the run, p90, capacity = b / L(b) for the largest b with "
        f"2 L(b) <= SLO; table fast_loop.max_shift {args.max_shift:g}; each routing runs at "
        f"fast_loop.headroom {', '.join(f'{h:g}' for h in args.headroom)} (the router counts on "
        "that share of the planned capacity), with the router's online capacity correction "
        "(`fast_loop.correct_capacity`) from the workers' own reports (`x-accordion-slowdown`, "
        "`fast_loop.worker_reports`: `corrected (worker reports)`), from the timing of the "
        "answers only (`corrected (answer timing)`), and without it (`plan trusted`); the table "
        "carries each variant's p90 profile):",
        "",
        "| variant | model | accuracy | weight | batch cap | planned b | L(b) ms | capacity/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for p in planned:
        v = p.variant
        lines.append(
            f"| {v.name} | {v.model} | {v.accuracy} | {v.weight} | {v.cap} | {p.batch} | "
            f"{p.batch_latency_ms:.1f} | {p.capacity_qps:.0f} |"
        )
    lines += [
        "",
        f"Median over {args.rounds} rounds (each round runs both routings on fresh processes, "
        "in alternating order):",
        "",
        "| routing | attainment (client) | effective accuracy | p99 ms | dropped | shed |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for mode in dict.fromkeys(r.mode for r in results):
        runs = [r for r in results if r.mode == mode]
        lines.append(
            f"| {mode} | {median(r.client['attainment'] for r in runs) * 100:.1f}% | "
            f"{median(effective_accuracy(r) for r in runs):.3f} | "
            f"{median(r.client['p99_ms'] for r in runs):.1f} | "
            f"{median(r.router['dropped'] for r in runs):.0f} | "
            f"{median(r.router['shed'] for r in runs):.0f} |"
        )
    lines += [
        "",
        "Every run (ok ... error: the router's outcome counters; p99 of answered requests, "
        "client side):",
        "",
        "| run | load 1 min | sent | attainment (client) | p99 ms | ok | late | dropped | shed "
        "| error | rerouted | ok per variant | effective accuracy | backend out (samples) "
        "| slowdown (burst median / max) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for r in results:
        c, m = r.client, r.router
        per_variant = ", ".join(f"{k} {v:.0f}" for k, v in m["ok_by_variant"].items())
        lines.append(
            f"| {r.label} | {r.load1:.2f} | {c['sent']} | "
            f"{c['attainment'] * 100:.1f}% | {c['p99_ms']:.1f} | {m['ok']:.0f} | {m['late']:.0f} "
            f"| {m['dropped']:.0f} | {m['shed']:.0f} | {m['error']:.0f} | {m['rerouted']:.0f} | "
            f"{per_variant} | {effective_accuracy(r):.3f} | {m['unhealthy_samples']} | "
            + ", ".join(f"{k} {a:.2f} / {b:.2f}" for k, (a, b) in m["slowdown"].items())
            + " |"
        )
    lines += ["", "Workers' own counters (ok / late / dropped / rejected, mean batch):", ""]
    for r in results:
        parts = [
            f"{name}: {w['ok']:.0f} / {w['late']:.0f} / {w['dropped']:.0f} / "
            f"{w['rejected']:.0f}, batch {w['mean_batch']}"
            for name, w in r.workers.items()
        ]
        cpu = ", ".join(f"{k} {v:.1f}" for k, v in r.cpu_s.items())
        lines.append(
            f"- {r.label}: " + "; ".join(parts) + f"; CPU seconds (startup included): {cpu}"
        )
    lines += ["", "![attainment over time](router.png)", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slo-ms", type=float, default=100.0)
    parser.add_argument("--base-qps", type=float, default=100.0)
    parser.add_argument("--burst-qps", type=float, default=300.0)
    parser.add_argument("--burst-start-s", type=float, default=8.0)
    parser.add_argument("--burst-end-s", type=float, default=20.0)
    parser.add_argument("--duration-s", type=float, default=30.0)
    parser.add_argument("--accurate-cap", type=int, default=4)
    parser.add_argument("--accurate-weight", type=float, default=0.8)
    parser.add_argument("--max-shift", type=float, default=0.5)
    parser.add_argument(
        "--headroom",
        type=float,
        nargs="+",
        default=[1.0],
        help="the table's fast_loop.headroom (the router counts on this share of the planned "
        "capacity); both routings run at each",
    )
    parser.add_argument(
        "--correction",
        choices=list(CORRECTIONS),
        nargs="+",
        default=list(CORRECTIONS),
        help="the router's online capacity correction (the table's fast_loop.correct_capacity): "
        "on, from the workers' reports (fast_loop.worker_reports); answers, from the timing of "
        "the answers only; off: the plan trusted. Both routings run with each",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="rounds of both routings, in alternating order (the machine is shared and noisy)",
    )
    parser.add_argument("--sample-s", type=float, default=0.25)
    parser.add_argument("--repeats", type=int, default=40, help="profiling repeats per batch")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()

    began = time.monotonic()
    load_before = os.getloadavg()
    variants = [
        Variant("accurate", "builtin:demo-xl", 0.84, args.accurate_cap, args.accurate_weight),
        Variant("fast", "builtin:demo-s", 0.75, 16, round(1 - args.accurate_weight, 3)),
    ]
    planned = [plan_capacity(v, args.slo_ms, args.repeats) for v in variants]
    for p in planned:
        print(f"{p.variant.name}: b={p.batch} L={p.batch_latency_ms:.1f} ms "
              f"capacity={p.capacity_qps:.0f}/s", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        trace = workdir / "trace.txt"
        trace.write_text("".join(f"{t:.6f}\n" for t in burst_trace(args)))
        results = []
        for round_ in range(args.rounds):
            for headroom in args.headroom:
                for correct in corrections(args):
                    for fast_loop in (True, False) if round_ % 2 == 0 else (False, True):
                        result = run_once(
                            args, planned, trace, fast_loop, correct, headroom, round_, workdir
                        )
                        print(json.dumps({"run": result.label, **result.client, **result.router}))
                        results.append(result)
    load_after = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    plot(results, args, args.out / "router.png")
    text = report(results, planned, args, (load_before, load_after), time.monotonic() - began)
    (args.out / "router.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
