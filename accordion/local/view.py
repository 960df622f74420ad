"""The live terminal view of `accordion up` (rich): per service, what the loop sees and does.

Laid out for an 80-column terminal: a service table (demand measured and smoothed, planned
capacity, effective accuracy planned and delivered, p99 latency against the SLO, violations
and attainment, re-plans), a variant table (ready and planned replicas and routing weight of
each backend), the latest re-plans and incidents, and where to send requests. Cells never
truncate: a narrow terminal wraps them instead.
"""

from __future__ import annotations

import time

from rich import box
from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from accordion.local.runtime import LocalRuntime

_EVENT_STYLE = {"Warning": "bold red", "Normal": "cyan"}


def _fmt(value: float | None, spec: str, unit: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


def _table(title: str | None = None) -> Table:
    return Table(
        title=title,
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
        pad_edge=False,
        collapse_padding=True,
        title_justify="left",
    )


def _names(rt: LocalRuntime) -> int:
    """Width of the service column: the longest name, so names never break (within reason)."""
    return min(24, max((len(k.split("/", 1)[1]) for k in rt.world.services), default=7))


def _services(rt: LocalRuntime) -> Table:
    table = _table(f"accordion up · {len(rt.world.services)} service(s)")
    table.add_column("service", overflow="fold", min_width=_names(rt))
    for col in ("demand/s", "capacity/s", "accuracy", "p99/SLO", "violations", "re-plans"):
        table.add_column(col, justify="right", overflow="fold")
    for key in sorted(rt.world.services):
        s = rt.latest.get(key)
        stats = rt.stats[key]
        name = key.split("/", 1)[1]
        if s is None:
            table.add_row(name, "starting…")
            continue
        p99 = Text(f"{_fmt(s.p99_ms, '.0f', 'ms')}\n/{s.slo_ms:g}ms")
        if s.p99_ms is not None and s.p99_ms > s.slo_ms:
            p99.stylize("bold red")
        attainment = stats.ok / stats.requests if stats.requests else 1.0
        viol = Text(f"{s.violations_qps:.1f}/s\n{attainment:.2%} ok")
        if s.violations_qps > 0:
            viol.stylize("red")
        table.add_row(
            name,
            f"{s.demand_qps:.1f}\nest {s.estimate_qps:.1f}",
            f"{s.capacity_qps:.0f}",
            f"plan {_fmt(s.planned_accuracy, '.1f')}\nserved {_fmt(s.served_accuracy, '.1f')}",
            p99,
            viol,
            str(stats.replans),
        )
    return table


def _variants(rt: LocalRuntime) -> Table:
    table = _table()
    table.add_column("service", overflow="fold", min_width=_names(rt))
    for col in ("variant", "pool"):
        table.add_column(col, overflow="fold")
    for col in ("ready/planned", "weight"):
        table.add_column(col, justify="right")
    for key in sorted(rt.world.services):
        s = rt.latest.get(key)
        if s is None:
            continue
        for backend in sorted(set(s.replicas) | set(s.ready)):
            variant, _, pool = backend.partition("@")
            ready, planned = s.ready.get(backend, 0), s.replicas.get(backend, 0)
            table.add_row(
                key.split("/", 1)[1],
                variant,
                pool,
                f"{ready}/{planned}",
                f"{s.weights.get(backend, 0.0):.2f}",
                style="dim" if planned == 0 else None,  # an old replica draining
            )
    return table


def render(rt: LocalRuntime, max_events: int = 8) -> Group:
    """One frame of the view."""
    lines = Text()
    for ev in rt.events[-max_events:]:
        stamp = time.strftime("%H:%M:%S", time.localtime(ev.t_s))
        lines.append(f"{stamp} {ev.service} ", style="dim")
        lines.append(f"{ev.reason}", style=_EVENT_STYLE.get(ev.type, ""))
        lines.append(f" {ev.message}\n")
    footer = Text(style="dim")
    for key in sorted(rt.world.services):
        footer.append(f"{key} → {rt.router_url(key)}\n")
    if rt.last_plan_s is not None:
        footer.append(f"last plan {rt.last_plan_s * 1000:.0f} ms · ")
    footer.append(f"run dir {rt.run_dir}\nCtrl-C stops everything")
    return Group(_services(rt), _variants(rt), Panel(lines, title="re-plans and incidents"), footer)
