"""A worker started exactly as the operator starts it loads the model the InferenceService names.

The WorkerConfig is the operator's (`WorkerSpec.worker_config()` from `worker_specs` over a
parsed InferenceService), passed in $ACCORDION_WORKER_CONFIG as the worker Deployment does;
the model is a TorchScript file this test builds. `model.inputShape` reaches the worker, which
then answers a v2 request; a file that is not a model, or a TorchScript file without an input
shape, ends the process with exit status 65 and one line saying why (no traceback), which is
what the operator reads back from the pod.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

from accordion.operator.api import InferenceService, parse_resource
from accordion.operator.control.desired import worker_specs
from accordion.operator.planning import to_problem
from accordion.solver import plan
from accordion.workers.cli import MODEL_LOAD_FAILED

pytestmark = pytest.mark.timeout(180)


def _service(model: dict[str, Any]) -> InferenceService:
    obj = parse_resource(
        {
            "apiVersion": "accordion.dev/v1alpha1",
            "kind": "InferenceService",
            "metadata": {"name": "svc", "namespace": "ns"},
            "spec": {
                "slo": {"latencyMs": 200},
                "demand": {"source": "Static", "qps": 5},
                "variants": [
                    {
                        "name": "tiny",
                        "accuracy": 70,
                        "model": model,
                        "profiles": [{"pool": "cpu", "batches": [{"batchSize": 1, "p50Ms": 5}]}],
                    }
                ],
            },
        }
    )
    assert isinstance(obj, InferenceService)
    return obj


def _worker_config_json(model: dict[str, Any], port: int) -> str:
    svc = _service(model)
    pool = parse_resource(
        {
            "apiVersion": "accordion.dev/v1alpha1",
            "kind": "DevicePool",
            "metadata": {"name": "cpu"},
            "spec": {"devices": 1},
        }
    )
    built = to_problem([svc], [pool])  # type: ignore[list-item]
    specs = worker_specs(plan(built.problem), {svc.key: svc}, {"cpu": pool})  # type: ignore[dict-item]
    (spec,) = specs.values()
    return spec.worker_config(host="127.0.0.1", port=port).model_dump_json()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _serve(config_json: str) -> subprocess.Popen[str]:
    env = {**os.environ, "ACCORDION_WORKER_CONFIG": config_json, "COLUMNS": "500"}
    return subprocess.Popen(
        [sys.executable, "-m", "accordion.workers", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_ready(proc: subprocess.Popen[str], port: int) -> None:
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, proc.communicate()[1]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2):
                return
        except OSError:
            assert time.monotonic() < deadline, "the worker never became ready"
            time.sleep(0.2)  # polling readiness with a deadline


@pytest.fixture(scope="module")
def torchscript_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("models") / "tiny.pt"
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 3 * 4, 5)).eval()
    torch.jit.save(torch.jit.script(module), str(path))
    return path


def test_the_api_input_shape_reaches_an_operator_built_worker(torchscript_model: Path) -> None:
    port = _free_port()
    model = {"storageUri": f"file://{torchscript_model}", "inputShape": [2, 3, 4]}
    config = json.loads(_worker_config_json(model, port))
    assert config["input_shape"] == [2, 3, 4]
    proc = _serve(json.dumps(config))
    try:
        _wait_ready(proc, port)
        body = {
            "inputs": [
                {"name": "input", "shape": [1, 2, 3, 4], "datatype": "FP32", "data": [0.5] * 24}
            ]
        }
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v2/models/tiny/infer",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            answer = json.loads(resp.read())
        (output,) = answer["outputs"]
        assert output["shape"][-1] == 5
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


@pytest.fixture(scope="module")
def exported_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("models") / "tiny.pt2"
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 3 * 4, 5)).eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(module, (torch.zeros(2, 2, 3, 4),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    return path


def test_a_torch_export_file_carries_its_input_shape(exported_model: Path) -> None:
    from accordion.workers.models import load_model

    loaded = load_model(str(exported_model))  # no input_shape given
    assert loaded.input_shape == (2, 3, 4)
    port = _free_port()
    config = _worker_config_json(
        {"storageUri": str(exported_model), "format": "torch-export"}, port
    )
    assert json.loads(config)["input_shape"] is None
    proc = _serve(config)
    try:
        _wait_ready(proc, port)
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


@pytest.mark.parametrize(
    ("content", "model", "says"),
    [
        (b"PK\x03\x04 this is not a zip" * 10, {}, "is not a TorchScript or torch.export model"),
        ("zip", {}, "is not a TorchScript or torch.export model: RuntimeError"),
        (b"just text\n", {"format": "torch-export"}, "is not a TorchScript or torch.export model"),
        (None, {}, "needs input_shape"),
    ],
    ids=["not-a-model", "a-zip-not-a-model", "not-an-export", "no-input-shape"],
)
def test_a_model_that_cannot_load_ends_in_one_line_and_its_own_exit_status(
    tmp_path: Path,
    torchscript_model: Path,
    content: bytes | str | None,
    model: dict[str, Any],
    says: str,
) -> None:
    if content is None:
        path = torchscript_model  # a real model, but the spec gives no inputShape
        spec_model: dict[str, Any] = {"storageUri": str(path), **model}
    else:
        path = tmp_path / "model.pt"
        if content == "zip":
            with zipfile.ZipFile(path, "w") as archive:
                archive.writestr("weights.txt", "not a model")
        else:
            assert isinstance(content, bytes)
            path.write_bytes(content)
        spec_model = {"storageUri": str(path), "inputShape": [4], **model}
    proc = _serve(_worker_config_json(spec_model, _free_port()))
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == MODEL_LOAD_FAILED, stderr
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: cannot load model"), stderr
    assert says in lines[-1]
