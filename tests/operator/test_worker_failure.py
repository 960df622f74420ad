"""A worker pod that cannot load its model is told apart from other failures, with the reason.

The worker process is the real one (`accordion-worker serve` with the operator's WorkerConfig
and a file that is not a model); its exit status and its last log lines become the pod status
the kubelet would write (`terminationMessagePolicy: FallbackToLogsOnError` puts the log tail in
`lastState.terminated.message`), and `observe_worker_failure` reads them back as the operator
does. The other failures a worker pod shows (image pulls, a crashing container, a failed model
download) are the kubelet's own states.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate

from accordion.operator.config import OperatorConfig
from accordion.operator.control.desired import Placement, WorkerKey, WorkerSpec
from accordion.operator.k8s import WorkerFailure, observe_worker_failure, worker_deployment


def spec(model_uri: str) -> WorkerSpec:
    return WorkerSpec(
        key=WorkerKey(service="ns/svc", variant="v", pool="cpu"),
        replicas=1,
        max_batch_size=4,
        capacity_qps_per_replica=10.0,
        accuracy=70.0,
        slo_ms=100.0,
        model_uri=model_uri,
        input_shape=(4,),
        placement=Placement(),
    )


def pod(worker: dict[str, Any], init: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": "Running", "containerStatuses": [worker]}
    if init is not None:
        status["initContainerStatuses"] = init
    return {"apiVersion": "v1", "kind": "Pod", "status": status}


def crash_looping(exit_code: int, message: str, restarts: int = 3) -> dict[str, Any]:
    return {
        "name": "worker",
        "ready": False,
        "restartCount": restarts,
        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
        "lastState": {"terminated": {"exitCode": exit_code, "message": message}},
    }


def test_the_worker_container_hands_its_last_line_to_the_kubelet() -> None:
    deployment = worker_deployment(spec("/models/m.pt"), "uid", OperatorConfig())
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    kubernetes_validate.validate(deployment, "1.30.0", strict=True)


def test_a_real_worker_that_cannot_load_its_model_reads_as_model_load_failed(
    tmp_path: Path,
) -> None:
    garbage = tmp_path / "model.pt"
    garbage.write_bytes(b"\x00not a model\n" * 8)
    config = spec(f"file://{garbage}").worker_config(host="127.0.0.1", port=0)
    done = subprocess.run(
        [sys.executable, "-m", "accordion.workers", "serve"],
        env={**os.environ, "ACCORDION_WORKER_CONFIG": config.model_dump_json()},
        capture_output=True,
        text=True,
        timeout=120,
    )
    # What the kubelet keeps of the log with FallbackToLogsOnError: the last 2048 bytes.
    log_tail = (done.stdout + done.stderr)[-2048:]
    failure = observe_worker_failure(pod(crash_looping(done.returncode, log_tail)))
    assert failure is not None
    assert failure.reason == "ModelLoadFailed"
    assert failure.message.startswith("error: cannot load model")
    assert "is not a TorchScript or torch.export model" in failure.message
    assert failure.restarts == 3


def test_other_crashes_and_kubelet_states_keep_their_own_reason() -> None:
    other = observe_worker_failure(pod(crash_looping(137, "")))
    assert other == WorkerFailure("CrashLoopBackOff", "back-off 40s", 3)
    pulling = observe_worker_failure(
        pod(
            {
                "name": "worker",
                "restartCount": 0,
                "state": {"waiting": {"reason": "ImagePullBackOff", "message": "no such image"}},
            }
        )
    )
    assert pulling == WorkerFailure("ImagePullBackOff", "no such image", 0)
    download = observe_worker_failure(
        pod(
            {"name": "worker", "state": {"waiting": {"reason": "PodInitializing"}}},
            init=[
                {
                    "name": "storage-initializer",
                    "restartCount": 2,
                    "state": {
                        "terminated": {"exitCode": 1, "message": "error: s3://b/m.pt: NoSuchKey"}
                    },
                }
            ],
        )
    )
    assert download == WorkerFailure("ModelDownloadFailed", "error: s3://b/m.pt: NoSuchKey", 2)


def test_a_running_or_starting_worker_is_no_failure() -> None:
    running = {"name": "worker", "ready": True, "restartCount": 0, "state": {"running": {}}}
    assert observe_worker_failure(pod(running)) is None
    starting = {"name": "worker", "state": {"waiting": {"reason": "ContainerCreating"}}}
    assert observe_worker_failure(pod(starting)) is None
    assert observe_worker_failure({"kind": "Pod"}) is None
