"""Generate the CustomResourceDefinitions in `crds/` from the pydantic API models.

One source of truth: the models in `accordion.operator.api` carry the field descriptions, bounds,
enums, list-map keys and CEL rules; this module turns their JSON Schema into a *structural*
OpenAPI v3 schema as the API server requires it (no `$ref`, no `anyOf` for optionals, a type on
every node, `exclusiveMinimum` as a boolean) and wraps it with the status subresource, printer
columns, short names and categories. `accordion crds --check` fails when the committed YAML is
out of date, so the chart and the operator never disagree about the API.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from accordion.operator.api import GROUP, VERSION, DevicePool, InferenceService

# JSON Schema keys that carry over to the structural schema unchanged.
_KEPT = {
    "description",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "enum",
    "format",
    "required",
}


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Inline a `$ref` (keeping the referring node's own keys, e.g. its description)."""
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _resolve(merged, defs)
    if "allOf" in node and len(node["allOf"]) == 1:
        merged = {**_resolve(node["allOf"][0], defs)}
        merged.update({k: v for k, v in node.items() if k != "allOf"})
        return merged
    return node


def structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Convert one pydantic JSON Schema node into a structural OpenAPI v3 schema node."""
    node = _resolve(node, defs)
    if node.get("x-kubernetes-int-or-string"):
        out: dict[str, Any] = {"x-kubernetes-int-or-string": True}
        if "description" in node:
            out["description"] = node["description"]
        return out
    if "anyOf" in node:
        branches = [b for b in node["anyOf"] if b.get("type") != "null"]
        if len(branches) != 1:
            raise ValueError(f"cannot make a structural schema of a union: {node['anyOf']}")
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        return structural({**_resolve(branches[0], defs), **rest}, defs)

    out = {}
    if "const" in node:
        out["type"] = "string"
        out["enum"] = [node["const"]]
    elif "type" in node:
        out["type"] = node["type"]
    elif "properties" in node:
        out["type"] = "object"
    for key in _KEPT:
        if key in node:
            out[key] = node[key]
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    if "default" in node and node["default"] is not None:
        out["default"] = node["default"]
    for bound in ("exclusiveMinimum", "exclusiveMaximum"):
        if bound in node:
            out[bound.replace("exclusiveM", "m")] = node[bound]
            out[bound] = True
    if out.get("type") == "object":
        props = node.get("properties", {})
        if props:
            out["properties"] = {name: structural(sub, defs) for name, sub in props.items()}
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            out["additionalProperties"] = structural(extra, defs)
        elif not props:
            out["x-kubernetes-preserve-unknown-fields"] = True
    if out.get("type") == "array":
        out["items"] = structural(node.get("items", {}), defs)
    for key, value in node.items():
        if key.startswith("x-kubernetes-"):
            out[key] = value
    return dict(sorted(out.items(), key=_key_order))


_ORDER = ["description", "type", "enum", "default"]


def _key_order(item: tuple[str, Any]) -> tuple[int, str]:
    key = item[0]
    return (_ORDER.index(key) if key in _ORDER else len(_ORDER), key)


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The `openAPIV3Schema` of a top-level resource model."""
    schema = model.model_json_schema(by_alias=True, mode="validation")
    defs = schema.get("$defs", {})
    props = schema["properties"]
    out: dict[str, Any] = {
        "description": schema.get("description", ""),
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "accordion.dev/v1alpha1"},
            "kind": {"type": "string", "description": model.__name__},
            "metadata": _metadata_schema(props["metadata"], defs),
            "spec": structural(props["spec"], defs),
            "status": structural(props["status"], defs),
        },
    }
    return out


def _metadata_schema(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """`metadata` of a CRD: the API server allows a schema only for `name` (and generateName).

    The model's name rules (a DNS-1035 label for an InferenceService, whose name starts Service
    names) are checked at admission that way, as the models check them.
    """
    name = structural(_resolve(node, defs)["properties"]["name"], defs)
    name.pop("description", None)
    return {"type": "object", "properties": {"name": name}}


def _column(name: str, type_: str, path: str, description: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": type_, "jsonPath": path, "description": description, **extra}


def _crd(
    model: type[InferenceService] | type[DevicePool],
    scope: str,
    columns: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{model.PLURAL}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "accordion"},
        },
        "spec": {
            "group": GROUP,
            "scope": scope,
            "names": {
                "kind": model.KIND,
                "listKind": f"{model.KIND}List",
                "plural": model.PLURAL,
                "singular": model.SINGULAR,
                "shortNames": list(model.SHORT_NAMES),
                "categories": ["accordion"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": openapi_schema(model)},
                }
            ],
        },
    }


def crds() -> dict[str, dict[str, Any]]:
    """Every CRD, keyed by its file name in `crds/`."""
    age = _column("Age", "date", ".metadata.creationTimestamp", "Time since creation.")
    isvc = _crd(
        InferenceService,
        "Namespaced",
        [
            _column("SLO", "number", ".spec.slo.latencyMs", "Latency budget, ms."),
            _column("Demand", "number", ".status.demandQps", "Planned-for demand, req/s."),
            _column("Capacity", "number", ".status.capacityQps", "Planned capacity, req/s."),
            _column("Accuracy", "number", ".status.effectiveAccuracy", "Effective accuracy."),
            _column(
                "Ready",
                "string",
                '.status.conditions[?(@.type=="Ready")].status',
                "Whether the service serves its plan.",
            ),
            _column("URL", "string", ".status.url", "The router's URL in the cluster."),
            age,
        ],
    )
    pool = _crd(
        DevicePool,
        "Cluster",
        [
            _column("Devices", "integer", ".spec.devices", "Devices the planner may use."),
            _column("Allocated", "integer", ".status.allocatedDevices", "Devices in use."),
            _column("Cost", "number", ".spec.costPerDevice", "Cost of one device."),
            age,
        ],
    )
    return {
        f"{GROUP}_{InferenceService.PLURAL}.yaml": isvc,
        f"{GROUP}_{DevicePool.PLURAL}.yaml": pool,
    }


HEADER = "# Generated by `accordion crds` from accordion.operator.api. Do not edit by hand.\n"


def render(crd: dict[str, Any]) -> str:
    """The YAML text of one CRD, as committed."""
    return HEADER + yaml.safe_dump(crd, sort_keys=False, width=100, allow_unicode=True)


def write(directory: Path) -> list[Path]:
    """Write every CRD into `directory`; return the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, crd in crds().items():
        path = directory / name
        path.write_text(render(crd))
        written.append(path)
    return written


def stale(directory: Path) -> list[str]:
    """Names of the CRD files in `directory` that differ from what the models generate."""
    return [
        name
        for name, crd in crds().items()
        if not (directory / name).is_file() or (directory / name).read_text() != render(crd)
    ]
