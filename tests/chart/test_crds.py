"""The chart installs the very CRDs generated into crds/ (one source of truth).

charts/accordion/crds/ holds symlinks to the generated files plus kopf's peering CRDs; this
test fails when a generated CRD is missing from the chart or differs from what helm installs.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import yaml

from .conftest import CHART, CRDS, by_kind, objects, run_helm


def test_chart_crds_are_the_generated_ones() -> None:
    generated = {
        doc["metadata"]["name"]: doc
        for path in sorted(CRDS.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    }
    assert generated, "no CRDs in crds/ (run `make crds`)"
    rendered = {
        o["metadata"]["name"]: o
        for o in by_kind(objects(include_crds=True), "CustomResourceDefinition")
    }
    ours = {name: crd for name, crd in rendered.items() if name.endswith(".accordion.dev")}
    assert ours == generated


def test_generated_crds_are_linked_not_copied() -> None:
    for path in sorted(CRDS.glob("*.yaml")):
        link = CHART / "crds" / path.name
        assert link.is_symlink(), f"{link} must be a symlink to crds/{path.name}"
        assert link.resolve() == path.resolve()


def test_kopf_peering_crds_are_installed() -> None:
    names = {
        o["metadata"]["name"]
        for o in by_kind(objects(include_crds=True), "CustomResourceDefinition")
    }
    assert {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"} <= names


def test_packaged_chart_carries_the_crds(tmp_path: Path) -> None:
    """`helm package` follows the symlinks: the archive holds the CRDs themselves."""
    proc = run_helm("package", str(CHART), "--destination", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    (archive,) = tmp_path.glob("accordion-*.tgz")
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        for path in CRDS.glob("*.yaml"):
            member = f"accordion/crds/{path.name}"
            assert member in names
            info = tar.getmember(member)
            assert info.isfile(), f"{member} must be a file in the archive, not a link"
            extracted = tar.extractfile(info)
            assert extracted is not None
            assert extracted.read().decode() == path.read_text()
        assert "accordion/files/prometheus-rules.yaml" in names


def test_kubernetes_older_than_1_30_is_refused() -> None:
    proc = run_helm("template", "accordion", str(CHART), "--kube-version", "1.29.0")
    assert proc.returncode != 0
    assert "kubeVersion" in proc.stderr or "incompatible" in proc.stderr, proc.stderr
