"""The `accordion` command line: one entry point for every component a user runs by hand.

Subcommands live next to the code they drive (the planner's table in `accordion.plan_view`,
the profiler and load generator in `accordion.workers.cli`, ...); this module only wires them
into one typer application so that `accordion --help` lists everything.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="accordion",
    help="Keep ML inference inside its latency SLOs by scaling model accuracy as well as hardware.",
    no_args_is_help=True,
    add_completion=False,
)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
