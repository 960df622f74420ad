"""Pipeline stages in the data plane: a worker serves parts of a model and hands the rest on.

The planner may serve a variant as a pipeline of stages on different pools (PPipe; the
solver's `pipelines`). Each stage is an ordinary worker (same batcher, same v2 endpoints, same
metrics) whose model is parts `first`..`last` of the variant's model (`splitting.stage_module`)
and whose input is the tensor the stage before it hands on. A stage that is not the last sends
its batch's output for each request to the next stage as a v2 REST request in the binary tensor
extension (no JSON numbers: a 64x56x56 activation is 800 KB of raw float32), with the deadline
header carrying what is left of the request's budget, and answers its client with the next
stage's answer. So the router sends to the first stage only, each stage batches with the SLO
batcher against the deadline as it reaches it, and a stage that receives a request with no
time left drops it as any worker does.
"""

from __future__ import annotations

import aiohttp
import numpy as np
import numpy.typing as npt

from accordion.workers.config import (
    BINARY_HEADER,
    DEADLINE_HEADER,
    OUTCOME_HEADER,
    PipelineStageConfig,
)
from accordion.workers.models import LoadedModel
from accordion.workers.protocol import (
    InferenceError,
    InferRequest,
    binary_request,
    decode_rest_response,
)
from accordion.workers.splitting import (
    SplitError,
    is_first_stage,
    stage_input_shape,
    stage_module,
)


def stage_model(loaded: LoadedModel, stage: PipelineStageConfig) -> LoadedModel:
    """The stage's part of the model, with the input shape the stage before it hands on.
    Raises `SplitError` (a ValueError: the worker exits as for a model it cannot load)."""
    module = stage_module(loaded.module, loaded.input_shape, stage.first, stage.last)
    shape = stage_input_shape(loaded.module, loaded.input_shape, stage.first)
    first = is_first_stage(loaded.module, loaded.input_shape, stage.first)
    # A later stage's input is the float32 tensor the stage before it hands on.
    return LoadedModel(module, shape, loaded.datatype if first else "FP32", loaded.accuracy)


class NextStage:
    """The client of the next stage: one keep-alive session per worker."""

    def __init__(self, stage: PipelineStageConfig) -> None:
        assert stage.next_url is not None
        self.url = stage.next_url
        self.input_name = stage.next_input_name
        self.output_name = stage.next_output_name
        self._session: aiohttp.ClientSession | None = None

    async def forward(
        self, output: npt.NDArray[np.generic], remaining_s: float, request_id: str | None
    ) -> npt.NDArray[np.generic]:
        """The next stage's answer to `output`, within the `remaining_s` of the deadline."""
        if remaining_s <= 0:
            raise InferenceError(503, "dropped: no time left for the next stage", "dropped")
        if self._session is None:
            self._session = aiohttp.ClientSession()
        body, header_length = binary_request(
            InferRequest({self.input_name: np.ascontiguousarray(output)}, id=request_id)
        )
        headers = {
            DEADLINE_HEADER: f"{remaining_s * 1000.0:.3f}",
            BINARY_HEADER: str(header_length),
            "Content-Type": "application/octet-stream",
        }
        try:
            async with self._session.post(
                self.url,
                data=body,
                headers=headers,
                # The next stage answers or drops within the deadline; a second more is a
                # stage that hangs.
                timeout=aiohttp.ClientTimeout(total=remaining_s + 1.0),
            ) as resp:
                payload = await resp.read()
                if resp.status != 200:
                    reason = payload[:200].decode("utf-8", "replace")
                    outcome = resp.headers.get(OUTCOME_HEADER, "error")
                    status = resp.status if resp.status in (429, 503, 504) else 502
                    raise InferenceError(
                        status, f"next stage answered {resp.status}: {reason}", outcome
                    )
                answer = decode_rest_response(payload, resp.headers.get(BINARY_HEADER))
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise InferenceError(502, f"next stage unreachable: {exc!r}"[:300], "error") from None
        if self.output_name not in answer.outputs:
            raise InferenceError(502, f"next stage's answer has no {self.output_name!r}", "error")
        return answer.outputs[self.output_name]

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


__all__ = ["NextStage", "SplitError", "stage_model"]
