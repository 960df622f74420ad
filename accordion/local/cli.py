"""`accordion up`: the whole system on this machine (mounted by the root CLI).

Exposed as `up_command`, a typer-compatible function: ``app.command("up")(up_command)``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from accordion.operator.control.timing import DEFAULT_TIMINGS

if TYPE_CHECKING:  # the runtime (aiohttp, the operator's loop) loads only when `up` runs
    from accordion.local.actuator import Event
    from accordion.local.runtime import RuntimeSettings


async def run_up(
    files: list[Path],
    run_dir: Path,
    settings: RuntimeSettings,
    *,
    live_view: bool,
    duration_s: float | None,
) -> None:
    """Start the runtime, draw it, stop everything on SIGINT/SIGTERM."""
    from accordion.local.runtime import LocalRuntime

    def print_event(ev: Event) -> None:
        if not live_view:
            print(f"[{ev.type}] {ev.service} {ev.reason}: {ev.message}", flush=True)

    runtime = LocalRuntime(files, run_dir, settings, on_event=print_event)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"accordion up: run dir {run_dir}", flush=True)
    for key in sorted(runtime.world.services):
        print(f"accordion up: {key} at {runtime.router_url(key)}", flush=True)
    if live_view:
        from rich.live import Live

        from accordion.local.view import render

        with Live(render(runtime), refresh_per_second=2, screen=False) as live:
            await runtime.run(stop, duration_s, on_tick=lambda rt: live.update(render(rt)))
    else:
        await runtime.run(stop, duration_s)
    print("accordion up: stopped; no process left running", flush=True)


def up_command(
    file: Annotated[
        list[Path],
        typer.Option("-f", "--file", help="Manifest files or directories, as kubectl -f takes."),
    ],
    port: Annotated[
        int, typer.Option(help="Port of the first service's router; the next ones follow.")
    ] = 8000,
    run_dir: Annotated[
        Path | None,
        typer.Option(help="Where logs, routing tables, timeline.jsonl and state.json go."),
    ] = None,
    interval_s: Annotated[
        float, typer.Option(min=0.1, help="Control loop period (demand measured this often).")
    ] = DEFAULT_TIMINGS.demand_interval_s,
    duration_s: Annotated[
        float | None, typer.Option(min=1, help="Stop after this long (default: until Ctrl-C).")
    ] = None,
    view: Annotated[bool, typer.Option(help="Live terminal view (else log lines).")] = True,
    fall_half_life_s: Annotated[
        float, typer.Option(min=0.1, help="Demand estimator: half-life of a fall.")
    ] = DEFAULT_TIMINGS.fall_half_life_s,
    rise_half_life_s: Annotated[
        float, typer.Option(min=0.1, help="Demand estimator: half-life of a rise.")
    ] = DEFAULT_TIMINGS.rise_half_life_s,
) -> None:
    """Run the InferenceServices of some manifests on this machine: a router and worker
    processes per service on loopback, real torch models on the CPU, planned and re-planned
    by the operator's control loop from measured demand."""
    from accordion.local.runtime import LocalModeError, RuntimeSettings

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    directory = run_dir or Path(tempfile.mkdtemp(prefix="accordion-up-"))
    settings = RuntimeSettings(
        base_port=port,
        interval_s=interval_s,
        rise_half_life_s=rise_half_life_s,
        fall_half_life_s=fall_half_life_s,
    )
    live_view = view and sys.stdout.isatty()
    try:
        asyncio.run(run_up(file, directory, settings, live_view=live_view, duration_s=duration_s))
    except LocalModeError as exc:
        typer.echo(f"accordion up: error: {exc}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:  # pragma: no cover - handled by the signal handler
        pass


def main() -> None:
    """`python -m accordion.local.cli -f ...` (until the root CLI mounts `up`)."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(up_command)
    app()


if __name__ == "__main__":
    main()
