"""``accordion simulate``: run policies on a trace in the simulator; CSV, table and plot.

`simulate_command` is the command function (wire it with ``app.command("simulate")``); `app`
is a standalone typer app with the same command, for ``python -m accordion.sim.cli``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from accordion.sim.catalog import POLICIES, make_control_policy
from accordion.sim.engine import SimConfig, SimResult, simulate
from accordion.sim.oracle import oracle_bound
from accordion.sim.report import SUMMARY_COLUMNS, markdown_table, plot, summary_cells, write_csv
from accordion.sim.workload import (
    Cluster,
    Workload,
    load_proteus_cluster,
    read_proteus_trace,
    read_rate_trace,
)

DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "proteus"


def simulate_command(
    trace: Annotated[
        Path,
        typer.Argument(
            help="A Proteus trace directory (<family>.txt files, named after the SLO in ms) or "
            "a rate file (service,start_s,end_s,rate_qps[,end_rate_qps[,poisson|uniform]])."
        ),
    ],
    policy: Annotated[
        list[str] | None,
        typer.Option("--policy", "-p", help=f"Policies to run (repeat): {', '.join(POLICIES)}."),
    ] = None,
    data: Annotated[
        Path, typer.Option(help="Proteus data directory (profiles and model_variants).")
    ] = DEFAULT_DATA,
    devices_per_pool: Annotated[int, typer.Option(help="Devices in each of the 4 pools.")] = 10,
    slo_ms: Annotated[float, typer.Option(help="SLO of rate-file services, in ms.")] = 300.0,
    service_time: Annotated[
        str, typer.Option(help="p50 (constant, as Proteus), p90 (constant) or dist (drawn).")
    ] = "p50",
    model_load_s: Annotated[float, typer.Option(help="Model load delay of a new replica.")] = 2.0,
    duration_s: Annotated[
        float | None, typer.Option(help="Simulate only the first seconds of the trace.")
    ] = None,
    scale: Annotated[int, typer.Option(help="Multiply devices and demand by this factor.")] = 1,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    oracle: Annotated[bool, typer.Option(help="Also compute the oracle bound.")] = False,
    out: Annotated[Path, typer.Option(help="Output directory (CSV, markdown, PNG).")] = Path(
        "sim-out"
    ),
) -> None:
    """Simulate policies on a trace; print a summary and write CSV, markdown and a PNG plot."""
    console = Console()
    names = policy or ["accordion", "proteus"]
    for name in names:
        if name not in POLICIES:
            raise typer.BadParameter(f"unknown policy {name!r}; known: {', '.join(POLICIES)}")
    if service_time not in ("p50", "p90", "dist"):
        raise typer.BadParameter("--service-time must be p50, p90 or dist")
    cluster = load_proteus_cluster(data, devices_per_pool=devices_per_pool * scale)
    if trace.is_dir():
        workload = read_proteus_trace(trace)
    else:
        slo = {f.name: slo_ms / 1000.0 for f in cluster.families}
        workload = read_rate_trace(trace, slo, seed=seed)
    if duration_s is not None:
        workload = workload.sliced(0.0, duration_s)
    if scale > 1:
        workload = workload.scaled(scale, seed=seed)
    config = SimConfig(seed=seed, service_time=service_time, model_load_s=model_load_s)
    results = run_policies(console, cluster, workload, names, config)
    bound = oracle_bound(cluster, workload) if oracle else None
    table = Table(title=f"{trace} ({len(workload)} requests, service time {service_time})")
    for _, title, _ in SUMMARY_COLUMNS:
        table.add_column(title)
    for r in results:
        table.add_row(*summary_cells(r))
    console.print(table)
    if bound is not None:
        console.print(
            f"oracle bound: {bound.served_fraction:.2%} served at effective accuracy "
            f"{bound.effective_accuracy:.2f}"
        )
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "per_second.csv", results)
    (out / "summary.md").write_text(markdown_table(results, bound))
    plot(out / "timeline.png", results, f"{trace.name}: {service_time} service times")
    console.print(f"wrote {out}/per_second.csv, summary.md, timeline.png")


def run_policies(
    console: Console, cluster: Cluster, workload: Workload, names: list[str], config: SimConfig
) -> list[SimResult]:
    """Run each policy with a rich progress bar over simulated seconds."""
    results = []
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f} s"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        for name in names:
            task = progress.add_task(name, total=max(1.0, workload.duration_s))

            def advance(t_s: float, task: TaskID = task) -> None:
                progress.update(task, completed=t_s)

            results.append(
                simulate(cluster, workload, make_control_policy(name), config, progress=advance)
            )
            progress.update(task, completed=workload.duration_s)
    return results


app = typer.Typer(add_completion=False)
app.command("simulate")(simulate_command)

if __name__ == "__main__":
    app()
