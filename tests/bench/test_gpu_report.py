"""The GPU report reads a part's log with the benchmark's own rules (`bench/gpu/report.py`):
a repeat replaces its first try only when better, the sustainable rate is the highest that
passed, and the measurements at equal rate are kept apart from the search's."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.gpu.report import parse, part_section

LOG = """device cuda: NVIDIA H200
gru-seq, lengths lognormal, SLO 1000 ms
     100.0/s  cellular (ours, max batch 64): 1.0000, p99 178 ms
     100.0/s  request-level Triton (max batch 64, delay 50 ms): 1.0000, p99 340 ms
     150.0/s  cellular (ours, max batch 64): 0.9800, p99 inf ms [misses: {'dropped': 3}]
     150.0/s  cellular (ours, max batch 64) (repeat): 0.9950, p99 300 ms
     150.0/s  request-level Triton (max batch 64, delay 50 ms): 0.5000, p99 2494 ms [misses]
     150.0/s  request-level Triton (max batch 64, delay 50 ms) (repeat): 0.4000, p99 2600 ms
     225.0/s  cellular (ours, max batch 64): 0.9000, p99 inf ms
     225.0/s  cellular (ours, max batch 64) (repeat): 0.9100, p99 inf ms
     120.0/s  request-level Triton (max batch 64, delay 50 ms): 0.9950, p99 500 ms
  at equal rate, 120 req/s (the best baseline's), 5 s:
     120.0/s  cellular (ours, max batch 64): 1.0000, p99 250 ms
     120.0/s  request-level Triton (max batch 64, delay 50 ms): 0.6000, p99 1000 ms
     120.0/s  request-level Triton (max batch 64, delay 50 ms) (repeat): 0.7000, p99 900 ms
"""


def test_a_part_is_read_with_the_benchmarks_rules() -> None:
    part = parse(LOG)
    ours, triton = (
        "cellular (ours, max batch 64)",
        "request-level Triton (max batch 64, delay 50 ms)",
    )
    assert part.title.startswith("gru-seq")
    # the repeat at 150 passed: it counts; the one at 225 did not
    assert part.ladder[ours] == [
        (100.0, 1.0, 178.0),
        (150.0, 0.995, 300.0),
        (225.0, 0.91, float("inf")),
    ]
    # Triton's worse repeat at 150 does not replace its first try
    assert part.ladder[triton][1] == (150.0, 0.5, 2494.0)
    assert part.sustainable(ours) == 150.0
    assert part.sustainable(triton) == 120.0
    assert (part.ours, part.best_baseline) == (ours, triton)
    assert part.equal_rate == 120.0
    assert part.equal == {ours: (120.0, 1.0, 250.0), triton: (120.0, 0.7, 900.0)}
    text = "\n".join(part_section("gru-seq", part))
    assert "**1.25x**" in text  # 150 against 120
    assert "**3.6x** lower" in text  # 900 against 250 ms at equal rate
    assert "**2.0x** lower" in text  # against Triton's passing 500 ms at 120 in the search
