"""`accordion profile`: measure a model's execution latency per batch size.

The output is the ``profiles`` block of an InferenceService variant (batch size -> p50/p90/p99
in ms), which is what the planner and the worker's batcher start from. Measurement runs the same
`ModelRunner` the worker runs (same thread setting, same device path), after a warm-up of every
batch size.
"""

from __future__ import annotations

from collections.abc import Callable
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
