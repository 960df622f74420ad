"""Shared fixtures: a real worker (torch on CPU, the smallest demo model) on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import torch
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from accordion.workers.config import BatchingConfig, WorkerConfig
from accordion.workers.server import Worker, create_app

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(
            not torch.cuda.is_available(), reason="needs a CUDA device (run on a GPU machine)"
        ),
    ),
]
"""The devices a test of the models' execution runs on: the CPU always, CUDA where torch sees
one (CI has none; `bench/gpu/check.sh` runs these on a GPU machine)."""

FLOAT_ATOL = {"cpu": 1e-5, "cuda": 2e-3}
"""How close a float answer must be to the request's reference on the same device: exact to
rounding on the CPU; on CUDA cuDNN may pick other kernels for a batch than for one request (and
runs convolutions in TF32 by default, as PyTorch does)."""


def worker_config(**overrides: object) -> WorkerConfig:
    base: dict[str, object] = {
        "model_name": "demo-xs",
        "model": "builtin:demo-xs",
        "slo_ms": 1000.0,
        "profile_ms": {1: 1.0, 8: 2.0},
        "batching": BatchingConfig(max_batch_size=8, max_queue=64),
    }
    base.update(overrides)
    return WorkerConfig.model_validate(base)


@pytest.fixture
async def worker_client() -> AsyncIterator[TestClient[web.Request, web.Application]]:
    worker = Worker(worker_config(), warm_up=False)
    async with TestClient(TestServer(create_app(worker))) as client:
        yield client


def sample_body(features: int = 256, value: float = 0.5) -> dict[str, object]:
    return {
        "id": "r1",
        "inputs": [
            {
                "name": "input",
                "shape": [1, features],
                "datatype": "FP32",
                "data": [value] * features,
            }
        ],
    }
