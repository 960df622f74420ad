"""`accordion simulate` on a small rate file: table, CSV, markdown and PNG come out."""

from __future__ import annotations

import csv
from pathlib import Path

import typer
from typer.testing import CliRunner

from accordion.sim.cli import simulate_command


def test_simulate_command_writes_outputs(proteus_data: Path, tmp_path: Path) -> None:
    rates = tmp_path / "rates.txt"
    rates.write_text("resnet,0,6,30\nmobilenet,0,6,10,60,uniform\n")
    app = typer.Typer()
    app.command()(simulate_command)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            str(rates),
            "--data",
            str(proteus_data),
            "-p",
            "accordion",
            "-p",
            "clipper-ht",
            "--devices-per-pool",
            "2",
            "--oracle",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "oracle bound" in result.output
    rows = list(csv.DictReader((out / "per_second.csv").open()))
    assert {r["policy"] for r in rows} == {"accordion", "clipper-ht"}
    assert "| accordion |" in (out / "summary.md").read_text()
    assert (out / "timeline.png").stat().st_size > 1000


def test_simulate_command_rejects_unknown_policy(proteus_data: Path, tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(simulate_command)
    result = CliRunner().invoke(app, [str(tmp_path), "-p", "nope", "--data", str(proteus_data)])
    assert result.exit_code != 0
