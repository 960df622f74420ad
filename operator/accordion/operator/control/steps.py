"""The steps the control loop asks for, and the `Actuator` that carries them out.

A step is a value that says what to change and for which service; it describes itself
(`service`, and `phase`: make, route, break or status) so that the step runner can order and
gate steps without knowing their types. Each driver has an actuator (Kubernetes objects, local
processes, simulated replicas) that handles every step type; actuators dispatch with `match`
and end in `assert_never`, so a new step type that an actuator forgets fails the type check
(mypy) instead of being dropped silently at run time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from accordion.operator.api import InferenceServiceStatus
from accordion.operator.control.desired import Routing, WorkerKey, WorkerSpec

Phase = Literal["make", "route", "break", "status"]
"""make: adds capacity (new or grown worker groups); route: changes a router's weights;
break: takes capacity away (only once the final routing has settled); status: tells the user."""


@dataclass(frozen=True)
class EnsureWorker:
    """Create or update a worker group to exactly this spec (replicas included)."""

    spec: WorkerSpec
    exists: bool
    stage: Literal["make", "break"] = "make"
    """make: the group is new, grows or changes settings; break: it shrinks (after the drain)."""

    @property
    def service(self) -> str:
        return self.spec.key.service

    @property
    def phase(self) -> Phase:
        return self.stage


@dataclass(frozen=True)
class RemoveWorker:
    """Remove a worker group that carries no traffic any more."""

    key: WorkerKey

    @property
    def service(self) -> str:
        return self.key.service

    @property
    def phase(self) -> Phase:
        return "break"


@dataclass(frozen=True)
class ApplyRouting:
    """Make sure the service's router exists and routes by `routing`.

    A routing without routes (no replica ready yet, or nothing planned) still creates the
    router; `desired.routing_table` then gives no table and the router answers 503.
    """

    service: str
    routing: Routing
    uid: str | None = None

    @property
    def phase(self) -> Phase:
        return "route"


@dataclass(frozen=True)
class RemoveService:
    """Remove everything that serves a deleted service (router, table, workers)."""

    service: str
    workers: tuple[WorkerKey, ...] = ()

    @property
    def phase(self) -> Phase:
        return "break"


@dataclass(frozen=True)
class UpdateStatus:
    """Write the service's status (only emitted when it differs from what the world shows)."""

    service: str
    status: InferenceServiceStatus

    @property
    def phase(self) -> Phase:
        return "status"


@dataclass(frozen=True)
class RecordEvent:
    """Tell the user about a plan change that matters (a Kubernetes Event, a log line)."""

    service: str
    type: Literal["Normal", "Warning"]
    reason: str
    message: str

    @property
    def phase(self) -> Phase:
        return "status"


Step = EnsureWorker | RemoveWorker | ApplyRouting | RemoveService | UpdateStatus | RecordEvent


class Actuator(Protocol):
    """Carries out steps. Each call must be idempotent; raise to report a failure.

    Owner identity (for ownerReferences) travels in the steps where needed; a worker's URL is
    the actuator's business (`accordion.operator.control.desired.routing_table`).
    """

    async def apply(self, step: Step) -> None: ...
