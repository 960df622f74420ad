"""`accordion plan`: what the planner would do with these manifests, as a table, YAML or JSON.

The same translation (`accordion.operator.planning`) and the same planner the operator runs, so
a platform team can try a cluster description and a demand scenario before applying anything.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.console import Console
from rich.table import Table

from accordion.operator.manifests import ManifestError, load
from accordion.operator.planning import to_problem
from accordion.solver import Plan, PlannerSettings
from accordion.solver.planner import plan as solve


class OutputFormat(StrEnum):
    """Output formats of `accordion plan`, as kubectl's `-o`."""

    TABLE = "table"
    YAML = "yaml"
    JSON = "json"


def parse_demand(items: list[str]) -> dict[str, float]:
    """Parse `svc=QPS` pairs; a bare service name means namespace `default`."""
    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"{item!r}: expected SERVICE=QPS, e.g. default/chat=120")
        try:
            qps = float(value)
        except ValueError:
            raise typer.BadParameter(f"{item!r}: {value!r} is not a number") from None
        if qps < 0:
            raise typer.BadParameter(f"{item!r}: demand must not be negative")
        out[name if "/" in name else f"default/{name}"] = qps
    return out


def render_table(plan: Plan, console: Console) -> None:
    """Print the plan per service: rows, capacity against demand, accuracy, solver figures."""
    by_service = {s.service: s for s in plan.services}
    for name, summary in by_service.items():
        rows = [r for r in plan.rows if r.service == name and r.replicas > 0]
        served_pct = 100.0 * summary.served_qps / summary.demand_qps if summary.demand_qps else 100
        acc = "-" if summary.effective_accuracy is None else f"{summary.effective_accuracy:.2f}"
        title = (
            f"[bold]{name}[/]  demand {summary.demand_qps:.1f} req/s · capacity "
            f"{summary.capacity_qps:.1f} · served {served_pct:.1f}% · accuracy {acc}"
        )
        table = Table(title=title, title_justify="left", expand=False)
        for col in ("variant", "pool", "replicas", "max batch", "capacity/replica"):
            table.add_column(col, justify="right" if col != "variant" else "left")
        table.add_column("routed req/s", justify="right")
        table.add_column("share", justify="right")
        table.add_column("accuracy", justify="right")
        for r in rows:
            share = r.routed_qps / summary.served_qps if summary.served_qps else 0.0
            table.add_row(
                r.variant,
                r.pipeline or r.pool,  # a pipeline: its stages' parts and pools, by its id
                str(r.replicas),
                str(r.max_batch_size),
                f"{r.capacity_qps_per_replica:.1f}",
                f"{r.routed_qps:.1f}",
                f"{100 * share:.0f}%",
                f"{r.accuracy:g}",
            )
        console.print(table)
        if summary.unserved_qps > 1e-6:
            console.print(
                f"  [red]shortfall[/]: {summary.unserved_qps:.1f} req/s cannot be served "
                "at or above the accuracy floor"
            )
    if plan.excluded:
        console.print(f"[dim]{len(plan.excluded)} (variant, pool) pairs excluded:[/]")
        for e in plan.excluded:
            console.print(f"[dim]  {e.service} {e.variant} on {e.pool}: {e.reason}[/]")
    s = plan.stats
    console.print(
        f"solver {s.solver}: {s.status} in {1000 * s.solve_time_s:.0f} ms, gap {100 * s.gap:.3f}%, "
        f"device cost {s.cost:g}"
    )


def plan_command(
    files: Annotated[
        list[Path],
        typer.Option("--filename", "-f", help="Manifest files or directories (like kubectl -f)."),
    ],
    demand: Annotated[
        list[str] | None,
        typer.Option("--demand", "-d", help="Override demand: SERVICE=QPS (repeatable)."),
    ] = None,
    output: Annotated[
        OutputFormat, typer.Option("--output", "-o", help="table, yaml or json.")
    ] = OutputFormat.TABLE,
    time_limit_s: Annotated[float, typer.Option(help="Solver time limit, seconds.")] = 10.0,
    gap: Annotated[float, typer.Option(help="Relative optimality gap to stop at.")] = 0.001,
) -> None:
    """Plan variants, placement and routing for the services in the manifests."""
    console = Console()
    err = Console(stderr=True)
    try:
        manifests = load(files)
    except ManifestError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    if not manifests.services:
        err.print("[red]error:[/] no InferenceService in the manifests")
        raise typer.Exit(2)
    overrides = parse_demand(demand or [])
    unknown = sorted(set(overrides) - {s.key for s in manifests.services})
    if unknown:
        err.print(f"[red]error:[/] --demand names unknown services: {', '.join(unknown)}")
        raise typer.Exit(2)
    build = to_problem(
        manifests.services,
        manifests.pools,
        measured_qps=overrides,
        settings=PlannerSettings(time_limit_s=time_limit_s, relative_gap=gap),
    )
    for warning in build.warnings:
        err.print(f"[yellow]warning:[/] {warning}")
    result = solve(build.problem)
    render(result, output, console)


def render(result: Plan, output: OutputFormat, console: Console) -> None:
    """Print a plan in the chosen format."""
    if output is OutputFormat.TABLE:
        render_table(result, console)
        return
    data: Mapping[str, object] = result.model_dump(mode="json")
    if output is OutputFormat.JSON:
        console.print_json(json.dumps(data))
    else:
        console.print(yaml.safe_dump(dict(data), sort_keys=False), end="", markup=False)
