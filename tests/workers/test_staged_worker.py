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
