"""`accordion plan` on a service whose whole model fits the SLO on no pool but its pipeline
does: the table names the pipeline (its parts and pools), not only its first stage's pool."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from typer.testing import CliRunner

from accordion.cli import app


def _profile(pool: str, ms: float) -> dict[str, Any]:
    return {"pool": pool, "batches": [{"batchSize": 1, "p50Ms": ms}]}


def _manifests() -> list[dict[str, Any]]:
    pools = [
        {
            "apiVersion": "accordion.dev/v1alpha1",
            "kind": "DevicePool",
            "metadata": {"name": name},
            "spec": {"devices": devices},
        }
        for name, devices in (("hi", 1), ("lo", 4))
    ]
    service = {
        "apiVersion": "accordion.dev/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": "split", "namespace": "default"},
        "spec": {
            "slo": {"latencyMs": 100},
            "demand": {"source": "Static", "qps": 20},
            "variants": [
                {
                    "name": "big",
                    "accuracy": 80,
                    "model": {"storageUri": "/models/big.pt"},
                    # Whole, twice its 60 ms on either pool misses the 100 ms SLO.
                    "profiles": [_profile("hi", 60), _profile("lo", 90)],
                    "stages": [
                        {"name": "a", "profiles": [_profile("lo", 30)]},
                        {"name": "b", "profiles": [_profile("hi", 10)]},
                    ],
                }
            ],
        },
    }
    return [*pools, service]


def test_the_plan_table_names_a_pipeline(tmp_path: Path) -> None:
    path = tmp_path / "split.yaml"
    path.write_text(yaml.safe_dump_all(_manifests()))
    result = CliRunner().invoke(app, ["plan", "-f", str(path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "a..a@lo*" in result.output, result.output
    assert ">b..b@hi*1" in result.output
