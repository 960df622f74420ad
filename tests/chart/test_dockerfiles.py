"""What the Dockerfiles promise, read from them (fast, in pytest).

The images themselves are built and run in CI by `make images-test` (.ci/images: buildah from a
Debian base, each entrypoint run, a worker answering a v2 request), outside pytest. Here:
multi-stage, the final stage runs as a non-root numeric user, each image installs only its own
component (the operator image never installs torch; the worker image no solver or operator,
but boto3 for its storage initializer), and the chart's default images are the ones `make
images` builds (by name); `make test` runs the image test.
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
    assert "./workers[torch,storage]" in text  # storage: boto3 for `accordion-worker fetch`


def test_chart_defaults_name_the_built_images() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["operator"]["image"]["repository"].endswith("/accordion-operator")
    assert values["workers"]["image"]["repository"].endswith("/accordion-worker")
    assert values["router"]["image"]["repository"] == values["workers"]["image"]["repository"]


def test_make_test_builds_and_runs_the_images() -> None:
    makefile = (REPO / "Makefile").read_text()
    test_target = next(line for line in makefile.splitlines() if line.startswith("test:"))
    assert "images-test" in test_target.split()
    assert "bash .ci/images test" in makefile
    script = (REPO / ".ci" / "images").read_text()
    for dockerfile in ("operator/Dockerfile", "workers/Dockerfile"):
        assert f"-f {dockerfile}" in script
    assert "--build-arg PYTHON_IMAGE=" in script
