"""The chart installs the very CRDs generated into crds/ (one source of truth).

charts/accordion/crds/ holds symlinks to the generated files plus kopf's peering CRDs; this
test fails when a generated CRD is missing from the chart or differs from what helm installs.
"""

from __future__ import annotations

import yaml

from .conftest import CHART, CRDS, by_kind, objects


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
