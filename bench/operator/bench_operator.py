"""Operator benchmark: reaction time to a change, planning time and memory, at scale.

The real operator (`kopf run` subprocess) runs against kmock's Kubernetes emulator over HTTP
(the test fixtures' `Emulator`), in a process of its own (`emulator_server.py`), with N
InferenceServices over 10 DevicePools. The emulator is seeded with the settled cluster the
operator would have built (its own control loop and manifest builders, every replica ready)
instead of rolling it out through the API; then the benchmark measures:

- restart churn: API writes the operator makes when it starts on that cluster (must be 0);
- spec change: one service's demand.qps grows 8x; time until the last Deployment write it
  causes;
- pool change: one pool loses all its devices (its services move); time until the last
  Deployment write of the resulting wave;
- planning and decision time of those passes (from the operator's log), and the operator's
  RSS: when idle, at the end and its peak (VmHWM), sampled every 50 ms to tell in which
  phase the peak fell.

Each size runs with the operator's `watch_nodes` off and on (`--watch-nodes`); on, the
emulator also holds the Nodes the pools select.

`--loop-only` times the control loop in process (no API, no kopf) on the same problems.
Goals (issue 5): under 2 s and under 300 MB at 1,000 services. Usage:

    .venv/bin/python bench/operator/bench_operator.py --sizes 10 100 1000 --loop-only 10 100 1000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402
from kubernetes import client as k8s  # noqa: E402
from kubernetes import config as k8s_config  # noqa: E402

from tests.operator.conftest import (  # noqa: E402
    GROUP,
    Cluster,
    Operator,
    wait_for,
)

POOLS = 10
RESULTS = ROOT / "bench" / "results"


def service(i: int) -> dict[str, Any]:
    """Service i: two variants, each profiled on two of the ten pools."""
    p1, p2 = f"pool-{i % POOLS}", f"pool-{(i + 3) % POOLS}"
    batches = [{"batchSize": 1, "p50Ms": 5.0}, {"batchSize": 8, "p50Ms": 15.0}]
    slow = [{"batchSize": 1, "p50Ms": 12.0}, {"batchSize": 8, "p50Ms": 40.0}]
    return {
        "apiVersion": "accordion.dev/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": f"svc-{i}", "namespace": f"ns-{i % 20}"},
        "spec": {
            "slo": {"latencyMs": 200},
            "demand": {"source": "Static", "qps": 50.0 + (i * 37) % 200, "headroom": 0.1},
            "variants": [
                {
                    "name": "large",
                    "accuracy": 80,
                    "model": {"storageUri": "/models/large.pt"},
                    "profiles": [{"pool": p1, "batches": slow}, {"pool": p2, "batches": slow}],
                },
                {
                    "name": "small",
                    "accuracy": 72,
                    "model": {"storageUri": "/models/small.pt"},
                    "profiles": [
                        {"pool": p1, "batches": batches},
                        {"pool": p2, "batches": batches},
                    ],
                },
            ],
        },
    }


def rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident memory of a process, MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RssSampler:
    """Samples a process's resident memory every `interval_s` in a thread, with named phases,
    so that the benchmark says *when* the peak happened, not only how high it was."""

    def __init__(self, pid: int, interval_s: float = 0.05) -> None:
        self.pid, self.interval_s = pid, interval_s
        self.samples: list[tuple[float, float]] = []
        self.phases: list[tuple[float, str]] = [(time.monotonic(), "start")]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, ValueError, KeyError):
                self.samples.append((time.monotonic(), rss_mb(self.pid)[0]))
            self._stop.wait(self.interval_s)

    def phase(self, name: str) -> None:
        self.phases.append((time.monotonic(), name))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def peak(self) -> tuple[float, str, float]:
        """(highest sampled RSS MB, the phase it fell in, seconds into that phase)."""
        t, mb = max(self.samples, key=lambda s: s[1])
        start, name = max((p for p in self.phases if p[0] <= t), default=self.phases[0])
        return mb, name, t - start

    def max_in(self, name: str) -> float:
        """Highest sampled RSS MB during a phase."""
        times = [p[0] for p in self.phases] + [float("inf")]
        out = 0.0
        for i, (start, phase) in enumerate(self.phases):
            if phase == name:
                out = max([out] + [mb for t, mb in self.samples if start <= t < times[i + 1]])
        return out


GPUS_PER_NODE = 8
NODE_IMAGES = 40
"""Images a node reports in its status (a real GPU node lists tens: drivers, CUDA, models)."""


def node_body(name: str, pool: str, gpus: int) -> dict[str, Any]:
    """A Node as a real cluster serves it (labels, annotations, managedFields, the image list,
    conditions with heartbeats), not a minimal one: with `watch_nodes` its size is what the
    operator's memory pays for."""
    stamp = "2025-01-01T00:00:00Z"
    labels = {
        "beta.kubernetes.io/arch": "amd64",
        "beta.kubernetes.io/instance-type": "a2-highgpu-8g",
        "beta.kubernetes.io/os": "linux",
        "cloud.google.com/gke-accelerator": "nvidia-tesla-a100",
        "cloud.google.com/gke-boot-disk": "pd-balanced",
        "cloud.google.com/gke-container-runtime": "containerd",
        "cloud.google.com/gke-nodepool": f"{pool}-np",
        "cloud.google.com/gke-os-distribution": "cos",
        "cloud.google.com/machine-family": "a2",
        "failure-domain.beta.kubernetes.io/region": "us-central1",
        "failure-domain.beta.kubernetes.io/zone": "us-central1-a",
        "kubernetes.io/arch": "amd64",
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "node.kubernetes.io/instance-type": "a2-highgpu-8g",
        "topology.kubernetes.io/region": "us-central1",
        "topology.kubernetes.io/zone": "us-central1-a",
        f"{GROUP}/pool": pool,
    }
    conditions = [
        {
            "type": kind,
            "status": "True" if kind == "Ready" else "False",
            "lastHeartbeatTime": stamp,
            "lastTransitionTime": stamp,
            "reason": f"Kubelet{kind}" if kind == "Ready" else f"KubeletHasNo{kind}",
            "message": "kubelet is posting ready status"
            if kind == "Ready"
            else f"kubelet has no {kind.lower()}",
        }
        for kind in ("MemoryPressure", "DiskPressure", "PIDPressure", "Ready")
    ]
    resources = {
        "cpu": "95690m",
        "ephemeral-storage": "47060071478",
        "hugepages-1Gi": "0",
        "hugepages-2Mi": "0",
        "memory": "1300681596Ki",
        "nvidia.com/gpu": str(gpus),
        "pods": "110",
    }
    images = [
        {
            "names": [
                f"registry.example.com/ml/model-{i}@sha256:{i:064x}",
                f"registry.example.com/ml/model-{i}:v1.{i}.0",
            ],
            "sizeBytes": 1_000_000_000 + i,
        }
        for i in range(NODE_IMAGES)
    ]
    managed = [
        {
            "apiVersion": "v1",
            "fieldsType": "FieldsV1",
            "fieldsV1": {
                "f:metadata": {"f:labels": {f"f:{k}": {} for k in labels}},
                "f:status": {
                    "f:conditions": {
                        f'k:{{"type":"{c["type"]}"}}': {
                            "f:lastHeartbeatTime": {},
                            "f:lastTransitionTime": {},
                            "f:message": {},
                            "f:reason": {},
                            "f:status": {},
                        }
                        for c in conditions
                    },
                    "f:images": {},
                    "f:nodeInfo": {"f:bootID": {}, "f:kernelVersion": {}},
                },
            },
            "manager": manager,
            "operation": "Update",
            "subresource": "status" if manager == "kubelet" else None,
            "time": stamp,
        }
        for manager in ("kubelet", "kube-controller-manager", "gcp-controller-manager")
    ]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {
                "container.googleapis.com/instance_id": "1234567890123456789",
                "csi.volume.kubernetes.io/nodeid": json.dumps({"pd.csi.storage.gke.io": name}),
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
            },
            "managedFields": managed,
        },
        "spec": {
            "podCIDR": "10.4.0.0/24",
            "podCIDRs": ["10.4.0.0/24"],
            "providerID": f"gce://project/us-central1-a/{name}",
        },
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": "10.128.0.10"},
                {"type": "ExternalIP", "address": "34.1.2.3"},
                {"type": "Hostname", "address": name},
            ],
            "allocatable": resources,
            "capacity": resources,
            "conditions": conditions,
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "images": images,
            "nodeInfo": {
                "architecture": "amd64",
                "bootID": "0f0e0d0c-0b0a-0908-0706-050403020100",
                "containerRuntimeVersion": "containerd://1.7.10",
                "kernelVersion": "6.1.58+",
                "kubeProxyVersion": "v1.29.1",
                "kubeletVersion": "v1.29.1",
                "machineID": "0123456789abcdef0123456789abcdef",
                "operatingSystem": "linux",
                "osImage": "Container-Optimized OS from Google",
                "systemUUID": "01234567-89ab-cdef-0123-456789abcdef",
            },
        },
    }


class EmulatorProcess:
    """`emulator_server.py` as a child process (its own interpreter and GIL)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("emulator_server.py"))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        self.url = str(self._read()["url"])
        self.log: list[tuple[float, str, str]] = []

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the emulator process exited")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def ask(self, **request: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def sync_log(self) -> list[tuple[float, str, str]]:
        """The request log so far (fetched incrementally)."""
        answer = self.ask(op="log", since=len(self.log))
        self.log.extend((float(t), str(m), str(p)) for t, m, p in answer["entries"])
        return self.log

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.ask(op="stop")
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def _is_write(entry: tuple[float, str, str]) -> bool:
    return entry[1] != "GET"


def deployment_writes(emu: EmulatorProcess, since: int = 0) -> list[tuple[float, str, str]]:
    """Deployment writes (not the kubelet's status patches) from request `since` on."""
    return [
        x
        for x in emu.sync_log()[since:]
        if "/deployments" in x[2] and _is_write(x) and not x[2].endswith("/status")
    ]


def settle(emu: EmulatorProcess, quiet_s: float = 1.5, timeout_s: float = 300) -> None:
    """Wait until the emulator has seen no write for `quiet_s`."""
    deadline = time.monotonic() + timeout_s
    started = time.monotonic()
    while time.monotonic() < deadline:
        writes = [e for e in emu.sync_log() if _is_write(e)]
        last = writes[-1][0] if writes else started
        if time.monotonic() - max(last, started) > quiet_s:
            return
        time.sleep(0.2)  # polling a condition with a deadline
    raise TimeoutError("the cluster did not settle")


def kubelet(cluster: Cluster, namespaces: list[str]) -> int:
    """Mark every worker Deployment's replicas ready; return how many were changed."""
    changed = 0
    for ns in namespaces:
        for d in cluster.deployments(ns):
            n = d["spec"]["replicas"]
            if (d.get("status") or {}).get("readyReplicas") != n:
                cluster.apps.patch_namespaced_deployment_status(
                    d["metadata"]["name"],
                    ns,
                    {"status": {"replicas": n, "readyReplicas": n}},
                )
                changed += 1
    return changed


def wait_idle(pid: int, timeout_s: float = 120) -> None:
    """Wait until a process uses (almost) no CPU: kopf has worked through its initial watch."""
    deadline = time.monotonic() + timeout_s
    last, quiet = cpu_s(pid), 0
    while time.monotonic() < deadline and quiet < 2:
        time.sleep(0.5)  # sampling CPU time over an interval
        now = cpu_s(pid)
        quiet = quiet + 1 if now - last < 0.05 else 0
        last = now


def pool_nodes(pool: str, devices: int) -> list[dict[str, Any]]:
    """The Nodes that offer a pool its devices (GPUS_PER_NODE each, enough for all of them)."""
    count = -(-devices // GPUS_PER_NODE)
    return [node_body(f"{pool}-node-{j}", pool, GPUS_PER_NODE) for j in range(count)]


def settled_objects(n: int, config: Any) -> list[list[Any]]:
    """What the cluster holds once the operator has rolled out n services and every replica is
    ready, built by the operator's own code (control loop, manifest builders), for seeding.

    With `config.watch_nodes`, each pool selects its own Nodes (enough for its devices; they
    are seeded too) and carries the status the operator writes, so a restart changes nothing."""
    import asyncio
    from datetime import UTC, datetime

    from accordion.operator.api import DevicePool, InferenceService, parse_resource
    from accordion.operator.control.loop import ControlLoop, DemandView, World
    from accordion.operator.k8s import (
        router_deployment,
        router_pdb,
        router_service,
        routing_configmap,
        service_url,
        worker_deployment,
        worker_service,
        workers_pdb,
    )
    from accordion.operator.pools import cpu_condition, pool_capacity
    from tests.operator.conftest import device_pool

    devices = max(4, (n * 3) // POOLS)
    raw_pools = [device_pool(f"pool-{p}", devices) for p in range(POOLS)]
    nodes: list[dict[str, Any]] = []
    if config.watch_nodes:
        for raw in raw_pools:
            name = raw["metadata"]["name"]
            raw["spec"]["nodeSelector"] = {f"{GROUP}/pool": name}
            nodes += pool_nodes(name, devices)
    raw_services = []
    for i in range(n):
        body = service(i)
        body["metadata"].update({"uid": f"uid-svc-{i}", "generation": 1})
        raw_services.append(body)
    world = World()
    if config.watch_nodes:
        world.nodes = nodes
    for raw in raw_pools:
        pool = parse_resource(raw)
        assert isinstance(pool, DevicePool)
        world.pools[pool.metadata.name] = pool
    for raw in raw_services:
        svc = parse_resource(raw)
        assert isinstance(svc, InferenceService)
        world.services[svc.key] = svc
    # The operator's url_for: the status names the router's Service.
    loop = ControlLoop(url_for=lambda service: service_url(service, config))
    actuator = _SettlingActuator(world)
    for _ in range(6):
        if not asyncio.run(loop.reconcile(world, DemandView(), actuator)).decision.steps:
            break
    else:
        raise RuntimeError("the world did not settle")
    now = time.time()
    out: list[list[Any]] = [["v1/nodes", None, node["metadata"]["name"], node] for node in nodes]
    used: dict[str, int] = {}
    for row in loop.last_plan.rows if loop.last_plan is not None else []:
        used[row.pool] = used.get(row.pool, 0) + row.replicas
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    for raw in raw_pools:
        # kopf puts its finalizer on objects with timers (the resync timer is on pools).
        raw["metadata"]["finalizers"] = [f"{GROUP}/finalizer"]
        if config.watch_nodes:
            pool = world.pools[raw["metadata"]["name"]]
            capacity = pool_capacity(pool, nodes).status(used.get(pool.metadata.name, 0), 1)
            capacity.conditions.append(cpu_condition(pool, 1))  # as `pool_statuses` writes it
            raw["status"] = capacity.model_dump(mode="json", by_alias=True, exclude_none=True)
            for cond in raw["status"].get("conditions") or []:
                cond["lastTransitionTime"] = stamp
        out.append([f"{GROUP}/v1alpha1/devicepools", None, raw["metadata"]["name"], raw])
    for raw in raw_services:
        key = f"{raw['metadata']['namespace']}/{raw['metadata']['name']}"
        status = world.status[key].model_dump(mode="json", by_alias=True, exclude_none=True)
        raw["status"] = status
        ns, name = raw["metadata"]["namespace"], raw["metadata"]["name"]
        out.append([f"{GROUP}/v1alpha1/inferenceservices", ns, name, raw])
        uid = raw["metadata"]["uid"]
        routing = world.routing[key].routing
        for obj in (
            router_deployment(key, uid, config),
            router_pdb(key, uid),
            workers_pdb(key, uid),
            router_service(key, uid, config),
            routing_configmap(routing, uid, config, now),
        ):
            out.append([_resource_of(obj), ns, obj["metadata"]["name"], obj])
    for worker_key, worker in world.workers.items():
        uid = f"uid-{worker_key.service_name}"
        dep = worker_deployment(worker.spec, uid, config)
        replicas = worker.spec.replicas
        dep["status"] = {"replicas": replicas, "readyReplicas": replicas}
        svc_obj = worker_service(worker_key, uid, config)
        for obj in (dep, svc_obj):
            out.append([_resource_of(obj), worker_key.namespace, obj["metadata"]["name"], obj])
    return out


def _resource_of(obj: dict[str, Any]) -> str:
    plural = {
        "Deployment": "deployments",
        "Service": "services",
        "ConfigMap": "configmaps",
        "PodDisruptionBudget": "poddisruptionbudgets",
    }
    return f"{obj['apiVersion']}/{plural[obj['kind']]}"


def wave_after(
    emu: EmulatorProcess, before: int, t_change: float, what: str
) -> tuple[float, int, int, float]:
    """Wait for the first Deployment write after a change and for the cluster to go quiet;
    (seconds to the last Deployment write, Deployment writes, all writes, seconds to the last
    write of any kind: statuses and events come after the data plane)."""
    wait_for(what, lambda: deployment_writes(emu, before), timeout_s=120, interval_s=0.02)
    settle(emu)
    wave = deployment_writes(emu, before)
    writes = [e for e in emu.sync_log()[before:] if _is_write(e)]
    for t, method, path in writes:
        print(f"  {what}: +{t - t_change:.3f} s {method} {path}", file=sys.stderr)
    return wave[-1][0] - t_change, len(wave), len(writes), writes[-1][0] - t_change


def run(n: int, workdir: Path, watch_nodes: bool) -> dict[str, Any]:
    from accordion.operator.config import OperatorConfig

    env = {
        "ACCORDION_DEBOUNCE_S": "0.2",
        "ACCORDION_RESYNC_INTERVAL_S": "30",
        "ACCORDION_WATCH_NODES": "1" if watch_nodes else "0",
    }
    config = OperatorConfig.load(env)
    t0 = time.monotonic()
    objects = settled_objects(n, config)
    build_s = time.monotonic() - t0
    emu = EmulatorProcess()
    kubeconfig = workdir / f"kubeconfig-{n}"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "kmock", "cluster": {"server": emu.url}}],
                "users": [{"name": "b", "user": {"token": "b"}}],
                "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "b"}}],
                "current-context": "kmock",
            }
        )
    )
    loader: Any = k8s_config
    configuration = k8s.Configuration()
    loader.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    cluster = Cluster(k8s.ApiClient(configuration), None)  # type: ignore[arg-type]
    suffix = "-nodes" if watch_nodes else ""
    op = Operator(kubeconfig, workdir / f"operator-{n}{suffix}.log", env)
    sampler: RssSampler | None = None
    try:
        emu.ask(op="seed", objects=objects)
        namespaces = sorted({f"ns-{i % 20}" for i in range(n)})
        deployments = sum(1 for o in objects if o[0] == "apps/v1/deployments")
        assert len(cluster.deployments("ns-0")) > 0, "the seeded objects are not served"

        # The operator starts on a cluster that is already as it wants it: zero churn.
        start_log = len(emu.sync_log())
        op.log_path.unlink(missing_ok=True)
        t_start = time.monotonic()
        op.start()
        assert op.proc is not None
        sampler = RssSampler(op.proc.pid)
        sampler.phase("start-up to the first pass")
        wait_for(
            "the operator's first pass",
            lambda: re.search(r"planned \d+ services in", op.log()),
            timeout_s=300,
            interval_s=0.1,
        )
        first_pass_s = time.monotonic() - t_start
        sampler.phase("after the first pass, until idle")
        settle(emu, quiet_s=3.0)
        wait_idle(op.proc.pid)
        churn = [e for e in emu.sync_log()[start_log:] if _is_write(e)]
        cpu_idle_0 = cpu_s(op.proc.pid)
        idle_rss = rss_mb(op.proc.pid)[0]
        sampler.phase("spec change")

        # 1. One service's demand grows 8x.
        before = len(emu.sync_log())
        target = service(0)
        qps = target["spec"]["demand"]["qps"] * 8
        t_change = time.monotonic()
        cluster.patch("ns-0", "svc-0", {"spec": {"demand": {"qps": qps}}})
        spec_s, _, spec_writes, _ = wave_after(emu, before, t_change, "svc-0's Deployment")
        kubelet(cluster, namespaces)
        settle(emu)

        # 2. A pool loses all its devices: a wave of re-planned services.
        before = len(emu.sync_log())
        sampler.phase("pool change")
        t_change = time.monotonic()
        cluster.patch_pool("pool-0", 0)
        pool_s, pool_deps, pool_writes, pool_all_s = wave_after(
            emu, before, t_change, "the re-planned wave"
        )
        rss, peak = rss_mb(op.proc.pid)
        sampler.stop()
        sampled_peak, peak_phase, peak_at_s = sampler.peak()
        text = op.log()
        plans = [float(m.group(1)) for m in re.finditer(r"services in ([0-9.]+) s;", text)]
        decisions = [float(m.group(1)) for m in re.finditer(r"decided in ([0-9.]+) s", text)]
        return {
            "services": n,
            "watch_nodes": watch_nodes,
            "nodes": sum(1 for o in objects if o[0] == "v1/nodes"),
            "pools": POOLS,
            "seeded_objects": len(objects),
            "seeded_deployments": deployments,
            "seed_build_s": round(build_s, 2),
            "operator_first_pass_s": round(first_pass_s, 2),
            "restart_churn_writes": len(churn),
            "spec_change_to_last_deployment_s": round(spec_s, 3),
            "spec_change_writes": spec_writes,
            "pool_change_to_last_deployment_s": round(pool_s, 3),
            "pool_change_deployment_writes": pool_deps,
            "pool_change_writes": pool_writes,
            "pool_change_to_last_write_s": round(pool_all_s, 3),
            "plan_time_s": [round(p, 3) for p in plans[-2:]],
            "decision_time_s": [round(d, 3) for d in decisions[-2:]],
            "operator_cpu_s_during_changes": round(cpu_s(op.proc.pid) - cpu_idle_0, 2),
            "idle_rss_mb": round(idle_rss, 1),
            "rss_mb": round(rss, 1),
            "peak_rss_mb": round(peak, 1),
            "sampled_peak_rss_mb": round(sampled_peak, 1),
            "peak_phase": f"{peak_phase} +{peak_at_s:.1f} s",
            "max_rss_mb_by_phase": {
                name: round(sampler.max_in(name), 1) for _, name in sampler.phases[1:]
            },
        }
    finally:
        if sampler is not None:
            sampler.stop()
        op.stop()
        emu.stop()


class _SettlingActuator:
    """Applies steps to the world in memory, every replica ready at once (a perfect kubelet)."""

    def __init__(self, world: Any) -> None:
        self.world = world

    async def apply(self, step: Any) -> None:
        from accordion.operator.control.loop import (
            AppliedRouting,
            ApplyRouting,
            EnsureWorker,
            RemoveService,
            RemoveWorker,
            RunningWorker,
            UpdateStatus,
        )

        w = self.world
        if isinstance(step, EnsureWorker):
            w.workers[step.spec.key] = RunningWorker(step.spec, step.spec.replicas)
        elif isinstance(step, RemoveWorker):
            w.workers.pop(step.key, None)
        elif isinstance(step, ApplyRouting):
            w.routing[step.service] = AppliedRouting(step.routing, 0.0)
        elif isinstance(step, RemoveService):
            for k in step.workers:
                w.workers.pop(k, None)
            w.routing.pop(step.service, None)
        elif isinstance(step, UpdateStatus):
            w.status[step.service] = step.status


def loop_only(n: int) -> dict[str, Any]:
    """The control loop in process (no emulator, no API): planning and decisions at size n.

    The world is first settled (every step applied, every replica ready); then the cost of a
    pass with nothing changed, of a spec change (one service's demand x8) and of a pool change
    (pool-0 loses all its devices) is measured: decision time and planner time apart.
    """
    import asyncio

    from accordion.operator.api import DevicePool, InferenceService, parse_resource
    from accordion.operator.control.loop import ControlLoop, DemandView, World
    from tests.operator.conftest import device_pool

    devices = max(4, (n * 3) // POOLS)
    world = World()
    for p in range(POOLS):
        pool = parse_resource(device_pool(f"pool-{p}", devices))
        assert isinstance(pool, DevicePool)
        world.pools[pool.metadata.name] = pool
    for i in range(n):
        svc = parse_resource(service(i))
        assert isinstance(svc, InferenceService)
        world.services[svc.key] = svc
    loop = ControlLoop()
    actuator = _SettlingActuator(world)
    demand = DemandView()
    first = asyncio.run(loop.reconcile(world, demand, actuator))
    first_s, first_plan_s = loop.decide_time_s, loop.plan_time_s
    for _ in range(5):  # make before break: settle in a few passes
        if not asyncio.run(loop.reconcile(world, demand, actuator)).decision.steps:
            break
    idle = loop.decide(world, demand)
    assert not idle.steps, f"not settled: {len(idle.steps)} steps"
    idle_s = loop.decide_time_s

    def timed_change() -> tuple[float, float, int]:
        decision = loop.decide(world, demand)
        return loop.decide_time_s, loop.plan_time_s, len(decision.steps)

    # The loop treats the world's objects as values: a change is a new object.
    changed = world.services["ns-0/svc-0"].model_copy(deep=True)
    changed.spec.demand.qps = (changed.spec.demand.qps or 0) * 8
    world.services["ns-0/svc-0"] = changed
    spec_s, spec_plan_s, spec_steps = timed_change()
    for _ in range(5):
        if not asyncio.run(loop.reconcile(world, demand, actuator)).decision.steps:
            break
    shrunk = world.pools["pool-0"].model_copy(deep=True)
    shrunk.spec.devices = 0
    world.pools["pool-0"] = shrunk
    pool_s, pool_plan_s, pool_steps = timed_change()
    return {
        "services": n,
        "first_decision_s": round(first_s, 3),
        "first_plan_s": round(first_plan_s, 3),
        "first_steps": len(first.decision.steps),
        "idle_decision_s": round(idle_s, 3),
        "spec_change_decision_s": round(spec_s, 3),
        "spec_change_plan_s": round(spec_plan_s, 3),
        "spec_change_steps": spec_steps,
        "pool_change_decision_s": round(pool_s, 3),
        "pool_change_plan_s": round(pool_plan_s, 3),
        "pool_change_steps": pool_steps,
    }


def markdown(rows: list[dict[str, Any]], loop_rows: list[dict[str, Any]]) -> str:
    lines = [
        "# Operator benchmark (kopf + kmock emulator, 10 DevicePools)",
        "",
        "Real `kopf run` operator against kmock's Kubernetes emulator (the test fixtures'",
        "subclass) over HTTP on loopback, the emulator in a process of its own. The emulator is",
        "seeded with the settled cluster (built by the operator's own control loop and manifest",
        "builders, every replica ready); the operator then starts on it (restart churn = API",
        "writes it makes then: must be 0) and the benchmark times two changes to the *last*",
        "Deployment write they cause: one service's demand x8 (spec change) and one pool losing",
        "all its devices (pool change). Goals at 1,000 services: under 2 s and under 300 MB.",
        "",
        "| services | watch_nodes (Nodes) | restart churn (writes) "
        "| spec change -> last Deployment s (writes) "
        "| pool change -> last Deployment s (Deployment writes / all writes) "
        "| pool change -> last write s "
        "| plan s (spec, pool) | decision s (spec, pool) "
        "| RSS idle / end / peak MB | peak during |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['services']} | {'on' if r['watch_nodes'] else 'off'} ({r['nodes']}) "
            f"| {r['restart_churn_writes']} "
            f"| {r['spec_change_to_last_deployment_s']} ({r['spec_change_writes']}) "
            f"| {r['pool_change_to_last_deployment_s']} "
            f"({r['pool_change_deployment_writes']} / {r['pool_change_writes']}) "
            f"| {r.get('pool_change_to_last_write_s', '')} "
            f"| {', '.join(map(str, r['plan_time_s']))} "
            f"| {', '.join(map(str, r['decision_time_s']))} "
            f"| {r['idle_rss_mb']} / {r['rss_mb']} / {r['peak_rss_mb']} "
            f"| {r['peak_phase']} |"
        )
    lines += [
        "",
        "RSS of the operator process: idle = after its start, once it has gone quiet (kopf has",
        "worked through its initial watch), before the first change; end = after both changes;",
        "peak = VmHWM, the highest it ever was; `peak during` names the phase the highest",
        "sample (every 50 ms) fell in. With watch_nodes on, each pool selects its own Nodes",
        f"({GPUS_PER_NODE} GPUs each, as many as its devices need), seeded as a real cluster",
        f"serves them (labels, managedFields, conditions with heartbeats, {NODE_IMAGES} images).",
        "",
        "A pass writes its data plane first (new and grown worker groups, then routing and",
        "removals) and its statuses and events last: `last write` is when the pool change's",
        "last status or event was written.",
        "",
        "Times include the operator's debounce (0.2 s here). Operator and emulator share the",
        "machine's 2 cores (and with whatever else runs there); the emulator is a single-threaded",
        "Python server. kmock 0.8 itself scanned every past request and every stored object on",
        "each request (quadratic): the fixtures' `Emulator` now keeps only in-flight requests in",
        "that history and looks objects up by key (about 18 -> 500 creates/s at 500 objects).",
        "The cluster is seeded rather than rolled out through the API, so no initial rollout",
        "time is reported any more.",
    ]
    if loop_rows:
        lines += [
            "",
            "The control loop alone, in process (`--loop-only`: no API, no kopf), on the same",
            "problems; decision = planning + desired state + steps:",
            "",
            "| services | first decision s (plan s, steps) | idle pass s "
            "| spec change: decision / plan s (steps) | pool change: decision / plan s (steps) |",
            "|---:|---:|---:|---:|---:|",
        ]
        for r in loop_rows:
            lines.append(
                f"| {r['services']} | {r['first_decision_s']} ({r['first_plan_s']}, "
                f"{r['first_steps']}) | {r['idle_decision_s']} "
                f"| {r['spec_change_decision_s']} / {r['spec_change_plan_s']} "
                f"({r['spec_change_steps']}) "
                f"| {r['pool_change_decision_s']} / {r['pool_change_plan_s']} "
                f"({r['pool_change_steps']}) |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="*", default=[10, 100, 1000])
    parser.add_argument("--out", type=Path, default=RESULTS / "operator")
    parser.add_argument(
        "--loop-only", type=int, nargs="*", default=[], help="sizes for the in-process loop"
    )
    parser.add_argument("--logs", type=Path, help="keep the operator's logs in this folder")
    parser.add_argument(
        "--watch-nodes",
        nargs="*",
        choices=["off", "on"],
        default=["off", "on"],
        help="run each size with the operator's watch_nodes off, on (Nodes seeded), or both",
    )
    args = parser.parse_args()
    loop_rows = []
    for n in args.loop_only:
        row = loop_only(n)
        print(json.dumps(row), flush=True)
        loop_rows.append(row)
    rows = []
    with TemporaryDirectory() as tmp:
        for n in args.sizes:
            for mode in args.watch_nodes:
                row = run(n, args.logs or Path(tmp), mode == "on")
                print(json.dumps(row), flush=True)
                rows.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    data = {"emulator": rows, "loop_only": loop_rows}
    args.out.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(rows, loop_rows))
    print(markdown(rows, loop_rows))


if __name__ == "__main__":
    main()
