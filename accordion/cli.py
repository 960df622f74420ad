"""The `accordion` command line: one entry point for every component a user runs by hand.

Subcommands live next to the code they drive (the planner's view in `accordion.plan_view`, the
CRD generator in `accordion.operator.crdgen`, ...); this module only wires them into one typer
application so that `accordion --help` lists everything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from accordion.local.cli import up_command
from accordion.plan_view import plan_command
from accordion.sim.cli import simulate_command
from accordion.workers.cli import app as workers_app

app = typer.Typer(
    name="accordion",
    help="Keep ML inference inside its latency SLOs by scaling model accuracy as well as hardware.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("plan")(plan_command)
app.command("simulate")(simulate_command)
app.command("up")(up_command)
# The data plane's commands (profile, load, serve, route) are defined next to their code in
# accordion.workers.cli; they appear here as top-level commands.
app.registered_commands.extend(workers_app.registered_commands)


@app.command("crds")
def crds_command(
    out: Annotated[
        Path | None, typer.Option(help="Write the CRD YAML files into this directory.")
    ] = None,
    check: Annotated[
        Path | None, typer.Option(help="Fail when the CRDs in this directory are out of date.")
    ] = None,
) -> None:
    """Generate the CustomResourceDefinitions from the API models (or check them)."""
    from accordion.operator import crdgen

    if check is not None:
        stale = crdgen.stale(check)
        if stale:
            typer.echo(f"out of date in {check}: {', '.join(stale)}; run `make crds`", err=True)
            raise typer.Exit(1)
        typer.echo(f"CRDs in {check} are up to date")
        return
    if out is None:
        for crd in crdgen.crds().values():
            typer.echo("---\n" + crdgen.render(crd), nl=False)
        return
    for path in crdgen.write(out):
        typer.echo(f"wrote {path}")
    # The kind is InferenceService, as in KServe's: the suggested command names the resource
    # in full, so that it never lists KServe's on a cluster that runs both.
    typer.echo(
        f"apply with: kubectl apply -f {out}; then: kubectl get inferenceservices.accordion.dev -A"
    )


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
