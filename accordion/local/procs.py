"""Entry points of the processes local mode starts: workers and routers.

``python -m accordion.local.procs worker CONFIG.json PRIVATE_PORT`` runs one worker replica. All
replicas of a worker group bind the group's port with ``SO_REUSEPORT`` (the kernel spreads
connections over them, as a Kubernetes Service spreads them over pods), and each also listens
on a private port of its own, so that local mode can probe every replica's readiness.
``python -m accordion.local.procs router TABLE.json PORT`` runs a router.

Every child asks the kernel to send it SIGTERM when its parent dies (``PR_SET_PDEATHSIG``):
even a ``kill -9`` of ``accordion up`` leaves nothing running.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from accordion.workers.config import WorkerConfig

PARENT_ENV = "ACCORDION_LOCAL_PARENT"
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Exit when the process that started us is gone (Linux; a no-op elsewhere)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    expected = os.environ.get(PARENT_ENV)
    if expected is not None and os.getppid() != int(expected):
        sys.exit(0)  # the parent died before the death signal was armed


def _normal_priority() -> None:
    """Back to nice 0 for the calling thread (needs the privilege to lower niceness)."""
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, 0)


async def _run_worker(config: WorkerConfig, private_port: int) -> None:
    from aiohttp import web

    from accordion.workers.server import Worker, create_app

    # Load and warm up at low priority: on a small machine a starting worker must not slow
    # down the one that serves meanwhile (make before break). Niceness is per thread on Linux,
    # and the model thread is created during the warm-up, so both go back to normal after it.
    with contextlib.suppress(OSError):
        os.nice(10)
    worker = Worker(config)
    runner = web.AppRunner(create_app(worker))
    await runner.setup()  # loads and warms up the model (the app's startup)
    _normal_priority()
    with contextlib.suppress(Exception):
        worker.runner._executor.submit(_normal_priority).result()
    shared = web.TCPSite(runner, config.host, config.port, reuse_port=True)
    private = web.TCPSite(runner, config.host, private_port)
    await shared.start()
    await private.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str]) -> int:
    die_with_parent()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # probes, every second
    if len(argv) == 3 and argv[0] == "worker":
        from accordion.workers.config import WorkerConfig

        config = WorkerConfig.model_validate_json(Path(argv[1]).read_text())
        asyncio.run(_run_worker(config, int(argv[2])))
        return 0
    if len(argv) == 3 and argv[0] == "router":
        from accordion.workers.router import serve_router

        serve_router(Path(argv[1]), "127.0.0.1", int(argv[2]))
        return 0
    print("usage: procs worker CONFIG PRIVATE_PORT | procs router TABLE PORT", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
