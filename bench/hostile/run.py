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
put first on PYTHONPATH), so the table shows the old code and the new side by side.

    python bench/hostile/run.py --before bc07a14 --out bench/results/hostile.md
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
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
from collections.abc import Iterator
from pathlib import Path

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


@contextlib.contextmanager
def stack(code: Path | None, tmp: Path) -> Iterator[dict[str, tuple[int, str]]]:
    """A worker and a router in front of it; (port, model name) of each."""
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
    try:
        wait_ready(f"http://127.0.0.1:{wport}")
        wait_ready(f"http://127.0.0.1:{rport}")
        yield {"worker": (wport, "demo-xs"), "router": (rport, SERVICE)}
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# -- attackers (each in a process of its own) -----------------------------------------------


def flood(port: int, model: str, stop: threading.Event | None = None) -> None:
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

    threads = [threading.Thread(target=one, daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    threading.Event().wait()


def slowloris(port: int, model: str, connections: int = 600) -> None:
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


ATTACKS = {"none": None, "flood": flood, "slowloris": slowloris}


# -- the canary -----------------------------------------------------------------------------


async def canary(port: int, model: str, seconds: float) -> tuple[int, int]:
    """(requests, answered 200 within the SLO)."""
    body = json.dumps(
        {"inputs": [{"name": "input", "shape": [1, 256], "datatype": "FP32", "data": [0.5] * 256}]}
    ).encode()
    url = f"http://127.0.0.1:{port}/v2/models/{model}/infer"
    headers = {"Content-Type": "application/json", "x-accordion-deadline-ms": str(SLO_MS)}
    ok = 0

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal ok
        start = time.monotonic()
        try:
            timeout = aiohttp.ClientTimeout(total=5)
            async with session.post(url, data=body, headers=headers, timeout=timeout) as resp:
                await resp.read()
                if resp.status == 200 and time.monotonic() - start <= SLO_MS / 1000:
                    ok += 1
        except (aiohttp.ClientError, TimeoutError):
            pass

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        tasks = []
        start = time.monotonic()
        n = 0
        while (now := time.monotonic()) < start + seconds:
            tasks.append(asyncio.create_task(one(session)))
            n += 1
            await asyncio.sleep(max(0.0, start + n * CANARY_INTERVAL_S - now))
        await asyncio.gather(*tasks)
    return n, ok


def scenario(code: Path | None, target: str, attack: str, seconds: float) -> tuple[int, int]:
    with tempfile.TemporaryDirectory() as tmp, stack(code, Path(tmp)) as ports:
        port, model = ports[target]
        attacker = None
        fn = ATTACKS[attack]
        if fn is not None:
            attacker = multiprocessing.Process(target=fn, args=(port, model), daemon=True)
            attacker.start()
            time.sleep(2.0)  # the attack in full swing before the canary starts
        try:
            return asyncio.run(canary(port, model, seconds))
        finally:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--before", help="git revision of the old workers to measure too")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/hostile.md")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        codes: dict[str, Path | None] = {"this code": None}
        if args.before:
            codes = {f"before ({args.before})": extract(args.before, Path(tmp)), **codes}
        for label, code in codes.items():
            for target in ("worker", "router"):
                for attack in ATTACKS:
                    n, ok = scenario(code, target, attack, args.seconds)
                    rows.append((label, target, attack, n, ok))
                    print(f"{label:>22} {target:>6} {attack:>9}: {ok}/{n} = {ok / n:.1%}")
    lines = [
        "# Valid traffic under hostile traffic (bench/hostile/run.py)",
        "",
        f"Canary: one valid request every {CANARY_INTERVAL_S * 1000:.0f} ms for "
        f"{args.seconds:g} s, SLO {SLO_MS:g} ms; within SLO = answered 200 within it. Worker: "
        "`serve --model builtin:demo-xs --slo-ms 100` (defaults otherwise); router: `route` in "
        "front of it. Flood: 4 connections of 16 MB JSON bodies back to back; slowloris: 600 "
        "connections that never finish their request head. One process each, fresh per row, "
        "on this 2-core machine, all rows in one run.",
        "",
        "| code | server | attack | canary requests | within SLO | attainment |",
        "|---|---|---|---:|---:|---:|",
    ]
    lines += [f"| {c} | {t} | {a} | {n} | {ok} | {ok / n:.1%} |" for c, t, a, n, ok in rows]
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
