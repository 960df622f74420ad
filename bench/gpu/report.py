"""Render bench/results/cellular-gpu.md from the GPU runs of bench/gpu/check.sh.

Each run's folder (bench/results/gpu-h200/run-HHMM) holds what the lease sent back: the
benchmark's logs (cellular-seq.log, cellular-dec.log: every measurement as bench/cellular/run.py
logged it), the JSON where the part finished (a part cut by its time limit leaves its log only),
and check.log (the steps, the GPU, the CUDA tests, the profiles). The tables are read off the
logs with the benchmark's own rules (`robust`: a measurement below 99% is repeated at once and
the better of the two counts; `sustainable`: the highest rate that passed, where the log has
confirmation rounds the highest whose median round passed: `confirmation`), so that a part cut
short is reported like one that finished, from the measurements it made.

Usage: .venv/bin/python bench/gpu/report.py
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.cellular.run import TARGET, confirmation, median_round, standing, sustainable

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
RUNS = RESULTS / "gpu-h200"

LINE = re.compile(
    r"^\s+(?P<rate>[\d.]+)/s  (?P<label>.+?)(?P<repeat> \(repeat\))?: (?P<att>[\d.]+), "
    r"p99 (?P<p99>inf|nan|[\d.]+) ms"
)
EQUAL = re.compile(r"^\s+at equal rate, (?P<rate>[\d.]+) req/s")
CONFIRMING = re.compile(r"^\s+confirming each sustainable rate")
CONFIRM = re.compile(r"^(?P<label>.+) \(confirm \d+\)$")

Measurement = tuple[float, float, float]  # rate, attainment, p99 (ms)


@dataclass
class Part:
    """One benchmark part's measurements, as the noise rule counts them."""

    title: str = ""
    ladder: dict[str, list[Measurement]] = field(default_factory=dict)
    equal_rate: float | None = None
    equal_rounds: dict[str, list[Measurement]] = field(default_factory=dict)
    """Per configuration, every round at equal rate (the benchmark's `EQUAL_ROUNDS`)."""
    confirms: dict[str, dict[float, list[Measurement]]] = field(default_factory=dict)
    """Per configuration and rate, the rounds that confirmed a sustainable rate (runs from
    2026-12-06 18:30 UTC on; before, a rate was the highest single pass)."""

    @property
    def equal(self) -> dict[str, Measurement]:
        """At equal rate: the median round per configuration, ranked best first (higher
        attainment, then lower p99), as the benchmark counts it (`median_round`)."""
        return {
            label: median_round(rounds, lambda m: (m[1], m[2]))
            for label, rounds in self.equal_rounds.items()
        }

    def sustainable(self, label: str) -> float:
        if label in self.confirms:
            return confirmation(self.ladder[label], self.confirms[label])[0]
        return sustainable(self.ladder[label])

    @property
    def ours(self) -> str:
        return max((k for k in self.ladder if k.startswith("cellular")), key=self.sustainable)

    @property
    def best_baseline(self) -> str:
        return max((k for k in self.ladder if not k.startswith("cellular")), key=self.sustainable)


def parse(text: str) -> Part:
    """A part's log: every measurement, a repeat replacing its first try when better (higher
    attainment, then lower p99), the ladder's, the confirmations' (per rate) and the
    equal-rate measurements apart (the latter per round)."""
    part = Part()
    equal = confirming = False
    for line in text.splitlines():
        if line.startswith(("gru-seq", "decoder-tiny")):
            part.title = line
        if m := EQUAL.match(line):
            part.equal_rate, equal = float(m["rate"]), True
            continue
        if CONFIRMING.match(line):
            confirming = True
            continue
        m = LINE.match(line)
        if m is None:
            continue
        run = (float(m["rate"]), float(m["att"]), float(m["p99"]))
        label = m["label"]
        if confirming and not equal and (c := CONFIRM.match(label)):
            part.confirms.setdefault(c["label"], {}).setdefault(run[0], []).append(run)
            continue
        if equal:
            rounds = part.equal_rounds.setdefault(label, [])
            if m["repeat"] is None or not rounds:
                rounds.append(run)  # a round (a repeat belongs to the round before it)
            elif _better(run, rounds[-1]):
                rounds[-1] = run
            continue
        runs = part.ladder.setdefault(label, [])
        if m["repeat"] is not None and runs and runs[-1][0] == run[0]:
            if _better(run, runs[-1]):
                runs[-1] = run
        else:
            runs.append(run)
    return part


def _better(a: Measurement, b: Measurement) -> bool:
    return standing(a[1], a[2]) > standing(b[1], b[2])


def ms(x: float) -> str:
    return "inf (misses)" if math.isinf(x) else f"{x:.0f}"


def part_section(name: str, part: Part) -> list[str]:
    ours, best = part.ours, part.best_baseline
    rate_ours, rate_best = part.sustainable(ours), part.sustainable(best)
    lines = [
        f"#### {name}: {part.title}",
        "",
        "| configuration | sustainable rate (req/s) | measurements (rate: attainment) |",
        "|---|---:|---|",
    ]
    for label, runs in part.ladder.items():
        seen = ", ".join(f"{r:g}: {100 * a:.1f}%" for r, a, _ in runs)
        lines.append(f"| {label} | {part.sustainable(label):g} | {seen} |")
    lines.append("")
    ratio = rate_ours / rate_best if rate_best else math.inf
    lines.append(
        f"Sustainable rate: {ours} {rate_ours:g} req/s against the best request-level "
        f"baseline, {best}, {rate_best:g} req/s: **{ratio:.2f}x** (goal >= 1.5x)."
    )
    lines.append("")
    if part.equal_rate is not None:
        lines += [
            f"At equal rate, {part.equal_rate:g} req/s (the best baseline's sustainable rate):",
            "",
            "| configuration | attainment | p99 (ms) |",
            "|---|---:|---:|",
        ]
        for label, (_, att, p99) in part.equal.items():
            lines.append(f"| {label} | {100 * att:.2f}% | {ms(p99)} |")
        lines.append("")
        if ours in part.equal and best in part.equal:
            p_ours, p_best = part.equal[ours][2], part.equal[best][2]
            # the baseline's passing measurement at the same rate, in the search
            passing = [p for r, a, p in part.ladder[best] if r == part.equal_rate and a >= TARGET]
            text = f"p99 at equal rate: {ms(p_ours)} against {ms(p_best)} ms"
            if not math.isinf(p_best):
                text += f" (**{p_best / p_ours:.1f}x** lower; goal >= 2x)"
            else:
                text += " (the baseline missed more than 1% there)"
            if passing:
                text += (
                    f"; against the baseline's passing measurement at the same rate in the "
                    f"search, {ms(passing[-1])} ms: **{passing[-1] / p_ours:.1f}x** lower"
                )
            lines += [text + ".", ""]
    else:
        lines += ["(The part's time limit ended it before the measurements at equal rate.)", ""]
    return lines


PROFILE = re.compile(r"^#\s+step: (.*)$")


def section(check: str, name: str) -> list[str]:
    """The lines of one file's section of check.log (``### NAME`` to the next ``###``)."""
    block = check.split(f"### {name}\n", 1)[1].split("\n### ", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def step_profile(check: str, model_log: str) -> str:
    """The p50 step latency per batch size of one cell model, from check.log."""
    for line in section(check, model_log):
        if m := PROFILE.match(line):
            cells = [c.strip() for c in m[1].split(",")]
            return ", ".join(
                f"{c.split(':')[0]}: {c.split(':')[1].split('/')[0].strip()}" for c in cells
            )
    return "(not measured)"


RUN_NOTES = {
    "run-1640": (
        "16:40-16:47 UTC at 82ded21 (gru-seq stacking a hidden-state tensor per request). Search: "
        "3-s measurements, ladder x1.5 from 100 (gru-seq) and 50 (decoder-tiny) req/s, two "
        "bisection rounds, 6 s at equal rate; each part stopped at 195 s, before its JSON (both "
        "parts' tables come from their logs)."
    ),
    "run-1651": (
        "16:51-16:57 UTC at 8d64db6 (gru-seq's hidden states as rows of one pool on the GPU). "
        "Search: 2.5-s measurements, ladder x1.5 from 225 (gru-seq) and 75 (decoder-tiny) req/s, "
        "one bisection round, 5 s at equal rate; the gru-seq part finished (cellular-seq.json), "
        "decoder-tiny stopped at 160 s in the baseline's repeat at equal rate."
    ),
}


def main() -> None:
    out = [
        "# Cellular batching on a GPU (NVIDIA H200)",
        "",
        "Rendered by bench/gpu/report.py from what bench/gpu/check.sh sent back from a GPU lease "
        "(bench/results/gpu-h200/run-*: the benchmark's logs, the JSON where a part finished, "
        "check.log with the CUDA tests and the profiles). Issue 18's sequence goals, on the "
        "hardware a worker pod runs sequence models on; the CPU runs are in cellular.md.",
        "",
        "Same benchmark as cellular.md (bench/cellular/run.py --device cuda): one worker process "
        "per configuration (real HTTP, KServe v2 binary tensors), every one on the GPU, the same "
        "open-loop Poisson load from one client process, the same search for all (a ladder of "
        "rates interleaved across configurations, bisection, the noise rule: a measurement below "
        "99% is repeated and the better counts), then every configuration at the best "
        "baseline's sustainable rate. Configurations: cellular, our SloBatcher and Triton's "
        "dynamic batcher (max queue delay 50 ms), all at max batch 64 (the CPU bench's best "
        "settings). The lease was 15 minutes of GPU time in all, so the search is coarser than "
        "the CPU's (x1.5 rungs, one or two bisection rounds, 2.5-3 s per measurement): a "
        "sustainable rate is known to within a rung or half a rung.",
        "",
    ]
    for run in sorted(RUNS.iterdir()):
        check = (run / "check.log").read_text()
        gpu = section(check, "gpu.txt")[1]
        torch_line = section(check, "preflight.log")[0]
        tests = section(check, "tests.log")[-1]
        out += [
            f"## {run.name}",
            "",
            RUN_NOTES.get(run.name, ""),
            "",
            f"- GPU: {gpu}; torch, CUDA, device: {torch_line}",
            f"- CUDA tests (the models' execution against each request alone, the workers on the "
            f"GPU; `-k cuda`): {tests}",
            f"- gru-seq step p50 (ms) per batch size: {step_profile(check, 'profile-gru.log')}",
            f"- decoder-tiny step p50 (ms) per batch size: "
            f"{step_profile(check, 'profile-decoder.log')}",
            "",
        ]
        for name, log in (("gru-seq", "cellular-seq.log"), ("decoder-tiny", "cellular-dec.log")):
            if (run / log).exists():
                out += part_section(name, parse((run / log).read_text()))
    (RESULTS / "cellular-gpu.md").write_text("\n".join(out))


if __name__ == "__main__":
    main()
