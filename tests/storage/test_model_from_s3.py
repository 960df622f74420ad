"""A model stored in S3 is served end to end by a worker started from the operator's Deployment.

The InferenceService names `s3://models/...` in the loopback S3 server (moto, credentials
enforced); the operator's own code plans it and builds the worker Deployment. This test then
plays kubelet on this machine: each volume of the pod becomes a directory (the emptyDir shared
by the init container and the worker), the storage Secret named in the init container's
`envFrom` becomes its environment, the pod's network becomes loopback (0.0.0.0:8080 -> a free
127.0.0.1 port). It runs the init container's command and args as a process, then the worker
container's command and args with its env, waits for the worker's startup probe and readiness
endpoints, and sends a KServe v2 request, whose answer must equal the model's own output.
The Deployment also validates strictly against the Kubernetes schemas.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from accordion.operator.api import DevicePool, InferenceService, parse_resource
from accordion.operator.config import OperatorConfig
from accordion.operator.control.desired import worker_specs
from accordion.operator.control.loop import ControlLoop, DemandView, World
from accordion.operator.k8s import Manifest, worker_deployment

from .conftest import S3Store, free_port

torch = pytest.importorskip("torch")

FEATURES = 8
SECRET = "accordion-storage"


def service(uri: str) -> InferenceService:
    doc = {
        "apiVersion": "accordion.dev/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": "classifier", "namespace": "ml", "uid": "uid-1"},
        "spec": {
            "slo": {"latencyMs": 500},
            "demand": {"source": "Static", "qps": 5},
            "variants": [
                {
                    "name": "small",
                    "accuracy": 70,
                    "model": {"storageUri": uri, "inputShape": [FEATURES]},
                    "profiles": [{"pool": "cpu", "batches": [{"batchSize": 1, "p50Ms": 2}]}],
                }
            ],
        },
    }
    parsed = parse_resource(doc)
    assert isinstance(parsed, InferenceService)
    return parsed


def pool() -> DevicePool:
    doc = {
        "apiVersion": "accordion.dev/v1alpha1",
        "kind": "DevicePool",
        "metadata": {"name": "cpu"},
        "spec": {"devices": 1, "resources": {"requests": {"cpu": "1"}}},
    }
    parsed = parse_resource(doc)
    assert isinstance(parsed, DevicePool)
    return parsed


def operator_deployment(svc: InferenceService, config: OperatorConfig) -> Manifest:
    """The worker Deployment the operator writes for `svc`, through its planner and builders."""
    world = World(services={svc.key: svc}, pools={"cpu": pool()})
    plan, _, _ = ControlLoop().make_plan(world, DemandView())
    (spec,) = worker_specs(plan, world.services, world.pools).values()
    return worker_deployment(spec, svc.metadata.uid, config)


def executable(command: list[str]) -> list[str]:
    """The container's command on this machine: the image's `accordion-worker` is the venv's."""
    found = shutil.which(command[0], path=str(Path(sys.executable).parent))
    assert found, f"{command[0]} is not installed next to {sys.executable}"
    return [found, *command[1:]]


class Pod:
    """Plays kubelet for one pod of a Deployment on this machine."""

    def __init__(self, deployment: Manifest, root: Path, secrets: dict[str, dict[str, str]]):
        self.spec = deployment["spec"]["template"]["spec"]
        self.root = root
        self.secrets = secrets
        self.volumes = {v["name"]: root / v["name"] for v in self.spec["volumes"]}
        for path in self.volumes.values():
            path.mkdir(parents=True)
        self.port = free_port()

    def _paths(self, container: Manifest) -> dict[str, str]:
        return {m["mountPath"]: str(self.volumes[m["name"]]) for m in container["volumeMounts"]}

    def _translate(self, text: str, container: Manifest) -> str:
        for mount, host in sorted(self._paths(container).items(), key=lambda kv: -len(kv[0])):
            text = text.replace(mount, host)
        return text

    def environment(self, container: Manifest) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
        for source in container.get("envFrom", []):
            ref = source["secretRef"]
            if ref["name"] in self.secrets:
                env.update(self.secrets[ref["name"]])
            else:
                assert ref.get("optional"), f"Secret {ref['name']} is missing and not optional"
        for var in container.get("env", []):
            env[var["name"]] = self._translate(var["value"], container)
        return env

    def command(self, container: Manifest) -> list[str]:
        line = [*container["command"], *container.get("args", [])]
        return executable([self._translate(part, container) for part in line])


def worker_network(env: dict[str, str], variable: str, port: int) -> None:
    """The pod's network is this machine's loopback: the worker listens on a free port."""
    config = json.loads(env[variable])
    assert (config["host"], config["port"]) == ("0.0.0.0", 8080)
    config.update(host="127.0.0.1", port=port)
    env[variable] = json.dumps(config)


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def wait_for(url: str, proc: subprocess.Popen[str], timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"worker exited with {proc.returncode}: {proc.stderr.read()}")  # type: ignore[union-attr]
        if get(url) == 200:
            return
        time.sleep(0.1)
    raise AssertionError(f"{url} not ready within {timeout_s} s")


@pytest.fixture
def model_bytes(tmp_path: Path) -> tuple[bytes, Any]:
    torch.manual_seed(7)
    module = torch.nn.Sequential(
        torch.nn.Linear(FEATURES, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)
    )
    module.eval()
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(module), str(path))
    return path.read_bytes(), module


def test_s3_model_served_by_the_operators_deployment(
    s3_store: S3Store, tmp_path: Path, model_bytes: tuple[bytes, Any]
) -> None:
    data, module = model_bytes
    uri = s3_store.put("classifier/small/model.pt", data)
    config = OperatorConfig()
    deployment = operator_deployment(service(uri), config)
    kubernetes_validate.validate(deployment, "1.30.0", strict=True)

    pod = Pod(deployment, tmp_path / "pod", {SECRET: s3_store.secret_env()})
    (init,) = pod.spec["initContainers"]
    (worker,) = pod.spec["containers"]
    assert init["image"] == worker["image"] == config.worker_image
    assert init["envFrom"] == [{"secretRef": {"name": SECRET, "optional": True}}]

    fetched = subprocess.run(
        pod.command(init), env=pod.environment(init), capture_output=True, text=True, timeout=120
    )
    assert fetched.returncode == 0, fetched.stderr
    env = pod.environment(worker)
    worker_network(env, config.worker_config_env, pod.port)
    # What the worker will load is the file the init container wrote into the shared volume.
    model_path = Path(json.loads(env[config.worker_config_env])["model"])
    assert model_path.read_bytes() == data
    assert model_path.is_relative_to(pod.root)
    assert json.loads(env[config.worker_config_env])["input_shape"] == [FEATURES]

    proc = subprocess.Popen(
        pod.command(worker), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        base = f"http://127.0.0.1:{pod.port}"
        wait_for(base + worker["startupProbe"]["httpGet"]["path"], proc)
        wait_for(base + worker["readinessProbe"]["httpGet"]["path"], proc)
        sample = [0.25 * i - 1.0 for i in range(FEATURES)]
        body = {
            "inputs": [
                {"name": "input", "shape": [1, FEATURES], "datatype": "FP32", "data": sample}
            ]
        }
        request = urllib.request.Request(
            f"{base}/v2/models/small/infer",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as resp:
            answer = json.loads(resp.read())
        (output,) = answer["outputs"]
        expected = module(torch.tensor([sample])).detach().numpy().ravel().tolist()
        assert output["data"] == pytest.approx(expected, rel=1e-5, abs=1e-6)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
