"""Render bench/results/serverless.md from the runs' JSON (worker_model.py, sparse_trace.py).

Equal SLO attainment: every policy's own knob was swept (sparse_trace.py). A policy's cost at
an attainment is the cheapest its sweep gets there: the Pareto frontier of its points (no other
point both cheaper and at least as attained), interpolated linearly in attainment between two
frontier points; beyond its best attainment it has none ("never reaches"). Policies are
compared at ours' default point, and at every attainment both reach (a grid over the overlap).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parents[1] / "results"
BASELINES = ("pre17", "margin", "knative")
"""The baselines of the sparse trace (`sparse_trace.py`): pre17, the product's fixed-margin
planning before issue 17 (the goal's baseline); margin, the fixed margin with ours' serverless
rules (the stronger one, context); knative, the KPA."""
LEGEND = (
    "pre17: the product's fixed-margin planning before issue 17 (no replica floor, no idle "
    "period, no activator: the goal's \"today's fixed-margin planning\"); margin: the fixed "
    "margin with every serverless rule ours has (scale to zero, idle period, activator; only "
    "the capacity model differs); knative: the KPA."
)


def frontier(rows: list[dict[str, Any]]) -> list[tuple[float, float, str]]:
    """(attainment, device-seconds, policy) of the points no other point beats on both, by
    attainment (device-seconds rise along it)."""
    pts = sorted(
        ((r["attainment"], r["device_seconds"], r["policy"]) for r in rows),
        key=lambda p: (-p[0], p[1]),
    )
    out: list[tuple[float, float, str]] = []
    for a, d, p in pts:  # from the most attained down: keep each point cheaper than all above
        if not out or d < out[-1][1]:
            out.append((a, d, p))
    return out[::-1]


def at_attainment(rows: list[dict[str, Any]], target: float) -> tuple[float | None, str]:
    """The cheapest device-seconds of a swept policy at `target` attainment (None: its sweep
    never reaches it), and how it was found."""
    pts = frontier(rows)
    if target > pts[-1][0]:
        a, d, p = pts[-1]
        return None, f"NEVER reaches it (best {p}: {a:.4%} at {d:.0f})"
    if target <= pts[0][0]:
        return pts[0][1], f"{pts[0][2]} (its cheapest point is above it)"
    for (a0, d0, p0), (a1, d1, p1) in itertools.pairwise(pts):
        if a0 <= target <= a1:
            w = (target - a0) / (a1 - a0) if a1 > a0 else 1.0
            return d0 + w * (d1 - d0), f"between {p0} and {p1}"
    raise AssertionError("unreachable")


def _ms(value: float | None) -> str:
    return "inf" if value is None else f"{value:.1f}"


def _vs(value: float | None, against: float | None) -> str:
    return "-" if value is None or against is None else f"{value / against - 1:+.1%}"


def _meter_cv2(row: dict[str, Any]) -> float:
    """The cv2 the router's meter read from a row's arrivals (before 2026-12-06 the model was
    given it as it was; since, bursty rows give the model the rate's, `variance_share`)."""
    return float(row.get("meter_cv2", row["cv2"]))


def held_model_table(data: dict[str, Any]) -> list[str]:
    """The model at the profile the product held before the rows (`served.held_profile`),
    and the split of its error (`worker_model.py`'s docstring)."""
    out = [
        "| arrivals | rate (req/s) | dispersion | cv2: meter / model | worker p99 (ms) "
        "| model p99 at the held profile (ms) | vs worker | simulator p99, same inputs (ms) "
        "| model vs simulator | quasi-static model (ms) | vs worker "
        "| model at the profile alone (ms) | vs worker |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in data["rows"]:
        worker = r["measured_p99_ms"]
        out.append(
            f"| {r['arrivals']} | {r['rate_qps']:.0f} | {r['dispersion']:.2f} "
            f"| {_meter_cv2(r):.3f} / {r['cv2']:.3f} "
            f"| {worker:.1f} | {_ms(r['predicted_p99_ms'])} "
            f"| {_vs(r['predicted_p99_ms'], worker)} | {r['simulated_p99_ms']:.1f} "
            f"| {_vs(r['predicted_p99_ms'], r['simulated_p99_ms'])} "
            f"| {_ms(r['quasi_static_p99_ms'])} | {_vs(r['quasi_static_p99_ms'], worker)} "
            f"| {_ms(r['profile_model_p99_ms'])} | {_vs(r['profile_model_p99_ms'], worker)} |"
        )
    out += [
        "",
        "The error split at each row's own executions (the worker's served profile read after "
        "the row, the overhead split against it): the model against the replay at the same "
        "inputs is the queueing model's; the replay against the worker is what the service "
        "times do not explain (the path, the executions' order and tail):",
        "",
        "| arrivals | rate (req/s) | worker p99 (ms) | replay at the row's executions (ms) "
        "| replay vs worker | model at them (ms) | model vs replay | model vs worker "
        "| the row's p50 per batch size (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in data["rows"]:
        worker = r["measured_p99_ms"]
        served = set(r["own_served_sizes"])
        sizes = ", ".join(
            f"{b}: {p50:.1f}" + ("" if b in served else "*") for b, p50, _ in r["own_profile_ms"]
        )
        out.append(
            f"| {r['arrivals']} | {r['rate_qps']:.0f} | {worker:.1f} "
            f"| {_ms(r['own_replay_p99_ms'])} | {_vs(r['own_replay_p99_ms'], worker)} "
            f"| {_ms(r['own_model_p99_ms'])} "
            f"| {_vs(r['own_model_p99_ms'], r['own_replay_p99_ms'])} "
            f"| {_vs(r['own_model_p99_ms'], worker)} | {sizes} |"
        )
    out += [
        "",
        "(* a size with too few executions in the window: the profile's, scaled by the median "
        "of the sizes served.) The arrivals each row was measured on (the requests' actual "
        "send times, which the simulator and the model are fed), and the worker's own batches "
        "in the row:",
        "",
        "| arrivals | rate (req/s) | scheduled dispersion / cv2 | sent dispersion / cv2 "
        "| sends late p50 / p99 / max (ms) | worker's mean batch | its execution (ms) "
        "| profile's p50 there (ms) | held profile's p50 there (ms) "
        "| replay p99 on fresh draws, min / median / max (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in data["rows"]:
        late = " / ".join(f"{v:.1f}" for v in r["send_late_ms"])
        spread = " / ".join(f"{v:.1f}" for v in r["replay_spread_ms"])
        out.append(
            f"| {r['arrivals']} | {r['rate_qps']:.0f} "
            f"| {r['scheduled_dispersion']:.2f} / {r['scheduled_cv2']:.3f} "
            f"| {r['dispersion']:.2f} / {_meter_cv2(r):.3f} | {late} | {r['worker_batch']:.2f} "
            f"| {r['worker_execution_ms']:.2f} | {r['profile_execution_ms']:.2f} "
            f"| {r['held_execution_ms']:.2f} | {spread} |"
        )
    return out


def model_table(data: dict[str, Any]) -> list[str]:
    if data["rows"] and "own_model_p99_ms" in data["rows"][0]:
        return held_model_table(data)
    overhead = "device_only_p99_ms" in data["rows"][0] if data["rows"] else False
    if not overhead:  # a run before the overhead was measured
        out = [
            "| arrivals | rate (req/s) | dispersion | cv2 | worker p99 (ms) | simulator p99 (ms) "
            "| model p99 (ms) | model vs worker | model vs simulator |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
    else:
        out = [
            "| arrivals | rate (req/s) | dispersion | cv2 | worker p99 (ms) | simulator p99 (ms) "
            "| model p99 (ms) | model vs worker | model vs simulator "
            "| device-only model p99 (ms) | device-only vs worker |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
    quasi = bool(data["rows"]) and "quasi_static_p99_ms" in data["rows"][0]
    if quasi:  # the model with the queue carried across phases, and the quasi-static one
        out[0] += " quasi-static model p99 (ms) | quasi-static vs worker |"
        out[1] += "---:|---:|"
    slow = bool(data["rows"]) and "slowdown" in data["rows"][0]
    if slow:  # the device's speed in the row, and the model at it
        out[0] += " device's slowdown | model at it (ms) | vs worker |"
        out[1] += "---:|---:|---:|"

    def ms(value: float | None) -> str:
        return "inf" if value is None else f"{value:.1f}"

    for r in data["rows"]:
        row = (
            f"| {r['arrivals']} | {r['rate_qps']:.0f} | {r['dispersion']:.2f} | {r['cv2']:.3f} "
            f"| {r['measured_p99_ms']:.1f} | {r['simulated_p99_ms']:.1f} "
            f"| {ms(r['predicted_p99_ms'])} "
            f"| {r['error_vs_worker']:+.1%} | {r['error_vs_simulator']:+.1%} |"
        )
        if overhead:
            row += f" {ms(r['device_only_p99_ms'])} | {r['device_only_error_vs_worker']:+.1%} |"
        if quasi:
            q = r["quasi_static_p99_ms"]
            error = "-" if q is None else f"{q / r['measured_p99_ms'] - 1:+.1%}"
            row += f" {ms(q)} | {error} |"
        if slow:
            at = r["slowdown_model_p99_ms"]
            error = "-" if at is None else f"{at / r['measured_p99_ms'] - 1:+.1%}"
            row += f" {r['slowdown']:.2f} | {ms(at)} | {error} |"
        out.append(row)
    if data["rows"] and "send_late_ms" in data["rows"][0]:
        out += [
            "",
            "The arrivals each row was measured on (the requests' actual send times, which the "
            "simulator and the model are fed), and the worker's own batches in the row:",
            "",
            "| arrivals | rate (req/s) | scheduled dispersion / cv2 | sent dispersion / cv2 "
            "| sends late p50 / p99 / max (ms) | worker's mean batch | its execution (ms) "
            "| profile's p50 there (ms) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        spread = "replay_spread_ms" in data["rows"][0]
        if spread:
            out[-2] += " replay p99 on fresh draws, min / median / max (ms) |"
            out[-1] += "---:|"
        for r in data["rows"]:
            late = " / ".join(f"{v:.1f}" for v in r["send_late_ms"])
            out.append(
                f"| {r['arrivals']} | {r['rate_qps']:.0f} "
                f"| {r['scheduled_dispersion']:.2f} / {r['scheduled_cv2']:.3f} "
                f"| {r['dispersion']:.2f} / {r['cv2']:.3f} | {late} | {r['worker_batch']:.2f} "
                f"| {r['worker_execution_ms']:.2f} | {r['profile_execution_ms']:.2f} |"
                + (
                    " " + " / ".join(f"{v:.1f}" for v in r["replay_spread_ms"]) + " |"
                    if spread
                    else ""
                )
            )
    return out


def trace_table(data: dict[str, Any]) -> list[str]:
    rows = data["rows"]
    ours = next(r for r in rows if r["policy"] == "ours")
    out = [
        LEGEND,
        "",
        "| policy | attainment | device-seconds | late | dropped | re-plans | accuracy |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r['policy']} | {r['attainment']:.4%} | {r['device_seconds']:.0f} "
            f"| {r['late']} | {r['dropped']} | {r['replans']} | {r['accuracy']:.2f} |"
        )
    groups = {
        name: [r for r in rows if r["policy"] == name or r["policy"].startswith(name + "-")]
        for name in ("ours", *BASELINES)
    }
    groups = {k: v for k, v in groups.items() if v}
    out += ["", f"At ours' default point ({ours['attainment']:.4%}, {ours['device_seconds']:.0f}):"]
    out += ["", "| baseline | device-seconds | ours saves | how |", "|---|---:|---:|---|"]
    for name in BASELINES:
        if name not in groups:
            continue
        d, how = at_attainment(groups[name], ours["attainment"])
        # A baseline whose every point is more attained than ours: its cost at ours'
        # attainment is at most its cheapest, ours' saving there at most the one shown.
        above = d is not None and ours["attainment"] < frontier(groups[name])[0][0]
        shown = "-" if d is None else f"{'<= ' if above else ''}{d:.0f}"
        saving = (
            "-" if d is None else f"{'<= ' if above else ''}{1 - ours['device_seconds'] / d:+.1%}"
        )
        out.append(f"| {name} | {shown} | {saving} | {how} |")
    # Each baseline's frontier points and ours', at every attainment both reach (below a
    # sweep's least attained point, its cheapest is an upper bound of its cost, marked <=;
    # where both are bounds the saving is unknown and the level is left out).
    ours_front = frontier(groups["ours"])
    for name in BASELINES:
        if name not in groups:
            continue
        theirs = frontier(groups[name])
        top = min(theirs[-1][0], ours_front[-1][0])
        levels = sorted({a for a, _, _ in theirs + ours_front if a <= top})
        out += ["", f"Ours against {name} at matched attainment:", ""]
        out += [f"| attainment | ours | {name} | ours saves |", "|---:|---:|---:|---:|"]
        for level in levels:
            mine, _ = at_attainment(groups["ours"], level)
            d, _ = at_attainment(groups[name], level)
            if mine is None or d is None:
                continue
            bound = "<= " if level < ours_front[0][0] else ""
            theirs_bound = "<= " if level < theirs[0][0] else ""
            if bound and theirs_bound:
                continue
            more = ">= " if bound else theirs_bound
            out.append(
                f"| {level:.4%} | {bound}{mine:.0f} | {theirs_bound}{d:.0f} "
                f"| {more}{1 - mine / d:+.1%} |"
            )
    return out


def sim_model_table(data: dict[str, Any]) -> list[str]:
    out = [
        "| arrivals | cv2 (set / measured) | rate (req/s) | of throughput | simulator p99 (ms) "
        "| model p99 (ms) | model vs simulator |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in data["rows"]:
        out.append(
            f"| {r['arrivals']} | {r['cv2']:g} / {r['measured_cv2']:.3f} | {r['rate_qps']:.0f} "
            f"| {r['utilization']:.0%} | {r['simulated_p99_ms']:.1f} | {r['predicted_p99_ms']:.1f} "
            f"| {r['error']:+.1%} |"
        )
    return out


def main() -> None:
    lines = ["# Serverless mode: the batching model and device-seconds (issue 17)", ""]
    notes = Path(__file__).with_name("NOTES.md")
    if notes.exists():
        lines += [notes.read_text().strip(), ""]
    sim_model = RESULTS / "serverless_sim_model.json"
    if sim_model.exists():
        data = json.loads(sim_model.read_text())
        lines += [
            "## The batching model's predicted p99 against the simulator",
            "",
            "`bench/serverless/sim_model.py`: the SLO batcher as each simulated replica runs it, "
            f"batch cap {data['cap']}, demo-xl's CPU profile, 4 x 50,000 requests per row.",
            "",
            *sim_model_table(data),
            "",
        ]
    model = RESULTS / "serverless_model.json"
    if model.exists():
        data = json.loads(model.read_text())
        lines += [
            "## The batching model's predicted p99 against a real worker",
            "",
            f"`bench/serverless/worker_model.py`: `{data['model']}` on CPU, batch cap "
            f"{data['cap']}; "
            + (f"{d:.0f} s per row; " if (d := data.get("duration_s")) else "40 s per row; ")
            + "profile (batch, p50/p90/p99 ms) "
            + ", ".join(
                f"{b}: {p50:.1f}/{p90:.1f}/{p99:.1f}" for b, p50, p90, p99 in data["profile_ms"]
            )
            + "."
            + (
                " Overhead of the HTTP path (`profiler.measure_overhead`, same "
                f"worker): fixed {o['fixed']:.2f} ms, per request {o['per_request']:.2f} ms, "
                f"a batch started on an idle device {o.get('cold_batch', 0.0):.2f} ms "
                f"(lone request {o['lone_latency']:.2f} ms, its execution "
                f"{o['lone_execution']:.2f} ms; saturated {o['saturated_qps']:.0f} req/s at "
                f"batches of {o['saturated_batch']:.1f})."
                if (o := data.get("overhead_ms"))
                else ""
            )
            + (
                " The profile the model is given, held after the warm-up and the overhead's "
                "probes (`served.held_profile`; sizes served: "
                + ", ".join(str(b) for b in data["held_served_sizes"])
                + ", the others scaled): "
                + ", ".join(
                    f"{b}: {p50:.1f}/{p90:.1f}/{p99:.1f}"
                    for b, p50, p90, p99 in data["held_profile_ms"]
                )
                + "; the overhead split against it: fixed "
                f"{h['fixed']:.2f} ms, per request {h['per_request']:.2f} ms, cold batch "
                f"{h['cold_batch']:.2f} ms."
                if (h := data.get("held_overhead_ms"))
                else ""
            ),
            "",
            *model_table(data),
            "",
        ]
    trace = RESULTS / "serverless_trace.json"
    if trace.exists():
        data = json.loads(trace.read_text())
        lines += [
            "## Device-seconds at equal SLO attainment on a sparse, diurnal trace",
            "",
            f"`bench/serverless/sparse_trace.py`, {data['duration_s']:.0f} simulated seconds, "
            "cold starts included.",
            "",
            *trace_table(data),
            "",
        ]
    for held in sorted(RESULTS.glob("serverless_trace_seed*.json")):
        data = json.loads(held.read_text())
        lines += [
            f"### Held out: the same trace's generator at seed {data['seed']}",
            "",
            f"`sparse_trace.py --seed {data['seed']} --out {held.name}` (the tables' trace is "
            "seed 7); the policies run there only.",
            "",
            *trace_table(data),
            "",
        ]
    cost = RESULTS / "serverless_planner_cost.md"
    if cost.exists():
        lines += ["## What the model costs the planner", "", cost.read_text().strip(), ""]
    (RESULTS / "serverless.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
