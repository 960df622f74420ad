"""Split a model at candidate cut points, time every part, and measure the tensor at each cut.

The planner may serve a variant as a pipeline of stages on different pools (PPipe; the
solver's `pipelines`) when the variant lists its model's parts between candidate cut points,
each with a profile per pool and the size of the tensor it hands on. This module measures
them: `accordion profile --split` prints that `stages` block, and a pipeline worker serves
parts `first`..`last` of a model (`stage_module`).

A model can be cut where its top-level children, run one after the other, are the model:
an `nn.Sequential` (torch.nn's own containers, TorchScript of one). A top-level child that is
itself an `nn.Sequential` of composite modules (a ResNet stage: residual blocks) is cut
between those too, as PPipe partitions at layer granularity: its parts are named
``<child>.<index>`` (``layer1.0``, ``layer1.1``), and a stage may still name the child whole
(``first: layer1`` is its first block, ``last: layer1`` its last). More cut points give the
planner stages it can balance more finely between a slow pool and a fast one. Whether the
parts chain into the model is checked, not assumed: run one after the other they must
reproduce the whole model's output on an example (allclose), else the model is refused with
the reason.

Two built-in models that can be cut, with weights fixed by a seed: ``builtin:resnet-like``, a
ResNet-18 layout (stem, four stages of two basic blocks, head; 3x224x224 -> 1000), the model
the pipelines benchmark measures; ``builtin:resnet-like-s``, the same layout at width 16 on
3x64x64 images, small enough for tests.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from accordion.workers.profiler import BatchProfile, summarize


@dataclass(frozen=True)
class ResNetLikeSpec:
    width: int
    image: int
    classes: int = 1000


SPLIT_BUILTINS: dict[str, ResNetLikeSpec] = {
    "resnet-like": ResNetLikeSpec(width=64, image=224),
    "resnet-like-s": ResNetLikeSpec(width=16, image=64, classes=10),
}


class SplitError(ValueError):
    """The model cannot be cut as asked: not a chain of parts, or an unknown part."""


class _BasicBlock(nn.Module):
    """ResNet's basic block: two 3x3 convolutions and a shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


def build_resnet_like(name: str, seed: int = 0) -> tuple[nn.Sequential, tuple[int, ...]]:
    """A built-in ResNet-18-like model and one sample's shape; the same weights everywhere."""
    spec = SPLIT_BUILTINS.get(name)
    if spec is None:
        raise ValueError(f"unknown builtin model {name!r}; known: {', '.join(SPLIT_BUILTINS)}")
    with torch.random.fork_rng(devices=[]):  # the caller's generator is left as it was
        torch.manual_seed(seed)
        w = spec.width
        parts: OrderedDict[str, nn.Module] = OrderedDict(
            stem=nn.Sequential(
                nn.Conv2d(3, w, 7, 2, 3, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(),
                nn.MaxPool2d(3, 2, 1),
            )
        )
        cin = w
        for i, cout in enumerate((w, 2 * w, 4 * w, 8 * w)):
            stride = 1 if i == 0 else 2
            parts[f"layer{i + 1}"] = nn.Sequential(
                _BasicBlock(cin, cout, stride), _BasicBlock(cout, cout, 1)
            )
            cin = cout
        parts["head"] = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, spec.classes)
        )
        model = nn.Sequential(parts)
    return model.eval(), (3, spec.image, spec.image)


def _is_sequential(module: nn.Module) -> bool:
    """torch.nn's own Sequential (a subclass may run its children otherwise), or TorchScript
    of one."""
    if isinstance(module, torch.jit.ScriptModule):
        return getattr(module, "original_name", "") == "Sequential"
    return type(module) is nn.Sequential


def _cut_inside(child: nn.Module) -> list[tuple[str, nn.Module]]:
    """The blocks of a top-level child that may be cut between: those of a Sequential of
    at least two composite modules (residual blocks, not a conv, a norm and an activation,
    whose cut would hand on as much for no balance worth having); else none."""
    blocks = list(child.named_children())
    if (
        _is_sequential(child)
        and len(blocks) >= 2
        and all(any(True for _ in b.children()) for _, b in blocks)
    ):
        return blocks
    return []


def parts_of(module: nn.Module, input_shape: tuple[int, ...]) -> list[tuple[str, nn.Module]]:
    """The model's parts between candidate cut points, in order (see the module docstring),
    checked to chain into the whole model."""
    parts: list[tuple[str, nn.Module]] = []
    for name, child in module.named_children():
        blocks = _cut_inside(child)
        parts += [(f"{name}.{b}", block) for b, block in blocks] or [(name, child)]
    if len(parts) < 2:
        raise SplitError("the model has fewer than 2 top-level parts: nothing to cut between")
    torch.manual_seed(0)
    example = torch.randn(2, *input_shape)
    with torch.inference_mode():
        whole = module(example)
        chained = example
        for _, part in parts:
            chained = part(chained)
    if (
        not isinstance(whole, torch.Tensor)
        or not isinstance(chained, torch.Tensor)
        or whole.shape != chained.shape
        or not torch.allclose(whole, chained, rtol=1e-4, atol=1e-5)
    ):
        raise SplitError(
            "the model's top-level parts run one after the other do not give its output: "
            "it cannot be cut between them (an nn.Sequential can)"
        )
    return parts


def part_span(parts: list[tuple[str, nn.Module]], first: str, last: str) -> tuple[int, int]:
    """Indices of the first and the last part of `first`..`last`: a part's name, or a
    top-level child's that was cut inside (its first block to start, its last to end)."""
    names = [n for n, _ in parts]

    def index(name: str, end: bool) -> int:
        inside = [i for i, n in enumerate(names) if n == name or n.startswith(f"{name}.")]
        if not inside:
            raise SplitError(f"no part {name!r}; the model's parts: {', '.join(names)}")
        return inside[-1] if end else inside[0]

    a, b = index(first, end=False), index(last, end=True)
    if a > b:
        raise SplitError(f"part {first!r} comes after {last!r}")
    return a, b


def stage_module(
    module: nn.Module, input_shape: tuple[int, ...], first: str, last: str
) -> nn.Module:
    """Parts `first`..`last` of the model as one module (a pipeline stage)."""
    parts = parts_of(module, input_shape)
    a, b = part_span(parts, first, last)
    return nn.Sequential(*(part for _, part in parts[a : b + 1])).eval()


def stage_input_shape(
    module: nn.Module, input_shape: tuple[int, ...], first: str
) -> tuple[int, ...]:
    """One sample's shape at the input of part `first` (what the previous stage hands on)."""
    parts = parts_of(module, input_shape)
    a, _ = part_span(parts, first, first)
    x = torch.zeros(1, *input_shape)
    with torch.inference_mode():
        for _, part in parts[:a]:
            x = part(x)
    return tuple(x.shape[1:])


def is_first_stage(module: nn.Module, input_shape: tuple[int, ...], first: str) -> bool:
    """Whether a stage that starts at part `first` takes the model's own input."""
    return part_span(parts_of(module, input_shape), first, first)[0] == 0


@dataclass(frozen=True)
class PartProfile:
    """One part's latency per batch size and the tensor it hands on, per request."""

    name: str
    output_shape: tuple[int, ...]
    output_bytes: int
    profiles: list[BatchProfile]


def profile_parts(
    module: nn.Module,
    input_shape: tuple[int, ...],
    batch_sizes: list[int],
    *,
    repeats: int = 5,
    torch_threads: int = 1,
) -> list[PartProfile]:
    """Time every part alone on CPU at each batch size, on the input the parts before it
    produce; and the whole model, for the overhead of cutting (`whole_profile`)."""
    torch.set_num_threads(torch_threads)
    parts = parts_of(module, input_shape)
    sizes = sorted(set(batch_sizes))
    times: dict[str, dict[int, list[float]]] = {n: {b: [] for b in sizes} for n, _ in parts}
    shapes: dict[str, tuple[int, ...]] = {}
    nbytes: dict[str, int] = {}
    torch.manual_seed(0)
    inputs: dict[tuple[str, int], torch.Tensor] = {}
    with torch.inference_mode():
        for b in sizes:  # every part's input, and a warm-up
            x = torch.randn(b, *input_shape)
            for name, part in parts:
                inputs[name, b] = x
                y = part(x)
                shapes[name] = tuple(y.shape[1:])
                nbytes[name] = int(y[0].numel() * y.element_size())
                x = y
        # Rounds over every (batch size, part): interference on a shared machine (bursty over
        # seconds) spreads over all of them instead of skewing one part's share.
        for _ in range(repeats):
            for b in sizes:
                for name, part in parts:
                    started = time.perf_counter()
                    part(inputs[name, b])
                    times[name][b].append(time.perf_counter() - started)
    return [
        PartProfile(
            name=name,
            output_shape=shapes[name],
            output_bytes=nbytes[name],
            profiles=[summarize(b, times[name][b]) for b in sorted(times[name])],
        )
        for name, _ in parts
    ]


def whole_profile(
    module: nn.Module,
    input_shape: tuple[int, ...],
    batch_sizes: list[int],
    *,
    repeats: int = 5,
    torch_threads: int = 1,
) -> list[BatchProfile]:
    """The whole model's latency per batch size, timed the same way as its parts."""
    torch.set_num_threads(torch_threads)
    sizes = sorted(set(batch_sizes))
    torch.manual_seed(0)
    inputs = {b: torch.randn(b, *input_shape) for b in sizes}
    runs: dict[int, list[float]] = {b: [] for b in sizes}
    with torch.inference_mode():
        for b in sizes:
            module(inputs[b])  # warm-up
        for _ in range(repeats):  # in rounds, as `profile_parts`
            for b in sizes:
                started = time.perf_counter()
                module(inputs[b])
                runs[b].append(time.perf_counter() - started)
    return [summarize(b, runs[b]) for b in sizes]


def stages_yaml(parts: list[PartProfile], pool: str) -> str:
    """The `stages` block of a variant (its parts between cut points), as YAML."""
    lines = ["stages:"]
    for part in parts:
        shape = "x".join(str(d) for d in part.output_shape)
        lines += [
            f"  - name: {part.name}  # output {shape}",
            f"    outputBytes: {part.output_bytes}",
            "    profiles:",
            f"      - pool: {pool}",
            "        batches:",
        ]
        lines += [
            f"          - {{batchSize: {p.batch_size}, p50Ms: {p.p50_ms}, p90Ms: {p.p90_ms}, "
            f"p99Ms: {p.p99_ms}}}"
            for p in part.profiles
        ]
    return "\n".join(lines) + "\n"


def profile_split_of(
    ref: str,
    batch_sizes: list[int],
    pool: str,
    *,
    repeats: int = 5,
    torch_threads: int = 1,
    input_shape: list[int] | None = None,
) -> str:
    """`accordion profile --split`: the `stages` block of a model, after a comment that
    compares the parts' summed latency with the whole model's (the cost of cutting)."""
    from accordion.workers.models import load_model

    loaded = load_model(ref, input_shape)
    shape = tuple(loaded.input_shape)
    parts = profile_parts(
        loaded.module, shape, batch_sizes, repeats=repeats, torch_threads=torch_threads
    )
    whole = whole_profile(
        loaded.module, shape, batch_sizes, repeats=repeats, torch_threads=torch_threads
    )
    lines = ["# batch: whole model p50 ms / parts summed p50 ms"]
    for point in whole:
        summed = sum(
            p.p50_ms for part in parts for p in part.profiles if p.batch_size == point.batch_size
        )
        lines.append(f"#   {point.batch_size}: {point.p50_ms:.3f} / {summed:.3f}")
    return "\n".join(lines) + "\n" + stages_yaml(parts, pool)
