"""NVIDIA Multi-Instance GPU (MIG): profile tables, placement rules, and the valid layouts.

An A100 or H100 splits into GPU instances ("slices") of a few fixed profiles. Each profile takes
some of the GPU's 7 compute slices and some of its 8 memory slices, and may only start at given
memory-slice indices; instances on one GPU may not overlap in memory, nor take more than 7
compute slices together. A *layout* is the multiset of profiles one GPU is split into, such that
some placement of them obeys those rules (the NVIDIA GPU operator's MIG manager applies one by
name, from the node label `nvidia.com/mig.config`).

Sources (the planner's rules are exactly these tables, nothing inferred):

- NVIDIA Multi-Instance GPU User Guide, "Supported MIG Profiles"
  (https://docs.nvidia.com/datacenter/tesla/mig-user-guide/supported-mig-profiles.html): the
  A100-SXM4-40GB table (1g.5gb, 1g.10gb, 2g.10gb, 3g.20gb, 4g.20gb, 7g.40gb: fractions of
  memory 1/8, 2/8, 2/8, 4/8, 4/8, full; of SMs 1/7, 1/7, 2/7, 3/7, 4/7, 7/7; instances 7, 4, 3,
  2, 1, 1); "For A100-SXM4-80GB, the profile names will change according to the memory
  proportion" (1g.10gb, 1g.20gb, 2g.20gb, 3g.40gb, 4g.40gb, 7g.80gb); the H100-80GB table has
  the same fractions under the A100-80GB names.
- The same guide, "Getting Started with MIG" / `nvidia-smi mig -lgipp` (the possible
  placements, `{start indices}:memory slices`), identical on A100 and H100:
  profile 19 (1g small) `{0,1,2,3,4,5,6}:1`, 15 (1g with 2 memory slices) `{0,2,4,6}:2`,
  14 (2g) `{0,2,4}:2`, 9 (3g) `{0,4}:4`, 5 (4g) `{0}:4`, 0 (7g) `{0}:8`.

Media-extension profiles (`+me`) are left out: they differ from their base profile only in
decoders, which inference workers do not use.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache

from pydantic import BaseModel, ConfigDict, Field, model_validator

COMPUTE_SLICES = 7
"""Compute slices (groups of SMs) of every MIG-capable A100/H100."""
MEMORY_SLICES = 8
"""Memory slices of every MIG-capable A100/H100; placements index these."""


@dataclass(frozen=True)
class MigProfile:
    """One GPU-instance profile: its slices and the memory-slice indices it may start at."""

    name: str
    compute_slices: int
    memory_slices: int
    starts: tuple[int, ...]
    max_instances: int
    """The guide's "Number of Instances Available": a check on the placements, not a rule."""


@dataclass(frozen=True, order=True)
class Placement:
    """One instance of a profile on one GPU, starting at memory slice `start`."""

    profile: str
    start: int


def _profiles(names: tuple[str, str, str, str, str, str]) -> dict[str, MigProfile]:
    """The six profiles of an A100/H100 in the guide's order, under one GPU's names."""
    geometry = (
        # compute, memory, starts (nvidia-smi mig -lgipp), instances available
        (1, 1, (0, 1, 2, 3, 4, 5, 6), 7),  # profile 19
        (1, 2, (0, 2, 4, 6), 4),  # profile 15
        (2, 2, (0, 2, 4), 3),  # profile 14
        (3, 4, (0, 4), 2),  # profile 9
        (4, 4, (0,), 1),  # profile 5
        (7, 8, (0,), 1),  # profile 0
    )
    return {
        name: MigProfile(name, compute, memory, starts, instances)
        for name, (compute, memory, starts, instances) in zip(names, geometry, strict=True)
    }


GPU_MODELS: dict[str, dict[str, MigProfile]] = {
    "A100-40GB": _profiles(("1g.5gb", "1g.10gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb")),
    "A100-80GB": _profiles(("1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb")),
    "H100-80GB": _profiles(("1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb")),
}
"""Profiles per GPU model, by profile name."""


def placement_errors(gpu_model: str, placements: Iterable[Placement]) -> list[str]:
    """Every way `placements` on one GPU break the published rules; empty when they are valid.

    The rules: a known profile, a start index the profile allows, within the GPU's memory
    slices, no two instances sharing a memory slice, at most `COMPUTE_SLICES` compute slices.
    """
    profiles = GPU_MODELS.get(gpu_model)
    if profiles is None:
        return [f"unknown GPU model {gpu_model!r}: one of {sorted(GPU_MODELS)}"]
    errors: list[str] = []
    owner: dict[int, Placement] = {}
    compute = 0
    for p in sorted(placements):
        profile = profiles.get(p.profile)
        if profile is None:
            errors.append(f"{p.profile}: not a profile of {gpu_model} ({sorted(profiles)})")
            continue
        compute += profile.compute_slices
        if p.start not in profile.starts:
            errors.append(f"{p.profile} may start at {list(profile.starts)}, not at {p.start}")
        for index in range(p.start, p.start + profile.memory_slices):
            if not 0 <= index < MEMORY_SLICES:
                errors.append(f"{p.profile}@{p.start} leaves the memory slices 0-7")
                break
            if index in owner:
                other = owner[index]
                errors.append(
                    f"{p.profile}@{p.start} overlaps {other.profile}@{other.start} "
                    f"in memory slice {index}"
                )
                break
            owner[index] = p
    if compute > COMPUTE_SLICES:
        errors.append(f"{compute} compute slices: more than {COMPUTE_SLICES}")
    return errors


Layout = tuple[tuple[str, int], ...]
"""A layout: (profile, count) pairs, largest profile first, every count positive."""


def layout_of(counts: Mapping[str, int]) -> Layout:
    """The canonical form of a profile -> count mapping (zero counts dropped)."""

    def size(name: str) -> tuple[int, int]:
        compute, _, memory = name.partition("g.")
        return int(compute), int(memory.removesuffix("gb"))

    items = [(name, n) for name, n in counts.items() if n > 0]
    return tuple(sorted(items, key=lambda item: size(item[0]), reverse=True))


def layout_name(layout: Layout) -> str:
    """A name that is a valid Kubernetes label value: `1x3g.40gb_2x2g.20gb`."""
    return "_".join(f"{n}x{profile}" for profile, n in layout) or "none"


def place(gpu_model: str, layout: Layout) -> list[Placement] | None:
    """One placement of `layout` on a GPU that obeys the rules, or None when there is none.

    Depth-first over the instances, largest first, each at its lowest free allowed start:
    at most 7 instances with at most 7 starts each, so the search is tiny.
    """
    profiles = GPU_MODELS[gpu_model]
    wanted = [name for name, n in layout for _ in range(n)]
    if any(name not in profiles for name in wanted):
        return None
    if sum(profiles[name].compute_slices for name in wanted) > COMPUTE_SLICES:
        return None

    def search(k: int, used: frozenset[int], floor: int) -> list[Placement] | None:
        if k == len(wanted):
            return []
        profile = profiles[wanted[k]]
        # Equal instances in increasing starts: the same placement is not searched twice.
        same = k > 0 and wanted[k - 1] == wanted[k]
        for start in profile.starts:
            if same and start <= floor:
                continue
            cells = frozenset(range(start, start + profile.memory_slices))
            if max(cells) >= MEMORY_SLICES or cells & used:
                continue
            rest = search(k + 1, used | cells, start)
            if rest is not None:
                return [Placement(profile.name, start), *rest]
        return None

    return search(0, frozenset(), -1)


@cache
def valid_layouts(gpu_model: str) -> tuple[Layout, ...]:
    """Every non-empty layout of `gpu_model` that has a valid placement, in a fixed order."""
    names = list(GPU_MODELS[gpu_model])
    found: list[Layout] = []

    def extend(i: int, counts: dict[str, int]) -> None:
        if i == len(names):
            layout = layout_of(counts)
            if layout and place(gpu_model, layout) is not None:
                found.append(layout)
            return
        profile = GPU_MODELS[gpu_model][names[i]]
        for n in range(profile.max_instances + 1):
            counts[names[i]] = n
            extend(i + 1, counts)
        counts[names[i]] = 0

    extend(0, {})
    return tuple(sorted(found, key=layout_name))


def contains(big: Layout, small: Layout) -> bool:
    """Whether layout `big` has at least every instance of `small`."""
    have = dict(big)
    return all(have.get(name, 0) >= n for name, n in small)


@cache
def maximal_layouts(gpu_model: str) -> tuple[Layout, ...]:
    """The valid layouts no other valid layout contains: every other one is one of these with
    instances left out, so a planner free to leave a slice idle needs no more than these."""
    every = valid_layouts(gpu_model)
    return tuple(a for a in every if not any(b != a and contains(b, a) for b in every))


def slice_pool(pool: str, profile: str) -> str:
    """The name of the slice sub-pool of `profile` slices on MIG pool `pool`: `a100/1g.10gb`.

    Variants name it as the key of their profile for that slice; plan rows as their pool.
    """
    return f"{pool}/{profile}"


class MigSpec(BaseModel):
    """A pool of MIG-capable GPUs: their model, the layouts the planner may split each one
    into, and the layout each one has now (so that a re-plan relabels as few as it can)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    gpu_model: str
    layouts: list[dict[str, int]] | None = Field(
        default=None,
        description="Layouts (profile -> instances on one GPU) the planner may choose from; "
        "None: every valid layout.",
    )
    current: list[dict[str, int]] = Field(
        default_factory=list,
        description="The layout of each GPU now, by GPU index; {} for a GPU with none.",
    )
    in_service: list[dict[str, int] | None] | None = Field(
        default=None,
        description="Per GPU index, the layout whose slices can take workers now: {} for a "
        "GPU out of service (drained, being relabelled, failed), None where not known (its "
        "planned layout is taken as applied). None: every GPU's planned layout is taken as "
        "applied. Layouts are still chosen for all GPUs; replicas only on these slices "
        "(`migplan`).",
    )
    target: list[dict[str, int] | None] | None = Field(
        default=None,
        description="Per GPU index, the layout the plan in force gives it (a reconfiguration "
        "under way aims at it); None where there is none. The planner keeps these targets "
        "unless other layouts serve more by `migplan.LAYOUT_HYSTERESIS` of the demand "
        "(no flapping). None: the current layouts are the reference.",
    )

    @model_validator(mode="after")
    def _valid(self) -> MigSpec:
        if self.gpu_model not in GPU_MODELS:
            raise ValueError(f"gpu_model: {self.gpu_model!r} is not one of {sorted(GPU_MODELS)}")
        for field, entries in (
            ("layouts", list(enumerate(self.layouts or []))),
            ("current", list(enumerate(self.current))),
            ("in_service", [(i, c) for i, c in enumerate(self.in_service or []) if c is not None]),
            ("target", [(i, c) for i, c in enumerate(self.target or []) if c is not None]),
        ):
            for i, counts in entries:
                if any(n < 0 for n in counts.values()):
                    raise ValueError(f"{field}[{i}]: a negative instance count")
                layout = layout_of(counts)
                if field == "layouts" and not layout:
                    raise ValueError(f"{field}[{i}]: an empty layout")
                if layout and place(self.gpu_model, layout) is None:
                    unknown = sorted(set(dict(layout)) - set(GPU_MODELS[self.gpu_model]))
                    why = (
                        f"unknown profiles {unknown} (one of {list(GPU_MODELS[self.gpu_model])})"
                        if unknown
                        else "no placement obeys the MIG placement rules"
                    )
                    raise ValueError(
                        f"{field}[{i}]: {layout_name(layout)} is not a valid "
                        f"{self.gpu_model} layout: {why}"
                    )
        return self

    def allowed(self) -> tuple[Layout, ...]:
        """The layouts the planner may choose: the given ones, or every maximal valid one."""
        if self.layouts is None:
            return maximal_layouts(self.gpu_model)
        return tuple(sorted({layout_of(c) for c in self.layouts}, key=layout_name))
