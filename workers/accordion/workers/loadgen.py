"""`accordion load`: an open-loop load generator for KServe v2 endpoints (worker or router).

Open loop: requests leave on a schedule (Poisson at a rate, a ramp between two rates, or the
offsets of a trace file) whatever the server does, as real users do; a closed loop would slow
down with the server and hide overload. Every request carries its deadline in
``x-accordion-deadline-ms``. The report gives SLO attainment (answered with 200 within the
SLO / sent), goodput (such answers per second) and latency percentiles.

Bounded by construction: at most `max_requests` requests and `max_duration_s` seconds, and only
loopback targets (this is a benchmarking tool, not a traffic cannon).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import aiohttp
import numpy as np

from accordion.workers.config import BINARY_HEADER, DEADLINE_HEADER

LOOPBACK_NAMES = {"localhost"}


def check_loopback(url: str) -> None:
    """Refuse any target that is not on this machine."""
    host = urlparse(url).hostname or ""
    if host in LOOPBACK_NAMES:
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise ValueError(f"load targets must be loopback addresses (127.0.0.1, ::1), not {host!r}")


def poisson_schedule(rate_qps: float, duration_s: float, seed: int = 0) -> list[float]:
    """Arrival offsets of a Poisson process at `rate_qps` over `duration_s`."""
    rng = random.Random(seed)
    t, out = 0.0, []
    while rate_qps > 0:
        t += rng.expovariate(rate_qps)
        if t >= duration_s:
            break
        out.append(t)
    return out


def ramp_schedule(
    start_qps: float, end_qps: float, duration_s: float, seed: int = 0
) -> list[float]:
    """A Poisson process whose rate moves linearly from `start_qps` to `end_qps` (thinning)."""
    rng = random.Random(seed)
    peak = max(start_qps, end_qps)
    t, out = 0.0, []
    while peak > 0:
        t += rng.expovariate(peak)
        if t >= duration_s:
            break
        rate = start_qps + (end_qps - start_qps) * t / duration_s
        if rng.random() * peak <= rate:
            out.append(t)
    return out


def trace_schedule(path: Path) -> list[float]:
    """Arrival offsets (seconds, one per line, '#' comments) from a trace file."""
    out = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(float(line))
    out.sort()
    return [t - out[0] for t in out] if out else []


@dataclass
class LoadReport:
    sent: int
    within_slo: int
    late: int
    failed: int
    duration_s: float
    latencies_s: list[float] = field(repr=False)
    statuses: dict[int, int] = field(default_factory=dict)
    sent_at_s: list[float] = field(default_factory=list, repr=False)
    """Each request's offset from the start when it actually left, in schedule order: on a
    busy machine the generator falls behind its schedule (most in bursts), and these are the
    arrivals the server saw (`lateness_ms`)."""
    scheduled_s: list[float] = field(default_factory=list, repr=False)
    """The schedule's offsets, in the same order."""
    errors: dict[str, int] = field(default_factory=dict)
    """Why requests failed: the ``error`` of a KServe v2 error body (its numbers as ``#``, so
    that one reason counts once), else the status or the client's exception, with counts."""

    def lateness_ms(self, q: float) -> float:
        """The `q`th percentile of how late requests left against their schedule."""
        if not self.sent_at_s:
            return math.nan
        late = np.asarray(self.sent_at_s) - np.asarray(self.scheduled_s)
        return float(np.percentile(late, q) * 1000.0)

    @property
    def attainment(self) -> float:
        return self.within_slo / self.sent if self.sent else 1.0

    @property
    def goodput_qps(self) -> float:
        return self.within_slo / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def offered_qps(self) -> float:
        return self.sent / self.duration_s if self.duration_s > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        if not self.latencies_s:
            return math.nan
        return float(np.percentile(np.asarray(self.latencies_s), q) * 1000.0)

    def summary(self) -> dict[str, float | int]:
        return {
            "sent": self.sent,
            "within_slo": self.within_slo,
            "late": self.late,
            "failed": self.failed,
            "attainment": round(self.attainment, 4),
            "offered_qps": round(self.offered_qps, 1),
            "goodput_qps": round(self.goodput_qps, 1),
            "p50_ms": round(self.percentile_ms(50), 2),
            "p90_ms": round(self.percentile_ms(90), 2),
            "p99_ms": round(self.percentile_ms(99), 2),
            "send_late_p99_ms": round(self.lateness_ms(99), 2),
        }


def error_reason(status: int, payload: bytes) -> str:
    """What a failed answer says of itself: a v2 error body's ``error`` with its numbers as
    ``#`` (a deadline's milliseconds left would make every shed request a reason of its own),
    else the status."""
    try:
        text = json.loads(payload).get("error")
    except (ValueError, AttributeError):
        text = None
    if not isinstance(text, str):
        return f"HTTP {status}"
    return f"{status}: " + re.sub(r"\d+(\.\d+)?", "#", text)[:200]


async def sample_request(session: aiohttp.ClientSession, base_url: str, model: str) -> bytes:
    """An infer body matching the model's metadata (one sample of constant values)."""
    async with session.get(f"{base_url}/v2/models/{model}") as resp:
        resp.raise_for_status()
        meta = await resp.json()
    if not meta.get("inputs"):  # a router publishes no tensor metadata of its own
        raise ValueError(f"{base_url} describes no inputs; pass the input shape explicitly")
    tensor = meta["inputs"][0]
    shape = list(tensor["shape"][1:])
    return build_body(tensor["name"], tensor["datatype"], shape)


def build_body(name: str, datatype: str, sample_shape: list[int]) -> bytes:
    size = math.prod(sample_shape)
    value: float | int = 0 if datatype.startswith("INT") else 0.5
    body = {
        "inputs": [
            {
                "name": name,
                "shape": [1, *sample_shape],
                "datatype": datatype,
                "data": [value] * size,
            }
        ]
    }
    return json.dumps(body).encode()


def build_binary_body(name: str, datatype: str, sample_shape: list[int]) -> tuple[bytes, int]:
    """The same request in KServe v2's binary tensor extension, asking for binary output too:
    (body, JSON header length for the ``Inference-Header-Content-Length`` header). The server
    then parses a JSON header of ~150 bytes instead of thousands of numbers."""
    size = math.prod(sample_shape)
    value: float | int = 0 if datatype.startswith("INT") else 0.5
    dtype = {"FP32": "<f4", "FP16": "<f2", "FP64": "<f8", "INT64": "<i8", "INT32": "<i4"}
    data = np.full(size, value, dtype=dtype[datatype]).tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "shape": [1, *sample_shape],
                    "datatype": datatype,
                    "parameters": {"binary_data_size": len(data)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return header + data, len(header)


async def run_load(
    base_url: str,
    model: str,
    schedule_s: list[float],
    *,
    slo_ms: float,
    body: bytes | None = None,
    binary_header_length: int | None = None,
    max_requests: int = 100_000,
    max_duration_s: float = 600.0,
) -> LoadReport:
    """Send one request per schedule offset (open loop) and measure what comes back.

    `body` is sent as is (pre-encoded once); with `binary_header_length` it is a binary-extension
    body (`build_binary_body`). Connections are kept alive and reused; responses are read, not
    parsed."""
    check_loopback(base_url)
    base_url = base_url.rstrip("/")
    schedule = [t for t in schedule_s if t <= max_duration_s][:max_requests]
    slo_s = slo_ms / 1000.0
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors: dict[str, int] = {}
    counts = {"ok": 0, "late": 0, "failed": 0}
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=max(10.0, 20 * slo_s))
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        payload = body if body is not None else await sample_request(session, base_url, model)
        url = f"{base_url}/v2/models/{model}/infer"
        headers = {DEADLINE_HEADER: f"{slo_ms:g}", "Content-Type": "application/json"}
        if binary_header_length is not None:
            headers["Content-Type"] = "application/octet-stream"
            headers[BINARY_HEADER] = str(binary_header_length)
        loop = asyncio.get_running_loop()

        sent_at = [math.nan] * len(schedule)

        async def one(index: int) -> None:
            start = loop.time()
            sent_at[index] = start - begin
            answer, reason = b"", ""
            try:
                async with session.post(url, data=payload, headers=headers) as resp:
                    answer = await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                status = 0
                reason = type(exc).__name__
            elapsed = loop.time() - start
            statuses[status] = statuses.get(status, 0) + 1
            if status == 200:
                latencies.append(elapsed)
                counts["ok" if elapsed <= slo_s else "late"] += 1
            else:
                counts["failed"] += 1
                if status:
                    reason = error_reason(status, answer)
                errors[reason] = errors.get(reason, 0) + 1

        tasks: list[asyncio.Task[None]] = []
        begin = loop.time()
        for index, offset in enumerate(schedule):
            delay = begin + offset - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(index)))
        duration = max(schedule[-1] if schedule else 0.0, loop.time() - begin)
        if tasks:
            await asyncio.gather(*tasks)
    return LoadReport(
        sent=len(schedule),
        within_slo=counts["ok"],
        late=counts["late"],
        failed=counts["failed"],
        duration_s=duration,
        latencies_s=latencies,
        statuses=statuses,
        errors=errors,
        sent_at_s=sent_at,
        scheduled_s=schedule,
    )
