"""`profiler.measure_overhead` on a real worker (torch on CPU, demo-xs) over HTTP: a lone
request's round trip is split into the worker's own execution and the path's overhead, and a
saturated worker batches."""

from __future__ import annotations

import json

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from accordion.workers.profiler import measure_overhead

from .conftest import sample_body

Client = TestClient[web.Request, web.Application]


async def test_the_overhead_of_the_http_path(worker_client: Client) -> None:
    url = str(worker_client.make_url("")).rstrip("/")
    body = json.dumps(sample_body()).encode()
    measured = await measure_overhead(url, "demo-xs", body, cap=8, lone=30, saturate_s=1.0)
    # Lone requests: the client waits for more than the worker's execution, and the split is
    # whole (what is not per-request work is latency only).
    assert 0 < measured.lone_execution_s < measured.lone_latency_s
    assert measured.fixed_s + measured.per_request_s == pytest.approx(
        measured.lone_latency_s - measured.lone_execution_s, abs=1e-6
    )
    # Saturated by 32 clients, the worker batches.
    assert measured.saturated_batch > 1.5
    assert measured.saturated_qps > 0
    # Without a profile the worker's own execution is the base: no batch runs beyond it.
    assert measured.cold_batch_s == 0.0
    # Against a profile that says the device costs nothing, all the time per request is
    # overhead: one request's share of the saturated worker's time (back to back, no batch
    # starts on an idle device).
    free = await measure_overhead(
        url, "demo-xs", body, cap=8, lone=5, saturate_s=1.0, profile_s={1: 1e-9, 8: 1e-9}
    )
    assert free.per_request_s == pytest.approx(1.0 / free.saturated_qps, rel=0.2)
    # The split starts from the profile, as the model does: the profile's batch of one, the
    # part of a batch started on an idle device, the request's part and the round trip make the
    # lone request's latency (the worker's execution of it is all beyond the profile here).
    assert free.cold_batch_s == pytest.approx(free.lone_execution_s, abs=1e-6)
    assert 1e-9 + free.cold_batch_s + free.per_request_s + free.fixed_s == pytest.approx(
        free.lone_latency_s, abs=1e-6
    )
    # Against one that says a batch takes a second, the device explains all of it: none.
    slow = await measure_overhead(
        url, "demo-xs", body, cap=8, lone=5, saturate_s=1.0, profile_s={1: 1.0, 8: 1.0}
    )
    assert slow.per_request_s == 0.0
    assert measured.per_request_s > 0.0
