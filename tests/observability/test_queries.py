"""Every expression parses, and uses only the metric names and labels the components export.

The contract (`accordion.observability.metrics`) is compared with the real `/metrics` output
of a worker and a router started on loopback, and every dashboard query, template variable,
recording rule and alert is parsed with promql-parser and checked against it. The generated
files in the chart must be what the code generates, and Prometheus' own `promtool` must
accept the rule file.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import aiohttp
import promql_parser
import pytest
from prometheus_client.parser import text_string_to_metric_families

from accordion.observability import dashboards, generate, metrics, rules

from .conftest import (
    LABEL_VALUES,
    DataPlane,
    all_expressions,
    expand,
    problems,
    sample_body,
    wait_for,
)

CHART = Path(__file__).resolve().parents[2] / "charts" / "accordion"


def test_generated_files_are_up_to_date() -> None:
    assert generate.stale_files(CHART) == [], (
        "run `python -m accordion.observability.generate` and commit charts/accordion/files"
    )


def test_check_mode_reports_stale_files(tmp_path: Path) -> None:
    assert generate.main(["--chart", str(tmp_path), "--check"]) == 1
    assert generate.main(["--chart", str(tmp_path)]) == 0
    assert generate.main(["--chart", str(tmp_path), "--check"]) == 0
    (tmp_path / "files" / "dashboards" / "old.json").write_text("{}")
    assert generate.stale_files(tmp_path) == ["files/dashboards/old.json"]


@pytest.mark.parametrize(("where", "expr"), list(all_expressions()))
def test_expression_parses_and_uses_exported_names(where: str, expr: str) -> None:
    promql_parser.parse(expr)
    assert problems(expr) == [], where


def test_template_variables_use_exported_labels() -> None:
    variables = dashboards.variable_queries()
    assert variables
    for definition in variables:
        match = LABEL_VALUES.match(expand(definition))
        assert match, definition
        assert problems(match["selector"]) == []
        assert match["label"] in metrics.catalog()["accordion_router_requests_total"]


def test_the_checker_catches_mistakes() -> None:
    assert problems("rate(accordion_router_request_total[5m])") == [
        "unknown metric 'accordion_router_request_total'"
    ]
    assert problems('accordion_worker_queue_depth{outcome="ok"}') == [
        "accordion_worker_queue_depth: unknown labels ['outcome']"
    ]
    assert problems("sum by (kind) (rate(accordion_router_requests_total[1m]))")
    with pytest.raises(ValueError, match="parenthesis"):
        promql_parser.parse("sum(rate(accordion_router_requests_total[5m])")


def test_dashboards_are_templated_and_have_unique_ids() -> None:
    for board in dashboards.dashboards().values():
        names = [v["name"] for v in board["templating"]["list"]]
        assert names == ["datasource", "namespace", "service"]
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids))
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                if "namespace=~" in target["expr"]:
                    assert 'service=~"$service"' in target["expr"]


def test_burn_rate_alerts_follow_the_workbook() -> None:
    windows = {(w.factor, w.long, w.short) for w in rules.BURN_RATES}
    assert windows == {(14.4, "1h", "5m"), (6.0, "6h", "30m"), (3.0, "1d", "2h"), (1.0, "3d", "6h")}
    alerts = {r.alert: r for r in rules.alert_rules()}
    critical = alerts["AccordionSLOBurnRateCritical"]
    assert "accordion:slo_violation_ratio:rate1h" in critical.expr
    assert "accordion:slo_violation_ratio:rate5m" in critical.expr
    assert critical.labels["severity"] == "critical"
    assert {
        "AccordionAccuracyBelowFloor",
        "AccordionDemandAboveCapacity",
        "AccordionOperatorNotReconciling",
    } <= set(alerts)


def test_promtool_accepts_the_rules(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus; `make test` installs it)")
    proc = subprocess.run(
        [promtool, "check", "rules", str(CHART / "files" / "prometheus-rules.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _families(text: str) -> dict[str, tuple[str, set[str]]]:
    """Family name (as exposed) -> (type, label names of its samples, without `le`)."""
    out: dict[str, tuple[str, set[str]]] = {}
    for family in text_string_to_metric_families(text):
        if family.name.endswith("_created") and family.type == "gauge":
            continue  # prometheus_client's creation timestamps of counters and histograms
        name = family.name + ("_total" if family.type == "counter" else "")
        labels = {k for s in family.samples for k in s.labels if k != "le"}
        out[name] = (family.type, labels)
    return out


def _assert_contract(text: str, contract: tuple[metrics.Metric, ...], prefix: str) -> None:
    real = {n: v for n, v in _families(text).items() if n.startswith(prefix)}
    assert set(real) == {m.name for m in contract}, "contract and /metrics differ"
    for m in contract:
        type_, labels = real[m.name]
        assert type_ == m.type, m.name
        if labels:  # families without samples yet expose no labels
            assert labels == set(m.labels), m.name


async def test_contract_matches_real_worker_and_router_metrics(data_plane: DataPlane) -> None:
    async with aiohttp.ClientSession() as session:

        async def router_ready() -> bool:
            async with session.get(f"{data_plane.router_url}/v2/health/ready") as resp:
                return resp.status == 200

        await wait_for(router_ready, 30, "the router to be ready")
        for _ in range(6):
            async with session.post(
                f"{data_plane.router_url}/v2/models/{data_plane.router.service}/infer",
                json=sample_body(),
            ) as resp:
                assert resp.status == 200, await resp.text()
        async with session.get(f"{data_plane.router_url}/metrics") as resp:
            router_text = await resp.text()
        worker_texts = []
        for url in data_plane.worker_urls.values():
            async with session.get(f"{url}/metrics") as resp:
                worker_texts.append(await resp.text())
    _assert_contract(router_text, metrics.ROUTER_METRICS, "accordion_router_")
    for text in worker_texts:
        _assert_contract(text, metrics.WORKER_METRICS, "accordion_worker_")


def test_operator_metrics_are_the_contract() -> None:
    """The operator's registry exports exactly the contract's families."""
    from accordion.operator import metrics as operator_metrics

    registry = operator_metrics.REGISTRY
    from prometheus_client import generate_latest

    text = generate_latest(registry).decode()
    real = {n for n in _families(text) if n.startswith("accordion_")}
    assert real == {m.name for m in metrics.OPERATOR_METRICS}
