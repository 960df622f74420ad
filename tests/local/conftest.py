"""Fixtures of the local-mode tests: manifests written per test, `accordion up` as a process."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from accordion.local.actuator import free_port
from accordion.local.demo import start_up, stop_up
from accordion.local.procs import PARENT_ENV

POOL = """\
apiVersion: accordion.dev/v1alpha1
kind: DevicePool
metadata: {name: local-cpu}
spec: {devices: DEVICES, costPerDevice: 1.0, device: cpu}
"""

# Conservative profiles (what a busy 2-core machine shows): demo-xl serves 50 req/s within the
# 100 ms SLO (batch 2 in 40 ms, twice that fits), demo-m far more. Headroom 1.0: a worker takes
# seconds to start, so the loop re-plans at half the capacity of what runs.
SERVICE = """\
apiVersion: accordion.dev/v1alpha1
kind: InferenceService
metadata: {name: classifier, namespace: default}
spec:
  slo: {latencyMs: 100}
  accuracy: {floor: 70}
  demand: {source: Prometheus, qps: QPS, headroom: 1.0}
  variants:
    - name: demo-xl
      accuracy: 84
      model: {storageUri: "XL_URI", format: builtin}
      profiles:
        - pool: local-cpu
          batches:
            - {batchSize: 1, p50Ms: 15, p90Ms: 20, p99Ms: 25}
            - {batchSize: 2, p50Ms: 25, p90Ms: 32, p99Ms: 40}
    - name: demo-m
      accuracy: 79
      model: {storageUri: "builtin:demo-m", format: builtin}
      profiles:
        - pool: local-cpu
          batches:
            - {batchSize: 1, p50Ms: 0.3, p90Ms: 0.4, p99Ms: 0.6}
            - {batchSize: 2, p50Ms: 0.5, p90Ms: 0.6, p99Ms: 0.9}
"""


def write_manifest(
    directory: Path,
    *,
    devices: int = 1,
    qps: float = 5.0,
    xl_uri: str = "builtin:demo-xl",
    min_replicas: int = 1,
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    text = POOL.replace("DEVICES", str(devices)) + "---\n"
    text += SERVICE.replace("QPS", str(qps)).replace("XL_URI", xl_uri)
    text = text.replace(
        "  slo: {latencyMs: 100}", f"  slo: {{latencyMs: 100}}\n  minReplicas: {min_replicas}"
    )
    (directory / "classifier.yaml").write_text(text)
    return directory


@pytest.fixture
def manifests(tmp_path: Path) -> Callable[..., Path]:
    def make(**kwargs: object) -> Path:
        return write_manifest(tmp_path / "manifests", **kwargs)  # type: ignore[arg-type]

    return make


UpFactory = Callable[..., tuple[subprocess.Popen[bytes], Path]]


@pytest.fixture
def up(tmp_path: Path) -> Iterator[UpFactory]:
    """Start `accordion up` (python -m accordion.local.cli); always stopped at the end."""
    started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(manifest_dir: Path, *extra: str) -> tuple[subprocess.Popen[bytes], Path]:
        run_dir = tmp_path / f"run{len(started)}"
        proc = start_up(manifest_dir, run_dir, free_port(), list(extra))
        started.append((proc, run_dir))
        return proc, run_dir

    yield start
    for proc, run_dir in started:
        if proc.poll() is None:
            stop_up(proc, run_dir)


def local_children(up_pid: int) -> set[int]:
    """Live processes started by the `accordion up` with this pid, found in /proc: every child
    carries its parent's pid in its environment (`accordion.local.procs`), wherever it was
    reparented to. A zombie has no environment left, so it does not count."""
    marker = f"{PARENT_ENV}={up_pid}".encode()
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone meanwhile, or not ours
            continue
        if marker in environ.split(b"\0"):
            found.add(int(entry.name))
    return found
