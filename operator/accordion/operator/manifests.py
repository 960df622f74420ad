"""Read Accordion manifests from YAML files, the way `kubectl apply -f` takes them.

Used by the CLI (`accordion plan`, `accordion up`) and by tests: multi-document files, `List`
objects, directories of `*.yaml`/`*.yml`; every invalid document is reported with its file,
its position in the file and the path of the offending field, and nothing is half-loaded.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from accordion.operator.api import (
    DevicePool,
    InferenceService,
    InvalidResourceError,
    parse_resource,
)


class ManifestError(ValueError):
    """One or more manifests could not be read; the message lists each problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid manifests:\n  " + "\n  ".join(problems))


@dataclass
class Manifests:
    """The objects read from a set of files."""

    services: list[InferenceService] = field(default_factory=list)
    pools: list[DevicePool] = field(default_factory=list)


def _files(paths: Iterable[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.iterdir() if p.suffix in {".yaml", ".yml"})
        else:
            yield path


def _documents(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open() as fh:
        for i, doc in enumerate(yaml.safe_load_all(fh)):
            if doc is None:
                continue
            if isinstance(doc, dict) and doc.get("kind") == "List":
                for j, item in enumerate(doc.get("items") or []):
                    yield f"{path}[{i}].items[{j}]", item
            else:
                yield f"{path}[{i}]", doc


def load(paths: Iterable[Path | str], *, ignore_other_kinds: bool = True) -> Manifests:
    """Load every InferenceService and DevicePool from `paths`.

    Documents of other API groups (a Namespace, a ConfigMap) are skipped when
    `ignore_other_kinds`; a document of `accordion.dev` that does not validate is an error.
    """
    out = Manifests()
    problems: list[str] = []
    seen: set[tuple[str, str]] = set()
    for path in _files(Path(p) for p in paths):
        if not path.exists():
            problems.append(f"{path}: no such file")
            continue
        try:
            docs = list(_documents(path))
        except yaml.YAMLError as exc:
            problems.append(f"{path}: not valid YAML: {exc}")
            continue
        for where, doc in docs:
            api_version = doc.get("apiVersion", "") if isinstance(doc, dict) else ""
            if ignore_other_kinds and not str(api_version).startswith("accordion.dev/"):
                continue
            try:
                obj = parse_resource(doc, where)
            except InvalidResourceError as exc:
                problems.append(str(exc))
                continue
            if isinstance(obj, InferenceService):
                if obj.metadata.namespace is None:
                    obj.metadata.namespace = "default"
                ident = ("InferenceService", obj.key)
                out.services.append(obj)
            else:
                ident = ("DevicePool", obj.metadata.name)
                out.pools.append(obj)
            if ident in seen:
                problems.append(f"{where}: duplicate {ident[0]} {ident[1]}")
            seen.add(ident)
    if problems:
        raise ManifestError(problems)
    return out
