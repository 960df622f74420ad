"""Pipeline stages (PPipe, issue 19): a model cut in two, served by two real worker processes.

Stage 1 (stem..layer2 of builtin:resnet-like-s) forwards its intermediate tensor to stage 2
(layer3..head) as a v2 binary-tensor request; the client's answer from stage 1 must equal the
whole model's output. The deadline travels: the next stage sees what is left of the budget.
Splitting refuses what it cannot cut.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from torch import nn

from accordion.workers.config import DEADLINE_HEADER
from accordion.workers.models import load_model
from accordion.workers.protocol import InferRequest as V2Request
from accordion.workers.protocol import InferResponse, render_rest
from accordion.workers.server import Worker, create_app
from accordion.workers.splitting import (
    SplitError,
    is_first_stage,
    part_span,
    parts_of,
    profile_parts,
    stage_input_shape,
    stage_module,
)

from .conftest import worker_config
from .test_processes import CLI, free_port, http, start, wait_ready

MODEL = "builtin:resnet-like-s"
FINE_BLOCKS = [f"layer{i}.{b}" for i in range(1, 5) for b in range(2)]


def _sample(seed: int = 0) -> np.ndarray[Any, np.dtype[np.float32]]:
    return np.random.default_rng(seed).standard_normal((1, 3, 64, 64)).astype(np.float32)


def _whole(x: np.ndarray[Any, np.dtype[np.float32]]) -> np.ndarray[Any, np.dtype[np.float32]]:
    loaded = load_model(MODEL)
    with torch.inference_mode():
        out: np.ndarray[Any, np.dtype[np.float32]] = loaded.module(torch.from_numpy(x)).numpy()
    return out


def _body(x: np.ndarray[Any, np.dtype[np.float32]]) -> bytes:
    return json.dumps(
        {
            "id": "p1",
            "inputs": [
                {
                    "name": "input",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "data": x.ravel().tolist(),
                }
            ],
        }
    ).encode()


def _stage(first: str, last: str, port: int, next_port: int | None) -> str:
    pipeline: dict[str, Any] = {"first": first, "last": last}
    if next_port is not None:
        pipeline["next_url"] = f"http://127.0.0.1:{next_port}/v2/models/stage2/infer"
    return json.dumps(
        {
            "model_name": "stage1" if next_port is not None else "stage2",
            "model": MODEL,
            "slo_ms": 2000.0,
            "port": port,
            "pipeline": pipeline,
            "batching": {"max_batch_size": 4, "max_queue": 64},
        }
    )


@pytest.fixture
def two_stages() -> Iterator[str]:
    p1, p2 = free_port(), free_port()
    second = start(["serve", "--config-json", _stage("layer3", "head", p2, None)])
    first = start(["serve", "--config-json", _stage("stem", "layer2", p1, p2)])
    try:
        wait_ready(second, f"http://127.0.0.1:{p2}", 120)
        wait_ready(first, f"http://127.0.0.1:{p1}", 120)
        yield f"http://127.0.0.1:{p1}"
    finally:
        for proc in (first, second):
            proc.terminate()
            proc.wait(timeout=30)


def test_two_worker_processes_answer_as_the_whole_model(two_stages: str) -> None:
    for seed in range(3):
        x = _sample(seed)
        status, _, payload = http("POST", f"{two_stages}/v2/models/stage1/infer", _body(x))
        assert status == 200, payload[:300]
        answer = json.loads(payload)
        out = np.asarray(answer["outputs"][0]["data"], dtype=np.float32).reshape(1, -1)
        assert answer["id"] == "p1"
        np.testing.assert_allclose(out, _whole(x), rtol=1e-4, atol=1e-4)
    # The first stage's input is the image; its metadata says so.
    status, _, meta = http("GET", f"{two_stages}/v2/models/stage1")
    assert json.loads(meta)["inputs"][0]["shape"] == [-1, 3, 64, 64]


@pytest.fixture
async def capture() -> AsyncIterator[tuple[TestClient[web.Request, web.Application], list[float]]]:
    """A stand-in next stage that records the deadline it is given and answers zeros."""
    seen: list[float] = []

    async def infer(request: web.Request) -> web.Response:
        seen.append(float(request.headers[DEADLINE_HEADER]))
        await request.read()
        response = InferResponse("next", "1", {"output": np.zeros((1, 10), np.float32)})
        parsed = V2Request(inputs={}, binary_all=True)
        payload, length = render_rest(response, parsed)
        headers = {"Inference-Header-Content-Length": str(length)} if length is not None else {}
        return web.Response(body=payload, headers=headers)

    app = web.Application()
    app.router.add_post("/v2/models/next/infer", infer)
    async with TestClient(TestServer(app)) as client:
        yield client, seen


async def test_the_deadline_travels_to_the_next_stage(
    capture: tuple[TestClient[web.Request, web.Application], list[float]],
) -> None:
    client, seen = capture
    url = str(client.make_url("/v2/models/next/infer"))
    config = worker_config(
        model_name="stage1",
        model=MODEL,
        slo_ms=5000.0,
        profile_ms={1: 5.0},
        pipeline={"first": "stem", "last": "layer2", "next_url": url},
    )
    worker = Worker(config, warm_up=False)
    async with TestClient(TestServer(create_app(worker))) as front:
        started = time.monotonic()
        resp = await front.post(
            "/v2/models/stage1/infer", data=_body(_sample()), headers={DEADLINE_HEADER: "800"}
        )
        elapsed_ms = (time.monotonic() - started) * 1000.0
        assert resp.status == 200, await resp.text()
        answer = await resp.json()
    assert answer["outputs"][0]["shape"] == [1, 10]
    assert len(seen) == 1
    # What is left of 800 ms after stage 1 ran: less than the budget, more than what remained
    # when the answer came back.
    assert 800.0 - elapsed_ms - 1.0 <= seen[0] < 800.0


async def test_an_unreachable_next_stage_is_a_502_with_the_reason() -> None:
    config = worker_config(
        model_name="stage1",
        model=MODEL,
        profile_ms={1: 5.0},
        pipeline={
            "first": "stem",
            "last": "layer2",
            "next_url": f"http://127.0.0.1:{free_port()}/v2/models/x/infer",
        },
    )
    worker = Worker(config, warm_up=False)
    async with TestClient(TestServer(create_app(worker))) as front:
        resp = await front.post("/v2/models/stage1/infer", data=_body(_sample()))
        assert resp.status == 502
        assert "next stage unreachable" in await resp.text()


def test_parts_are_timed_and_the_tensor_at_each_cut_is_measured() -> None:
    loaded = load_model(MODEL)
    parts = profile_parts(loaded.module, loaded.input_shape, [1, 2], repeats=3)
    # Cut points between the residual blocks too (two per ResNet stage), not inside the stem
    # or the head (a conv, a norm, an activation: no blocks).
    assert [p.name for p in parts] == ["stem", *FINE_BLOCKS, "head"]
    assert parts[0].output_shape == (16, 16, 16)
    assert parts[3].output_shape == (32, 8, 8)  # layer2.0: the stride-2 block halves the image
    assert parts[0].output_bytes == 16 * 16 * 16 * 4
    assert parts[-1].output_bytes == 10 * 4
    for p in parts:
        assert [b.batch_size for b in p.profiles] == [1, 2]
        assert all(b.p50_ms > 0 for b in p.profiles)


class _Residual(nn.Module):
    """Top-level children that do not chain into the output: it cannot be cut."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.b(x) + self.a(x)
        return out


@pytest.mark.parametrize(
    ("cut_after", "cut_before"),
    [
        ("layer2.0", "layer2.1"),
        ("layer3.1", "layer4.0"),
        ("layer1", "layer2.0"),
        ("stem", "layer1"),
    ],
)
def test_a_cut_between_residual_blocks_gives_the_whole_models_output(
    cut_after: str, cut_before: str
) -> None:
    loaded = load_model(MODEL)
    module, shape = loaded.module, loaded.input_shape
    first = stage_module(module, shape, "stem", cut_after)
    second = stage_module(module, shape, cut_before, "head")
    x = torch.from_numpy(np.concatenate([_sample(1), _sample(2), _sample(3)]))
    with torch.inference_mode():
        handed = first(x)
        assert tuple(handed.shape[1:]) == stage_input_shape(module, shape, cut_before)
        assert torch.allclose(second(handed), module(x), rtol=1e-4, atol=1e-5)
    assert is_first_stage(module, shape, "stem")
    assert not is_first_stage(module, shape, cut_before)


def test_a_stage_may_name_a_resnet_stage_whole() -> None:
    # `layer2` spans its two blocks: stages written before the finer cut points still work.
    loaded = load_model(MODEL)
    parts = parts_of(loaded.module, loaded.input_shape)
    assert part_span(parts, "layer2", "layer3") == (3, 6)
    assert part_span(parts, "layer2.1", "layer2") == (4, 4)
    assert part_span(parts, "stem", "head") == (0, len(parts) - 1)
    with pytest.raises(SplitError, match=r"no part 'layer2\.5'"):
        part_span(parts, "layer2.5", "head")
    with pytest.raises(SplitError, match="comes after"):
        part_span(parts, "layer2.1", "layer2.0")


class _Custom(nn.Sequential):
    """A Sequential subclass may run its children otherwise: never cut inside."""


def test_only_torchs_own_sequential_of_blocks_is_cut_inside() -> None:
    blocks = [nn.Sequential(nn.Linear(4, 4), nn.ReLU()) for _ in range(2)]
    model = nn.Sequential(
        nn.Sequential(*blocks),
        _Custom(nn.Sequential(nn.Linear(4, 4)), nn.Sequential(nn.Linear(4, 4))),
        nn.Linear(4, 2),
    )
    names = [n for n, _ in parts_of(model, (4,))]
    assert names == ["0.0", "0.1", "1", "2"]
    scripted = torch.jit.script(model)
    assert [n for n, _ in parts_of(scripted, (4,))][:2] == ["0.0", "0.1"]


def test_splitting_refuses_what_it_cannot_cut() -> None:
    with pytest.raises(SplitError, match="do not give its output"):
        parts_of(_Residual(), (4,))
    loaded = load_model(MODEL)
    with pytest.raises(SplitError, match="no part 'layer9'"):
        stage_module(loaded.module, loaded.input_shape, "stem", "layer9")
    with pytest.raises(SplitError, match="comes after"):
        stage_module(loaded.module, loaded.input_shape, "head", "stem")


def test_accordion_profile_split_prints_the_stages_block() -> None:
    done = subprocess.run(
        [
            *CLI,
            *("profile", "--model", MODEL, "--split", "--batch-sizes", "1,2"),
            *("--repeats", "3", "--pool", "gpu-small"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    doc = yaml.safe_load(done.stdout)
    stages = doc["stages"]
    assert [s["name"] for s in stages] == ["stem", *FINE_BLOCKS, "head"]
    assert stages[4]["outputBytes"] == 32 * 8 * 8 * 4  # layer2.1: 32 channels of 8x8
    for stage in stages:
        (profile,) = stage["profiles"]
        assert profile["pool"] == "gpu-small"
        assert [b["batchSize"] for b in profile["batches"]] == [1, 2]
    assert "whole model p50 ms / parts summed" in done.stdout


async def test_a_stage_batches_against_its_share_of_the_deadline(
    capture: tuple[TestClient[web.Request, web.Application], list[float]],
) -> None:
    """A first stage that must leave 900 ms to the stages after it drops a request with 800 ms
    left at once (it cannot make its share even alone), and serves one with 2 s."""
    client, seen = capture
    config = worker_config(
        model_name="stage1",
        model=MODEL,
        profile_ms={1: 5.0},
        pipeline={
            "first": "stem",
            "last": "layer2",
            "next_url": str(client.make_url("/v2/models/next/infer")),
            "downstream_ms": 900.0,
        },
    )
    worker = Worker(config, warm_up=False)
    async with TestClient(TestServer(create_app(worker))) as front:
        url = "/v2/models/stage1/infer"
        short = await front.post(url, data=_body(_sample()), headers={DEADLINE_HEADER: "800"})
        assert short.status == 503
        assert "dropped" in await short.text()
        assert seen == []
        long = await front.post(url, data=_body(_sample()), headers={DEADLINE_HEADER: "2000"})
        assert long.status == 200
        assert len(seen) == 1
        assert seen[0] > 900.0
