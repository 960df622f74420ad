"""Compact copies of the watched objects the driver keeps (`actuator.ObjectCache`).

At a thousand InferenceServices the driver's cache holds some 6,000 objects, and the raw dicts
the API returns are mostly repetition: every object decoded on its own has its own copy of each
key (`"metadata"`, `"app.kubernetes.io/managed-by"`, ...) and of each short value (`"TCP"`,
`"RuntimeDefault"`, label values). `compact` rebuilds an object with those strings interned
(one copy per distinct string, shared by every object; about half the memory of the raw
dicts), drops `metadata.managedFields` (server bookkeeping nothing here reads), and keeps of a
Node only what the pools read (`node_essentials`). Dicts and lists stay per object (nothing is
aliased between objects), so a cached object can still be copied and merged like any other.

What is kept is what the driver and the actuator read: the actuator compares the manifests it
would write with the cached object (`actuator._differs`: every field of the manifest must be
there), so owned objects keep every field a manifest builder can set; InferenceServices and
DevicePools keep their spec, status and metadata; Nodes keep what `pools.pool_capacity` and the
driver's wake-up filter (`handlers.node_significant`) look at.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from typing import Any

SHORT = 64
"""Strings up to this length are interned (names, label values, enum-like values); longer ones
(JSON annotations, routing tables) are mostly unique and stay as they are."""

NODE_METADATA = ("name", "uid", "resourceVersion", "labels", "deletionTimestamp")
NODE_SPEC = ("unschedulable", "taints")
NODE_CONDITION = ("type", "status")


def _interned(value: Any) -> Any:
    """A copy of a JSON value with its dict keys and short strings interned."""
    if isinstance(value, dict):
        return {(sys.intern(k) if type(k) is str else k): _interned(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_interned(v) for v in value]
    if type(value) is str and len(value) <= SHORT:
        return sys.intern(value)
    return value


def node_essentials(node: dict[str, Any]) -> dict[str, Any]:
    """What of a Node the operator reads: its name, labels, cordon, taints, allocatable
    resources and the type and status of its conditions (not heartbeats, images, addresses,
    capacity or node info, which are most of a real Node)."""
    meta = node.get("metadata") or {}
    spec = node.get("spec") or {}
    status = node.get("status") or {}
    slim_status: dict[str, Any] = {}
    if "allocatable" in status:
        slim_status["allocatable"] = status["allocatable"]
    if "conditions" in status:
        slim_status["conditions"] = [
            {k: c[k] for k in NODE_CONDITION if k in c}
            for c in status.get("conditions") or []
            if isinstance(c, dict)
        ]
    out: dict[str, Any] = {
        "apiVersion": node.get("apiVersion") or "v1",
        "kind": "Node",
        "metadata": {k: meta[k] for k in NODE_METADATA if k in meta},
        "spec": {k: spec[k] for k in NODE_SPEC if k in spec},
        "status": slim_status,
    }
    return out


POD_METADATA = ("name", "namespace", "labels", "resourceVersion", "uid", "deletionTimestamp")
POD_CONTAINER = ("name", "state", "lastState", "restartCount")
MIG_PREFIX = "nvidia.com/mig-"
"""A MIG slice's extended resource (`mig.slice_resource`), kept of a worker's limits."""


def pod_essentials(pod: dict[str, Any]) -> dict[str, Any]:
    """What of a worker Pod the operator reads (`k8s.observe_worker_failure`): its identity
    and labels, and its containers' states; of its spec (the Deployment holds the rest) only
    its node and the MIG slice it asks (`mig.node_actions`)."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    slim: dict[str, Any] = {}
    for field in ("initContainerStatuses", "containerStatuses"):
        if field in status:
            slim[field] = [
                {k: c[k] for k in POD_CONTAINER if k in c}
                for c in status.get(field) or []
                if isinstance(c, dict)
            ]
    # The node it runs on and the MIG slice it asks: a MIG reconfiguration drains the node
    # first, more than one at a time when its workers have free slices elsewhere (`mig`).
    spec = pod.get("spec") or {}
    slim_spec: dict[str, Any] = {k: v for k, v in spec.items() if k == "nodeName"}
    slices = [
        {"resources": {"limits": {k: v for k, v in limits.items() if k.startswith(MIG_PREFIX)}}}
        for c in spec.get("containers") or []
        if isinstance(c, dict)
        for limits in [((c.get("resources") or {}).get("limits") or {})]
        if any(str(k).startswith(MIG_PREFIX) for k in limits)
    ]
    if slices:
        slim_spec["containers"] = slices
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {k: meta[k] for k in POD_METADATA if k in meta},
        "spec": slim_spec,
        "status": slim,
    }


def compact(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    """The copy of a watched object the driver keeps (see the module's description)."""
    if kind == "Node":
        return dict(_interned(node_essentials(obj)))
    if kind == "Pod":
        return dict(_interned(pod_essentials(obj)))
    meta = obj.get("metadata")
    if isinstance(meta, dict) and "managedFields" in meta:
        obj = {**obj, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}
    return dict(_interned(obj))


# ------------------------------------------------------------------------------ list pages

_DECODER = json.JSONDecoder()
_WHITESPACE = re.compile(r"[ \t\n\r]*")


class ListPage:
    """One page of a Kubernetes List response, read one item at a time.

    `json.loads` of a list decodes every item at once (at a thousand services, tens of MB of
    dicts for the Deployments alone) before any is stored; `items()` decodes the response's
    `items` array one element at a time (`json.JSONDecoder.raw_decode`), so a caller that
    keeps a compact copy of each holds one raw item at a time next to the response text.
    `metadata` (the list's resourceVersion and `continue` token) is read on the way; anything
    unexpected falls back to decoding the whole response.
    """

    def __init__(self, response: Any) -> None:
        data = getattr(response, "data", response)
        self._parsed: dict[str, Any] | None = response if isinstance(response, dict) else None
        text = data.decode() if isinstance(data, bytes) else data
        self._text = text if isinstance(text, str) else ""
        self.metadata: dict[str, Any] = {}
        self._started = False

    @property
    def continue_token(self) -> str | None:
        token = self.metadata.get("continue")
        return str(token) if token else None

    @property
    def resource_version(self) -> int | None:
        try:
            return int(str(self.metadata.get("resourceVersion")))
        except ValueError:
            return None

    def items(self) -> Iterator[dict[str, Any]]:
        if self._parsed is None:
            try:
                yield from self._stream()
                return
            except _UnexpectedLayoutError:
                if self._started:
                    raise ValueError("malformed list response") from None
                self._parsed = json.loads(self._text) if self._text else {}
        body = self._parsed if isinstance(self._parsed, dict) else {}
        self.metadata = dict(body.get("metadata") or {})
        for item in body.get("items") or []:
            if isinstance(item, dict):
                yield item

    def _stream(self) -> Iterator[dict[str, Any]]:
        s = self._text
        i = self._skip(0)
        if s[i : i + 1] != "{":
            raise _UnexpectedLayoutError
        i = self._skip(i + 1)
        if s[i : i + 1] == "}":
            return
        while True:
            key, i = self._decode(i)
            i = self._skip(i)
            if s[i : i + 1] != ":":
                raise _UnexpectedLayoutError
            i = self._skip(i + 1)
            if key == "items" and s[i : i + 1] == "[":
                i = self._skip(i + 1)
                while s[i : i + 1] != "]":
                    item, i = self._decode(i)
                    if not isinstance(item, dict):
                        raise _UnexpectedLayoutError
                    self._started = True
                    yield item
                    i = self._skip(i)
                    if s[i : i + 1] == ",":
                        i = self._skip(i + 1)
                    elif s[i : i + 1] != "]":
                        raise _UnexpectedLayoutError
                i += 1
            else:
                value, i = self._decode(i)
                if key == "metadata" and isinstance(value, dict):
                    self.metadata = value
            i = self._skip(i)
            if s[i : i + 1] == ",":
                i = self._skip(i + 1)
            elif s[i : i + 1] == "}":
                return
            else:
                raise _UnexpectedLayoutError

    def _skip(self, i: int) -> int:
        match = _WHITESPACE.match(self._text, i)
        return match.end() if match else i

    def _decode(self, i: int) -> tuple[Any, int]:
        try:
            return _DECODER.raw_decode(self._text, i)
        except json.JSONDecodeError as exc:
            raise _UnexpectedLayoutError from exc


class _UnexpectedLayoutError(Exception):
    """The response is not laid out as expected."""
