"""Fixtures of the local-mode tests: manifests written per test, `accordion up` as a process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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
# seconds to start, so the loop re-plans at half the capacity of what runs. On a machine that
# runs demo-xl slower than this, every figure is scaled by the `pace` fixture's factor.
SLO_MS = 100.0
PROFILES_MS = {  # variant -> (batch size, p50, p90, p99) in ms
    "demo-xl": [(1, 15.0, 20.0, 25.0), (2, 25.0, 32.0, 40.0)],
    "demo-m": [(1, 0.3, 0.4, 0.6), (2, 0.5, 0.6, 0.9)],
}
SERVICE = """\
apiVersion: accordion.dev/v1alpha1
kind: InferenceService
metadata: {name: classifier, namespace: default}
spec:
  slo: {latencyMs: SLO}
  accuracy: {floor: 70}
  demand: {source: Prometheus, qps: QPS, headroom: 1.0}
  variants:
    - name: demo-xl
      accuracy: 84
      model: {storageUri: "XL_URI", format: builtin}
      profiles:
        - pool: local-cpu
          batches:
PROFILE-demo-xl
    - name: demo-m
      accuracy: 79
      model: {storageUri: "builtin:demo-m", format: builtin}
      profiles:
        - pool: local-cpu
          batches:
PROFILE-demo-m
"""


@dataclass(frozen=True)
class Pace:
    """How many times slower than `PROFILES_MS` this machine runs demo-xl (at least 1).

    The end-to-end scenarios assert the control loop's behaviour at 99% within the SLO. A
    machine (or a CI runner shared with others) that runs demo-xl several times slower than the
    profiles above would make them assert its speed instead: there the same scenario runs in
    slow motion, every latency, SLO, duration and interval `factor` times longer and every rate
    `factor` times lower, so the planner faces the same problem and the workers the same load
    relative to their speed."""

    factor: float = 1.0

    def ms(self, value: float) -> float:
        return value * self.factor

    def s(self, value: float) -> float:
        return value * self.factor

    def qps(self, value: float) -> float:
        return value / self.factor

    def args(self, *pairs: tuple[str, float]) -> list[str]:
        """`accordion up` options of durations in seconds, scaled."""
        return [item for flag, seconds in pairs for item in (flag, f"{self.s(seconds):g}")]


MAX_PACE = 4.0
"""Beyond this the machine is too slow for the scenarios to mean anything in their time: they
run at this pace and fail on their own assertions rather than take many minutes each."""


def measure_pace() -> Pace:
    """Profile demo-xl here as `make demo` does (`profile_model`, the worker's runner), beside
    one process that keeps a CPU busy (in the scenarios the load generator, the router and the
    control loop run beside the worker: a machine whose CPU quota is less than its CPUs, as a
    container's may be, is slow only then), and compare its p90 per batch size with
    `PROFILES_MS`'."""
    from accordion.workers.profiler import profile_model

    declared = {b: p90 for b, _, p90, _ in PROFILES_MS["demo-xl"]}
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        measured = profile_model("builtin:demo-xl", sorted(declared), repeats=40)
    finally:
        busy.kill()
        busy.wait()
    ratio = max(m.p90_ms / declared[m.batch_size] for m in measured)
    return Pace(min(MAX_PACE, max(1.0, ratio)))


@pytest.fixture(scope="session")
def pace() -> Pace:
    """The measured pace; ACCORDION_LOCAL_PACE=F runs the scenarios at F at the least (to try
    the slow motion itself on a fast machine)."""
    found = measure_pace()
    forced = float(os.environ.get("ACCORDION_LOCAL_PACE", "1"))
    found = Pace(max(found.factor, forced))
    print(
        f"local e2e: demo-xl runs at {found.factor:.2f}x the tests' profiles' time "
        f"({describe_cpus()})"
    )
    return found


def describe_cpus() -> str:
    """The machine's CPUs as the scenarios see them: visible, usable (affinity), and this
    process's cgroup CFS quota (v2's cpu.max or v1's cfs_quota_us), so that a failure on
    another machine says what it ran on."""
    return (
        f"{os.cpu_count()} CPUs, {len(os.sched_getaffinity(0))} usable, quota {cpu_quota()}, "
        f"load {os.getloadavg()[0]:.2f}"
    )


def cpu_quota() -> str:
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return "unknown"
    for line in lines:
        _, controllers, path = line.split(":", 2)
        try:
            if controllers == "":  # cgroup v2
                limit, period = Path(f"/sys/fs/cgroup{path}/cpu.max").read_text().split()
            elif "cpu" in controllers.split(","):
                base = Path(f"/sys/fs/cgroup/{controllers}{path}")
                if not base.exists():
                    base = Path(f"/sys/fs/cgroup/cpu{path}")
                limit = (base / "cpu.cfs_quota_us").read_text().strip()
                period = (base / "cpu.cfs_period_us").read_text().strip()
            else:
                continue
        except (OSError, ValueError):
            continue
        return "none" if limit in {"max", "-1"} else f"{int(limit) / int(period):.2f} CPUs"
    return "unknown"


def _batches(variant: str, pace: Pace) -> str:
    return "\n".join(
        f"            - {{batchSize: {b}, p50Ms: {pace.ms(p50):g}, p90Ms: {pace.ms(p90):g}, "
        f"p99Ms: {pace.ms(p99):g}}}"
        for b, p50, p90, p99 in PROFILES_MS[variant]
    )


def write_manifest(
    directory: Path,
    *,
    devices: int = 1,
    qps: float = 5.0,
    xl_uri: str = "builtin:demo-xl",
    min_replicas: int = 1,
    pace: Pace = Pace(),
) -> Path:
    """The pool and the classifier service, every latency and rate at `pace`."""
    directory.mkdir(parents=True, exist_ok=True)
    text = POOL.replace("DEVICES", str(devices)) + "---\n"
    service = SERVICE.replace("QPS", f"{pace.qps(qps):g}").replace("XL_URI", xl_uri)
    service = service.replace("SLO", f"{pace.ms(SLO_MS):g}")
    for variant in PROFILES_MS:
        service = service.replace(f"PROFILE-{variant}", _batches(variant, pace))
    text += service.replace(
        "  slo: {latencyMs", f"  minReplicas: {min_replicas}\n  slo: {{latencyMs"
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
