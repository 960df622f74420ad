"""The HTTP edge of the worker and the router: what a hostile or broken client can cost them.

Both servers build their aiohttp application through `edge_app`, so they bound the same things:

* **Errors**: every refusal is a 4xx (or the 503 of an overloaded server) in KServe's error
  shape ``{"error": "..."}``: an unknown path or method as well as a bad tensor. A bug that
  escapes a handler is logged and answered 500 in the same shape, and the process goes on.
* **Slow clients** (slowloris): a connection has `header_timeout_s` to send a complete request
  head, and an idle keep-alive connection is closed after as long (aiohttp's keep-alive timer,
  which it also arms when a connection opens; here per application through ``handler_args``, so
  every runner gets it); a body has `body_timeout_s` to arrive (408).
* **Size**: a ``Content-Length`` over `max_body_bytes` is refused before the body is read
  (413), and so is a body whose bytes, counted as they arrive (decompressed), go beyond it.
* **Bulk bodies**: a body over `bulk_body_bytes` (by its ``Content-Length``; of unknown length;
  or growing beyond it as it is decompressed) is never parsed on the event loop: it goes, chunk
  by chunk as it arrives, to one of `bulk_concurrency` decoder processes
  (`accordion.workers.decoding`), which validate it with the same code as small bodies and send
  back the tensors (a worker) or the sample count (a router). Each decoder then rests
  `bulk_pause_factor` times the CPU time the body took, and runs at a lower CPU priority, so
  bulk bodies get a bounded share of the CPU and yield to small requests. While every decoder
  is busy or resting, further bulk bodies wait in the kernel (TCP backpressure): a flood of
  16 MB bodies holds none in the server's memory (a router keeps those it forwards), and the
  loop stays for the small requests of everyone else. Small bodies are decoded on the loop
  (orjson, about 3 ms a MiB): cheaper than the trip to a process.
* **Content types**: bodies that are forms in parts (``multipart/*``) are refused with 415;
  JSON, the binary extension's ``application/octet-stream``, a missing type, and the types
  command-line clients send by default (curl's ``application/x-www-form-urlencoded``) are read
  as v2 bodies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from accordion.workers.config import BINARY_HEADER, OUTCOME_HEADER
from accordion.workers.decoding import Decoded, DecoderPool
from accordion.workers.protocol import (
    InferenceError,
    InferRequest,
    Signature,
    encode_json,
    parse_rest_body,
)

log = logging.getLogger(__name__)

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
    """After a bulk body, its decoder rests 3x the CPU time it took: each decoder works at most
    a quarter of the time."""
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


DECODERS_KEY = web.AppKey("accordion-decoders", DecoderPool)
"""The application's bulk body decoders (started at the first bulk body, stopped with it)."""
_LIMITS_KEY = web.AppKey("accordion-edge-limits", EdgeLimits)


def edge_app(limits: EdgeLimits) -> web.Application:
    """An application with the edge's bounds; the caller adds its routes."""
    app = web.Application(
        client_max_size=limits.max_body_bytes,
        middlewares=[_errors],
        handler_args={"keepalive_timeout": limits.header_timeout_s, "logger": _protocol_log},
    )
    app[_LIMITS_KEY] = limits
    app[DECODERS_KEY] = DecoderPool(
        limits.bulk_concurrency,
        pause_factor=limits.bulk_pause_factor,
        pause_max_s=limits.bulk_pause_max_s,
        reply_timeout_s=limits.body_timeout_s,
    )

    async def stop_decoders(app: web.Application) -> None:
        await app[DECODERS_KEY].stop()

    app.on_cleanup.append(stop_decoders)
    return app


def check_content_type(request: web.Request) -> None:
    if request.content_type.startswith("multipart/"):
        raise InferenceError(
            415,
            f"Content-Type {request.content_type} is not a v2 body; send application/json, "
            "or application/octet-stream with Inference-Header-Content-Length",
        )


async def read_request(request: web.Request, signature: Signature | None) -> InferRequest:
    """The validated v2 infer request of `request`'s body (what a worker serves), read within the
    edge's bounds: 415, 413, 408, and the 400s of `protocol.parse_rest_body`."""
    decoded = await _read_infer(request, signature, forward=False)
    assert decoded.request is not None
    return decoded.request


async def read_forward(request: web.Request, signature: Signature | None) -> tuple[bytes, int]:
    """(body, sample count) of a valid v2 infer body (what a router forwards), refused as
    `read_request` refuses it."""
    decoded = await _read_infer(request, signature, forward=True)
    assert decoded.body is not None
    return decoded.body, decoded.samples


async def _read_infer(
    request: web.Request, signature: Signature | None, *, forward: bool
) -> Decoded:
    """Small bodies (a known length up to `bulk_body_bytes`, and no larger once decompressed)
    are read and decoded here; the others stream to a decoder process as they arrive."""
    limits = request.app[_LIMITS_KEY]
    check_content_type(request)
    length = request.content_length
    if length is not None and length > limits.max_body_bytes:
        raise InferenceError(
            413,
            f"request body of {length} bytes exceeds the limit of {limits.max_body_bytes} bytes",
        )
    header_length = request.headers.get(BINARY_HEADER)
    body = _Body(request, limits)
    first: list[bytes] = []
    if length is not None and length <= limits.bulk_body_bytes:
        first, ended = await body.take(limits.bulk_body_bytes)
        if ended:
            raw = b"".join(first)
            parsed = parse_rest_body(raw, header_length, signature)
            return Decoded(parsed.batch_size, parsed, raw if forward else None)
    kept: list[bytes] | None = [] if forward else None
    decoded = await request.app[DECODERS_KEY].decode(
        body.chunks(first, kept), header_length, signature, arrays=not forward
    )
    if kept is None:
        return decoded
    return Decoded(decoded.samples, decoded.request, b"".join(kept))


class _Body:
    """A request body's chunks as they arrive, within the size limit (413) and the time limit
    (408: `body_timeout_s` of waiting for the client in all)."""

    def __init__(self, request: web.Request, limits: EdgeLimits) -> None:
        self.request = request
        self.limits = limits
        self.size = 0
        self.wait_left_s = limits.body_timeout_s

    async def next(self) -> bytes:
        """The next chunk; b"" at the end."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            with _refusals(self.limits):
                async with asyncio.timeout(self.wait_left_s):
                    chunk = await self.request.content.readany()
        finally:
            self.wait_left_s -= loop.time() - started
        self.size += len(chunk)
        if self.size > self.limits.max_body_bytes:
            raise InferenceError(
                413, f"request body exceeds the limit of {self.limits.max_body_bytes} bytes"
            )
        return chunk

    async def take(self, limit: int) -> tuple[list[bytes], bool]:
        """Chunks until the end or just beyond `limit` bytes; (chunks, whether it ended)."""
        chunks: list[bytes] = []
        taken = 0
        while taken <= limit:
            chunk = await self.next()
            if not chunk:
                return chunks, True
            chunks.append(chunk)
            taken += len(chunk)
        return chunks, False

    async def chunks(
        self, first: list[bytes], kept: list[bytes] | None
    ) -> AsyncGenerator[bytes, None]:
        """`first`, then the rest of the body; each also appended to `kept` if given."""
        for chunk in first:
            if kept is not None:
                kept.append(chunk)
            yield chunk
        while chunk := await self.next():
            if kept is not None:
                kept.append(chunk)
            yield chunk


@contextlib.contextmanager
def _refusals(limits: EdgeLimits) -> Iterator[None]:
    """What reading a body can raise, as the client's answer."""
    try:
        yield
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
