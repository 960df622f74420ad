"""The one set of default timings of the control loop, for every driver.

The operator, local mode and the simulator all run `ControlLoop` with these values (each
driver's configuration starts from them and may override them), so that a simulator result
predicts what a cluster with default settings does. They were chosen by measurement in the
simulator on the Proteus traces and on generated bursty and overloaded workloads
(`bench/proteus/run.py --timings` compares alternatives; `bench/results/proteus.md`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Timings:
    """How often the loop measures and plans, and how it smooths demand (seconds)."""

    demand_interval_s: float = 1.0
    """How often each service's arrivals are measured (the routers' request counters): the
    demand tracker's sample and the shortest reaction time to a burst."""
    rise_half_life_s: float = 2.0
    """Half-life of the demand estimate when the measured rate is above it."""
    fall_half_life_s: float = 20.0
    """Half-life when it is below (releasing devices early costs a model load when demand
    comes back); while a service is short of capacity, `rise_half_life_s` applies both ways."""
    resync_interval_s: float = 30.0
    """A full pass at least this often, even when nothing seems to have changed."""
    debounce_s: float = 0.5
    """Quiet time after a change before a pass (a burst of watch events makes one pass)."""
    min_pass_interval_s: float = 1.0
    """Demand-driven passes (`ControlLoop.pass_due`) at most this often."""
    drain_s: float = 1.0
    """How long a final routing must have been in place before old replicas are removed: the
    time a router takes to load a new table (it re-reads it every 0.5 s)."""
    swap_payback_s: float = 30.0
    """A plan whose model swaps are made to serve more demand is applied only if its gain over
    the plan in force, over this long, makes up for what the swaps leave unserved while they
    start (`swaps.pays_back`): the resync interval, the longest a plan goes unreviewed."""
    hysteresis: float = 0.15
    """A service's plan follows a falling estimate only once it is this fraction below the
    estimate the plan was made for (`ReplanGate`)."""


DEFAULT_TIMINGS = Timings()
