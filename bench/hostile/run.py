"""Valid traffic under hostile traffic: canary SLO attainment during a flood of 16 MB bodies and
during 600 slow connections, against a real worker and a real router in front of it.

Each scenario starts fresh processes with the CLI's defaults (``accordion-worker serve`` with
builtin:demo-xs and a 100 ms SLO, ``accordion-worker route``), sends canary requests (one valid
256-float JSON request every 20 ms, open loop, deadline = the SLO) for `--seconds`, and counts
those answered 200 within the SLO. Meanwhile an attacker process runs one of:

* ``none``: nothing (the baseline of the same run);
* ``flood``: 4 connections sending 16 MB JSON bodies back to back (a v2 body whose data has
  1.39 million numbers, just under the 16 MiB limit, so each is read and parsed: what a broken
  or hostile client sends; each is refused with 400);
* ``slowloris``: 600 connections that send a request head one header line every 0.5 s and
  never finish it, reopened when the server closes them.

``--before REV`` measures the workers of git revision REV too (extracted with git archive and
put first on PYTHONPATH), so the table shows the old code and the new side by side; ``--rounds``
repeats every row (the machine is shared: one round says little). Each row also gives the
canary's latency distribution (answered requests) and the CPU the servers (with any child
processes) and the attacker used during the canary's window, in cores. ``--attacker-cpus 1``
pins the attacker to CPU 1 and the servers and canary to the others (``taskset``-like, with
``os.sched_setaffinity``): what the servers keep when the flood cannot take their cores;
``--busy N`` runs N processes that spin meanwhile: a node whose cores other work wants too. The
flood's answers per second (each body refused with a 400) show what the server still does for
the attacker.

    python bench/hostile/run.py --before bc07a14 --rounds 3 --out bench/results/hostile.md
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
SLO_MS = 100.0
CANARY_INTERVAL_S = 0.02
SERVICE = "classifier"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, timeout_s: float = 60.0) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2) as resp,
        ):
            if resp.status == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready")


def cpu_seconds(sessions: Sequence[int]) -> float:
    """CPU time (user + system) of every live process in the given sessions (a server started
    with ``start_new_session`` and whatever it started) or with those pids."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            # fields[0] is the state (field 3); session is field 6, utime/stime 14 and 15.
            if int(fields[3]) in sessions or int(entry.name) in sessions:
                total += (int(fields[11]) + int(fields[12])) / tick
    return total


@contextlib.contextmanager
def stack(
    code: Path | None, tmp: Path, cpus: set[int] | None = None
) -> Iterator[dict[str, tuple[int, str]]]:
    """A worker and a router in front of it; (port, model name) of each, and their pids
    under "pids" (as port)."""
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = f"{code}:{env.get('PYTHONPATH', '')}"
    wport, rport = free_port(), free_port()
    table = tmp / "routing.json"
    table.write_text(
        json.dumps(
            {
                "service": SERVICE,
                "slo_ms": SLO_MS,
                "backends": [
                    {
                        "name": "xs",
                        "url": f"http://127.0.0.1:{wport}",
                        "model_name": "demo-xs",
                        "weight": 1.0,
                        "accuracy": 0.7,
                    }
                ],
            }
        )
    )
    cli = [sys.executable, "-m", "accordion.workers"]
    procs = [
        subprocess.Popen(
            [*cli, "serve", "--model", "builtin:demo-xs", "--port", str(wport),
             "--slo-ms", str(SLO_MS)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        ),
        subprocess.Popen(
            [*cli, "route", "--table", str(table), "--port", str(rport)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        ),
    ]  # fmt: skip
    if cpus is not None:
        for proc in procs:
            os.sched_setaffinity(proc.pid, cpus)  # children started later inherit it
    try:
        wait_ready(f"http://127.0.0.1:{wport}")
        wait_ready(f"http://127.0.0.1:{rport}")
        yield {
            "worker": (wport, "demo-xs"),
            "router": (rport, SERVICE),
            "pids": (procs[0].pid, str(procs[1].pid)),
        }
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# -- attackers (each in a process of its own) -----------------------------------------------

Counter = Any
"""A ``multiprocessing.Value("q")``: the answers an attacker got."""


def flood(port: int, model: str, answered: Counter) -> None:
    body = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 256],
                    "datatype": "FP32",
                    "data": [0.123456789] * 1_390_000,
                }
            ]
        },
        separators=(",", ":"),
    ).encode()
    assert len(body) < 16 * 1024 * 1024  # read and parsed: not refused by its length alone
    head = (
        f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()

    def one() -> None:
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(head + body)
                while s.recv(65536):
                    pass
                with answered.get_lock():
                    answered.value += 1

    threads = [threading.Thread(target=one, daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    threading.Event().wait()


def slowloris(port: int, model: str, answered: Counter, connections: int = 600) -> None:
    head = f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: x\r\n".encode()
    socks: list[socket.socket | None] = [None] * connections
    line = 0
    while True:
        for i in range(connections):
            sock = socks[i]
            try:
                if sock is None:
                    sock = socket.create_connection(("127.0.0.1", port), timeout=1)
                    sock.setblocking(False)
                    sock.send(head)
                    socks[i] = sock
                else:
                    sock.send(b"X-%d: %d\r\n" % (line, line))
            except OSError:
                if sock is not None:
                    sock.close()
                socks[i] = None
        line += 1
        time.sleep(0.5)


ATTACK = Callable[[int, str, Counter], None]
ATTACKS: dict[str, ATTACK | None] = {"none": None, "flood": flood, "slowloris": slowloris}


# -- the canary -----------------------------------------------------------------------------


async def canary(port: int, model: str, seconds: float) -> list[float | None]:
    """Each request's latency in seconds if answered 200, else None."""
    body = json.dumps(
        {"inputs": [{"name": "input", "shape": [1, 256], "datatype": "FP32", "data": [0.5] * 256}]}
    ).encode()
    url = f"http://127.0.0.1:{port}/v2/models/{model}/infer"
    headers = {"Content-Type": "application/json", "x-accordion-deadline-ms": str(SLO_MS)}
    latencies: list[float | None] = []

    async def one(session: aiohttp.ClientSession) -> None:
        start = time.monotonic()
        latency = None
        try:
            timeout = aiohttp.ClientTimeout(total=5)
            async with session.post(url, data=body, headers=headers, timeout=timeout) as resp:
                await resp.read()
                if resp.status == 200:
                    latency = time.monotonic() - start
        except (aiohttp.ClientError, TimeoutError):
            pass
        latencies.append(latency)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        tasks = []
        start = time.monotonic()
        n = 0
        while (now := time.monotonic()) < start + seconds:
            tasks.append(asyncio.create_task(one(session)))
            n += 1
            await asyncio.sleep(max(0.0, start + n * CANARY_INTERVAL_S - now))
        await asyncio.gather(*tasks)
    return latencies


@dataclass
class Row:
    code: str
    target: str
    attack: str
    latencies: list[float | None]
    server_cores: float
    """CPU the worker and router (and their children) used during the canary, in cores."""
    attacker_cores: float
    attack_answers_per_s: float
    """Flood bodies the server answered (refused with a 400) per second."""

    @property
    def requests(self) -> int:
        return len(self.latencies)

    @property
    def within(self) -> int:
        return sum(1 for t in self.latencies if t is not None and t <= SLO_MS / 1000)


def _pinned(fn: ATTACK, cpus: set[int] | None, port: int, model: str, answered: Counter) -> None:
    if cpus is not None:
        os.sched_setaffinity(0, cpus)
    fn(port, model, answered)


def _spin() -> None:
    while True:
        pass


def scenario(
    code: Path | None,
    target: str,
    attack: str,
    seconds: float,
    attacker_cpus: set[int] | None = None,
    busy: int = 0,
) -> Row:
    spinners = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(busy)]
    for spinner in spinners:
        spinner.start()
    try:
        return _scenario(code, target, attack, seconds, attacker_cpus)
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.join()


def _scenario(
    code: Path | None, target: str, attack: str, seconds: float, attacker_cpus: set[int] | None
) -> Row:
    others = None
    if attacker_cpus is not None:
        others = set(range(os.cpu_count() or 1)) - attacker_cpus
    with tempfile.TemporaryDirectory() as tmp, stack(code, Path(tmp), others) as ports:
        port, model = ports[target]
        sessions = [ports["pids"][0], int(ports["pids"][1])]
        attacker = None
        answered = multiprocessing.Value("q", 0)
        fn = ATTACKS[attack]
        if fn is not None:
            attacker = multiprocessing.Process(
                target=_pinned, args=(fn, attacker_cpus, port, model, answered), daemon=True
            )
            attacker.start()
            time.sleep(2.0)  # the attack in full swing before the canary starts
        saved = os.sched_getaffinity(0)
        try:
            if others is not None:
                os.sched_setaffinity(0, others)
            servers0 = cpu_seconds(sessions)
            attacker0 = cpu_seconds([attacker.pid]) if attacker and attacker.pid else 0.0
            answered0 = answered.value
            start = time.monotonic()
            latencies = asyncio.run(canary(port, model, seconds))
            wall = time.monotonic() - start
            servers = (cpu_seconds(sessions) - servers0) / wall
            attacking = 0.0
            if attacker is not None and attacker.pid:
                attacking = (cpu_seconds([attacker.pid]) - attacker0) / wall
            answers = (answered.value - answered0) / wall
            return Row("", target, attack, latencies, servers, attacking, answers)
        finally:
            os.sched_setaffinity(0, saved)
            if attacker is not None:
                attacker.kill()
                attacker.join()


def extract(rev: str, into: Path) -> Path:
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "workers/accordion"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "workers"


def quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def describe(rows: Sequence[Row]) -> str:
    """One table line's figures for `rows` (one row, or every round of one row)."""
    answered = [t for r in rows for t in r.latencies if t is not None] or [math.nan]
    n = sum(r.requests for r in rows)
    ok = sum(r.within for r in rows)
    p50, p99 = quantile(answered, 0.5), quantile(answered, 0.99)
    servers = sum(r.server_cores for r in rows) / len(rows)
    attacker = sum(r.attacker_cores for r in rows) / len(rows)
    answers = sum(r.attack_answers_per_s for r in rows) / len(rows)
    return (
        f"{n} | {ok} | {ok / n:.1%} | {p50 * 1000:.1f} | {p99 * 1000:.1f} | "
        f"{max(answered) * 1000:.0f} | {servers:.2f} | {attacker:.2f} | {answers:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--before", help="git revision of the old workers to measure too")
    parser.add_argument("--targets", default="worker,router")
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    parser.add_argument(
        "--attacker-cpus", help="pin the attacker to these CPUs (e.g. 1), the rest to the others"
    )
    parser.add_argument(
        "--busy", type=int, default=0, help="processes that spin meanwhile (other work on the node)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/hostile.md")
    args = parser.parse_args()
    pin = None
    if args.attacker_cpus:
        pin = {int(c) for c in args.attacker_cpus.split(",")}
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        codes: dict[str, Path | None] = {"this code": None}
        if args.before:
            codes = {f"before ({args.before})": extract(args.before, Path(tmp)), **codes}
        for round_ in range(1, args.rounds + 1):
            for label, code in codes.items():
                for target in args.targets.split(","):
                    for attack in args.attacks.split(","):
                        row = scenario(code, target, attack, args.seconds, pin, args.busy)
                        row.code = label
                        rows.append(row)
                        print(f"round {round_} {label:>22} {target:>6} {attack:>9}: "
                              f"{describe([row])}", flush=True)  # fmt: skip
    header = (
        "| code | server | attack | round | canary requests | within SLO | attainment | "
        "p50 ms | p99 ms | max ms | server cores | attacker cores | attack answers/s |"
    )
    lines = [
        "# Valid traffic under hostile traffic (bench/hostile/run.py)",
        "",
        f"Canary: one valid request every {CANARY_INTERVAL_S * 1000:.0f} ms for "
        f"{args.seconds:g} s, SLO {SLO_MS:g} ms; within SLO = answered 200 within it. Worker: "
        "`serve --model builtin:demo-xs --slo-ms 100` (defaults otherwise); router: `route` in "
        "front of it. Flood: 4 connections of 16 MB JSON bodies back to back; slowloris: 600 "
        "connections that never finish their request head. One process each, fresh per row, "
        f"on this {os.cpu_count()}-core machine (shared), {args.rounds} round(s)"
        + (f", the attacker pinned to CPU {args.attacker_cpus}" if pin else "")
        + (f", {args.busy} processes spinning meanwhile (other work)" if args.busy else "")
        + ". Latencies of the requests answered 200; cores: CPU seconds per second during the "
        "canary's window (servers: worker, router and their child processes).",
        "",
        header,
        "|---|---|---|---|" + "---:|" * 9,
    ]
    keys = list(dict.fromkeys((r.code, r.target, r.attack) for r in rows))
    for key in keys:
        same = [r for r in rows if (r.code, r.target, r.attack) == key]
        for round_, row in enumerate(same, 1):
            lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {round_} | {describe([row])} |")
        if len(same) > 1:
            lines.append(f"| {key[0]} | {key[1]} | {key[2]} | all | {describe(same)} |")
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
