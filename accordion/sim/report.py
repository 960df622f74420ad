"""Outputs of simulation runs: per-second CSV, a markdown summary table, and PNG plots."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from accordion.sim.engine import SimResult
from accordion.sim.oracle import OracleBound

SUMMARY_COLUMNS = (
    ("policy", "policy", "{}"),
    ("violation_ratio", "violations %", "{:.2%}"),
    ("late", "late", "{}"),
    ("dropped", "dropped", "{}"),
    ("effective_accuracy", "eff. accuracy", "{:.2f}"),
    ("mix_accuracy", "mix-weighted acc.", "{:.2f}"),
    ("max_accuracy_drop", "max acc. drop (10 s)", "{:.2f}"),
    ("throughput_qps", "throughput QPS", "{:.1f}"),
    ("device_seconds", "device-s", "{:.0f}"),
    ("planner_time_mean_s", "planner mean s", "{:.3f}"),
    ("planner_time_max_s", "planner max s", "{:.3f}"),
    ("wall_s", "sim wall s", "{:.1f}"),
)


def summary_cells(result: SimResult) -> list[str]:
    row = result.summary.as_row()
    return [fmt.format(row[key]) for key, _, fmt in SUMMARY_COLUMNS]


def markdown_table(results: Sequence[SimResult], oracle: OracleBound | None = None) -> str:
    """The summary of every run as a markdown table (with the oracle bound as a last row)."""
    head = "| " + " | ".join(title for _, title, _ in SUMMARY_COLUMNS) + " |"
    sep = "|" + "|".join("---" for _ in SUMMARY_COLUMNS) + "|"
    lines = [head, sep]
    for r in results:
        lines.append("| " + " | ".join(summary_cells(r)) + " |")
    if oracle is not None:
        cells = ["oracle bound (LP, per second)", f"{1 - oracle.served_fraction:.2%}"]
        cells += ["-", "-", f"{oracle.effective_accuracy:.2f}"]
        cells += ["-"] * (len(SUMMARY_COLUMNS) - len(cells))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(path: Path, results: Sequence[SimResult]) -> None:
    """Per-second rows of every run: policy, second, demand, ok, late, dropped, ..."""
    with Path(path).open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(
            [
                "policy",
                "second",
                "demand",
                "ok",
                "late",
                "dropped",
                "violation_ratio",
                "effective_accuracy",
                "capacity_qps",
                "devices",
            ]
        )
        for r in results:
            for s in r.seconds:
                acc = s.effective_accuracy
                out.writerow(
                    [
                        r.summary.policy,
                        s.second,
                        s.demand,
                        s.ok,
                        s.late,
                        s.dropped,
                        f"{s.violation_ratio:.5f}",
                        "" if acc is None else f"{acc:.4f}",
                        f"{s.capacity_qps:.1f}",
                        f"{s.devices:.0f}",
                    ]
                )


def plot(path: Path, results: Sequence[SimResult], title: str, smooth_s: int = 5) -> None:
    """Demand vs capacity, effective accuracy and violation ratio over time, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(11, 10), sharex=True)
    if results:
        first = results[0]
        axes[0].plot(
            [s.second for s in first.seconds],
            [s.demand for s in first.seconds],
            color="black",
            linewidth=1.5,
            label="demand",
        )
    for r in results:
        secs = r.seconds
        xs = [s.second for s in secs]
        axes[0].plot(xs, [s.capacity_qps for s in secs], linewidth=0.8, label=r.summary.policy)
        acc_x, acc_y, vio_y = [], [], []
        for i in range(len(secs)):
            window = secs[max(0, i - smooth_s + 1) : i + 1]
            ok = sum(s.ok for s in window)
            demand = sum(s.demand for s in window)
            if ok:
                acc_x.append(secs[i].second)
                acc_y.append(sum(s.accuracy_sum for s in window) / ok)
            bad = sum(s.late + s.dropped for s in window)
            vio_y.append(100.0 * bad / demand if demand else 0.0)
        axes[1].plot(acc_x, acc_y, linewidth=0.8, label=r.summary.policy)
        axes[2].plot(xs, vio_y, linewidth=0.8, label=r.summary.policy)
    if results:
        peak = max((s.demand for s in results[0].seconds), default=1)
        axes[0].set_ylim(0, 3 * peak)  # a fixed-variant baseline's capacity can dwarf demand
    axes[0].set_ylabel("QPS (capacity: planned)")
    axes[1].set_ylabel(f"effective accuracy ({smooth_s} s)")
    axes[2].set_ylabel(f"violations % ({smooth_s} s)")
    axes[2].set_xlabel("time (s)")
    axes[0].legend(fontsize=7, ncol=4)
    axes[1].legend(fontsize=7, ncol=4)
    axes[2].legend(fontsize=7, ncol=4)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_capacity(path: Path, result: SimResult, title: str) -> None:
    """Per family: demand, the estimate, and the capacity of ready replicas the plan routes to,
    of ready spare (burst) replicas, and of replicas pending or loading (the control's
    `ControlSample`s), stacked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = sorted(result.timeline)
    cols = 3
    rows = max(1, (len(families) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 2.8 * rows), sharex=True, squeeze=False)
    for ax, fam in zip(axes.flat, families, strict=False):
        line = result.timeline[fam]
        xs = [sec for sec, _, _ in line]
        planned = [s.planned_qps for _, s, _ in line]
        spare = [s.spare_qps for _, s, _ in line]
        loading = [s.loading_qps for _, s, _ in line]
        ax.stackplot(
            xs,
            planned,
            spare,
            loading,
            labels=["planned", "spare", "loading"],
            colors=["#4c72b0", "#a1c9f4", "#f5b041"],
            alpha=0.8,
        )
        ax.plot(xs, [n for _, _, n in line], color="black", linewidth=0.8, label="arrivals")
        ax.plot(
            xs, [s.estimate_qps for _, s, _ in line], color="red", linewidth=0.8, label="estimate"
        )
        peak = max([n for _, _, n in line] + [1])
        ax.set_ylim(0, 2.5 * peak)
        ax.set_title(fam, fontsize=9)
    for ax in axes.flat[len(families) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6, loc="upper left")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
