"""A 2-stage pipeline across two real worker processes against the whole model in one.

Starts three `accordion-worker serve` processes on loopback (1 torch thread each, as in a
pod): the whole ``builtin:resnet-like`` (3x224x224), its stage 1 (stem..layer2, which hands a
128x28x28 float32 tensor, 401 KB per request, to stage 2 over v2 REST binary tensors with the
deadline header) and its stage 2 (layer3..head). Sends the same images one at a time (closed
loop, v2 binary request), alternating whole and pipeline, and reports both latencies, the
added latency of the pipeline and whether every answer equals the whole model's (allclose).
Appends its table to ``bench/results/pipelines.md`` (run after `run.py`).

    flock /tmp/accordion-heavy.lock .venv/bin/python bench/pipelines/dataplane.py [--requests 60]
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from accordion.workers.config import BINARY_HEADER, DEADLINE_HEADER
from accordion.workers.protocol import InferRequest, binary_request, decode_rest_response

RESULTS = Path(__file__).resolve().parents[1] / "results"
MODEL = "builtin:resnet-like"
CUT = ("layer2", "layer3")


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(config: dict[str, Any]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "accordion.workers", "serve", "--config-json", json.dumps(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _wait_ready(port: int, timeout_s: float = 180.0) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"worker on {port} not ready after {timeout_s} s")


def _infer(port: int, model: str, x: np.ndarray[Any, Any]) -> tuple[np.ndarray[Any, Any], float]:
    body, length = binary_request(InferRequest({"input": x}))
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v2/models/{model}/infer",
        data=body,
        headers={
            BINARY_HEADER: str(length),
            DEADLINE_HEADER: "5000",
            "Content-Type": "application/octet-stream",
        },
    )
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=30) as resp:
        payload = resp.read()
        header = resp.headers.get(BINARY_HEADER)
    elapsed = time.perf_counter() - started
    return decode_rest_response(payload, header).outputs["output"], elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--out", type=Path, default=RESULTS / "pipelines.md")
    args = parser.parse_args()
    whole_port, first_port, second_port = _port(), _port(), _port()
    common = {"model": MODEL, "slo_ms": 5000.0, "batching": {"max_batch_size": 1}}
    procs = [
        _serve({**common, "model_name": "whole", "port": whole_port}),
        _serve(
            {
                **common,
                "model_name": "stage2",
                "port": second_port,
                "pipeline": {"first": CUT[1], "last": "head"},
            }
        ),
        _serve(
            {
                **common,
                "model_name": "stage1",
                "port": first_port,
                "pipeline": {
                    "first": "stem",
                    "last": CUT[0],
                    "next_url": f"http://127.0.0.1:{second_port}/v2/models/stage2/infer",
                },
            }
        ),
    ]
    try:
        for port in (whole_port, first_port, second_port):
            _wait_ready(port)
        rng = np.random.default_rng(0)
        whole_s: list[float] = []
        piped_s: list[float] = []
        worst = 0.0
        for i in range(args.requests + 3):
            x = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
            a, ta = _infer(whole_port, "whole", x)
            b, tb = _infer(first_port, "stage1", x)
            if not np.allclose(a, b, rtol=1e-4, atol=1e-4):
                raise SystemExit(f"request {i}: the pipeline's answer differs from the whole model")
            worst = max(worst, float(np.max(np.abs(a - b))))
            if i >= 3:  # the first few warm the connections and caches
                whole_s.append(ta)
                piped_s.append(tb)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
    text = report(whole_s, piped_s, worst, args.requests)
    with args.out.open("a") as fh:
        fh.write(text)
    print(text)


def report(whole_s: list[float], piped_s: list[float], worst: float, n: int) -> str:
    def pct(values: list[float], q: float) -> float:
        return float(np.percentile(np.asarray(values) * 1000.0, q))

    added = [p - w for p, w in zip(piped_s, whole_s, strict=True)]
    lines = [
        "",
        "## Data plane: two real worker processes",
        "",
        f"`bench/pipelines/dataplane.py`: `{MODEL}` (3x224x224) whole in one worker process, and "
        f"cut after `{CUT[0]}` into two worker processes (stage 1 stem..{CUT[0]} hands a "
        "128x28x28 float32 tensor, 401,408 bytes a request, to stage 2 over v2 REST binary "
        "tensors with the deadline header); 1 torch thread each, loopback, batch cap 1; "
        f"{n} images one at a time, whole and pipeline alternating (v2 binary requests).",
        "",
        "| | p50 ms | p90 ms | max ms |",
        "|---|---|---|---|",
        f"| whole model, one worker | {pct(whole_s, 50):.1f} | {pct(whole_s, 90):.1f} | "
        f"{max(whole_s) * 1000:.1f} |",
        f"| pipeline, two workers | {pct(piped_s, 50):.1f} | {pct(piped_s, 90):.1f} | "
        f"{max(piped_s) * 1000:.1f} |",
        f"| added by the pipeline (paired) | {pct(added, 50):.1f} | {pct(added, 90):.1f} | "
        f"{max(added) * 1000:.1f} |",
        "",
        f"Every answer equals the whole model's (allclose, rtol 1e-4, atol 1e-4; largest "
        f"difference {worst:.2e}).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
