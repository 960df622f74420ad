"""The process actuator: carries out the control loop's steps with processes on this machine.

Where the Kubernetes actuator patches a Deployment, this one starts and stops worker processes;
where it writes a ConfigMap, this one writes the router's routing-table file (atomically, the
router reloads it on change). A worker group (one `WorkerKey`) has one port that every replica
binds with ``SO_REUSEPORT`` (see `procs`), so a group's URL never changes while replicas come
and go, exactly like a Kubernetes Service.

`supervise` plays the Deployment controller: it reaps dead replicas (their traffic goes to the
group's other replicas, and the loop routes around a group with fewer ready replicas), starts
replacements, probes readiness on each replica's private port, and retires replicas running an
outdated spec once enough up-to-date ones are ready (a rolling update with surge). A router
that dies is restarted at once on its port with the same routing table (a `RouterDied` event):
requests sent while it is down fail, as they would while a pod restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import assert_never

import aiohttp

from accordion.local.procs import PARENT_ENV
from accordion.operator.control.desired import WorkerKey, WorkerSpec, routing_table
from accordion.operator.control.loop import (
    AppliedRouting,
    ApplyRouting,
    EnsureWorker,
    RecordEvent,
    RemoveService,
    RemoveWorker,
    Step,
    UpdateStatus,
    World,
)

log = logging.getLogger(__name__)

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def port_in_use(port: int) -> bool:
    """True when something listens on the port (connections in TIME_WAIT do not count: the
    router binds with SO_REUSEADDR, as every aiohttp server does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return True
    return False


def service_slug(service: str) -> str:
    """`namespace/name` as the router's service name (`namespace.name`)."""
    return service.replace("/", ".")


@dataclass
class Event:
    """Something the user should see (a re-plan, a dead worker), with wall-clock time."""

    t_s: float
    service: str
    type: str
    reason: str
    message: str


@dataclass
class Replica:
    """One worker process."""

    proc: asyncio.subprocess.Process
    spec: WorkerSpec
    private_port: int
    started_at_s: float
    ready: bool = False


@dataclass
class Group:
    """A worker group: its desired spec, its port, its replicas."""

    spec: WorkerSpec
    port: int
    replicas: list[Replica] = field(default_factory=list)

    def current(self) -> list[Replica]:
        return [r for r in self.replicas if r.spec == self.spec]

    def ready_count(self) -> int:
        return sum(1 for r in self.current() if r.ready)


@dataclass
class RouterProc:
    service: str
    port: int
    table_path: Path
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    model: str = ""
    """The name the router serves (`/v2/models/<model>/infer`), from its routing table."""


class ProcessActuator:
    """Implements the loop's `Actuator` protocol with local processes (see the module doc)."""

    def __init__(
        self,
        world: World,
        run_dir: Path,
        router_ports: dict[str, int],
        *,
        clock: Callable[[], float] = time.time,
        on_event: Callable[[Event], None] | None = None,
    ) -> None:
        self.world = world
        self.run_dir = run_dir
        self.router_ports = router_ports
        self.clock = clock
        self.on_event = on_event
        self.groups: dict[WorkerKey, Group] = {}
        self.routers: dict[str, RouterProc] = {}
        self._session: aiohttp.ClientSession | None = None
        (run_dir / "logs").mkdir(parents=True, exist_ok=True)
        (run_dir / "config").mkdir(parents=True, exist_ok=True)

    # -- helpers ---------------------------------------------------------------------------------

    def event(self, service: str, type_: str, reason: str, message: str) -> None:
        ev = Event(self.clock(), service, type_, reason, message)
        log.info("%s %s: %s", service, reason, message)
        if self.on_event is not None:
            self.on_event(ev)

    def _port(self) -> int:
        """A free port that is not a router's (routers start later than the first workers)."""
        reserved = set(self.router_ports.values())
        while (port := free_port()) in reserved:
            continue
        return port

    def url_for(self, key: WorkerKey) -> str:
        return f"http://{HOST}:{self.groups[key].port}"

    async def _spawn(self, args: list[str], log_name: str) -> asyncio.subprocess.Process:
        env = dict(os.environ)
        env[PARENT_ENV] = str(os.getpid())
        env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("MKL_NUM_THREADS", "1")
        logfile = (self.run_dir / "logs" / log_name).open("ab")
        try:
            return await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "accordion.local.procs",
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=logfile,
                stderr=logfile,
                env=env,
                start_new_session=True,  # Ctrl-C reaches `up` only; `up` stops the children
            )
        finally:
            logfile.close()

    async def _start_replica(self, group: Group) -> None:
        spec = group.spec
        key = spec.key
        name = f"{service_slug(key.service)}.{key.variant}.{key.pool}"
        next_url = None
        if spec.stage is not None:  # a pipeline stage
            name += f".stage{(key.stage or 0) + 1}"
        if spec.stage is not None and spec.stage.next is not None:
            # Made before this one (`WorkerKey.sort_key`): the next stage's group has its port.
            next_url = self.url_for(spec.stage.next)
        config = spec.worker_config(host=HOST, port=group.port, next_url=next_url)
        path = self.run_dir / "config" / f"worker.{name}.{spec.digest()}.json"
        path.write_text(config.model_dump_json(indent=2))
        private = self._port()
        proc = await self._spawn(["worker", str(path), str(private)], f"worker.{name}.log")
        group.replicas.append(Replica(proc, spec, private, self.clock()))

    @staticmethod
    async def stop_process(proc: asyncio.subprocess.Process, grace_s: float = 5.0) -> None:
        if proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), grace_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    # -- the Actuator protocol -----------------------------------------------------------------

    async def apply(self, step: Step) -> None:
        match step:
            case EnsureWorker():
                await self._ensure(step.spec)
            case RemoveWorker():
                await self._remove(step.key)
            case ApplyRouting():
                await self._route(step)
            case RemoveService():
                await self._remove_service(step)
            case UpdateStatus():
                self.world.status[step.service] = step.status
            case RecordEvent():
                self.event(step.service, step.type, step.reason, step.message)
            case _:
                assert_never(step)

    async def _remove_service(self, step: RemoveService) -> None:
        for key in step.workers:
            await self._remove(key)
        router = self.routers.pop(step.service, None)
        if router is not None and router.proc is not None:
            await self.stop_process(router.proc)
        self.world.routing.pop(step.service, None)

    async def _ensure(self, spec: WorkerSpec) -> None:
        group = self.groups.get(spec.key)
        if group is None:
            group = self.groups[spec.key] = Group(spec, self._port())
            self.event(
                spec.key.service,
                "Normal",
                "WorkerStarting",
                f"{spec.key.backend_name} x{spec.replicas} on port {group.port}",
            )
        group.spec = spec
        await self._converge(group)

    async def _remove(self, key: WorkerKey) -> None:
        group = self.groups.pop(key, None)
        if group is None:
            return
        await asyncio.gather(*(self.stop_process(r.proc) for r in group.replicas))
        self.event(key.service, "Normal", "WorkerRemoved", f"{key.backend_name} stopped")

    async def _route(self, step: ApplyRouting) -> None:
        table = routing_table(step.routing, self.url_for)
        if table is not None:
            router = self.routers.get(step.service)
            if router is None:
                port = self.router_ports[step.service]
                path = self.run_dir / "config" / f"routing.{service_slug(step.service)}.json"
                router = self.routers[step.service] = RouterProc(step.service, port, path)
            router.model = table.service
            text = table.model_dump_json(indent=2)
            if not router.table_path.exists() or router.table_path.read_text() != text:
                tmp = router.table_path.with_suffix(".tmp")
                tmp.write_text(text)
                tmp.replace(router.table_path)  # atomic: the router never reads half a file
            if router.proc is None or router.proc.returncode is not None:
                await self._start_router(router)
        # A routing without backends keeps the router's last table (it cannot hold an empty
        # one); the loop routes again as soon as a backend is ready.
        self.world.routing[step.service] = AppliedRouting(step.routing, self.clock())

    async def _start_router(self, router: RouterProc) -> None:
        slug = service_slug(router.service)
        router.proc = await self._spawn(
            ["router", str(router.table_path), str(router.port)], f"router.{slug}.log"
        )
        self.event(
            router.service,
            "Normal",
            "RouterStarted",
            f"POST http://{HOST}:{router.port}/v2/models/{router.model}/infer",
        )

    # -- the Deployment controller ---------------------------------------------------------------

    async def _converge(self, group: Group) -> None:
        current = group.current()
        missing = group.spec.replicas - len(current)
        for _ in range(missing):
            await self._start_replica(group)
        if missing < 0:  # too many up-to-date replicas: stop the youngest (least warm) first
            extra = sorted(current, key=lambda r: r.started_at_s)[group.spec.replicas :]
            for r in extra:
                group.replicas.remove(r)
            await asyncio.gather(*(self.stop_process(r.proc) for r in extra))
        if group.ready_count() >= group.spec.replicas:
            outdated = [r for r in group.replicas if r.spec != group.spec]
            for r in outdated:
                group.replicas.remove(r)
            await asyncio.gather(*(self.stop_process(r.proc) for r in outdated))

    async def _probe(self, replica: Replica) -> bool:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0))
        try:
            url = f"http://{HOST}:{replica.private_port}/v2/health/ready"
            async with self._session.get(url) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def supervise(self) -> None:
        """Reap dead processes, replace them, probe readiness (one pass; call periodically)."""
        for key, group in list(self.groups.items()):
            for r in list(group.replicas):
                if r.proc.returncode is not None:
                    group.replicas.remove(r)
                    self.event(
                        key.service,
                        "Warning",
                        "WorkerDied",
                        f"{key.backend_name} pid {r.proc.pid} exited with {r.proc.returncode}; "
                        "its traffic goes to the other backends while it is replaced",
                    )
            probes = [r for r in group.replicas if not r.ready]
            results = await asyncio.gather(*(self._probe(r) for r in probes))
            for r, ok in zip(probes, results, strict=True):
                r.ready = ok
            await self._converge(group)
        for router in self.routers.values():
            if router.proc is not None and router.proc.returncode is not None:
                router.restarts += 1
                self.event(
                    router.service,
                    "Warning",
                    "RouterDied",
                    f"router exited with {router.proc.returncode}; restarting it",
                )
                await self._start_router(router)

    def processes(self) -> list[asyncio.subprocess.Process]:
        procs = [r.proc for g in self.groups.values() for r in g.replicas]
        procs += [r.proc for r in self.routers.values() if r.proc is not None]
        return procs

    def describe(self) -> dict[str, object]:
        """What runs, for `state.json` (tests and the demo read it)."""
        return {
            "routers": {
                s: {"port": r.port, "pid": r.proc.pid if r.proc else None, "model": r.model}
                for s, r in self.routers.items()
            },
            "workers": [
                {
                    "service": k.service,
                    "backend": k.backend_name,
                    "port": g.port,
                    "replicas": g.spec.replicas,
                    "ready": g.ready_count(),
                    "pids": [r.proc.pid for r in g.replicas if r.proc.returncode is None],
                }
                for k, g in sorted(self.groups.items(), key=lambda kv: kv[0].sort_key())
            ],
        }

    async def shutdown(self) -> None:
        """Stop every process this actuator started; return when they are all gone."""
        procs = self.processes()
        await asyncio.gather(*(self.stop_process(p) for p in procs))
        self.groups.clear()
        self.routers.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None


def dump_event(ev: Event) -> str:
    return json.dumps(ev.__dict__)
