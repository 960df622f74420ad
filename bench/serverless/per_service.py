"""Where the device-seconds of sparse_trace.py go: per service, for ours, the fixed margin
(0.9, the default) and the KPA (70%, Knative's default): device-seconds (replicas pending,
loading, serving or draining, sampled every second) and attainment; and the burstiness ours
published. Prints one line per policy.

    flock /tmp/accordion-heavy.lock .venv/bin/python bench/serverless/per_service.py
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from accordion.sim.engine import SimConfig, Simulator
from accordion.sim.knative import Knative
from bench.serverless import sparse_trace as trace


def main() -> None:
    policies: list[Any] = [
        trace.Serverless(batching_model=True, utilization=None, name="ours"),
        trace.Serverless(batching_model=False, utilization=0.9, name="margin-0.9"),
        Knative(target_utilization=0.7, name="knative-0.7"),
    ]
    for policy in policies:
        sim = Simulator(
            trace.cluster(), trace.workload(), policy, SimConfig(service_time="dist", seed=1)
        )
        per: dict[str, float] = defaultdict(float)

        def tick(sim: Simulator = sim, per: dict[str, float] = per) -> None:
            for r in sim.replicas:
                if r.state in ("pending", "loading", "active", "retiring"):
                    per[sim.families[r.service].name] += 1.0
            if sim.now_s < trace.DURATION_S:
                sim.call_at(sim.now_s + 1.0, tick)

        sim.call_at(0.5, tick)
        result = sim.run()
        attained = {k: round(ok / max(1, d), 4) for k, (d, ok, _) in result.families.items()}
        book = getattr(sim.control, "bursty", None)
        published = {
            k: (round(b.dispersion, 2), round(b.rate_cv2, 3))
            for k, b in (book.published.items() if book is not None else [])
        }
        print(policy.name, dict(per), attained, published, flush=True)


if __name__ == "__main__":
    main()
