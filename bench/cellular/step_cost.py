"""Where the decoder's step time goes, by batch composition, at the bench's length distribution.

Two ways to run builtin:decoder-tiny on the same requests (`run.decoder_lengths`, the live
bench's draws), the model alone (no HTTP, one torch thread):

* cellular: `batch` requests always in flight, a finished one replaced at once by the next
  (steady state of per-step batching: members at every position of their requests);
* request-level: `batch` requests start together and run until the last one finishes (members
  share a position; the batch shrinks as they finish).

Per way: the median step (ms) and its parts from torch's profiler (self CPU time per operator
family: attention, linear layers, the KV cache's gather and write, everything else of torch;
the rest of the step's wall time is Python), the batch's padding (1 - sum of contexts /
(batch x longest context)), the positions the step's attention reads (its groups: slots x
longest context) against a padded batch's and against the contexts themselves, and the model
time per request (total step time / requests; the best of three passes, the machine being
shared).

Usage: .venv/bin/python bench/cellular/step_cost.py [--batch 64] [--requests 400]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.cellular.run import decoder_lengths

FAMILIES = {
    "attention": (
        "_scaled_dot_product_flash_attention_for_cpu",
        "scaled_dot_product_attention",
        "_safe_softmax",
        "softmax",
        "bmm",
        "baddbmm",
    ),
    "linear": ("addmm", "linear", "mm"),
    "gelu/layer norm": ("gelu", "native_layer_norm", "layer_norm"),
    "kv gather/write": ("index_select", "index_put", "index", "_index_put_impl_", "index_copy_"),
}


def bodies(n: int, seed: int = 9) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    prompts, outputs = decoder_lengths(rng, n)
    return [
        np.concatenate([rng.integers(1, 256, p), np.zeros(o, np.int64)])
        for p, o in zip(prompts, outputs, strict=True)
    ]


def family(name: str) -> str:
    op = name.removeprefix("aten::")
    for fam, ops in FAMILIES.items():
        if op in ops:
            return fam
    return "other torch"


def drive(
    model: Any, samples: Sequence[np.ndarray], batch: int, cellular: bool
) -> tuple[list[float], list[float], list[tuple[int, int, int]]]:
    """Run every sample; per step: wall seconds, and (batch, longest context, sum of contexts).
    Also the per-step parts (s) when profiled: returned via the profiler by the caller."""
    queue = list(samples)
    running: list[tuple[Any, int]] = []  # state, steps left
    times: list[float] = []
    shapes: list[tuple[int, int, int]] = []
    while queue or running:
        if cellular or not running:
            while queue and len(running) < batch:
                s = queue.pop(0)
                running.append((model.begin(s), model.steps(s)))
        states = [st for st, _ in running]
        ctx = [st.position + 1 for st in states]
        shapes.append((len(states), max(ctx), sum(ctx)))
        start = time.perf_counter()
        model.run(0, states)
        times.append(time.perf_counter() - start)
        running = [(st, left - 1) for st, left in running if left > 1]
    return times, [], shapes


def measure(
    model: Any, samples: Sequence[np.ndarray], batch: int, cellular: bool
) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile

    from accordion.workers import seqmodels

    drive(model, samples, batch, cellular)  # warm up (the pool grows to its size)
    attended: list[int] = []
    plan = seqmodels._attention_plan

    def counted(slots: list[int], contexts: list[int]) -> Any:
        out = plan(slots, contexts)
        attended.append(sum((hi - lo) * longest for lo, hi, _, longest, _ in out.groups))
        return out

    seqmodels._attention_plan = counted
    try:
        times, _, shapes = min(
            (drive(model, samples, batch, cellular) for _ in range(3)), key=lambda r: sum(r[0])
        )
    finally:
        seqmodels._attention_plan = plan
    attended = attended[-len(times) :]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        ptimes, _, _ = drive(model, samples, batch, cellular)
    parts: dict[str, float] = {}
    for ev in prof.key_averages():
        fam = family(ev.key)
        parts[fam] = parts.get(fam, 0.0) + ev.self_cpu_time_total / 1e6
    total_prof = sum(ptimes)
    torch_s = sum(parts.values())
    steps = len(times)
    pad = [1 - s / (b * c) for b, c, s in shapes]
    full = [i for i, (b, _, _) in enumerate(shapes) if b == batch]
    return {
        "steps": steps,
        "step_ms_p50": 1000 * statistics.median(times),
        "step_ms_p50_full_batch": 1000 * statistics.median(times[i] for i in full) if full else 0,
        "mean_batch": statistics.mean(b for b, _, _ in shapes),
        "mean_longest": statistics.mean(c for _, c, _ in shapes),
        "mean_context": sum(s for _, _, s in shapes) / sum(b for b, _, _ in shapes),
        "padding": statistics.mean(pad),
        "attended_over_padded": sum(attended) / sum(b * c for b, c, _ in shapes),
        "attended_over_contexts": sum(attended) / sum(s for _, _, s in shapes),
        "model_ms_per_request": 1000 * sum(times) / len(samples),
        "parts_share": {k: v / total_prof for k, v in sorted(parts.items())}
        | {"python": max(0.0, total_prof - torch_s) / total_prof},
    }


def main(argv: list[str] | None = None) -> None:
    import torch

    from accordion.workers.seqmodels import DecoderStaged

    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--requests", type=int, default=400)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model = DecoderStaged()
    samples = bodies(args.requests)
    report: Callable[[str], None] = print
    with torch.inference_mode():
        for batch in args.batch:
            for cellular in (True, False):
                r = measure(model, samples, batch, cellular)
                way = "cellular" if cellular else "request-level"
                parts = ", ".join(f"{k} {100 * v:.0f}%" for k, v in r["parts_share"].items())
                report(
                    f"batch {batch} {way}: {r['steps']} steps, step p50 {r['step_ms_p50']:.2f} ms "
                    f"(full batch {r['step_ms_p50_full_batch']:.2f}), mean batch "
                    f"{r['mean_batch']:.1f}, longest context {r['mean_longest']:.0f}, mean "
                    f"context {r['mean_context']:.0f}, padding {100 * r['padding']:.0f}%, "
                    f"attended {r['attended_over_padded']:.2f}x the padded batch's positions "
                    f"({r['attended_over_contexts']:.2f}x the contexts), model "
                    f"time per request {r['model_ms_per_request']:.2f} ms; parts (profiled): "
                    f"{parts}"
                )


if __name__ == "__main__":
    main()
