"""Hypothesis strategies for schema-valid hostile InferenceServices (used by the fuzz tests).

Every generated object passes the committed CRD's OpenAPI schema and the models (so the CEL
rules too): it is what an API server would admit. Within that, the values lean to the edges a
tenant can reach: bounds exactly (qps 1e6, 5e-324, latencies of 1 us and 10 minutes, batch
4096, priority 1000, headroom 10), profiles for pools that do not exist or refuse the
namespace, variants below the floor, PromQL that reads other namespaces, and measured rates
that are not numbers at all.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from accordion.operator.api import (
    MAX_BATCH_SIZE,
    MAX_HEADROOM,
    MAX_LATENCY_MS,
    MAX_PRIORITY,
    MAX_QPS,
    MIN_LATENCY_MS,
)

NAMES = st.from_regex(r"[a-z]([-a-z0-9]{0,14}[a-z0-9])?", fullmatch=True)


def _edgy(low: float, high: float) -> st.SearchStrategy[float]:
    edges = [low, high, low * 2 if low else 5e-324, high / 2, (low + high) / 2]
    return st.one_of(st.sampled_from(edges), st.floats(low, high, allow_nan=False))


LATENCY = _edgy(MIN_LATENCY_MS, MAX_LATENCY_MS)
QUERIES = st.one_of(
    st.none(),
    st.sampled_from(
        [
            'sum(kube_secret_info{namespace="kube-system"})',
            "sum(rate(accordion_router_requests_total[1m]))",
            "vector(1e308)",
            "1/0",
            "sum(",
        ]
    ),
    st.text(min_size=1, max_size=80),
)


@st.composite
def batches(draw: st.DrawFn) -> list[dict[str, Any]]:
    sizes = [1, *draw(st.lists(st.integers(2, MAX_BATCH_SIZE), max_size=6, unique=True))]
    out = []
    for size in sizes:
        p50 = draw(LATENCY)
        point: dict[str, Any] = {"batchSize": size, "p50Ms": p50}
        if draw(st.booleans()):
            point["p90Ms"] = min(MAX_LATENCY_MS, p50 * draw(st.floats(1.0, 1e6)))
        if draw(st.booleans()):
            low = point.get("p90Ms", p50)
            point["p99Ms"] = min(MAX_LATENCY_MS, low * draw(st.floats(1.0, 1e6)))
        out.append(point)
    return out


@st.composite
def hostile_service(draw: st.DrawFn, namespaces: list[str], pools: list[str]) -> dict[str, Any]:
    """One schema-valid InferenceService manifest, as a hostile tenant could write it."""
    floor = draw(st.sampled_from([0.0, 50.0, 100.0]) | st.floats(0, 100))
    accuracy: dict[str, Any] = {"floor": floor}
    if draw(st.booleans()):
        accuracy["target"] = draw(st.floats(floor, 100))
    source = draw(st.sampled_from(["Static", "Prometheus"]))
    demand: dict[str, Any] = {"source": source, "headroom": draw(_edgy(0.0, MAX_HEADROOM))}
    if source == "Static" or draw(st.booleans()):
        demand["qps"] = draw(_edgy(0.0, MAX_QPS))
    query = draw(QUERIES)
    if query is not None:
        demand["query"] = query
    variants = []
    for name in draw(st.lists(NAMES, min_size=1, max_size=4, unique=True)):
        chosen = draw(st.lists(st.sampled_from(pools), min_size=1, max_size=3, unique=True))
        variants.append(
            {
                "name": name,
                "accuracy": draw(st.sampled_from([0.0, 100.0]) | st.floats(0, 100)),
                "model": {"storageUri": "/models/m.pt", "inputShape": [1]},
                "profiles": [{"pool": p, "batches": draw(batches())} for p in chosen],
            }
        )
    return {
        "apiVersion": "accordion.dev/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": draw(NAMES), "namespace": draw(st.sampled_from(namespaces))},
        "spec": {
            "slo": {"latencyMs": draw(LATENCY), "objective": draw(st.floats(0.5, 0.9999))},
            "accuracy": accuracy,
            "demand": demand,
            "priority": draw(st.sampled_from([1, MAX_PRIORITY]) | st.integers(1, MAX_PRIORITY)),
            "variants": variants,
        },
    }


MEASURED = st.one_of(
    st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e308, -1.0, 0.0]),
    st.floats(allow_nan=True, allow_infinity=True),
)
"""A demand reader's value for a hostile service: the planner's inputs must survive any float."""
