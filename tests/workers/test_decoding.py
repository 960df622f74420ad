"""Bulk bodies are decoded in decoder processes (`accordion.workers.decoding`), never on the loop.

What is asserted: a decoder gives every body the answer the server gives it (the same arrays,
the same status and reason: one validation path), for the whole hostile catalogue; a server
never parses a body over the bulk threshold itself (checked by watching orjson in the server's
process), compressed and chunked bodies included; while a bulk body's decode is held up (its
decoder waits for the test's go: a decode as slow as we like), small requests are answered; a
decoder that dies answers its request 503 and is replaced; a body the edge refuses mid-stream
(413) leaves its decoder in service.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import signal
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from accordion.workers.config import BINARY_HEADER, BatchingConfig
from accordion.workers.decoding import COMMAND, Decoded, DecoderPool
from accordion.workers.edge import DECODERS_KEY, EdgeLimits
from accordion.workers.protocol import (
    InferenceError,
    InferRequest,
    Signature,
    TensorSpec,
    parse_rest_body,
)
from accordion.workers.server import Worker, create_app

from .conftest import worker_config
from .hostile import CATALOGUE, PROTOCOL_LEVEL

Client = TestClient[web.Request, web.Application]

SIGNATURE = Signature(
    (TensorSpec("input", "FP32", (-1, 256)),), (TensorSpec("output", "FP32", (-1, -1)),)
)
BULK = EdgeLimits().bulk_body_bytes


def _tensor(shape: list[int], data: list[float]) -> dict[str, object]:
    return {"name": "input", "shape": shape, "datatype": "FP32", "data": data}


def _http_body(raw: bytes) -> tuple[dict[str, str], bytes] | None:
    """(headers, body) of a catalogue request whose body is plain bytes of its Content-Length
    (no framing or encoding of the HTTP layer), else None."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines[0].startswith("POST ") or not lines[0].split()[1].endswith("/infer"):
        return None
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
    if "content-encoding" in headers or "transfer-encoding" in headers:
        return None
    if headers.get("content-length") != str(len(body)):
        return None
    return headers, body


def _bodies() -> list[tuple[str, str | None, bytes]]:
    """(name, header length, body) of every catalogue kind with a plain body, and valid ones."""
    bodies = []
    for kind in CATALOGUE:
        parsed = _http_body(kind.build("demo-xs")) if kind.level != PROTOCOL_LEVEL else None
        if parsed is not None:
            headers, body = parsed
            bodies.append((kind.name, headers.get(BINARY_HEADER.lower()), body))
    rng = np.random.default_rng(0)
    batch = rng.standard_normal((3, 256)).astype(np.float32)
    doc = {
        "id": "json",
        "inputs": [
            {"name": "input", "shape": [3, 256], "datatype": "FP32", "data": batch.ravel().tolist()}
        ],
        "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
    }
    bodies.append(("valid JSON", None, json.dumps(doc).encode()))
    header = json.dumps(
        {
            "id": "binary",
            "inputs": [
                {
                    "name": "input",
                    "shape": [3, 256],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": batch.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    bodies.append(("valid binary", str(len(header)), header + batch.tobytes()))
    return bodies


async def _chunks(body: bytes, size: int = 65536) -> AsyncGenerator[bytes, None]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def _same(request: InferRequest, other: InferRequest) -> None:
    assert request.id == other.id
    assert request.outputs == other.outputs
    assert request.binary_outputs == other.binary_outputs
    assert request.binary_all == other.binary_all
    assert list(request.inputs) == list(other.inputs)
    for name, array in request.inputs.items():
        assert array.dtype == other.inputs[name].dtype
        np.testing.assert_array_equal(array, other.inputs[name])


async def _decode(
    pool: DecoderPool,
    body: bytes,
    header_length: str | None,
    signature: Signature | None,
    arrays: bool,
) -> Decoded | InferenceError:
    try:
        return await pool.decode(_chunks(body), header_length, signature, arrays=arrays)
    except InferenceError as exc:
        return exc


@pytest.mark.parametrize("signature", [SIGNATURE, None], ids=["worker", "router"])
async def test_a_decoder_answers_every_body_as_the_server_does(signature: Signature | None) -> None:
    pool = DecoderPool(1, pause_factor=0.0)
    bodies = _bodies()
    assert len(bodies) > 80
    try:
        for name, header_length, body in bodies:
            try:
                expected: InferRequest | InferenceError = parse_rest_body(
                    body, header_length, signature
                )
            except InferenceError as exc:
                expected = exc
            for arrays in (True, False):
                decoded = await _decode(pool, body, header_length, signature, arrays)
                if isinstance(expected, InferenceError):
                    assert isinstance(decoded, InferenceError), name
                    assert (decoded.status, decoded.reason, decoded.outcome) == (
                        expected.status,
                        expected.reason,
                        expected.outcome,
                    ), name
                    continue
                assert isinstance(decoded, Decoded), (name, decoded.reason)
                assert decoded.samples == expected.batch_size, name
                if arrays:
                    assert decoded.request is not None
                    _same(decoded.request, expected)
                else:
                    assert decoded.request is None
        assert len(pool.pids) == 1  # one decoder for them all: none failed
    finally:
        await pool.stop()


# -- a worker with bulk bodies ----------------------------------------------------------------


def _big_body(samples: int, features: int = 256) -> bytes:
    data = np.full(samples * features, 0.5).tolist()
    doc = {
        "id": "big",
        "inputs": [
            {"name": "input", "shape": [samples, features], "datatype": "FP32", "data": data}
        ],
    }
    raw = json.dumps(doc).encode()
    assert len(raw) > BULK
    return raw


def _worker() -> Worker:
    config = worker_config(
        slo_ms=60_000.0, batching=BatchingConfig(max_batch_size=64, max_queue=4096)
    )
    return Worker(config, warm_up=False)


SMALL = {
    "id": "small",
    "inputs": [{"name": "input", "shape": [1, 256], "datatype": "FP32", "data": [0.5] * 256}],
}


@pytest.fixture
def loads_in_this_process(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the documents orjson parses in this process (the server's), from now on."""
    sizes: list[int] = []
    real = orjson.loads

    def loads(raw: Any) -> Any:
        sizes.append(len(raw))
        return real(raw)

    monkeypatch.setattr(orjson, "loads", loads)
    return sizes


async def test_bulk_bodies_are_never_parsed_by_the_server(loads_in_this_process: list[int]) -> None:
    big = _big_body(2000)
    bad = big.replace(b'"shape": [2000, 256]', b'"shape": [2000, 255]')
    headers = {"Content-Type": "application/json"}
    async with TestClient(TestServer(create_app(_worker()))) as client:
        url = "/v2/models/demo-xs/infer"
        async with client.post(url, data=big, headers=headers) as resp:
            doc = await resp.json()
            assert resp.status == 200, doc
            assert doc["id"] == "big"
            assert doc["outputs"][0]["shape"] == [2000, 100]
        async with client.post(url, data=bad, headers=headers) as resp:
            assert resp.status == 400
            assert "has shape [2000, 255]; expected [-1, 256]" in (await resp.json())["error"]
        # Small once compressed (the length says 10 kB), 2.6 MB of JSON once inflated.
        gz = gzip.compress(big)
        assert len(gz) < BULK
        gz_headers = {**headers, "Content-Encoding": "gzip"}
        async with client.post(url, data=gz, headers=gz_headers) as resp:
            assert resp.status == 200
            assert (await resp.json())["outputs"][0]["shape"] == [2000, 100]
        # Of unknown length (chunked).
        async with client.post(url, data=_chunks(big), headers=headers) as resp:
            assert resp.status == 200
            assert (await resp.json())["outputs"][0]["shape"] == [2000, 100]
        async with client.post(url, json=SMALL) as resp:
            assert resp.status == 200
        assert client.app is not None
        assert client.app[DECODERS_KEY].pids  # the decoders did it
    assert loads_in_this_process  # the small one was parsed here
    assert max(loads_in_this_process) <= BULK


SLOW_LOADS = """
import os, time, orjson
real_loads = orjson.loads
def loads(raw):
    if len(raw) > {bulk}:
        open({started!r}, "w").close()
        end = time.monotonic() + 60.0
        while not os.path.exists({go!r}) and time.monotonic() < end:
            time.sleep(0.005)
    return real_loads(raw)
"""
"""orjson made to wait, on any document over the bulk threshold, until the test creates `go`
(after creating `started`; 60 s at most): a decode exactly as slow as the test wants."""


def _slow_loads(tmp_path: Path) -> str:
    return SLOW_LOADS.format(bulk=BULK, started=str(tmp_path / "started"), go=str(tmp_path / "go"))


def _slow_decoder(tmp_path: Path) -> list[str]:
    """A decoder process with the slow orjson."""
    code = _slow_loads(tmp_path) + (
        "orjson.loads = loads\nfrom accordion.workers.decoding import main\nmain()\n"
    )
    return [*COMMAND[:2], "-c", code]


async def _until(condition: Callable[[], bool], timeout_s: float = 60.0) -> None:
    """Poll `condition` (a file another process creates: no event to wait on)."""
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


async def test_small_requests_are_answered_while_a_bulk_body_decodes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decode of a bulk body is held up for as long as the test likes; meanwhile small
    requests are answered. (Had the server parsed it itself, its loop would have been held up
    as long: the same slow orjson is put into the server's process.)"""
    slow: dict[str, Any] = {}
    exec(_slow_loads(tmp_path), slow)
    monkeypatch.setattr(orjson, "loads", slow["loads"])  # this process's orjson too
    app = create_app(_worker())
    app[DECODERS_KEY] = DecoderPool(2, command=_slow_decoder(tmp_path))
    async with TestClient(TestServer(app)) as client:
        url = "/v2/models/demo-xs/infer"
        big = asyncio.create_task(client.post(url, data=_big_body(2000)))
        await _until(lambda: (tmp_path / "started").exists() or big.done())
        answered = []
        for _ in range(20):
            async with asyncio.timeout(30.0):
                async with client.post(url, json=SMALL) as resp:
                    answered.append(resp.status)
        assert answered == [200] * 20
        assert not big.done()  # still decoding
        (tmp_path / "go").touch()
        async with await big as resp:
            assert resp.status == 200
            assert (await resp.json())["outputs"][0]["shape"] == [2000, 100]


async def test_a_decoder_that_dies_is_replaced(tmp_path: Path) -> None:
    app = create_app(_worker())
    app[DECODERS_KEY] = pool = DecoderPool(1, pause_factor=0.0, command=_slow_decoder(tmp_path))
    async with TestClient(TestServer(app)) as client:
        url = "/v2/models/demo-xs/infer"
        big = asyncio.create_task(client.post(url, data=_big_body(2000)))
        await _until(lambda: (tmp_path / "started").exists())
        (pid,) = pool.pids
        os.kill(pid, signal.SIGKILL)
        async with await big as resp:
            assert resp.status == 503
            assert "decoder" in (await resp.json())["error"]
        (tmp_path / "go").touch()  # the next decoder decodes at once
        async with client.post(url, data=_big_body(2000)) as resp:
            assert resp.status == 200
        assert pool.pids
        assert pool.pids != [pid]


async def test_a_body_refused_midway_leaves_its_decoder_in_service() -> None:
    """A chunked body that grows past the size limit is refused (413) while it streams to a
    decoder; the decoder forgets it and decodes the next body."""
    worker = _worker()
    worker.config = worker.config.model_copy(update={"max_body_bytes": 4 * 1024 * 1024})
    app = create_app(worker)
    app[DECODERS_KEY] = pool = DecoderPool(1, pause_factor=0.0)
    async with TestClient(TestServer(app)) as client:
        url = "/v2/models/demo-xs/infer"
        async with client.post(url, data=_big_body(2000)) as resp:
            assert resp.status == 200
        (pid,) = pool.pids
        too_big = _big_body(5000)
        assert len(too_big) > 4 * 1024 * 1024
        async with client.post(url, data=_chunks(too_big)) as resp:
            assert resp.status == 413
            assert "exceeds the limit" in (await resp.json())["error"]
        async with client.post(url, data=_big_body(2000)) as resp:
            assert resp.status == 200
        assert pool.pids == [pid]
