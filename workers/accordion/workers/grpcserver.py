"""The v2 gRPC endpoint, ``inference.GRPCInferenceService``, of the worker and of the router.

KServe's and Triton's clients speak it (Triton's port 8001, KServe's 8081). The six methods
(ServerLive, ServerReady, ServerMetadata, ModelReady, ModelMetadata, ModelInfer) are
registered with grpcio's generic handlers under the protocol's service name; the messages come
from ``grpc_predict_v2.proto`` (generated code committed beside it, see that file).

Both endpoints run on the application's own event loop (grpc.aio) and share everything but the
wire with REST: a ModelInferRequest is validated into the same `protocol.InferRequest` by the
same checks (`protocol.check_header`, `expect_shape`, `from_bytes`/`from_values`); the worker
serves it with `Worker.infer` (the batcher, its N deadline-carrying items, its metrics); the
router routes it with `Router.route` (the fast loop, its shedding, its metrics), forwarding it to
the worker as a REST body in the binary tensor extension. Refusals carry the REST status's gRPC
code (400 INVALID_ARGUMENT, 404 NOT_FOUND, 413 RESOURCE_EXHAUSTED, 503 UNAVAILABLE, ...) and the
same reason, and the outcome in the trailing metadata (``x-accordion-outcome``).

The deadline is the smallest of the ``x-accordion-deadline-ms`` metadata, the call's gRPC
deadline (``grpc-timeout``) and the SLO.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np
from google.protobuf.message import DecodeError
from grpc import aio

from accordion.workers import grpc_predict_v2_pb2 as pb
from accordion.workers.config import DEADLINE_HEADER, OUTCOME_HEADER
from accordion.workers.protocol import (
    DATATYPES,
    InferenceError,
    InferRequest,
    InferResponse,
    Signature,
    check_header,
    check_inputs,
    check_outputs,
    datatype_of,
    expect_shape,
    from_bytes,
    from_values,
    parse_deadline_ms,
)

SERVICE = "inference.GRPCInferenceService"

_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}

_CONTENTS = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}
"""The typed field of InferTensorContents for each datatype (FP16 travels only as raw bytes)."""


def parse_grpc(message: pb.ModelInferRequest, signature: Signature | None) -> InferRequest:
    """Validate a ModelInferRequest into the request REST gives (`protocol.parse_rest`)."""
    if not message.inputs:
        raise InferenceError(400, "'inputs' must be a non-empty list of tensors")
    raw = list(message.raw_input_contents)
    if raw and len(raw) != len(message.inputs):
        raise InferenceError(
            400,
            f"raw_input_contents has {len(raw)} entries for {len(message.inputs)} inputs; "
            "give one per input, in order",
        )
    arrays: dict[str, Any] = {}
    for i, tensor in enumerate(message.inputs):
        shape = list(tensor.shape)
        datatype = check_header(f"inputs[{i}]", tensor.name, tensor.datatype, shape)
        name = tensor.name
        if name in arrays:
            raise InferenceError(400, f"input {name!r} appears twice")
        shape = expect_shape(name, datatype, shape, signature)
        if raw:
            if tensor.HasField("contents"):
                raise InferenceError(
                    400, f"input {name!r} has both contents and raw_input_contents"
                )
            arrays[name] = from_bytes(name, datatype, shape, raw[i])
            continue
        field = _CONTENTS.get(datatype)
        if field is None:
            raise InferenceError(400, f"input {name!r}: {datatype} travels in raw_input_contents")
        arrays[name] = from_values(name, datatype, shape, list(getattr(tensor.contents, field)))
    check_inputs(arrays, signature)
    request = InferRequest(arrays, id=message.id or None)
    if message.outputs:
        request.outputs = [o.name for o in message.outputs]
    check_outputs(request, signature)
    return request


def render_grpc(response: InferResponse, request: InferRequest) -> pb.ModelInferResponse:
    """Outputs as raw_output_contents (what tritonclient and KServe's clients read first)."""
    names = request.outputs if request.outputs is not None else list(response.outputs)
    message = pb.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id or ""
    )
    for name in names:
        array = response.outputs[name]
        datatype = datatype_of(array)
        message.outputs.add(name=name, datatype=datatype, shape=list(array.shape))
        message.raw_output_contents.append(
            np.ascontiguousarray(array, dtype=DATATYPES[datatype]).tobytes()
        )
    return message


def metadata_message(doc: dict[str, Any]) -> pb.ModelMetadataResponse:
    """A REST model metadata document as its gRPC message."""
    message = pb.ModelMetadataResponse(
        name=doc["name"], versions=doc.get("versions", []), platform=doc.get("platform", "")
    )
    for key, target in (("inputs", message.inputs), ("outputs", message.outputs)):
        for tensor in doc.get(key, []):
            target.add(name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"])
    return message


def budget_s(context: aio.ServicerContext[Any, Any], default_s: float) -> float:
    """The call's deadline: the smallest of the deadline metadata, the gRPC deadline, the SLO."""
    header = next(
        (str(v) for k, v in context.invocation_metadata() or () if k == DEADLINE_HEADER), None
    )
    budget = parse_deadline_ms(header, default_s)
    remaining = context.time_remaining()
    if remaining is not None and math.isfinite(remaining):
        budget = min(budget, max(remaining, 0.0001))
    return budget


class V2Endpoint:
    """What the servicer asks of the process behind it (`WorkerEndpoint`, `RouterEndpoint`)."""

    default_budget_s: float = 1.0

    def ready(self) -> bool:
        raise NotImplementedError

    def server_metadata(self) -> dict[str, Any]:
        raise NotImplementedError

    async def model_metadata(self, name: str, version: str) -> dict[str, Any]:
        raise NotImplementedError

    def model_ready(self, name: str, version: str) -> bool:
        raise NotImplementedError

    async def infer(
        self, message: pb.ModelInferRequest, budget_s: float, arrival_s: float
    ) -> tuple[pb.ModelInferResponse, str]:
        raise NotImplementedError


Method = Callable[[bytes, aio.ServicerContext[Any, Any]], Awaitable[bytes]]


def _handler(endpoint: V2Endpoint) -> grpc.GenericRpcHandler:
    """The six methods; requests arrive as bytes and are decoded here, so that a message that
    is not protobuf is INVALID_ARGUMENT, not the INTERNAL grpcio answers for a failed
    deserializer."""

    async def fail(context: aio.ServicerContext[Any, Any], exc: InferenceError) -> None:
        context.set_trailing_metadata(((OUTCOME_HEADER, exc.outcome),))
        await context.abort(_CODES.get(exc.status, grpc.StatusCode.INTERNAL), exc.reason)

    def method(
        kind: Any, serve: Callable[[Any, Any], Awaitable[Any]]
    ) -> grpc.RpcMethodHandler[bytes, bytes]:
        async def call(raw: bytes, context: aio.ServicerContext[Any, Any]) -> bytes:
            try:
                try:
                    message = kind.FromString(raw)
                except DecodeError as exc:
                    raise InferenceError(400, f"not a {kind.__name__}: {exc}") from None
                answer = await serve(message, context)
            except InferenceError as exc:
                await fail(context, exc)
                raise AssertionError("abort returns by raising") from None
            data: bytes = answer.SerializeToString()
            return data

        return grpc.unary_unary_rpc_method_handler(call)

    async def live(_: pb.ServerLiveRequest, __: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ready(_: pb.ServerReadyRequest, __: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=endpoint.ready())

    async def server_metadata(_: pb.ServerMetadataRequest, __: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(**endpoint.server_metadata())

    async def model_ready(message: pb.ModelReadyRequest, __: Any) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=endpoint.model_ready(message.name, message.version))

    async def model_metadata(message: pb.ModelMetadataRequest, __: Any) -> pb.ModelMetadataResponse:
        return metadata_message(await endpoint.model_metadata(message.name, message.version))

    async def infer(
        message: pb.ModelInferRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.ModelInferResponse:
        arrival_s = asyncio.get_running_loop().time()
        answer, outcome = await endpoint.infer(
            message, budget_s(context, endpoint.default_budget_s), arrival_s
        )
        context.set_trailing_metadata(((OUTCOME_HEADER, outcome),))
        return answer

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "ServerLive": method(pb.ServerLiveRequest, live),
            "ServerReady": method(pb.ServerReadyRequest, ready),
            "ServerMetadata": method(pb.ServerMetadataRequest, server_metadata),
            "ModelReady": method(pb.ModelReadyRequest, model_ready),
            "ModelMetadata": method(pb.ModelMetadataRequest, model_metadata),
            "ModelInfer": method(pb.ModelInferRequest, infer),
        },
    )


async def start_grpc(
    endpoint: V2Endpoint, host: str, port: int, max_message_bytes: int
) -> tuple[aio.Server, int]:
    """Serve `endpoint` on host:port (0: any free port); (server, the port bound)."""
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    server = aio.server(options=options)
    server.add_generic_rpc_handlers((_handler(endpoint),))
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port} for gRPC")
    await server.start()
    return server, bound
