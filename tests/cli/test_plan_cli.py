"""`accordion plan` and `accordion crds` as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from accordion.cli import app

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
runner = CliRunner()


def test_plan_table_names_every_service_and_the_solver() -> None:
    result = runner.invoke(app, ["plan", "-f", str(EXAMPLES)])
    assert result.exit_code == 0, result.output
    for name in ("default/image-classifier", "default/sentiment", "default/object-detector"):
        assert name in result.output
    assert "solver" in result.output


def test_plan_json_serves_all_static_demand() -> None:
    result = runner.invoke(app, ["plan", "-f", str(EXAMPLES), "-o", "json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    for svc in plan["services"]:
        # Rates are solved in fixed point: allow a part in 10^4 of rounding, nothing more.
        assert svc["unserved_qps"] <= 1e-4 * svc["demand_qps"]
        assert svc["served_qps"] > 0


def test_plan_demand_override_scales_accuracy_down() -> None:
    low = runner.invoke(app, ["plan", "-f", str(EXAMPLES), "-o", "yaml"])
    high = runner.invoke(
        app,
        ["plan", "-f", str(EXAMPLES), "-o", "yaml", "-d", "image-classifier=3000"],
    )
    assert low.exit_code == 0, low.output
    assert high.exit_code == 0, high.output

    def accuracy(out: str) -> float:
        data = yaml.safe_load(out)
        svc = next(s for s in data["services"] if s["service"] == "default/image-classifier")
        return float(svc["effective_accuracy"])

    assert accuracy(high.output) < accuracy(low.output)


def test_plan_reports_bad_manifest_with_field_path(tmp_path: Path) -> None:
    doc = next(
        d
        for d in yaml.safe_load_all((EXAMPLES / "services.yaml").read_text())
        if d and d["kind"] == "InferenceService"
    )
    doc["spec"]["slo"]["latencyMs"] = -1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    result = runner.invoke(app, ["plan", "-f", str(EXAMPLES / "cluster.yaml"), "-f", str(bad)])
    assert result.exit_code == 2
    assert "spec.slo.latencyMs" in result.output


def test_plan_rejects_bad_demand_arguments() -> None:
    for arg, message in [
        ("image-classifier", "expected SERVICE=QPS"),
        ("image-classifier=fast", "is not a number"),
        ("image-classifier=-3", "must not be negative"),
        ("nope=3", "unknown services"),
    ]:
        result = runner.invoke(app, ["plan", "-f", str(EXAMPLES), "-d", arg])
        assert result.exit_code == 2, arg
        assert message in result.output, (arg, result.output)


def test_crds_check_and_write(tmp_path: Path) -> None:
    result = runner.invoke(app, ["crds", "--check", str(ROOT / "crds")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["crds", "--check", str(tmp_path)])
    assert result.exit_code == 1
    assert runner.invoke(app, ["crds", "--out", str(tmp_path)]).exit_code == 0
    assert runner.invoke(app, ["crds", "--check", str(tmp_path)]).exit_code == 0
