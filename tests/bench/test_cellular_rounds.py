"""The cellular benchmark's measurement at equal rate: several interleaved rounds, the median
round counting (`bench/cellular/run.py`'s `median_round`), as its report and the GPU log
reader show it. One stall of the shared machine must move one round, not the figure."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.cellular.report import sequence_section
from bench.cellular.run import CONFIRM_ROUNDS, Report, confirmation, median_round
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


def test_a_sustainable_rate_holds_in_the_median_of_its_confirmation_rounds() -> None:
    """A single pass at a knife edge is no rate: the highest pass is measured again, and gives
    way to the next highest pass when its median round misses."""
    assert CONFIRM_ROUNDS == 3
    runs = [(100.0, 1.0, 200.0), (125.0, 0.995, 400.0), (150.0, 0.9, INF), (137.0, 0.991, 600.0)]
    assert confirmation(runs, {}) == (0.0, 137.0)
    once = {137.0: [(137.0, 0.995, 500.0)]}
    assert confirmation(runs, once) == (0.0, 137.0)  # rounds still to come
    # Passed once in the search, then 99.5%, 58%, 41%: the median misses.
    knife = {137.0: [(137.0, 0.995, 500.0), (137.0, 0.58, INF), (137.0, 0.41, INF)]}
    assert confirmation(runs, knife) == (0.0, 125.0)
    # One stalled round of three does not move it.
    held = knife | {125.0: [(125.0, 0.7, INF), (125.0, 0.999, 300.0), (125.0, 0.993, 380.0)]}
    assert confirmation(runs, held) == (125.0, None)
    failed = knife | {125.0: [(125.0, 0.9, INF)] * 3, 100.0: [(100.0, 0.95, INF)] * 3}
    assert confirmation(runs, failed) == (0.0, None)
    assert confirmation([(150.0, 0.9, INF)], {}) == (0.0, None)


CONFIRM_LOG = """gru-seq, lengths lognormal, SLO 1000 ms
     100.0/s  cellular (ours, max batch 64): 1.0000, p99 178 ms
     100.0/s  request-level Triton (max batch 64, delay 50 ms): 1.0000, p99 340 ms
     125.0/s  cellular (ours, max batch 64): 0.9950, p99 400 ms
     125.0/s  request-level Triton (max batch 64, delay 50 ms): 0.9910, p99 900 ms
     156.2/s  cellular (ours, max batch 64): 0.9000, p99 inf ms
     156.2/s  cellular (ours, max batch 64) (repeat): 0.9100, p99 inf ms
     156.2/s  request-level Triton (max batch 64, delay 50 ms): 0.5000, p99 inf ms
     156.2/s  request-level Triton (max batch 64, delay 50 ms) (repeat): 0.5000, p99 inf ms
  confirming each sustainable rate, 3 rounds of 6 s (the median round counts):
     125.0/s  cellular (ours, max batch 64) (confirm 1): 0.9990, p99 380 ms
     125.0/s  request-level Triton (max batch 64, delay 50 ms) (confirm 1): 0.5800, p99 inf ms
     125.0/s  cellular (ours, max batch 64) (confirm 2): 0.9960, p99 390 ms
     125.0/s  request-level Triton (max batch 64, delay 50 ms) (confirm 2): 0.4100, p99 inf ms
     125.0/s  cellular (ours, max batch 64) (confirm 3): 0.9970, p99 395 ms
     125.0/s  request-level Triton (max batch 64, delay 50 ms) (confirm 3): 0.9920, p99 950 ms
     100.0/s  request-level Triton (max batch 64, delay 50 ms) (confirm 1): 1.0000, p99 350 ms
     100.0/s  request-level Triton (max batch 64, delay 50 ms) (confirm 2): 1.0000, p99 360 ms
     100.0/s  request-level Triton (max batch 64, delay 50 ms) (confirm 3): 0.9990, p99 370 ms
  at equal rate, 100 req/s (the best baseline's), 3 rounds of 10 s:
     100.0/s  cellular (ours, max batch 64): 1.0000, p99 250 ms
     100.0/s  request-level Triton (max batch 64, delay 50 ms): 1.0000, p99 700 ms
"""


def test_the_gpu_log_reader_counts_confirmed_rates() -> None:
    part = parse(CONFIRM_LOG)
    ours, triton = (
        "cellular (ours, max batch 64)",
        "request-level Triton (max batch 64, delay 50 ms)",
    )
    assert set(part.ladder) == {ours, triton}  # confirmations are no configurations of their own
    assert [r for r, _, _ in part.ladder[triton]] == [100.0, 125.0, 156.2]
    assert len(part.confirms[triton][125.0]) == 3
    assert part.sustainable(ours) == 125.0
    assert part.sustainable(triton) == 100.0  # 125 passed once in the ladder, not in its rounds
    assert part.equal_rounds[triton] == [(100.0, 1.0, 700.0)]
    # A log from before the confirmations: the highest pass.
    assert parse(LOG).sustainable(triton) == 100.0


def test_the_report_gives_the_confirmed_rate_and_the_search_s_own() -> None:
    seq = _seq([(1.0, 250.0)])
    seq["confirm_rounds"] = 3
    configs = seq["configs"]
    assert isinstance(configs, dict)
    configs["request-level Triton (max batch 64, delay 50 ms)"]["search_rate"] = 125.0
    text = "\n".join(sequence_section("sequences", seq))
    assert "measured 3 more times (6 s each)" in text  # runs before the rounds' own length
    seq["confirm_s"] = 10.0
    text = "\n".join(sequence_section("sequences", seq))
    assert "measured 3 more times (10 s each)" in text
    assert "| request-level Triton (max batch 64, delay 50 ms) | 100 (125) |" in text
    assert "| cellular (ours, max batch 64) | 200 |" in text
    assert "**2.00x** its sustainable rate" in text
    text = "\n".join(sequence_section("sequences", _seq([(1.0, 250.0)])))
    assert "the highest single pass of the search" in text
