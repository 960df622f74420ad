"""The routers' report channel at scale: how many reports the operator takes, and what each costs.

Part 1 (the policy, simulated seconds): N services with two routers each, every service at a
steady Poisson rate drawn log-uniformly between 1 and 1,000 req/s (split over its routers), the
table's planned capacity 20% above it; each router runs the product's `ReportPolicy` (its
defaults: 1 s interval, 10 s heartbeat, max(10%, 2 sigma) change) and the operator's answer
says two routers and the default heartbeat. Reported: reports per second in the steady state,
against the baseline of every router reporting every interval (2 N per second), measured in
the same run; then the same with 10% of the services in a burst (3x, beyond their capacity).

Part 2 (the operator's server, real HTTP on loopback): the product's `ReportServer` and
`RouterDemand` in a process of their own, N services known, folding every second as the
driver does; an aiohttp client posts reports of 2 N routers, (a) paced at the rate part 1
found for the steady state, (b) paced at the baseline's rate (2 N per second), (c) as fast as
16 connections go. Reported: latency of a report (p50, p99, client side), reports per second,
and the server process's CPU per report and CPU share. The server authenticates every report as
the chart's default does (`operator.reports.authentication: TokenReview`): each router sends its
own bearer token, reviewed once through the product's `TokenAuthenticator` (its cache, its
limits) by a reviewer that answers as the API server would for a pod-bound ServiceAccount token
after `REVIEW_RTT_S` (no API server here); then the same without authentication, on a fresh
server process.

Usage (about two minutes; under the shared heavy lock):
    flock /tmp/accordion-heavy.lock .venv/bin/python bench/reports/run.py [--services 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from statistics import median
from typing import Any

import aiohttp
import numpy as np

from accordion.operator.reportauth import REVIEW_TTL_S
from accordion.workers.config import REPORT_PATH, ReportAnswer, RouterReport
from accordion.workers.reporting import ReportPolicy

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results" / "reports.md"


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def simulate(services: int, seconds: int, burst_share: float, baseline: bool, seed: int) -> float:
    """Reports per second over the last half of `seconds` simulated seconds."""
    rng = np.random.default_rng(seed)
    rates = np.exp(rng.uniform(math.log(1.0), math.log(1000.0), services))
    capacity = 1.2 * rates
    bursting = rng.random(services) < burst_share
    clock = Clock()
    routers = [
        ReportPolicy(heartbeat_s=0.0 if baseline else 10.0, clock=clock)
        for _ in range(2 * services)
    ]
    totals = [0] * len(routers)
    answer = ReportAnswer(heartbeat_s=0.0 if baseline else 10.0, routers=2)
    counted = 0
    for second in range(seconds):
        clock.t += 1.0
        in_burst = second >= seconds // 2
        for r, policy in enumerate(routers):
            svc = r // 2
            rate = rates[svc] * (3.0 if in_burst and bursting[svc] else 1.0) / 2.0
            totals[r] += int(rng.poisson(rate))
            window = policy.close_window(totals[r], ("v", 1), float(capacity[svc]))
            if window.reason is not None:
                policy.delivered(window, ("v", 1), answer)
                if second >= seconds // 2:
                    counted += 1
    return counted / (seconds - seconds // 2)


REVIEW_RTT_S = 0.002
"""What the stand-in reviewer takes per TokenReview (an API server round trip on a LAN)."""

SERVER = """
import asyncio, sys, time
from accordion.operator.reports import ReportServer, RouterDemand, ServiceRouting
from accordion.operator.reportauth import (
    POD_NAME_EXTRA, REPORT_AUDIENCE, Review, TokenAuthenticator,
)
from accordion.operator.api import parse_resource

n, auth, rtt = int(sys.argv[1]), sys.argv[2] == "auth", float(sys.argv[3])

def review(token):  # a pod-bound token of namespace bench, bound to the router it names
    time.sleep(rtt)
    return Review(authenticated=True, username="system:serviceaccount:bench:router",
        audiences=(REPORT_AUDIENCE,), extra={POD_NAME_EXTRA: (token,)})

def svc(i):
    return parse_resource({"apiVersion": "accordion.dev/v1alpha1", "kind": "InferenceService",
        "metadata": {"name": f"s{i}", "namespace": "bench"},
        "spec": {"slo": {"latencyMs": 100}, "variants": [{"name": "a", "accuracy": 80,
        "model": {"storageUri": "/m.pt"}, "profiles": [{"pool": "p", "batches": [
        {"batchSize": 1, "p50Ms": 5}]}]}]}})
services = {f"bench/s{i}": svc(i) for i in range(n)}
known = ServiceRouting(None, None)
demand = RouterDemand(lambda k: known if k in services else None, time.time)

async def main():
    server = ReportServer(demand, leading=lambda: True,
        auth=TokenAuthenticator(review) if auth else None)
    port = await server.start("127.0.0.1", 0)
    print(port, flush=True)
    await demand.run(lambda: demand.fold(services))

asyncio.run(main())
"""


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def router_name(i: int, routers: int) -> str:
    return f"s{(i % routers) // 2}-router-{i % 2}"


def report_body(i: int, routers: int, total: int) -> bytes:
    return (
        RouterReport(
            service=f"bench/s{(i % routers) // 2}",
            router=router_name(i, routers),
            instance="0123456789ab",
            requests_total=total,
            window_requests=100,
            window_s=1.0,
            table_version="0123456789abcdef",
            table_revision=1764748800123,
        )
        .model_dump_json(exclude_defaults=True)
        .encode()
    )


async def post_reports(
    url: str, routers: int, count: int, pace_per_s: float | None, pid: int, auth: bool
) -> dict[str, float]:
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=16)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(i: int) -> None:
            started = time.perf_counter()
            headers = {"Content-Type": "application/json"}
            if auth:  # the router's token; the stand-in reviewer binds it to that router's pod
                headers["Authorization"] = f"Bearer {router_name(i, routers)}"
            async with session.post(url, data=report_body(i, routers, i), headers=headers) as resp:
                await resp.read()
                assert resp.status == 200, resp.status
            latencies.append(time.perf_counter() - started)

        cpu0, wall0 = cpu_s(pid), time.perf_counter()
        if pace_per_s is None:
            queue = iter(range(count))

            async def worker() -> None:
                for i in queue:
                    await one(i)

            await asyncio.gather(*(worker() for _ in range(16)))
        else:
            tasks = []
            loop = asyncio.get_running_loop()
            start = loop.time()
            for i in range(count):
                await asyncio.sleep(max(0.0, start + i / pace_per_s - loop.time()))
                tasks.append(asyncio.create_task(one(i)))
            await asyncio.gather(*tasks)
        wall = time.perf_counter() - wall0
        cpu = cpu_s(pid) - cpu0
    latencies.sort()
    return {
        "reports_per_s": count / wall,
        "p50_ms": 1000 * median(latencies),
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
        "cpu_us_per_report": 1e6 * cpu / count,
        "cpu_share": cpu / wall,
    }


def measure_server(
    n: int, auth: bool, args: Any, paces: dict[str, float | None], baseline: float
) -> tuple[dict[str, dict[str, float]], float]:
    """Part 2 on a fresh server process: (runs by load, CPU share of the fold alone)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(n), "auth" if auth else "none", str(REVIEW_RTT_S)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        url = f"http://127.0.0.1:{port}{REPORT_PATH}"
        runs: dict[str, dict[str, float]] = {}
        # The fold alone (every service, every second): what the server costs with no reports.
        cpu0 = cpu_s(proc.pid)
        time.sleep(args.http_seconds)
        idle = (cpu_s(proc.pid) - cpu0) / args.http_seconds
        print(f"{'TokenReview' if auth else 'no auth'}: idle (folding only) cpu share {idle:.3f}")
        for name, pace in paces.items():
            count = int((pace or baseline) * args.http_seconds)
            runs[name] = asyncio.run(post_reports(url, 2 * n, count, pace, proc.pid, auth))
            print(name, json.dumps({k: round(v, 3) for k, v in runs[name].items()}))
    finally:
        proc.terminate()
        proc.wait(10)
    return runs, idle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=120, help="simulated seconds (part 1)")
    parser.add_argument("--http-seconds", type=float, default=10.0, help="length of part 2 runs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    n = args.services

    baseline = simulate(n, args.seconds, 0.0, True, args.seed)
    steady = simulate(n, args.seconds, 0.0, False, args.seed)
    bursty = simulate(n, args.seconds, 0.1, False, args.seed)
    print(f"part 1: baseline {baseline:.0f}/s, steady {steady:.0f}/s, 10% bursting {bursty:.0f}/s")
    paces: dict[str, float | None] = {
        "steady": steady,
        "10% bursting": bursty,
        "baseline (every interval)": baseline,
        "as fast as it goes (16 connections)": None,
    }
    load_before = os.getloadavg()
    measured = {auth: measure_server(n, auth, args, paces, baseline) for auth in (True, False)}
    write(n, args, baseline, steady, bursty, measured, (load_before, os.getloadavg()))


def write(
    n: int,
    args: Any,
    baseline: float,
    steady: float,
    bursty: float,
    measured: dict[bool, tuple[dict[str, dict[str, float]], float]],
    loads: tuple[tuple[float, float, float], tuple[float, float, float]],
) -> None:
    body = report_body(0, 2, 123456789)
    lines = [
        "# Routers' reports at scale",
        "",
        f"`bench/reports/run.py --services {n}` ({n} services, two routers each; "
        f"{time.strftime('%Y-%m-%d')}, this machine: 2 shared cores).",
        "",
        "## Reports per second (the product's ReportPolicy, simulated seconds)",
        "",
        f"Rates log-uniform 1-1,000 req/s per service, Poisson arrivals, planned capacity 20% "
        f"above; steady state over the last {args.seconds - args.seconds // 2} of "
        f"{args.seconds} s.",
        "",
        "| routers' policy | reports/s | vs. every interval |",
        "|---|---|---|",
        f"| every interval (baseline) | {baseline:.0f} | 1.00 |",
        f"| default (10 s heartbeat, max(10%, 2 sigma)) | {steady:.0f} | {steady / baseline:.3f} |",
        f"| default, 10% of services in a 3x burst | {bursty:.0f} | {bursty / baseline:.3f} |",
        "",
        "## The operator's report server (real HTTP on loopback, one process)",
        "",
        f"A report is {len(body)} bytes of JSON (an answer without a table 32 bytes). "
        "With `TokenReview` (the chart's default, `operator.reports.authentication`) every "
        f"report is authenticated: each of the {2 * n} routers sends its own bearer token, "
        "reviewed once by the product's `TokenAuthenticator` (cached "
        f"{REVIEW_TTL_S:.0f} s) through a stand-in reviewer that answers in "
        f"{1000 * REVIEW_RTT_S:.0f} ms as the API server would, so the first run's reports pay "
        "the reviews; `None` is the same server without it, measured right after on a fresh "
        "process. Load average (1, 5, 15 min) before the two: "
        + ", ".join(f"{x:.2f}" for x in loads[0])
        + "; after: "
        + ", ".join(f"{x:.2f}" for x in loads[1])
        + " (other agents share the 2 cores: compare the rows of one run, not across runs).",
        "",
        "| authentication | load | reports/s | p50 ms | p99 ms | server CPU per report (us) "
        "| server CPU share |",
        "|---|---|---|---|---|---|---|",
    ]
    for auth, (runs, idle) in measured.items():
        how = "TokenReview" if auth else "None"
        lines.append(
            f"| {how} | none (the per-second fold of {n} services only) | 0 | | | | "
            f"{100 * idle:.1f}% |"
        )
        for name, r in runs.items():
            lines.append(
                f"| {how} | {name} | {r['reports_per_s']:.0f} | {r['p50_ms']:.2f} | "
                f"{r['p99_ms']:.2f} | {r['cpu_us_per_report']:.0f} | {100 * r['cpu_share']:.0f}% |"
            )
    lines += [
        "",
        "The server folds every second as the driver does (`RouterDemand.run`), so its CPU "
        "per report includes that fold (first row). Client and server share the machine's two "
        "cores; latencies are the client's.",
        "",
    ]
    RESULTS.write_text("\n".join(lines))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
