"""Next to KServe: every command Accordion suggests names `inferenceservices.accordion.dev`.

KServe's kind is also InferenceService (`inferenceservices.serving.kserve.io`); on a cluster
with both, `kubectl get inferenceservices` resolves to one of them. The READMEs and the CLI's
output must not suggest the ambiguous form (the chart's NOTES are checked in tests/chart). The
CRD keeps short names and a category of its own.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from accordion.cli import app

ROOT = Path(__file__).resolve().parents[2]
KUBECTL_ON_ISVC = re.compile(r"kubectl\s+(?:get|describe|explain|edit|delete|patch)\s+(\S+)")


def ambiguous(text: str) -> list[str]:
    """kubectl commands on InferenceServices that do not name the accordion.dev resource."""
    return [
        m.group(0)
        for m in KUBECTL_ON_ISVC.finditer(text)
        if m.group(1).startswith(("inferenceservice", "isvc"))
        and not m.group(1).startswith("inferenceservices.accordion.dev")
    ]


@pytest.mark.parametrize("doc", ["README.md", "charts/accordion/README.md"])
def test_docs_name_the_resource_in_full(doc: str) -> None:
    text = (ROOT / doc).read_text()
    assert "inferenceservices.accordion.dev" in text
    assert ambiguous(text) == []


def test_the_detector_sees_the_ambiguous_form() -> None:
    assert ambiguous("run kubectl get inferenceservices -A -w") == ["kubectl get inferenceservices"]
    assert ambiguous("kubectl get inferenceservices.accordion.dev -A") == []


def test_crds_output_suggests_the_full_name(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["crds", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "kubectl get inferenceservices.accordion.dev" in result.output
    assert ambiguous(result.output) == []


def test_crd_names_do_not_collide_with_kserves() -> None:
    crd = yaml.safe_load((ROOT / "crds" / "accordion.dev_inferenceservices.yaml").read_text())
    names = crd["spec"]["names"]
    assert crd["metadata"]["name"] == "inferenceservices.accordion.dev"
    assert names["kind"] == "InferenceService"
    assert "isvc" not in names["shortNames"]  # KServe's short name
    assert names["shortNames"] == ["aisvc"]
    assert "accordion" in names["categories"]
    columns = {c["name"]: c for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert columns["URL"]["jsonPath"] == ".status.url"
