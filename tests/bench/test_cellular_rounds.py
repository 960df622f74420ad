"""The cellular benchmark's measurement at equal rate: several interleaved rounds, the median
round counting (`bench/cellular/run.py`'s `median_round`), as its report and the GPU log
reader show it. One stall of the shared machine must move one round, not the figure."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.cellular.report import sequence_section
from bench.cellular.run import Report, median_round
from bench.gpu.report import parse

INF = float("inf")


def _report(ok: int, p99_s: float) -> Report:
    """100 requests, `ok` of them in time; the tail at `p99_s`."""
    latencies = [0.1] * 98 + [p99_s] * 2
    return Report(sent=100, ok=ok, latencies_s=latencies)


def test_the_median_round_counts_not_the_best_or_a_stalled_one() -> None:
    steady, stalled, lucky = _report(100, 0.3), _report(95, INF), _report(100, 0.2)
    assert steady.p99_ms() == 300.0
    assert lucky.p99_ms() == 200.0
    assert median_round([stalled, steady, lucky], Report.score) is steady
    assert median_round([lucky, stalled, steady], Report.score) is steady
    # One round: that round.
    assert median_round([stalled], Report.score) is stalled


LOG = """gru-seq, lengths lognormal, SLO 1000 ms
     100.0/s  cellular (ours, max batch 64): 1.0000, p99 178 ms
     100.0/s  request-level Triton (max batch 64, delay 50 ms): 1.0000, p99 340 ms
  at equal rate, 100 req/s (the best baseline's), 3 rounds of 10 s:
     100.0/s  cellular (ours, max batch 64): 1.0000, p99 250 ms
     100.0/s  request-level Triton (max batch 64, delay 50 ms): 1.0000, p99 700 ms
     100.0/s  cellular (ours, max batch 64): 0.9000, p99 inf ms
     100.0/s  cellular (ours, max batch 64) (repeat): 0.9500, p99 inf ms
     100.0/s  request-level Triton (max batch 64, delay 50 ms): 1.0000, p99 600 ms
     100.0/s  cellular (ours, max batch 64): 1.0000, p99 200 ms
     100.0/s  request-level Triton (max batch 64, delay 50 ms): 1.0000, p99 900 ms
"""


def test_the_gpu_log_reader_keeps_rounds_and_counts_the_median() -> None:
    part = parse(LOG)
    ours, triton = (
        "cellular (ours, max batch 64)",
        "request-level Triton (max batch 64, delay 50 ms)",
    )
    # The repeat belongs to round 2 (better than its first try); it starts no round.
    assert part.equal_rounds[ours] == [
        (100.0, 1.0, 250.0),
        (100.0, 0.95, INF),
        (100.0, 1.0, 200.0),
    ]
    assert part.equal == {ours: (100.0, 1.0, 250.0), triton: (100.0, 1.0, 700.0)}


def _seq(rounds: list[tuple[float, float]]) -> dict[str, object]:
    base = "request-level Triton (max batch 64, delay 50 ms)"
    ours = "cellular (ours, max batch 64)"
    return {
        "best_baseline": base,
        "ours": ours,
        "equal_rate": 100.0,
        "equal_rate_s": 10.0,
        "equal_rate_rounds": len(rounds),
        "mean_length": 50.0,
        "configs": {
            ours: {
                "rate": 200.0,
                "runs": [(100.0, 1.0, 250.0)],
                "equal_rate_attainment": 1.0,
                "equal_rate_p99_ms": 250.0,
                "equal_rate_rounds": rounds,
            },
            base: {
                "rate": 100.0,
                "runs": [(100.0, 1.0, 700.0)],
                "equal_rate_attainment": 1.0,
                "equal_rate_p99_ms": 700.0,
                "equal_rate_rounds": [(1.0, 700.0)] * len(rounds),
            },
        },
    }


def test_the_report_says_how_the_figure_at_equal_rate_was_taken() -> None:
    text = "\n".join(sequence_section("sequences", _seq([(1.0, 250.0), (0.95, INF), (1.0, 200.0)])))
    assert "the median of 3 interleaved rounds of 10 s" in text
    assert "| cellular (ours, max batch 64) | 100.00% / 250 | 95.00% / inf (misses) | " in text
    assert "**2.80x** lower" in text  # 700 against 250 ms
    # A run of one round (the JSON before rounds) reads as it did.
    text = "\n".join(sequence_section("sequences", _seq([(1.0, 250.0)])))
    assert "a separate 10 s measurement of every configuration" in text
    assert "round 1" not in text


def test_a_run_never_overwrites_a_log_already_there(tmp_path: Path) -> None:
    """The first run of a part writes cellular-PART.log; the next, with that log quoted by a
    report, writes beside it with its UTC start in the name."""
    import time

    from bench.cellular.run import log_file

    at = time.strptime("2026-12-06 11:05", "%Y-%m-%d %H:%M")
    first = log_file(tmp_path, "seq,dec", at)
    assert first == tmp_path / "cellular-seq-dec.log"
    first.write_text("the run a report quotes\n")
    assert log_file(tmp_path, "seq,dec", at) == tmp_path / "cellular-seq-dec-1206-1105.log"
    assert log_file(tmp_path, "all", at) == tmp_path / "cellular.log"
