"""Bulk request bodies are decoded in child processes, so that the event loop never parses them.

Why: orjson parses about 300 MB/s and holds the GIL throughout, and a 16 MB JSON body becomes
1.4 million Python floats (about 60 ms to parse and 10 ms to free on a small machine). Decoded on
the event loop, or on a thread (the GIL), each one stalls every other request for that long: a
flood of them took valid traffic out of its SLO. Here a body over the edge's bulk threshold
(`accordion.workers.edge`) goes, chunk by chunk as it arrives, through a pipe to a decoder
process, which validates it with the very function that validates small bodies in the server
(`protocol.parse_rest_body`: the same checks, the same 4xx messages) and answers with a small
JSON header and, when the server asks for them (a worker does, a router needs only the sample
count), the tensors' raw bytes, which the parent reads into numpy arrays. The parent neither
parses the body nor builds the big object; the loop only moves chunks between sockets.

A `DecoderPool` holds `processes` decoders, each one of the edge's bulk slots; they start at the
first bulk body (most servers never see one). After each body a decoder rests `pause_factor`
times the CPU time it spent on it before taking the next, so bulk bodies take a bounded share of
the CPU (in a pod with a CPU limit the decoders share the quota with the loop), and decoders run
at a lower CPU priority (nice +`NICE`): when CPU is short, small requests go first and bulk bodies
wait. A decoder that dies or stops answering is replaced, and its request answered 503.

Wire format (both ways over the child's stdin and stdout; the child's stray prints go to stderr):
the parent sends frames ``<kind: u8><length: u32 LE><payload>``: BEGIN (a JSON job: the binary
extension's header length, the model signature, whether arrays are wanted), DATA (body bytes),
then END (decode) or ABORT (the body was refused at the edge: forget it). The child answers each
job with ``<length: u32 LE><JSON>`` followed by each input tensor's bytes when arrays are wanted
and the body was valid.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import struct
import sys
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import orjson

from accordion.workers.protocol import (
    DATATYPES,
    InferenceError,
    InferRequest,
    Signature,
    TensorSpec,
    datatype_of,
    parse_rest_body,
)

log = logging.getLogger(__name__)

NICE = 10
"""How much lower the decoders' CPU priority is than the server's (CFS weight about 1/10)."""
COMMAND = (sys.executable, "-P", "-m", "accordion.workers.decoding")
"""The decoder process (``-P``: the working directory does not shadow modules)."""
PIPE_BYTES = 1 << 20
"""Pipe buffers asked of Linux (64 KiB by default): fewer wake-ups per body."""
READ_CHUNK = 256 * 1024
"""Tensor bytes are read back in pieces of this size, so no single step of the loop is long."""

BEGIN, DATA, END, ABORT = 1, 2, 3, 4
_FRAME = struct.Struct("<BI")
_REPLY = struct.Struct("<I")


@dataclass(frozen=True)
class Decoded:
    """A validated request body: its sample count (what a router needs to route and count
    demand), the request with its arrays (what a worker needs), the body itself to forward."""

    samples: int
    request: InferRequest | None = None
    body: bytes | None = None


class DecoderFailedError(Exception):
    """The decoder process died, broke the protocol or did not answer in time."""


# -- the child ----------------------------------------------------------------------------------


def _signature_doc(signature: Signature | None) -> list[Any] | None:
    if signature is None:
        return None
    return [[t.to_json() for t in signature.inputs], [t.to_json() for t in signature.outputs]]


def _signature(doc: list[Any] | None) -> Signature | None:
    if doc is None:
        return None
    inputs, outputs = doc
    return Signature(
        tuple(TensorSpec.from_json(t) for t in inputs),
        tuple(TensorSpec.from_json(t) for t in outputs),
    )


def decode_job(
    raw: bytes, job: dict[str, Any]
) -> tuple[dict[str, Any], list[np.ndarray[Any, Any]]]:
    """The answer to one job (the body `raw`): its JSON header and the arrays to send after it."""
    try:
        request = parse_rest_body(raw, job["header_length"], _signature(job["signature"]))
    except InferenceError as exc:
        return {"status": exc.status, "reason": exc.reason, "outcome": exc.outcome}, []
    arrays = list(request.inputs.values()) if job["arrays"] else []
    return {
        "samples": request.batch_size,
        "id": request.id,
        "outputs": request.outputs,
        "binary_outputs": sorted(request.binary_outputs),
        "binary_all": request.binary_all,
        "inputs": [[name, datatype_of(a), list(a.shape)] for name, a in request.inputs.items()],
    }, arrays


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise EOFError
    return data


def serve(stream_in: BinaryIO, stream_out: BinaryIO) -> None:
    """Answer jobs until the parent closes the pipe."""
    while True:
        head = stream_in.read(_FRAME.size)
        if not head:
            return  # the parent is gone, or done with us
        kind, length = _FRAME.unpack(head)
        if kind != BEGIN:
            raise ValueError(f"decoder protocol: frame {kind} where a job begins")
        job = orjson.loads(_read_exactly(stream_in, length))
        started_s = time.process_time()
        chunks: list[bytes] = []
        while True:
            kind, length = _FRAME.unpack(_read_exactly(stream_in, _FRAME.size))
            if kind != DATA:
                break
            chunks.append(_read_exactly(stream_in, length))
        if kind == END:
            raw = b"".join(chunks)
            del chunks
            reply, arrays = decode_job(raw, job)
            del raw
        elif kind == ABORT:
            reply, arrays = {"aborted": True}, []
        else:
            raise ValueError(f"decoder protocol: frame {kind} within a body")
        reply["cpu_s"] = time.process_time() - started_s
        header = orjson.dumps(reply)
        stream_out.write(_REPLY.pack(len(header)) + header)
        for array in arrays:
            stream_out.write(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)
        stream_out.flush()


def main() -> None:
    """The decoder process: nice, deaf to the terminal's ^C (its server stops it), stdout
    reserved for answers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.nice(NICE)
    answers = os.dup(1)
    os.dup2(2, 1)
    with (
        open(0, "rb", buffering=PIPE_BYTES, closefd=False) as stream_in,
        open(answers, "wb", buffering=PIPE_BYTES) as stream_out,
    ):
        serve(stream_in, stream_out)


# -- the parent ---------------------------------------------------------------------------------


class _Decoder:
    """One decoder process, started on first use and again after a failure."""

    def __init__(self, command: Sequence[str]) -> None:
        self.command = command
        self.proc: asyncio.subprocess.Process | None = None

    async def ensure(self) -> asyncio.subprocess.Process:
        if self.proc is None or self.proc.returncode is not None:
            try:
                self.proc = await asyncio.create_subprocess_exec(
                    *self.command,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    limit=PIPE_BYTES,
                )
            except OSError as exc:  # out of processes or file descriptors
                raise DecoderFailedError(f"cannot start a decoder process: {exc}") from None
            if self.proc.stdin is not None:
                pipe = self.proc.stdin.transport.get_extra_info("pipe")
                with contextlib.suppress(OSError, AttributeError):
                    fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        return self.proc

    async def send(self, kind: int, payload: bytes = b"") -> None:
        assert self.proc is not None
        assert self.proc.stdin is not None
        stdin = self.proc.stdin
        stdin.write(_FRAME.pack(kind, len(payload)))
        if payload:
            stdin.write(payload)
        try:
            await stdin.drain()
        except (ConnectionError, RuntimeError) as exc:
            raise DecoderFailedError(f"the decoder process is gone ({exc})") from None

    async def reply(self, arrays: bool) -> tuple[dict[str, Any], dict[str, np.ndarray[Any, Any]]]:
        assert self.proc is not None
        assert self.proc.stdout is not None
        stdout = self.proc.stdout
        try:
            (length,) = _REPLY.unpack(await stdout.readexactly(_REPLY.size))
            reply: dict[str, Any] = orjson.loads(await stdout.readexactly(length))
            tensors: dict[str, np.ndarray[Any, Any]] = {}
            if arrays and "samples" in reply:
                for name, datatype, shape in reply["inputs"]:
                    array = np.empty(shape, DATATYPES[datatype])
                    flat = array.reshape(-1).view(np.uint8)
                    done = 0
                    while done < flat.size:
                        piece = await stdout.readexactly(min(READ_CHUNK, flat.size - done))
                        flat[done : done + len(piece)] = np.frombuffer(piece, np.uint8)
                        done += len(piece)
                    tensors[name] = array
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise DecoderFailedError(f"the decoder process is gone ({exc!r})") from None
        return reply, tensors

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        if proc.stdin is not None:
            proc.stdin.close()  # EOF: it exits
        try:
            await asyncio.wait_for(proc.wait(), 2.0)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    def kill(self) -> None:
        """Kill it (asyncio reaps it); the next `ensure` starts another."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()


class DecoderPool:
    """`processes` decoder processes, each a slot for one bulk body at a time (see above)."""

    def __init__(
        self,
        processes: int,
        *,
        pause_factor: float = 3.0,
        pause_max_s: float = 1.0,
        reply_timeout_s: float = 30.0,
        command: Sequence[str] = COMMAND,
    ) -> None:
        self.pause_factor = pause_factor
        self.pause_max_s = pause_max_s
        self.reply_timeout_s = reply_timeout_s
        self._decoders = [_Decoder(command) for _ in range(max(1, processes))]
        self._idle: asyncio.Queue[_Decoder] = asyncio.Queue()
        for decoder in self._decoders:
            self._idle.put_nowait(decoder)
        self._resting: set[asyncio.TimerHandle] = set()

    @property
    def pids(self) -> list[int]:
        """The running decoders' process ids."""
        return [d.proc.pid for d in self._decoders if d.proc and d.proc.returncode is None]

    async def stop(self) -> None:
        for handle in self._resting:
            handle.cancel()
        await asyncio.gather(*(d.stop() for d in self._decoders))

    async def decode(
        self,
        chunks: AsyncGenerator[bytes, None],
        header_length: str | None,
        signature: Signature | None,
        *,
        arrays: bool,
    ) -> Decoded:
        """Validate the body that `chunks` yields (which may raise `InferenceError`: the edge
        refuses it, 413 or 408) in a decoder process; raises `InferenceError` as
        `protocol.parse_rest_body` does, or 503 when the decoder fails."""
        decoder = await self._idle.get()
        cpu_s, healthy = 0.0, False
        try:
            await decoder.ensure()
            job = {"header_length": header_length, "signature": _signature_doc(signature)}
            await decoder.send(BEGIN, orjson.dumps({**job, "arrays": arrays}))
            async with contextlib.aclosing(chunks):
                try:
                    async for chunk in chunks:
                        await decoder.send(DATA, chunk)
                except InferenceError:  # the edge refused the body: that is the answer
                    with contextlib.suppress(DecoderFailedError, TimeoutError):
                        await decoder.send(ABORT)
                        async with asyncio.timeout(self.reply_timeout_s):
                            await decoder.reply(arrays=False)
                        healthy = True
                    raise
            await decoder.send(END)
            async with asyncio.timeout(self.reply_timeout_s):
                reply, tensors = await decoder.reply(arrays)
            healthy = True
            cpu_s = float(reply.get("cpu_s", 0.0))
        except DecoderFailedError as exc:
            log.warning("bulk body decoder failed: %s; starting another", exc)
            raise InferenceError(
                503, "the decoder of large request bodies failed; try again", "error"
            ) from None
        except TimeoutError:
            log.warning(
                "bulk body decoder did not answer in %g s; starting another", self.reply_timeout_s
            )
            raise InferenceError(
                503,
                f"decoding the request body took over {self.reply_timeout_s:g} s; try again",
                "error",
            ) from None
        finally:
            self._release(decoder, healthy, cpu_s)
        if "status" in reply:
            raise InferenceError(int(reply["status"]), str(reply["reason"]), str(reply["outcome"]))
        request = None
        if arrays:
            request = InferRequest(
                tensors,
                id=reply["id"],
                outputs=reply["outputs"],
                binary_outputs=set(reply["binary_outputs"]),
                binary_all=bool(reply["binary_all"]),
            )
        return Decoded(int(reply["samples"]), request)

    def _release(self, decoder: _Decoder, healthy: bool, cpu_s: float) -> None:
        """Back to the idle queue, after its rest; a decoder in an unknown state is killed
        first (it starts again on its next body)."""
        if not healthy:
            decoder.kill()
        pause_s = min(cpu_s * self.pause_factor, self.pause_max_s)
        if pause_s <= 0:
            self._idle.put_nowait(decoder)
            return

        def wake() -> None:
            self._resting.discard(handle)
            self._idle.put_nowait(decoder)

        handle = asyncio.get_running_loop().call_later(pause_s, wake)
        self._resting.add(handle)


if __name__ == "__main__":
    main()
