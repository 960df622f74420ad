"""Models a worker serves, and their execution off the event loop. The only torch module.

Two sources, never a hub at run time:

* the built-in demo family ``builtin:demo-xs`` ... ``builtin:demo-xl``: MLP classifiers of
  increasing width and depth, built in code from a fixed seed, so every process builds the
  same weights. Their accuracies are ILLUSTRATIVE numbers for demos (the models are random,
  not trained); what is real is their latency, which grows with their size;
* a file: TorchScript (``torch.jit.save``) or ``torch.export`` (``.pt2``, ``torch.export.save``).

`ModelRunner` executes batches on one dedicated thread (the event loop never blocks on torch),
sets torch's thread count (1 per worker by default: workers scale out by processes), and on
CUDA warms up every batch size, stages inputs in pinned memory and copies without blocking.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from accordion.workers.seqmodels import STAGED_BUILTINS
from accordion.workers.splitting import SPLIT_BUILTINS, build_resnet_like
from accordion.workers.staged import StagedModel

BUILTIN_PREFIX = "builtin:"


@dataclass(frozen=True)
class DemoSpec:
    """One member of the demo family. `accuracy` is illustrative, not measured."""

    name: str
    hidden: int
    depth: int
    accuracy: float
    input_features: int = 256
    classes: int = 100


DEMO_FAMILY: dict[str, DemoSpec] = {
    spec.name: spec
    for spec in (
        DemoSpec("demo-xs", hidden=128, depth=1, accuracy=0.70),
        DemoSpec("demo-s", hidden=512, depth=2, accuracy=0.75),
        DemoSpec("demo-m", hidden=1024, depth=2, accuracy=0.79),
        DemoSpec("demo-l", hidden=2048, depth=3, accuracy=0.82),
        DemoSpec("demo-xl", hidden=4096, depth=3, accuracy=0.84),
    )
}

_DTYPES: dict[str, torch.dtype] = {
    "FP32": torch.float32,
    "FP16": torch.float16,
    "FP64": torch.float64,
    "INT64": torch.int64,
    "INT32": torch.int32,
}


def build_demo(name: str, seed: int = 0) -> torch.nn.Module:
    """Build a demo model with weights fixed by `seed` (the same in every process)."""
    spec = DEMO_FAMILY.get(name)
    if spec is None:
        raise ValueError(f"unknown builtin model {name!r}; known: {', '.join(DEMO_FAMILY)}")
    with torch.random.fork_rng(devices=[]):  # the caller's generator is left as it was
        torch.manual_seed(seed)
        layers: list[torch.nn.Module] = []
        width = spec.input_features
        for _ in range(spec.depth):
            layers += [torch.nn.Linear(width, spec.hidden), torch.nn.ReLU()]
            width = spec.hidden
        layers.append(torch.nn.Linear(width, spec.classes))
        model = torch.nn.Sequential(*layers)
    return model.eval()


class ModelLoadError(ValueError):
    """The model file cannot be loaded as configured: not a model, or no input shape."""


@dataclass
class LoadedModel:
    """A module and the signature of one sample (no batch dimension)."""

    module: torch.nn.Module
    input_shape: tuple[int, ...]
    datatype: str
    accuracy: float | None = None
    staged: StagedModel | None = None
    """The model as stages (`accordion.workers.staged`), for built-in staged models."""


def load_model(
    ref: str, input_shape: list[int] | None = None, datatype: str = "FP32"
) -> LoadedModel:
    """Load `builtin:NAME` or a TorchScript / torch.export file from a local path."""
    if ref.startswith(BUILTIN_PREFIX):
        name = ref[len(BUILTIN_PREFIX) :]
        if name in STAGED_BUILTINS:  # gru-seq, decoder-tiny, cnn-deep (seqmodels)
            staged = STAGED_BUILTINS[name]()
            built = getattr(staged, "module", None)
            assert isinstance(built, torch.nn.Module)
            return LoadedModel(built, staged.input_shape, staged.datatype, staged=staged)
        if name in SPLIT_BUILTINS:  # resnet-like, resnet-like-s: cut into pipelines
            resnet, resnet_shape = build_resnet_like(name)
            return LoadedModel(resnet, resnet_shape, "FP32")
        spec = DEMO_FAMILY.get(name)
        if spec is None:
            raise ValueError(f"unknown builtin model {name!r}; known: {', '.join(DEMO_FAMILY)}")
        return LoadedModel(build_demo(name), (spec.input_features,), "FP32", spec.accuracy)
    path = Path(ref)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    if not zipfile.is_zipfile(path):  # both formats are zip archives
        raise ModelLoadError(
            f"{path} is not a TorchScript or torch.export model: not a zip archive"
        )
    module: torch.nn.Module | None = None
    shape = tuple(input_shape) if input_shape else None
    # torch.export logs its own traceback before it raises; the error below says it in one line.
    export_log = logging.getLogger("torch.export")
    level = export_log.level
    export_log.setLevel(logging.CRITICAL)
    try:
        if path.suffix != ".pt2":
            with contextlib.suppress(RuntimeError):  # not TorchScript: try torch.export
                module = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
        if path.suffix == ".pt2" or module is None:
            program = torch.export.load(str(path))
            module = program.module()
            shape = shape or _exported_sample_shape(program)
    except Exception as exc:  # torch raises RuntimeError, zipfile.BadZipFile, pickle errors ...
        raise ModelLoadError(
            f"{path} is not a TorchScript or torch.export model: {type(exc).__name__}: {exc}"[:500]
        ) from exc
    finally:
        export_log.setLevel(level)
    if not shape:
        raise ModelLoadError(
            "a model file needs input_shape (one sample, no batch dimension): TorchScript "
            "files do not record it"
        )
    if hasattr(module, "eval") and not isinstance(module, torch.fx.GraphModule):
        module.eval()
    return LoadedModel(module, shape, datatype)


def _exported_sample_shape(program: torch.export.ExportedProgram) -> tuple[int, ...] | None:
    """One sample's shape as a torch.export program records it: its first input, less the
    batch dimension (None when that shape is symbolic beyond the batch dimension)."""
    inputs = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in inputs:
            shape = getattr(node.meta.get("val"), "shape", None)
            if shape is None or len(shape) < 2:
                return None
            try:
                return tuple(int(d) for d in shape[1:])
            except (TypeError, ValueError):
                return None
    return None


def torch_device(device: str) -> torch.device:
    """The torch device a worker's ``device`` names (cpu, cuda, cuda:N), refused with a reason
    when it is neither or when torch sees no CUDA device."""
    target = torch.device(device)
    if target.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r}: cpu, cuda or cuda:N")
    if target.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device cuda requested but torch sees no CUDA device")
    return target


class ModelRunner:
    """Runs batches of a model on one dedicated thread, on CPU or CUDA."""

    def __init__(self, model: LoadedModel, device: str = "cpu", torch_threads: int = 1) -> None:
        torch.set_num_threads(torch_threads)
        self.model = model
        self.device = torch_device(device)
        self.module = model.module.to(self.device)
        self.dtype = _DTYPES[model.datatype]
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="accordion-model")
        self._executor.submit(torch.set_num_threads, torch_threads).result()

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def run_sync(self, batch: npt.NDArray[np.generic]) -> tuple[npt.NDArray[np.generic], float]:
        """Execute one batch; return the output and the execution latency in seconds."""
        start = time.perf_counter()
        with torch.inference_mode():
            tensor = torch.from_numpy(np.ascontiguousarray(batch)).to(self.dtype)
            if self.is_cuda:
                tensor = tensor.pin_memory().to(self.device, non_blocking=True)
            output = self.module(tensor)
            if isinstance(output, (tuple, list)):
                output = output[0]
            if self.is_cuda:
                host = torch.empty(output.shape, dtype=output.dtype, pin_memory=True)
                host.copy_(output, non_blocking=True)
                torch.cuda.synchronize(self.device)
                output = host
            result = output.detach().cpu().numpy()
        return result, time.perf_counter() - start

    def submit(
        self, batch: npt.NDArray[np.generic]
    ) -> asyncio.Future[tuple[npt.NDArray[np.generic], float]]:
        """Hand one batch to the model thread at once, without blocking the event loop (it
        starts before this returns, if the thread is free); the future holds (output,
        execution seconds)."""
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._executor, self.run_sync, batch)

    def example(self, batch_size: int, seed: int = 0) -> npt.NDArray[np.generic]:
        rng = np.random.default_rng(seed)
        shape = (batch_size, *self.model.input_shape)
        if self.model.datatype.startswith("INT"):
            return rng.integers(0, 10, size=shape)
        return rng.standard_normal(shape).astype(np.float32)

    def warm_up(self, batch_sizes: list[int], repeats: int = 2) -> None:
        """Run every batch size once or twice (CUDA kernels, allocator, lazy init)."""
        for b in batch_sizes:
            x = self.example(b)
            for _ in range(repeats):
                self._executor.submit(self.run_sync, x).result()

    def measure(self, batch_size: int, repeats: int) -> list[float]:
        """Execution latencies (seconds) of `repeats` runs of one batch size."""
        x = self.example(batch_size)
        return [self._executor.submit(self.run_sync, x).result()[1] for _ in range(repeats)]

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
