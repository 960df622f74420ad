"""Shared helpers of the chart tests: the real `helm` binary and rendered manifests.

helm is looked up at `<repo>/.tools/bin/helm` (where `install-k8s-clis` puts it) and then on
PATH; without it the chart tests skip with the reason.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "accordion"
CRDS = REPO / "crds"

ALL_TOGGLES = (
    "serviceMonitor.enabled=true",
    "podMonitor.enabled=true",
    "prometheusRule.enabled=true",
    "grafanaDashboards.enabled=true",
)


def helm_binary() -> str | None:
    local = REPO / ".tools" / "bin" / "helm"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which("helm")


def require_helm() -> str:
    helm = helm_binary()
    if helm is None:
        pytest.skip("helm not found at .tools/bin/helm or on PATH (run install-k8s-clis)")
    return helm


def run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_helm(), *args], capture_output=True, text=True, timeout=60, check=False
    )


@functools.cache
def render(*sets: str, include_crds: bool = False, namespace: str = "accordion-system") -> str:
    """`helm template` of the chart with `--set` values; fails the test on a render error."""
    args = ["template", "accordion", str(CHART), "--namespace", namespace]
    if include_crds:
        args.append("--include-crds")
    for s in sets:
        args += ["--set", s]
    proc = run_helm(*args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def documents(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def objects(*sets: str, include_crds: bool = False) -> list[dict[str, Any]]:
    return documents(render(*sets, include_crds=include_crds))


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o.get("kind") == kind]
