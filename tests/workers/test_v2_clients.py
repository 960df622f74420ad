"""The Open Inference Protocol v2 as an independent client sees it: tritonclient (NVIDIA's
client library for Triton and KServe servers) over REST and over gRPC, against a real worker
process and a real router process in front of it, both started by the CLI with a gRPC port.

Every endpoint of the protocol (server live, ready and metadata; model ready and metadata with
inputs and outputs; infer), JSON and binary tensors, and a batch of 4 samples in one request:
all answers agree with each other and with the model run here in torch.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient  # type: ignore[import-untyped]
import tritonclient.http as httpclient  # type: ignore[import-untyped]
from tritonclient.utils import InferenceServerException  # type: ignore[import-untyped]

from accordion.workers.models import build_demo

from .test_processes import SERVICE, free_port, start, wait_ready, write_table

MODEL = "demo-xs"


@dataclass
class Endpoint:
    """One server (worker or router): the model name it serves and its two addresses."""

    kind: str
    model: str
    http: str
    grpc: str


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Endpoint]]:
    table = tmp_path_factory.mktemp("v2") / "routing.json"
    wport, wgrpc, rport, rgrpc = (free_port() for _ in range(4))
    worker_url = f"http://127.0.0.1:{wport}"
    write_table(table, worker_url, {"a": 1.0, "b": 0.0})
    worker = start(
        [
            *("serve", "--model", f"builtin:{MODEL}", "--port", str(wport)),
            *("--grpc-port", str(wgrpc), "--slo-ms", "5000", "--max-batch-size", "8"),
        ]
    )
    router = start(
        ["route", "--table", str(table), "--port", str(rport), "--grpc-port", str(rgrpc)]
    )
    try:
        wait_ready(worker, worker_url)
        wait_ready(router, f"http://127.0.0.1:{rport}", path=f"/v2/models/{SERVICE}/ready")
        yield {
            "worker": Endpoint("worker", MODEL, f"127.0.0.1:{wport}", f"127.0.0.1:{wgrpc}"),
            "router": Endpoint("router", SERVICE, f"127.0.0.1:{rport}", f"127.0.0.1:{rgrpc}"),
        }
    finally:
        for proc in (router, worker):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def expected(samples: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    with torch.inference_mode():
        out: np.ndarray[Any, Any] = build_demo(MODEL)(torch.from_numpy(samples)).numpy()
    return out


SAMPLES = np.random.default_rng(7).standard_normal((4, 256)).astype(np.float32)


@pytest.fixture(params=["worker", "router"])
def endpoint(request: pytest.FixtureRequest, servers: dict[str, Endpoint]) -> Endpoint:
    return servers[request.param]


def _metadata_checks(meta: dict[str, Any], endpoint: Endpoint) -> None:
    assert meta["name"] == endpoint.model
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 256]}]
    assert [(o["name"], o["datatype"]) for o in meta["outputs"]] == [("output", "FP32")]


def test_rest_every_endpoint(endpoint: Endpoint) -> None:
    client = httpclient.InferenceServerClient(url=endpoint.http)
    assert client.is_server_live()
    assert client.is_server_ready()
    server = client.get_server_metadata()
    assert server["name"] == "accordion"
    assert "binary_tensor_data" in server["extensions"]
    assert client.is_model_ready(endpoint.model)
    assert client.is_model_ready(endpoint.model, model_version="1")
    assert not client.is_model_ready("no-such-model")
    _metadata_checks(client.get_model_metadata(endpoint.model), endpoint)
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.get_model_metadata("no-such-model")


def _rest_infer(
    endpoint: Endpoint, samples: np.ndarray[Any, Any], binary: bool
) -> np.ndarray[Any, Any]:
    client = httpclient.InferenceServerClient(url=endpoint.http)
    tensor = httpclient.InferInput("input", list(samples.shape), "FP32")
    tensor.set_data_from_numpy(samples, binary_data=binary)
    output = httpclient.InferRequestedOutput("output", binary_data=binary)
    result = client.infer(endpoint.model, [tensor], outputs=[output], request_id="r-7")
    assert result.get_response()["id"] == "r-7"
    out: np.ndarray[Any, Any] = result.as_numpy("output")
    return out


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_rest_infer_single_and_batched(endpoint: Endpoint, binary: bool) -> None:
    want = expected(SAMPLES)
    one = _rest_infer(endpoint, SAMPLES[:1], binary)
    assert one.shape == (1, 100)
    np.testing.assert_allclose(one, want[:1], rtol=1e-4, atol=1e-5)
    batch = _rest_infer(endpoint, SAMPLES, binary)
    assert batch.shape == (4, 100)
    np.testing.assert_allclose(batch, want, rtol=1e-4, atol=1e-5)
    singles = np.concatenate([_rest_infer(endpoint, SAMPLES[i : i + 1], binary) for i in range(4)])
    # A batch answers what its samples do alone (up to float rounding: the batcher may run them
    # in batches of other sizes, whose kernels sum in another order).
    np.testing.assert_allclose(batch, singles, rtol=1e-5, atol=1e-6)


def test_grpc_every_endpoint(endpoint: Endpoint) -> None:
    client = grpcclient.InferenceServerClient(url=endpoint.grpc)
    assert client.is_server_live()
    assert client.is_server_ready()
    server = client.get_server_metadata(as_json=True)
    assert server["name"] == "accordion"
    assert "binary_tensor_data" in server["extensions"]
    assert client.is_model_ready(endpoint.model)
    assert client.is_model_ready(endpoint.model, model_version="1")
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.is_model_ready("no-such-model")
    meta = client.get_model_metadata(endpoint.model, as_json=True)
    for tensor in (*meta["inputs"], *meta["outputs"]):
        tensor["shape"] = [int(d) for d in tensor["shape"]]  # int64 fields are JSON strings
    _metadata_checks(meta, endpoint)
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.get_model_metadata("no-such-model")


def _grpc_infer(endpoint: Endpoint, samples: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    client = grpcclient.InferenceServerClient(url=endpoint.grpc)
    tensor = grpcclient.InferInput("input", list(samples.shape), "FP32")
    tensor.set_data_from_numpy(samples)
    result = client.infer(
        endpoint.model,
        [tensor],
        outputs=[grpcclient.InferRequestedOutput("output")],
        request_id="g-7",
        client_timeout=10.0,
    )
    assert result.get_response().id == "g-7"
    out: np.ndarray[Any, Any] = result.as_numpy("output")
    return out


def test_grpc_infer_single_and_batched_equals_rest(endpoint: Endpoint) -> None:
    want = expected(SAMPLES)
    one = _grpc_infer(endpoint, SAMPLES[:1])
    np.testing.assert_allclose(one, want[:1], rtol=1e-4, atol=1e-5)
    batch = _grpc_infer(endpoint, SAMPLES)
    assert batch.shape == (4, 100)
    rest = _rest_infer(endpoint, SAMPLES, binary=True)
    np.testing.assert_allclose(batch, rest, rtol=1e-5, atol=1e-6)


def test_grpc_refusals_carry_the_reason(endpoint: Endpoint) -> None:
    client = grpcclient.InferenceServerClient(url=endpoint.grpc)
    wrong = grpcclient.InferInput("input", [1, 255], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 255), dtype=np.float32))
    with pytest.raises(InferenceServerException, match=r"has shape \[1, 255\]") as info:
        client.infer(endpoint.model, [wrong])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    dtype = grpcclient.InferInput("input", [1, 256], "INT32")
    dtype.set_data_from_numpy(np.zeros((1, 256), dtype=np.int32))
    with pytest.raises(InferenceServerException, match="datatype 'INT32'"):
        client.infer(endpoint.model, [dtype])
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.infer("no-such-model", [dtype])
    # ...and the server goes on serving.
    assert _grpc_infer(endpoint, SAMPLES[:1]).shape == (1, 100)
