"""Who leads: kopf's peering rule, applied by the control loop before every pass.

kopf's peering pauses an operator's watches and handlers while a live peer of higher (or equal)
priority is registered in the peering object (`ClusterKopfPeering`). The control loop runs in a
task of its own, outside kopf's handlers, so it asks the same question itself before each pass:
it reads the peering object and applies kopf's rule (`leads`). A demoted leader thus stops at
its next pass, not "some time after its handlers stop being called".

The rule needs this operator's own peering identity, which kopf takes from `POD_ID` (the chart
sets it from the pod name; `python -m accordion.operator` sets it when it is missing). Without it
(`kopf run` by hand, no `POD_ID`) the identity is unknown and `Leadership.from_settings` returns
None: the driver then falls back to "kopf delivered an event recently".
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

PEERING_GROUP, PEERING_VERSION = "kopf.dev", "v1"
CLUSTER_PLURAL, NAMESPACED_PLURAL = "clusterkopfpeerings", "kopfpeerings"


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Peer:
    """One entry of a peering object's status (what kopf's keep-alive writes)."""

    identity: str
    priority: int
    deadline: datetime | None  # lastseen + lifetime; None when unreadable (taken as dead)

    @classmethod
    def parse(cls, identity: str, info: Any) -> Peer:
        info = info if isinstance(info, Mapping) else {}
        lastseen = _parse_time(info.get("lastseen"))
        try:
            lifetime = float(info.get("lifetime", 60))
            priority = int(info.get("priority", 0))
        except (TypeError, ValueError):
            return cls(identity, 0, None)
        deadline = lastseen + timedelta(seconds=lifetime) if lastseen is not None else None
        return cls(identity, priority, deadline)

    def alive(self, now: datetime) -> bool:
        return self.deadline is not None and self.deadline > now


@dataclass(frozen=True)
class Verdict:
    leads: bool
    reason: str


def leads(status: Any, identity: str, priority: int, now: datetime) -> Verdict:
    """kopf's rule on a peering object's status: this operator acts when it is registered
    (alive) and no other live peer has a higher or the same priority (with the same priority
    kopf pauses every peer, since it cannot tell which one should act)."""
    entries = status if isinstance(status, Mapping) else {}
    peers = [Peer.parse(str(k), v) for k, v in entries.items()]
    own = next((p for p in peers if p.identity == identity), None)
    if own is None or not own.alive(now):
        return Verdict(False, f"{identity} is not registered (alive) in the peering object yet")
    rivals = [p for p in peers if p.identity != identity and p.alive(now)]
    higher = sorted(p.identity for p in rivals if p.priority > priority)
    if higher:
        return Verdict(False, f"peers of higher priority are alive: {', '.join(higher)}")
    same = sorted(p.identity for p in rivals if p.priority == priority)
    if same:
        return Verdict(False, f"peers of the same priority {priority} are alive: {', '.join(same)}")
    return Verdict(True, f"{identity} leads (priority {priority})")


@dataclass(frozen=True)
class Leadership:
    """This operator's place in a peering: the object to read and its own identity/priority."""

    name: str
    identity: str
    priority: int
    mandatory: bool  # kopf waits for the peering object (paused until it sees itself alone)
    namespace: str | None = None  # None: a ClusterKopfPeering

    @classmethod
    def from_settings(
        cls, peering: Any, environ: Mapping[str, str] | None = None
    ) -> Leadership | None:
        """From kopf's `settings.peering`; None when standalone or when the identity kopf uses
        is unknown (no `POD_ID`)."""
        env = os.environ if environ is None else environ
        identity = env.get("POD_ID")
        if peering.standalone or not identity:
            return None
        namespace = None if peering.clusterwide else env.get("POD_NAMESPACE") or "default"
        return cls(
            name=str(peering.name),
            identity=identity,
            priority=int(peering.priority),
            mandatory=bool(peering.mandatory),
            namespace=namespace,
        )

    def read(self, custom_api: Any) -> Verdict:
        """Read the peering object (blocking: call it in a thread) and apply the rule."""
        from kubernetes.client.exceptions import ApiException

        try:
            if self.namespace is None:
                obj = custom_api.get_cluster_custom_object(
                    PEERING_GROUP, PEERING_VERSION, CLUSTER_PLURAL, self.name
                )
            else:
                obj = custom_api.get_namespaced_custom_object(
                    PEERING_GROUP, PEERING_VERSION, self.namespace, NAMESPACED_PLURAL, self.name
                )
        except ApiException as exc:
            if exc.status != 404:
                raise
            if self.mandatory:
                # kopf stays paused until the peering object exists and shows it alone.
                return Verdict(False, f"the peering object {self.name!r} does not exist")
            return Verdict(True, f"no peering object {self.name!r}: kopf runs without peering")
        return leads((obj or {}).get("status"), self.identity, self.priority, datetime.now(UTC))
