"""The live terminal view of `accordion up` (rich): per service, what the loop sees and does.

Demand (measured and smoothed), planned capacity, variants with planned and ready replicas and
their routing weights, effective accuracy (planned and delivered), p99 latency against the SLO,
violations (late, dropped, shed, failed answers), and the latest re-plans and incidents.
"""

from __future__ import annotations

import time

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from accordion.local.runtime import LocalRuntime

_EVENT_STYLE = {"Warning": "bold red", "Normal": "cyan"}


def _fmt(value: float | None, spec: str, unit: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


def render(rt: LocalRuntime, max_events: int = 8) -> Group:
    """One frame of the view."""
    table = Table(
        expand=True,
        title=f"accordion up · {len(rt.world.services)} service(s)",
        caption="variants: ready/planned replicas and routing weight; accuracy: planned "
        "(plan) and delivered within the SLO (served)",
    )
    table.add_column("service", no_wrap=True)
    for col in ("demand", "capacity", "variants", "accuracy", "p99/SLO", "violations",
                "re-plans"):  # fmt: skip
        table.add_column(col)
    for key in sorted(rt.world.services):
        s = rt.latest.get(key)
        stats = rt.stats[key]
        if s is None:
            table.add_row(key.split("/", 1)[1], "starting…")
            continue
        variants = []
        for backend in sorted(set(s.replicas) | set(s.ready)):
            planned = s.replicas.get(backend, 0)
            w = s.weights.get(backend, 0.0)
            name = backend.split("@", 1)[0]
            variants.append(f"{name} {s.ready.get(backend, 0)}/{planned} w={w:.2f}")
        p99 = Text(f"{_fmt(s.p99_ms, '.0f', 'ms')}\n/{s.slo_ms:g}ms")
        if s.p99_ms is not None and s.p99_ms > s.slo_ms:
            p99.stylize("bold red")
        attainment = stats.ok / stats.requests if stats.requests else 1.0
        viol = Text(f"{s.violations_qps:.1f}/s\n{attainment:.2%} ok")
        if s.violations_qps > 0:
            viol.stylize("red")
        table.add_row(
            key.split("/", 1)[1],
            f"{s.demand_qps:.1f}/s\nest {s.estimate_qps:.1f}",
            f"{s.capacity_qps:.0f}/s",
            "\n".join(variants) or "-",
            f"{_fmt(s.planned_accuracy, '.2f')} plan\n{_fmt(s.served_accuracy, '.2f')} served",
            p99,
            viol,
            str(stats.replans),
        )
    lines = Text()
    for ev in rt.events[-max_events:]:
        stamp = time.strftime("%H:%M:%S", time.localtime(ev.t_s))
        lines.append(f"{stamp} {ev.service} ", style="dim")
        lines.append(f"{ev.reason}", style=_EVENT_STYLE.get(ev.type, ""))
        lines.append(f" {ev.message}\n")
    plan = f"last plan {rt.last_plan_s * 1000:.0f} ms" if rt.last_plan_s is not None else ""
    routers = "  ".join(f"{k} → {rt.router_url(k)}" for k in sorted(rt.world.services))
    footer = Text(f"{routers}   {plan}   run dir {rt.run_dir}   Ctrl-C stops everything",
                  style="dim")  # fmt: skip
    return Group(table, Panel(lines, title="re-plans and incidents"), footer)
