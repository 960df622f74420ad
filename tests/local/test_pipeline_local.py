"""A planned pipeline in `accordion up`: stage worker processes wired by the control loop.

Issue 19 end to end on this machine: the same manifests a cluster takes (a variant with
`stages`), the real planner choosing a pipeline, the control loop's stage groups
(`desired.worker_specs`), the process actuator starting one worker group per stage with the next
stage's URL, and the router sending to the first stage. A request through the router must come
back equal to the whole model's answer (allclose): it went through every stage's process.

The profiles are declared, not measured (illustrative, chosen so that only a pipeline serves
the demand): every part of `builtin:resnet-like-s` takes 3 ms on the fast pool and 9 ms on the
slow one, so the whole model misses the 100 ms SLO on the slow pool (2 x 54 ms) and one fast
device serves 50 req/s of the 60 asked; cut in two, the first parts on the three slow devices
and the rest on the fast one serve them.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from accordion.local.demo import read_state, stop_up, wait_ready
from accordion.workers.config import DEADLINE_HEADER
from accordion.workers.models import load_model
from tests.local.conftest import UpFactory

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="processes in /proc"),
    pytest.mark.timeout(300),
]

MODEL = "builtin:resnet-like-s"
PARTS = ("stem", "layer1", "layer2", "layer3", "layer4", "head")


def _profile(pool: str, ms: float) -> str:
    return f"{{pool: {pool}, batches: [{{batchSize: 1, p50Ms: {ms}}}]}}"


def _manifest(directory: Path) -> Path:
    stages = "".join(
        f"        - name: {part}\n"
        f"          outputBytes: 65536\n"
        f"          profiles: [{_profile('fast', 3)}, {_profile('slow', 9)}]\n"
        for part in PARTS
    )
    text = f"""\
apiVersion: accordion.dev/v1alpha1
kind: DevicePool
metadata: {{name: fast}}
spec: {{devices: 1, costPerDevice: 1.0, device: cpu}}
---
apiVersion: accordion.dev/v1alpha1
kind: DevicePool
metadata: {{name: slow}}
spec: {{devices: 3, costPerDevice: 0.1, device: cpu}}
---
apiVersion: accordion.dev/v1alpha1
kind: InferenceService
metadata: {{name: split, namespace: default}}
spec:
  slo: {{latencyMs: 100}}
  demand: {{source: Static, qps: 60, headroom: 0.0, burst: {{policy: "Off"}}}}
  variants:
    - name: resnet
      accuracy: 70
      model: {{storageUri: "{MODEL}", format: builtin}}
      profiles: [{_profile("fast", 18)}, {_profile("slow", 54)}]
      stages:
{stages}"""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "split.yaml").write_text(text)
    return directory


def _infer(url: str, model: str, x: np.ndarray[Any, np.dtype[np.float32]]) -> Any:
    body = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "data": x.ravel().tolist(),
                }
            ]
        }
    ).encode()
    request = urllib.request.Request(
        f"{url}/v2/models/{model}/infer",
        data=body,
        headers={"Content-Type": "application/json", DEADLINE_HEADER: "5000"},
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.loads(resp.read())


def test_a_planned_pipeline_answers_as_the_whole_model(tmp_path: Path, up: UpFactory) -> None:
    proc, run_dir = up(_manifest(tmp_path / "manifests"), "--interval-s", "0.5")
    url, model = wait_ready(proc, run_dir, timeout_s=180)
    state = read_state(run_dir)
    workers = {w["backend"]: w for w in state["workers"]}
    stages = sorted(b for b in workers if "@" in b and ">" in b)
    # Two stage groups of one pipeline: the first stage's backend is the pipeline's id, the
    # second's says it is stage 2 (`WorkerKey.backend_name`).
    assert len(stages) == 2, workers
    first = next(b for b in stages if "#" not in b)
    assert f"{first}#2" in stages
    assert "@slow*3>" in first, "the first parts on the three slow devices"
    assert workers[first]["replicas"] == 3
    assert workers[f"{first}#2"]["replicas"] == 1
    assert not [b for b in workers if ">" not in b], "no whole-variant worker"

    loaded = load_model(MODEL)
    for seed in range(3):
        x = np.random.default_rng(seed).standard_normal((1, 3, 64, 64)).astype(np.float32)
        answer = _infer(url, model, x)
        out = np.asarray(answer["outputs"][0]["data"], dtype=np.float32).reshape(1, -1)
        with torch.inference_mode():
            whole = loaded.module(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(out, whole, rtol=1e-4, atol=1e-4)
    # The router's table names the pipeline's first stage as the backend.
    table = json.loads(next((run_dir / "config").glob("routing.*.json")).read_text())
    assert [b["name"] for b in table["backends"] if b["weight"] > 0] == [first]
    assert table["backends"][0]["url"] == f"http://127.0.0.1:{workers[first]['port']}"
    started = time.monotonic()
    leftover = stop_up(proc, run_dir)
    assert leftover == [], f"left running after {time.monotonic() - started:.1f}s"
