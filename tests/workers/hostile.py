"""Malformed and hostile HTTP requests, as raw bytes: the catalogue of the fuzz suite
(`test_hostile.py`).

Each `Kind` is one way a request can be wrong: JSON that is deep, huge, not JSON or not a v2
body; tensors with bad names, datatypes, shapes or data; the binary extension's header and
sizes inconsistent; paths, methods, headers, sizes, encodings and the HTTP framing itself.
Requests go over a plain socket (no client library would send most of them) and read the
answer until the server closes the connection.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

PROTOCOL_LEVEL = "protocol"
"""Kinds refused by the HTTP parser before any handler runs (aiohttp answers a plain 400)."""


@dataclass(frozen=True)
class Kind:
    name: str
    build: Callable[[str], bytes]
    """The request's bytes for a model name (path /v2/models/{model}/infer)."""
    statuses: frozenset[int] = field(default_factory=lambda: frozenset(range(400, 500)))
    level: str = "app"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def request(
    model: str,
    body: bytes,
    *,
    method: str = "POST",
    path: str | None = None,
    headers: dict[str, str] | None = None,
    content_length: bool = True,
) -> bytes:
    lines = [f"{method} {path or f'/v2/models/{model}/infer'} HTTP/1.1", "Host: 127.0.0.1"]
    all_headers = {"Content-Type": "application/json", "Connection": "close", **(headers or {})}
    if content_length and "Content-Length" not in all_headers:
        all_headers["Content-Length"] = str(len(body))
    lines += [f"{k}: {v}" for k, v in all_headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def send(port: int, raw: bytes, timeout_s: float = 20.0) -> Answer:
    """Send `raw` and read the whole answer (the request says Connection: close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        # The server may answer and close before taking it all (413): read the answer then.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(raw)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    data = b"".join(chunks)
    head, _, rest = data.partition(b"\r\n\r\n")
    while head.startswith(b"HTTP/1.1 1"):  # an interim answer (100 Continue): the next one
        head, _, rest = rest.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines or not lines[0].startswith("HTTP/"):
        raise ConnectionError(f"no HTTP answer: {data[:200]!r}")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return Answer(int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, rest)


def valid_body(features: int = 256, batch: int = 1) -> dict[str, object]:
    return {
        "id": "ok",
        "inputs": [
            {
                "name": "input",
                "shape": [batch, features],
                "datatype": "FP32",
                "data": [0.25] * (batch * features),
            }
        ],
    }


def _tensor(**changes: object) -> Callable[[str], bytes]:
    body = valid_body()
    tensor = body["inputs"][0]  # type: ignore[index]
    for key, value in changes.items():
        if value is _DELETE:
            del tensor[key]
        else:
            tensor[key] = value
    return _raw(json.dumps(body).encode())


def _body(**changes: object) -> Callable[[str], bytes]:
    body = valid_body()
    body.update(changes)
    return _raw(json.dumps(body).encode())


_DELETE = object()
HUGE_INT = "1" * 4301


def _binary(
    size: int | str | None = 1024, payload: bytes | None = None, header_length: str | None = None
) -> Callable[[str], bytes]:
    def build(model: str) -> bytes:
        tensor: dict[str, object] = {"name": "input", "shape": [1, 256], "datatype": "FP32"}
        if size is not None:
            tensor["parameters"] = {"binary_data_size": size}
        header = json.dumps({"inputs": [tensor]}).encode()
        data = payload if payload is not None else struct.pack("<256f", *([0.5] * 256))
        length = header_length if header_length is not None else str(len(header))
        return request(
            model,
            header + data,
            headers={
                "Content-Type": "application/octet-stream",
                "Inference-Header-Content-Length": length,
            },
        )

    return build


def _raw(body: bytes, **headers: str) -> Callable[[str], bytes]:
    return lambda model: request(model, body, headers=headers)


def _json(doc: str) -> Callable[[str], bytes]:
    return _raw(doc.encode())


def _deadline(value: str) -> Callable[[str], bytes]:
    return lambda model: request(
        model, json.dumps(valid_body()).encode(), headers={"x-accordion-deadline-ms": value}
    )


def _protocol(name: str, raw: bytes) -> Kind:
    return Kind(name, lambda model: raw, level=PROTOCOL_LEVEL)


_GZIP_BOMB = gzip.compress(b" " * (64 * 1024 * 1024), compresslevel=9)  # 64 MiB of spaces

CATALOGUE: list[Kind] = [
    # -- JSON that is not a document the server can hold ------------------------------------
    Kind("deep array [ x 100,000", _json("[" * 100_000)),
    Kind("deep object {'a': x 100,000", _json('{"a":' * 100_000)),
    Kind(
        "deep array inside data",
        _json(json.dumps(valid_body()).replace('"data": [', '"data": ' + "[" * 5000 + "[", 1)),
    ),
    Kind("4,301-digit integer body", _json(HUGE_INT)),
    Kind(
        "4,301-digit integer in data", _json(json.dumps(valid_body()).replace("0.25", HUGE_INT, 1))
    ),
    Kind("1e400 in data", _json(json.dumps(valid_body()).replace("0.25", "1e400", 1))),
    Kind("-1e400 in data", _json(json.dumps(valid_body()).replace("0.25", "-1e400", 1))),
    Kind(
        "4,301-digit integer in shape",
        _json(json.dumps(valid_body()).replace("[1, 256]", f"[{HUGE_INT}, 256]")),
    ),
    Kind("NaN literal", _json(json.dumps(valid_body()).replace("0.25", "NaN", 1))),
    Kind("Infinity literal", _json(json.dumps(valid_body()).replace("0.25", "Infinity", 1))),
    Kind("empty body", _raw(b"")),
    Kind("null", _json("null")),
    Kind("a string", _json('"inputs"')),
    Kind("a number", _json("123")),
    Kind("an empty array", _json("[]")),
    Kind("an empty object", _json("{}")),
    Kind("truncated JSON", _json('{"inputs": [{"name": "input", "shape": [1, 2')),
    Kind("invalid UTF-8", _raw(b'{"inputs": "\xff\xfe\xfd"}')),
    Kind(
        "lone surrogate in a name",
        _json(json.dumps(valid_body()).replace('"input"', '"\\ud800"', 1)),
    ),
    Kind("trailing garbage", _raw(json.dumps(valid_body()).encode() + b" xyz")),
    Kind("single-quoted JSON", _json("{'inputs': []}")),
    Kind("comments in JSON", _json('{"inputs": [] /* c */}')),
    # -- a v2 body of the wrong shape --------------------------------------------------------
    Kind("inputs is an object", _body(inputs={})),
    Kind("inputs is empty", _body(inputs=[])),
    Kind("inputs of numbers", _body(inputs=[1, 2, 3])),
    Kind("tensor without a name", _tensor(name=_DELETE)),
    Kind("name is a number", _tensor(name=7)),
    Kind("name is empty", _tensor(name="")),
    Kind("name of 1 MB", _tensor(name="x" * (1 << 20))),
    Kind("unknown input name", _tensor(name="pixels")),
    Kind("datatype missing", _tensor(datatype=_DELETE)),
    Kind("datatype unknown FP8", _tensor(datatype="FP8")),
    Kind("datatype BYTES", _tensor(datatype="BYTES")),
    Kind("datatype lowercase", _tensor(datatype="fp32")),
    Kind("datatype a number", _tensor(datatype=32)),
    Kind("datatype wrong for the model", _tensor(datatype="INT64")),
    Kind("shape missing", _tensor(shape=_DELETE)),
    Kind("shape a string", _tensor(shape="1,256")),
    Kind("shape negative", _tensor(shape=[-1, 256])),
    Kind("shape a float", _tensor(shape=[1.5, 256])),
    Kind("shape of booleans", _tensor(shape=[True, 256])),
    Kind("shape of rank 100", _tensor(shape=[1] * 100)),
    Kind("shape of 2**124 elements", _tensor(shape=[2**62, 2**62])),
    Kind("shape with no samples", _tensor(shape=[0, 256], data=[])),
    Kind("shape a scalar", _tensor(shape=[], data=[1.0])),
    Kind("shape wrong for the model", _tensor(shape=[1, 255], data=[0.5] * 255)),
    Kind("data short of the shape", _tensor(data=[0.5] * 255)),
    Kind("data beyond the shape", _tensor(data=[0.5] * 257)),
    Kind("data jagged", _tensor(data=[[0.5] * 128, [0.5] * 127])),
    Kind("data nested too deep", _tensor(data=[[[[0.5]]]] * 256)),
    Kind("data strings", _tensor(data=["x"] * 256)),
    Kind("data objects", _tensor(data=[{}] * 256)),
    Kind("data nulls", _tensor(data=[None] * 256)),
    Kind("data a string", _tensor(data="0.5")),
    Kind("data missing", _tensor(data=_DELETE)),
    Kind("data beyond FP32", _tensor(data=[1e39] * 256)),
    Kind(
        "batch beyond the queue bound",
        lambda model: request(
            model,
            (
                h := json.dumps(
                    {
                        "inputs": [
                            {
                                "name": "input",
                                "shape": [5000, 256],
                                "datatype": "FP32",
                                "parameters": {"binary_data_size": 5000 * 1024},
                            }
                        ]
                    }
                ).encode()
            )
            + bytes(5000 * 1024),
            headers={"Inference-Header-Content-Length": str(len(h))},
        ),
    ),
    Kind("id a number", _body(id=7)),
    Kind("id an object", _body(id={"a": 1})),
    Kind("parameters not an object", _body(parameters=[1])),
    Kind("tensor parameters not an object", _tensor(parameters="binary")),
    Kind("outputs not a list", _body(outputs={"name": "output"})),
    Kind("outputs of an unknown name", _body(outputs=[{"name": "logits"}])),
    Kind("outputs of numbers", _body(outputs=[1])),
    Kind("the same input twice", _body(inputs=valid_body()["inputs"] * 2)),  # type: ignore[operator]
    # -- the binary tensor extension ---------------------------------------------------------
    Kind("header length not a number", _binary(header_length="abc")),
    Kind("header length negative", _binary(header_length="-5")),
    Kind("header length beyond the body", _binary(header_length="999999")),
    Kind("header length in exponent form", _binary(header_length="1e3")),
    Kind("header length of 20 digits", _binary(header_length="9" * 20)),
    Kind("header length zero", _binary(header_length="0")),
    Kind("binary size short", _binary(size=100)),
    Kind("binary size beyond the bytes", _binary(size=4096)),
    Kind("binary size negative", _binary(size=-4)),
    Kind("binary size a string", _binary(size="1024")),
    Kind("binary bytes undeclared", _binary(size=None)),
    Kind("binary NaN", _binary(payload=struct.pack("<256f", *([float("nan")] * 256)))),
    Kind(
        "binary size and data both",
        lambda model: request(
            model,
            (
                h := json.dumps(
                    {
                        "inputs": [
                            {
                                "name": "input",
                                "shape": [1, 256],
                                "datatype": "FP32",
                                "data": [0.5] * 256,
                                "parameters": {"binary_data_size": 1024},
                            }
                        ]
                    }
                ).encode()
            )
            + bytes(1024),
            headers={"Inference-Header-Content-Length": str(len(h))},
        ),
    ),
    # -- path, method, headers ---------------------------------------------------------------
    Kind(
        "unknown model", lambda model: request("no-such-model", json.dumps(valid_body()).encode())
    ),
    Kind(
        "unknown version",
        lambda model: request(
            model, json.dumps(valid_body()).encode(), path=f"/v2/models/{model}/versions/9/infer"
        ),
    ),
    Kind("GET on infer", lambda model: request(model, b"", method="GET")),
    Kind("PUT on /v2", lambda model: request(model, b"{}", method="PUT", path="/v2")),
    Kind(
        "DELETE a model",
        lambda model: request(model, b"", method="DELETE", path=f"/v2/models/{model}"),
    ),
    Kind("unknown path", lambda model: request(model, b"", method="GET", path="/v2/nothing")),
    Kind("deadline not a number", _deadline("soon")),
    Kind("deadline negative", _deadline("-1")),
    Kind("deadline NaN", _deadline("nan")),
    Kind("deadline infinite", _deadline("inf")),
    Kind("deadline 1e400", _deadline("1e400")),
    Kind(
        "multipart body",
        _raw(b"--x\r\n\r\n--x--", **{"Content-Type": "multipart/form-data; boundary=x"}),
    ),
    Kind(
        "declared 100 MB",
        lambda model: request(model, b"{}", headers={"Content-Length": str(100 * 1024 * 1024)}),
    ),
    Kind(
        "declared 100 MB, expecting 100-continue",
        lambda model: request(
            model, b"", headers={"Content-Length": str(100 * 1024 * 1024), "Expect": "100-continue"}
        ),
    ),
    Kind(
        "chunked body beyond the limit",
        lambda model: request(
            model,
            b"".join(b"%x\r\n%s\r\n" % (1 << 20, b" " * (1 << 20)) for _ in range(20))
            + b"0\r\n\r\n",
            headers={"Transfer-Encoding": "chunked"},
            content_length=False,
        ),
    ),
    Kind("gzip bomb", _raw(_GZIP_BOMB, **{"Content-Encoding": "gzip"}), frozenset({400, 413})),
    Kind("gzip garbage", _raw(b"not gzip at all", **{"Content-Encoding": "gzip"})),
    Kind("unknown content encoding", _raw(b"{}", **{"Content-Encoding": "zz-unknown"})),
    # -- the HTTP framing itself (answered by the HTTP parser) -------------------------------
    _protocol("request line garbage", b"GARBAGE\r\n\r\n"),
    _protocol(
        "Content-Length not a number",
        b"POST /v2/models/x/infer HTTP/1.1\r\nHost: a\r\nContent-Length: abc\r\n\r\n",
    ),
    _protocol(
        "Content-Length with Transfer-Encoding",
        b"POST /v2/models/x/infer HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
    ),
    _protocol(
        "chunk size not hex",
        b"POST /v2/models/x/infer HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\nabc\r\n0\r\n\r\n",
    ),
    _protocol(
        "header of 20 KB", b"GET /v2 HTTP/1.1\r\nHost: a\r\nX-Long: " + b"a" * 20000 + b"\r\n\r\n"
    ),
    _protocol(
        "500 headers",
        b"GET /v2 HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(500)) + b"\r\n",
    ),
    _protocol("URL of 20 KB", b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: a\r\n\r\n"),
    _protocol("NUL in a header", b"GET /v2 HTTP/1.1\r\nHost: a\r\nX-Null: a\x00b\r\n\r\n"),
    _protocol("HTTP/9.9", b"GET /v2 HTTP/9.9\r\nHost: a\r\n\r\n"),
    _protocol("space in a header name", b"GET /v2 HTTP/1.1\r\nBad Header Name: 1\r\n\r\n"),
]
