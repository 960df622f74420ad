"""Stopping a server without refusing anyone: routers and workers alike.

A pod that terminates leaves its Service's endpoints while it already runs its shutdown, and
every node's proxy, and every client's keep-alive connection (a router's to its workers), learn
that only after a while; a server that stopped listening at once would refuse what they send
meanwhile (Kubernetes' usual answer is a preStop sleep, which needs a shell in the image and
waits its whole length however idle the pod is). `install` makes SIGTERM start a drain instead:

* the server serves on, and every answer closes its connection, so that clients reconnect to
  the other replicas; `Drainable.draining` says so to its owner (a router's readiness answers
  503 then; a worker's stays as it was, because routers check a worker group's readiness
  through its Service, where one terminating pod's 503 would count against its siblings);
* the drain ends `seconds` after SIGTERM; for a worker (`quiet_s`), also as soon as no
  inference request (a POST) has arrived for `QUIET_S` since SIGTERM or the last one, so that
  a replica nobody routes to any more (a worker whose plan removed it, after its routers took
  the new table) frees its device a second later (a health probe is no traffic). A router
  drains for the whole time: it holds no device, and a quiet second at a low request rate
  says nothing about the connections still on their way to it;
* then, as on SIGINT, the server finishes the requests in flight and exits (aiohttp's graceful
  shutdown), within the pod's grace period.

gRPC requests do not hold the drain (they run in a server of their own, which stops with a
grace of its own); gRPC clients follow the server's GOAWAY to another replica.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Protocol

from aiohttp import hdrs, web

log = logging.getLogger(__name__)

QUIET_S = 1.0
"""A drain ends early once no inference request has arrived for this long."""
POLL_S = 0.05


class Drainable(Protocol):
    """What a drain tells: its server is terminating."""

    draining: bool


class _Drain:
    def __init__(self, owner: Drainable, seconds: float, quiet_s: float | None) -> None:
        self.owner, self.seconds, self.quiet_s = owner, seconds, quiet_s
        self.last_arrival = -float("inf")
        self.task: asyncio.Task[None] | None = None

    @web.middleware
    async def note(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.method == hdrs.METH_POST:
            self.last_arrival = asyncio.get_running_loop().time()
        return await handler(request)

    async def on_startup(self, _: web.Application) -> None:
        # This replaces the runner's SIGTERM handler, installed before the app starts.
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, self.begin)

    def begin(self) -> None:
        if self.task is None:
            self.owner.draining = True
            log.info(
                "SIGTERM: draining for %g s%s (connections close after their answer)",
                self.seconds,
                ""
                if self.quiet_s is None
                else f" at most, {self.quiet_s:g} s after the last request at least",
            )
            loop = asyncio.get_running_loop()
            self.last_arrival = max(self.last_arrival, loop.time())
            self.task = loop.create_task(self.run())

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + self.seconds
        while True:
            now = loop.time()
            if now >= end or (self.quiet_s is not None and now - self.last_arrival >= self.quiet_s):
                break
            await asyncio.sleep(POLL_S)
        loop.call_soon(_graceful_exit)

    async def close_while_draining(self, _: web.Request, response: web.StreamResponse) -> None:
        # Called after the response's headers were made and before they are sent: the
        # connection closes after this answer, and the client is told so.
        if self.owner.draining:
            response.force_close()
            response.headers[hdrs.CONNECTION] = "close"


def _graceful_exit() -> None:
    raise web.GracefulExit()  # what aiohttp's own SIGINT/SIGTERM handler raises


def install(
    app: web.Application, owner: Drainable, seconds: float, quiet_s: float | None = QUIET_S
) -> None:
    """Make SIGTERM drain `app` (`owner.draining` then True) for `seconds`, or until no
    request has come for `quiet_s` (None: the whole time) before it stops; nothing for
    `seconds` 0. Call before the app runs (`web.run_app`)."""
    if seconds <= 0:
        return
    drain = _Drain(owner, seconds, quiet_s)
    if quiet_s is not None:  # a router drains the whole time: no per-request note
        app.middlewares.append(drain.note)
    app.on_startup.append(drain.on_startup)
    app.on_response_prepare.append(drain.close_while_draining)
