"""Every control policy the simulator knows, by name."""

from __future__ import annotations

from collections.abc import Callable

from accordion.sim.knative import Knative
from accordion.sim.policies import Accordion, Clipper, HardwareOnly, InfaasGreedy
from accordion.sim.policy import ControlPolicy
from accordion.sim.proteus import Proteus

POLICIES: dict[str, Callable[[], ControlPolicy]] = {
    "accordion": lambda: Accordion(fast_loop=True),
    "accordion-nofast": lambda: Accordion(fast_loop=False),
    "accordion-noburst": lambda: Accordion(burst_buffer=False, name="accordion-noburst"),
    "proteus": Proteus,
    "clipper-ha": lambda: Clipper(high_accuracy=True),
    "clipper-ht": lambda: Clipper(high_accuracy=False),
    "infaas": InfaasGreedy,
    "hardware-only": HardwareOnly,
    "knative": Knative,
}


def make_control_policy(name: str) -> ControlPolicy:
    """A fresh policy object by name (see `POLICIES`)."""
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; known: {', '.join(POLICIES)}") from None
