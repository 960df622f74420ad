"""The HTTP edge of the worker and the router: what a hostile or broken client can cost them.

Both servers build their aiohttp application through `edge_app`, so they bound the same things:

* **Errors**: every refusal is a 4xx (or the 503 of an overloaded server) in KServe's error
  shape ``{"error": "..."}``: an unknown path or method as well as a bad tensor. A bug that
  escapes a handler is logged and answered 500 in the same shape, and the process goes on.
* **Slow clients** (slowloris): a connection has `header_timeout_s` to send a complete request
  head, and an idle keep-alive connection is closed after as long (aiohttp's keep-alive timer,
  which it also arms when a connection opens; here per application through ``handler_args``, so
  every runner gets it); a body has `body_timeout_s` to arrive (408).
* **Size**: ``client_max_size`` and a ``Content-Length`` check refuse a body over
  `max_body_bytes` before it is read (413), decompressed bodies included.
* **Bulk bodies**: bodies over `bulk_body_bytes` (or of unknown length) are read and decoded
  `bulk_concurrency` at a time, and each slot then rests three times the loop's CPU time its
  body took: bulk bodies get at most a quarter of the event loop however many clients send
  them. Their bytes wait in the kernel meanwhile (TCP backpressure), so a flood of 16 MB bodies
  holds at most `bulk_concurrency` of them in memory, and the loop stays for the small requests
  of everyone else. Decoding runs on the loop: orjson parses about 350 MB/s and holds the GIL
  throughout, so a thread would not free the loop.
* **Content types**: bodies that are forms in parts (``multipart/*``) are refused with 415;
  JSON, the binary extension's ``application/octet-stream``, a missing type, and the types
  command-line clients send by default (curl's ``application/x-www-form-urlencoded``) are read
  as v2 bodies.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web

from accordion.workers.config import OUTCOME_HEADER
from accordion.workers.protocol import InferenceError, encode_json

log = logging.getLogger(__name__)

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class EdgeLimits:
    """What one request may cost (see the module docstring)."""

    max_body_bytes: int = 16 * 1024 * 1024
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    bulk_body_bytes: int = 1024 * 1024
    bulk_concurrency: int = 2
    bulk_pause_factor: float = 3.0
    """After a bulk body, its slot rests 3x the loop's CPU time it took: at most 1/4 of the loop
    goes to bulk bodies."""
    bulk_pause_max_s: float = 1.0


def error_response(status: int, reason: str, outcome: str = "rejected") -> web.Response:
    """KServe's error shape, with the outcome header every answer carries."""
    return web.Response(
        body=encode_json({"error": reason}),
        status=status,
        content_type="application/json",
        headers={OUTCOME_HEADER: outcome},
    )


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except InferenceError as exc:
        return error_response(exc.status, exc.reason, exc.outcome)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        reason = {
            404: f"no such endpoint: {request.method} {request.path[:200]}",
            405: f"method {request.method} is not allowed on {request.path[:200]}",
        }.get(exc.status, exc.reason)
        return error_response(exc.status, reason)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a bug: say so, keep serving
        log.exception("unhandled error serving %s %s", request.method, request.path)
        return error_response(500, f"internal error: {type(exc).__name__}", "error")


class _ProtocolLogger(logging.Logger):
    """aiohttp's request handler logs a traceback at ERROR for every malformed HTTP message it
    answers 400 (bad request line, header, chunk): any client could fill the logs with them.
    Handlers' own errors never get there (`_errors` catches and logs them), so what comes here
    is the client's fault: one DEBUG line each, on ``accordion.workers.edge.protocol``."""

    def exception(self, msg: object, *args: object, **kwargs: Any) -> None:
        kwargs.pop("exc_info", None)
        text = str(msg) % args if args else str(msg)
        self.debug("%s: %s", text, sys.exc_info()[1], **kwargs)


_protocol_log = _ProtocolLogger("accordion.workers.edge.protocol")
_protocol_log.parent = log


_BULK_KEY = web.AppKey("accordion-bulk", asyncio.Semaphore)
_LIMITS_KEY = web.AppKey("accordion-edge-limits", EdgeLimits)


def edge_app(limits: EdgeLimits) -> web.Application:
    """An application with the edge's bounds; the caller adds its routes."""
    app = web.Application(
        client_max_size=limits.max_body_bytes,
        middlewares=[_errors],
        handler_args={"keepalive_timeout": limits.header_timeout_s, "logger": _protocol_log},
    )
    app[_LIMITS_KEY] = limits
    app[_BULK_KEY] = asyncio.Semaphore(limits.bulk_concurrency)
    return app


def check_content_type(request: web.Request) -> None:
    if request.content_type.startswith("multipart/"):
        raise InferenceError(
            415,
            f"Content-Type {request.content_type} is not a v2 body; send application/json, "
            "or application/octet-stream with Inference-Header-Content-Length",
        )


async def read_decoded(request: web.Request, decode: Callable[[bytes], T]) -> T:
    """`decode` of the request body, read within the edge's size and time bounds (413, 408).

    A bulk body (over `bulk_body_bytes`, or of unknown length) is read and decoded in one of
    `bulk_concurrency` slots, and its slot is held afterwards for `bulk_pause_factor` times the
    event loop's CPU time it took: bulk bodies get at most a quarter of the loop (by default)
    however many clients send them, the rest stays for everyone else's requests."""
    limits = request.app[_LIMITS_KEY]
    check_content_type(request)
    length = request.content_length
    if length is not None and length > limits.max_body_bytes:
        raise InferenceError(
            413,
            f"request body of {length} bytes exceeds the limit of {limits.max_body_bytes} bytes",
        )
    if length is not None and length <= limits.bulk_body_bytes:
        return decode(await _read(request, limits))
    async with request.app[_BULK_KEY]:
        cpu_s = time.thread_time()
        try:
            return decode(await _read(request, limits))
        finally:
            pause_s = (time.thread_time() - cpu_s) * limits.bulk_pause_factor
            await asyncio.sleep(min(pause_s, limits.bulk_pause_max_s))


async def _read(request: web.Request, limits: EdgeLimits) -> bytes:
    try:
        async with asyncio.timeout(limits.body_timeout_s):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise InferenceError(
            413, f"request body exceeds the limit of {limits.max_body_bytes} bytes"
        ) from None
    except TimeoutError:
        raise InferenceError(
            408, f"request body not received within {limits.body_timeout_s:g} s"
        ) from None
    except (ConnectionError, EOFError) as exc:
        raise InferenceError(400, f"request body incomplete: {exc}") from None
    except web.RequestPayloadError as exc:  # a body aiohttp cannot decode (Content-Encoding)
        raise InferenceError(400, f"request body unreadable: {exc}") from None
    except web.HTTPException as exc:  # aiohttp's own refusals of a payload (bad encoding)
        raise InferenceError(exc.status if exc.status >= 400 else 400, exc.reason) from None
