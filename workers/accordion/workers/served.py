"""The execution profile as a worker serves: per batch size, its recent executions' percentiles.

Why: ``accordion profile`` times the model alone, back to back, in a process of its own. A
worker that serves runs the same batches with its HTTP path, its event loop and whatever else
shares the machine taking CPU beside them: on a 2-core machine demo-xl's batches ran 1.27-1.48x
its profile while a worker served (bench/results/serverless.md), and the batching model fed
the profile alone predicted the worker's p99 up to 29% low. The router's slowdown meter
(`batching.SlowdownMeter`) reads one scalar of that for the fast loop; a CPU model's kernels
change with the batch size (a batch of 4 faster than one of 3), so the correction here is
kept per batch size, as the batcher's own predictor keeps it (`batching.LatencyPredictor`), but
with the percentiles the model needs (p50, p90, p99) rather than one high quantile.

* `ServedProfile`: the worker's last `window` executions of each batch size (the device's time
  of each batch, `ModelRunner.run_sync`'s, as the execution metric has it); `points()` their
  percentiles for every size with at least `min_samples`.
* The worker publishes them on /metrics (`accordion_worker_served_latency_seconds{model,
  batch_size,quantile}` and `accordion_worker_served_batches{model,batch_size}`, the samples
  behind them); `parse_served` reads them back from the text.
* `held_profile`: a profile (batch size -> p50, p90, p99) corrected by what was served: the
  served percentiles where a size has enough samples, elsewhere the profile's scaled by the
  median served / profiled p50 of the sizes that do (a size a worker has not run yet is
  taken as slower in the same proportion). What a user pastes into the variant as its profile
  (``accordion-worker profile --served-from``) and what the batching model is validated with.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping

SERVED_QUANTILES = (0.5, 0.9, 0.99)
"""The percentiles published per batch size (the profile block's p50, p90, p99)."""
SERVED_METRIC = "accordion_worker_served_latency_seconds"
SERVED_COUNT_METRIC = "accordion_worker_served_batches"

Point = tuple[float, float, float]
"""(p50, p90, p99) of one batch size's execution, seconds."""


def _quantile(ordered: list[float], q: float) -> float:
    """Nearest-rank quantile of sorted values."""
    rank = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[rank]


class ServedProfile:
    """Per batch size, the last `window` executions a worker ran (module docstring)."""

    def __init__(self, *, window: int = 256, min_samples: int = 16) -> None:
        if window < 1 or min_samples < 1:
            raise ValueError("window and min_samples must be >= 1")
        self.window = window
        self.min_samples = min_samples
        self._samples: dict[int, deque[float]] = {}

    def observe(self, batch_size: int, latency_s: float) -> None:
        """One batch's execution time."""
        if batch_size < 1 or not math.isfinite(latency_s) or latency_s <= 0:
            return
        self._samples.setdefault(batch_size, deque(maxlen=self.window)).append(latency_s)

    def samples(self, batch_size: int) -> int:
        """Executions of `batch_size` in the window."""
        return len(self._samples.get(batch_size, ()))

    def point(self, batch_size: int) -> Point | None:
        """(p50, p90, p99) of `batch_size`'s executions in the window; None below
        `min_samples`."""
        window = self._samples.get(batch_size)
        if window is None or len(window) < self.min_samples:
            return None
        ordered = sorted(window)
        p50, p90, p99 = (_quantile(ordered, q) for q in SERVED_QUANTILES)
        return p50, p90, p99

    def points(self) -> dict[int, Point]:
        """Every batch size with at least `min_samples` executions: its (p50, p90, p99)."""
        out = {}
        for b in sorted(self._samples):
            point = self.point(b)
            if point is not None:
                out[b] = point
        return out


def parse_served(text: str, model: str | None = None) -> dict[int, tuple[int, Point]]:
    """A worker's served profile from its /metrics text: batch size -> (samples, (p50, p90,
    p99)), for sizes it publishes all three percentiles of (`model`: only that model's)."""
    from prometheus_client.parser import text_string_to_metric_families

    values: dict[int, dict[float, float]] = {}
    counts: dict[int, int] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in (SERVED_METRIC, SERVED_COUNT_METRIC):
            continue
        for sample in family.samples:
            if model is not None and sample.labels.get("model") != model:
                continue
            size = int(sample.labels["batch_size"])
            if family.name == SERVED_COUNT_METRIC:
                counts[size] = int(sample.value)
            else:
                values.setdefault(size, {})[float(sample.labels["quantile"])] = sample.value
    out = {}
    for size, by_q in sorted(values.items()):
        if all(q in by_q for q in SERVED_QUANTILES):
            p50, p90, p99 = (by_q[q] for q in SERVED_QUANTILES)
            out[size] = (counts.get(size, 0), (p50, p90, p99))
    return out


def held_profile(base: Mapping[int, Point], served: Mapping[int, Point]) -> dict[int, Point]:
    """`base` (batch size -> p50, p90, p99, as profiled) corrected by `served` (the sizes a
    worker has run enough of): those sizes as served, every other size of `base` scaled by
    the median of served / profiled p50 over the sizes both have (none: `base` unchanged for
    them). Sizes served but not profiled are kept as served."""
    ratios = sorted(served[b][0] / base[b][0] for b in served if b in base and base[b][0] > 0)
    scale = ratios[len(ratios) // 2] if ratios else 1.0
    out = {b: (p[0] * scale, p[1] * scale, p[2] * scale) for b, p in base.items()}
    out.update(served)
    return dict(sorted(out.items()))
