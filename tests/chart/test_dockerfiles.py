"""The images cannot be built here; check what the Dockerfiles promise by reading them.

Multi-stage, the final stage runs as a non-root numeric user, each image installs only its own
component (the operator image never installs torch; the worker image no solver or operator),
and the chart's default images are the ones `make images` builds (by name).
"""

from __future__ import annotations

import re

import pytest
import yaml

from .conftest import CHART, REPO

DOCKERFILES = {
    "operator": REPO / "operator" / "Dockerfile",
    "workers": REPO / "workers" / "Dockerfile",
}


def _stages(text: str) -> list[str]:
    """The instructions of each stage, split at FROM."""
    parts = re.split(r"^FROM\s", text, flags=re.MULTILINE)
    return parts[1:]


@pytest.mark.parametrize("component", sorted(DOCKERFILES))
def test_multi_stage_and_non_root(component: str) -> None:
    text = DOCKERFILES[component].read_text()
    stages = _stages(text)
    assert len(stages) >= 2, "build and runtime stages"
    final = stages[-1]
    users = re.findall(r"^USER\s+(\S+)", final, flags=re.MULTILINE)
    assert users, "the final stage sets USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), "a numeric user (runAsNonRoot can verify it)"
    assert int(uid) != 0, "not root"
    assert "COPY --from=build" in final
    assert "pip install" not in final, "nothing is built in the runtime stage"


def test_operator_image_has_no_torch() -> None:
    text = DOCKERFILES["operator"].read_text()
    install = " ".join(re.findall(r"pip install ([^\n\\]+)", text))
    assert "torch" not in install
    assert "[torch]" not in text
    assert '! python -c "import torch"' in text  # the build fails if torch sneaks in
    assert "COPY workers/" in text  # the workers' configuration models, without the extra


def test_worker_image_has_no_control_plane() -> None:
    text = DOCKERFILES["workers"].read_text()
    assert "COPY solver/" not in text
    assert "COPY operator/" not in text
    assert "./workers[torch]" in text


def test_chart_defaults_name_the_built_images() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["operator"]["image"]["repository"].endswith("/accordion-operator")
    assert values["workers"]["image"]["repository"].endswith("/accordion-worker")
    assert values["router"]["image"]["repository"] == values["workers"]["image"]["repository"]
