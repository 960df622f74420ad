"""Staged execution inside the worker: `batching.mode` cellular and node over real HTTP
(KServe v2), answers equal to each request computed alone."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
import torch
from aiohttp.test_utils import TestClient, TestServer

from accordion.workers.config import BatchingConfig
from accordion.workers.seqmodels import DecoderStaged, GruStaged, cnn_staged
from accordion.workers.server import Worker, create_app
from accordion.workers.staged import StagedModel

from .conftest import DEVICES, FLOAT_ATOL, worker_config


def body(sample: np.ndarray[Any, Any], datatype: str) -> dict[str, object]:
    return {
        "inputs": [
            {
                "name": "input",
                "shape": [1, *sample.shape],
                "datatype": datatype,
                "data": sample.reshape(-1).tolist(),
            }
        ]
    }


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    ("name", "mode", "reference"),
    [
        ("gru-seq", "cellular", GruStaged),
        ("decoder-tiny", "cellular", DecoderStaged),
        ("gru-seq", "request", GruStaged),
        ("cnn-deep", "node", cnn_staged),
    ],
)
async def test_worker_serves_staged_modes(
    name: str, mode: str, reference: type[StagedModel], device: str
) -> None:
    model = reference()
    model.to(device)  # the reference on the worker's device
    config = worker_config(
        model_name=name,
        model=f"builtin:{name}",
        device=device,
        profile_ms={},
        batching=BatchingConfig(max_batch_size=4, max_queue=64, mode=mode),
    )
    worker = Worker(config, warm_up=False)
    lengths = [3, 17, 8, 30, 5, 12]
    samples = [model.example(n, seed=i) for i, n in enumerate(lengths)]
    async with TestClient(TestServer(create_app(worker))) as client:
        assert worker.engine is not None
        meta = await (await client.get(f"/v2/models/{name}")).json()
        assert meta["parameters"]["mode"] == mode
        responses = await asyncio.gather(
            *(
                client.post(f"/v2/models/{name}/infer", json=body(s, model.datatype))
                for s in samples
            )
        )
        for sample, response in zip(samples, responses, strict=True):
            assert response.status == 200, await response.text()
            assert response.headers["x-accordion-outcome"] == "ok"
            out = (await response.json())["outputs"][0]
            got = np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])[0]
            assert np.allclose(got, model.alone(sample), atol=max(1e-4, FLOAT_ATOL[device]))
        metrics = await (await client.get("/metrics")).text()
        assert f'accordion_worker_requests_total{{model="{name}",outcome="ok"}} 6.0' in metrics


async def test_worker_refuses_a_malformed_sequence_with_a_reason() -> None:
    config = worker_config(
        model_name="decoder-tiny",
        model="builtin:decoder-tiny",
        profile_ms={},
        batching=BatchingConfig(max_batch_size=2, mode="cellular"),
    )
    async with TestClient(TestServer(create_app(Worker(config, warm_up=False)))) as client:
        no_room = np.asarray([5, 7, 9], dtype=np.int64)  # nothing to generate
        response = await client.post("/v2/models/decoder-tiny/infer", json=body(no_room, "INT64"))
        assert response.status == 400
        assert "one 0 per token to generate" in (await response.json())["error"]
        ok = np.asarray([5, 7, 0, 0], dtype=np.int64)
        response = await client.post("/v2/models/decoder-tiny/infer", json=body(ok, "INT64"))
        assert response.status == 200


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_a_staged_worker_on_cuda_without_one_says_so() -> None:
    config = worker_config(
        model_name="gru-seq",
        model="builtin:gru-seq",
        device="cuda",
        profile_ms={},
        batching=BatchingConfig(max_batch_size=4, mode="cellular"),
    )
    with pytest.raises(RuntimeError, match="torch sees no CUDA device"):
        Worker(config, warm_up=False)
    with pytest.raises(RuntimeError, match="torch sees no CUDA device"):
        GruStaged().to("cuda")


def test_a_staged_model_without_device_support_refuses_another_device() -> None:
    class HostOnly(StagedModel):
        def steps(self, sample: Any) -> int:
            return 1

        def state_bytes(self, sample: Any) -> int:
            return 0

        def begin(self, sample: Any) -> Any:
            return sample

        def run(self, stage: int, states: Any) -> list[Any]:
            return list(states)

        def finish(self, state: Any) -> Any:
            return state

        def alone(self, sample: Any) -> Any:
            return sample

        def example(self, steps: int, seed: int = 0) -> Any:
            return np.zeros(1)

    HostOnly().to("cpu")
    with pytest.raises(ValueError, match="HostOnly runs on the CPU only, not on cuda"):
        HostOnly().to("cuda")


def test_cellular_mode_needs_a_cell_model() -> None:
    from accordion.workers.stagedworker import make_scheduler

    with pytest.raises(ValueError, match="cellular needs a cell model"):
        make_scheduler(BatchingConfig(mode="cellular"), cnn_staged(), [{1: 0.001}] * 10, slo_s=0.1)


def test_serve_command_selects_the_batching_mode() -> None:
    import json
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "accordion.workers",
            "serve",
            "--model",
            "builtin:gru-seq",
            "--batching",
            "cellular",
            "--max-batch-size",
            "4",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}/v2/models/gru-seq"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            try:
                with urllib.request.urlopen(f"{url}/ready", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "worker did not become ready"
            time.sleep(0.2)
        with urllib.request.urlopen(url, timeout=5) as resp:
            assert json.load(resp)["parameters"]["mode"] == "cellular"
    finally:
        proc.terminate()
        proc.wait(10)


async def test_every_steps_figures_reach_the_loop_in_fewer_wake_ups() -> None:
    """The engine hands a step's figures (batch size, latency) to the event loop with the next
    answers (or after `STAGE_FLUSH_S`), not by a wake-up of its own: every step is counted in
    the worker's metrics, and the loop is woken fewer times than steps run."""
    from accordion.workers.cellular import CellularScheduler
    from accordion.workers.staged import StageLatency
    from accordion.workers.stagedworker import StagedEngine

    model = GruStaged()
    steps = 0
    run = model.run

    def counted(stage: int, states: Any) -> list[Any]:
        nonlocal steps
        steps += 1
        return run(stage, states)

    model.run = counted  # type: ignore[method-assign]
    figures: list[tuple[int, float, float | None]] = []
    scheduler = CellularScheduler(StageLatency([{1: 1e-4, 8: 1e-3}]), max_batch_size=8)
    engine = StagedEngine(model, scheduler, on_stage=lambda *f: figures.append(f))
    loop = asyncio.get_running_loop()
    wakes = 0
    wake = loop.call_soon_threadsafe

    def counted_wake(*args: Any, **kwargs: Any) -> Any:
        nonlocal wakes
        wakes += 1
        return wake(*args, **kwargs)

    loop.call_soon_threadsafe = counted_wake  # type: ignore[method-assign,assignment]
    try:
        await engine.start()
        samples = [model.example(n, seed=i) for i, n in enumerate([5, 30, 12, 40, 3, 22])]
        rows = await asyncio.gather(*(engine.submit(s[None], loop.time() + 10.0) for s in samples))
        await engine.stop()
    finally:
        del loop.call_soon_threadsafe
    assert all(outcome == "ok" for ((_, outcome),) in rows)
    assert steps >= 40
    assert len(figures) == steps  # every step's figures reached the loop
    assert sum(size for size, _, _ in figures) == sum(model.steps(s) for s in samples)
    assert wakes < steps / 2
