"""`make demo`: Accordion scaling accuracy on this machine, end to end, in about two minutes.

1. profiles the demo models here (`accordion.workers.profiler`, the code behind `accordion
   profile`) and writes `demo-out/manifests/` from `examples/local/` with those profiles;
2. starts `accordion up` on them (a subprocess, as a user would);
3. drives a load ramp through the router with the open-loop load generator: low, past the
   capacity of the most accurate variant, back down;
4. stops `up` (SIGTERM) and checks that no process is left;
5. writes `demo-out/summary.md`, `summary.json` and `timeline.png` (demand, capacity,
   accuracy, violations).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

EXAMPLES = Path("examples/local")
INPUT_FEATURES = 256  # the demo family's sample shape
REPLAN_REASONS = {"ReplicasChanged", "AccuracyScaledDown", "AccuracyScaledUp", "WorkerDied"}


@dataclass(frozen=True)
class Phase:
    name: str
    duration_s: float
    start_qps: float
    end_qps: float


def default_phases(low: float = 25.0, high: float = 150.0) -> list[Phase]:
    return [
        Phase("low", 25.0, low, low),
        Phase("ramp up", 30.0, low, high),
        Phase("high", 25.0, high, high),
        Phase("ramp down", 10.0, high, low),
        Phase("low again", 50.0, low, low),
    ]


# ------------------------------------------------------------------------------- profiling


def profile_manifests(source: Path, out_dir: Path, batch_sizes: list[int]) -> Path:
    """Copy the manifests of `source` into `out_dir` with every builtin variant re-profiled."""
    from accordion.workers.profiler import profile_model

    out_dir.mkdir(parents=True, exist_ok=True)
    files = sorted(source.glob("*.yaml")) if source.is_dir() else [source]
    for path in files:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        for doc in docs:
            if doc.get("kind") != "InferenceService":
                continue
            for variant in doc["spec"]["variants"]:
                uri = variant["model"]["storageUri"]
                if not uri.startswith("builtin:"):
                    continue
                for prof in variant["profiles"]:
                    print(f"demo: profiling {uri} on {prof['pool']} ...", flush=True)
                    results = profile_model(uri, batch_sizes, repeats=40)
                    prof["batches"] = [
                        {
                            "batchSize": r.batch_size,
                            "p50Ms": r.p50_ms,
                            "p90Ms": r.p90_ms,
                            "p99Ms": r.p99_ms,
                        }
                        for r in results
                    ]
        (out_dir / path.name).write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return out_dir


def top_capacity_qps(manifests: Path) -> tuple[str, float, float]:
    """(service, slo_ms, capacity) of one replica of the first service's most accurate variant,
    as the planner computes it: the largest profiled batch whose worst case (waiting for the
    previous batch, then running) fits the SLO."""
    from accordion.operator.manifests import load

    svc = sorted(load([manifests]).services, key=lambda s: s.key)[0]
    slo_ms = svc.spec.slo.latency_ms
    best = max(svc.spec.variants, key=lambda v: v.accuracy)
    capacity = 0.0
    for b in best.profiles[0].batches:
        worst_ms = b.p99_ms or b.p90_ms or b.p50_ms
        if 2 * worst_ms <= slo_ms:
            capacity = max(capacity, b.batch_size / (worst_ms / 1000.0))
    return svc.key, slo_ms, capacity


# ------------------------------------------------------------------------------------ `up`


def start_up(
    manifests: Path, run_dir: Path, port: int, extra: list[str] | None = None
) -> subprocess.Popen[bytes]:
    run_dir.mkdir(parents=True, exist_ok=True)
    log = (run_dir / "up.log").open("wb")
    cmd = [sys.executable, "-m", "accordion.local.cli", "-f", str(manifests), "--run-dir",
           str(run_dir), "--port", str(port), "--no-view", *(extra or [])]  # fmt: skip
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


def read_state(run_dir: Path) -> dict[str, Any]:
    try:
        state: dict[str, Any] = json.loads((run_dir / "state.json").read_text())
    except (OSError, ValueError):
        return {}
    return state


def wait_ready(
    proc: subprocess.Popen[bytes], run_dir: Path, timeout_s: float = 90.0
) -> tuple[str, str]:
    """Wait until every service has a router and a ready worker; return the first service's
    router URL and the model name it serves (`/v2/models/<name>/infer`)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"accordion up exited with {proc.returncode}; see {run_dir}/up.log")
        state = read_state(run_dir)
        ready = state.get("ready", {})
        if ready and all(ready.values()):
            routers = state.get("routers", {})
            urls = {str(k): str(u) for k, u in state["urls"].items()}
            names = {k: str(routers.get(k, {}).get("model", "")) for k in urls}
            if all(names.values()) and all(router_ready(urls[k], names[k]) for k in urls):
                first = sorted(urls)[0]
                return urls[first], names[first]
        time.sleep(0.2)
    raise TimeoutError(f"accordion up was not ready within {timeout_s:.0f}s; see {run_dir}")


def router_ready(url: str, service: str) -> bool:
    """The service's router (not anything else on that port) answers and is ready."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/v2/models/{service}", timeout=1.0) as resp:
            meta = json.loads(resp.read())
        with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=1.0) as resp:
            ready = resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False
    return bool(ready and meta.get("platform") == "accordion-router")


def stop_up(
    proc: subprocess.Popen[bytes], run_dir: Path, sig: signal.Signals = signal.SIGTERM
) -> list[int]:
    """Signal `up` (SIGTERM, or SIGINT as Ctrl-C sends), wait for it; return the pids of its
    children still alive (there should be none)."""
    state = read_state(run_dir)
    pids = [int(r["pid"]) for r in state.get("routers", {}).values() if r.get("pid")]
    pids += [p for w in state.get("workers", []) for p in w.get("pids", [])]
    proc.send_signal(sig)
    proc.wait(timeout=30)
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        alive.append(pid)
    return alive


# ------------------------------------------------------------------------------------ load


def phase_schedule(phase: Phase, seed: int) -> list[float]:
    from accordion.workers.loadgen import ramp_schedule

    return ramp_schedule(phase.start_qps, phase.end_qps, phase.duration_s, seed)


async def drive(url: str, service: str, phases: list[Phase], slo_ms: float) -> list[dict[str, Any]]:
    """Run each phase open-loop through the router; one report per phase."""
    from accordion.workers.loadgen import build_body, run_load

    body = build_body("input", "FP32", [INPUT_FEATURES])
    reports = []
    for i, phase in enumerate(phases):
        print(f"demo: {phase.name}: {phase.start_qps:g} -> {phase.end_qps:g} req/s for "
              f"{phase.duration_s:g}s", flush=True)  # fmt: skip
        report = await run_load(
            url,
            service,
            phase_schedule(phase, seed=i),
            slo_ms=slo_ms,
            body=body,
            max_duration_s=phase.duration_s,
        )
        summary = {
            "phase": phase.name,
            **report.summary(),
            "statuses": report.statuses,
            "errors": report.errors,
        }
        print(f"demo:   {json.dumps(summary)}", flush=True)
        reports.append(summary)
    return reports


# --------------------------------------------------------------------------------- reports


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _rolling(values: list[float | None], n: int) -> list[float | None]:
    out: list[float | None] = []
    for i in range(len(values)):
        window = [v for v in values[max(0, i - n + 1) : i + 1] if v is not None]
        out.append(sum(window) / len(window) if window else None)
    return out


def plot_timeline(timeline: list[dict[str, Any]], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t_s"] for s in timeline]
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    ax1.plot(t, [s["demand_qps"] for s in timeline], label="measured demand", color="black")
    ax1.plot(t, [s["estimate_qps"] for s in timeline], label="estimate (EWMA)", color="gray",
             linestyle="--")  # fmt: skip
    ax1.plot(t, [s["capacity_qps"] for s in timeline], label="planned capacity", color="tab:blue")
    peak = max([s["demand_qps"] for s in timeline] + [1.0])
    ax1.set_ylim(0, 2.2 * peak)  # a small variant's capacity is off the chart: say so
    ax1.set_ylabel("req/s (capacity clipped)")
    ax1.legend(loc="upper left")
    ax1.set_title(title)
    ax2.plot(t, [s["planned_accuracy"] for s in timeline], label="planned", color="tab:green")
    ax2.plot(t, _rolling([s["served_accuracy"] for s in timeline], 5),
             label="served (router, 5-tick mean)", color="tab:olive", alpha=0.7)  # fmt: skip
    ax2.set_ylabel("effective accuracy (%)")
    ax2.legend(loc="lower right")
    ax3.bar(t, [s["violations_qps"] for s in timeline], width=1.0, color="tab:red",
            label="SLO violations/s")  # fmt: skip
    ax3.plot(t, [s["ok_qps"] for s in timeline], color="tab:blue", label="answered in SLO/s")
    ax3.set_ylabel("req/s")
    ax3.set_xlabel("seconds since accordion up started")
    ax3.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def summarize(
    reports: list[dict[str, Any]],
    timeline: list[dict[str, Any]],
    events: list[dict[str, Any]],
    leftover: list[int],
) -> dict[str, Any]:
    sent = sum(r["sent"] for r in reports)
    within = sum(r["within_slo"] for r in reports)
    accs = [s["planned_accuracy"] for s in timeline if s["planned_accuracy"] is not None]
    return {
        "sent": sent,
        "within_slo": within,
        "attainment": round(within / sent, 4) if sent else 1.0,
        "phases": reports,
        "accuracy_max": max(accs) if accs else None,
        "accuracy_min": min(accs) if accs else None,
        "accuracy_end": accs[-1] if accs else None,
        "variants_used": sorted({b for s in timeline for b, n in s["replicas"].items() if n}),
        "replans": [e for e in events if e["reason"] in REPLAN_REASONS],
        "processes_left": leftover,
    }


def write_summary(summary: dict[str, Any], out_dir: Path) -> None:
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    lines = [
        "# Accordion local demo",
        "",
        f"SLO attainment over the whole ramp: **{summary['attainment']:.2%}** "
        f"({summary['within_slo']} of {summary['sent']} requests within the SLO).",
        f"Effective accuracy: {summary['accuracy_max']} at low load, down to "
        f"{summary['accuracy_min']} at peak, {summary['accuracy_end']} at the end.",
        f"Variants used: {', '.join(summary['variants_used'])}. "
        f"Processes left after stop: {len(summary['processes_left'])}.",
        "",
        "| phase | offered req/s | attainment | p50 ms | p99 ms |",
        "|---|---|---|---|---|",
    ]
    for r in summary["phases"]:
        lines.append(f"| {r['phase']} | {r['offered_qps']} | {r['attainment']:.2%} | "
                     f"{r['p50_ms']} | {r['p99_ms']} |")  # fmt: skip
    lines += ["", "Re-plans:", ""]
    lines += [f"- t={e['t_s']:.0f} {e['reason']}: {e['message']}" for e in summary["replans"]]
    lines += ["", "![timeline](timeline.png)", ""]
    (out_dir / "summary.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("demo-out"))
    parser.add_argument("--manifests", type=Path, default=EXAMPLES)
    parser.add_argument("--no-profile", action="store_true", help="use the committed profiles")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--low", type=float, help="req/s (default: 0.25 x the top capacity)")
    parser.add_argument("--high", type=float, help="req/s (default: 1.8 x it, at most 150)")
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    manifests: Path = args.manifests
    if not args.no_profile:
        manifests = profile_manifests(manifests, out / "manifests", [1, 2])
    run_dir = out / "run"
    for name in ("timeline.jsonl", "events.jsonl", "state.json"):
        (run_dir / name).unlink(missing_ok=True)
    # A demand fall is followed with a 10 s half-life (20 s by default), so that accuracy
    # climbs back within the demo's low phase.
    proc = start_up(manifests, run_dir, args.port, ["--fall-half-life-s", "10"])
    try:
        url, model = wait_ready(proc, run_dir)
        print(f"demo: accordion up is serving at {url}", flush=True)
        _, slo_ms, capacity = top_capacity_qps(manifests)
        low = args.low or round(0.25 * capacity)
        high = args.high or min(150.0, round(1.8 * capacity))
        print(f"demo: the most accurate variant serves {capacity:.0f} req/s per replica here; "
              f"ramp {low:g} -> {high:g} -> {low:g} req/s", flush=True)  # fmt: skip
        phases = default_phases(low, high)
        reports = asyncio.run(drive(url, model, phases, slo_ms=slo_ms))
    finally:
        leftover = stop_up(proc, run_dir) if proc.poll() is None else []
    timeline = read_jsonl(run_dir / "timeline.jsonl")
    events = read_jsonl(run_dir / "events.jsonl")
    started = read_state(run_dir).get("started_at_s", 0.0)
    for e in events:
        e["t_s"] = round(e["t_s"] - started, 1)
    summary = summarize(reports, timeline, events, leftover)
    plot_timeline(timeline, out / "timeline.png", "accordion up: default/classifier under a ramp")
    write_summary(summary, out)
    print((out / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
