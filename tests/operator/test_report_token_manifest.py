"""The router pods the operator renders carry their report token (`report_auth: TokenReview`):
a projected ServiceAccount token for the reports' audience, an hour's expiry, mounted read-only,
and `--report-token-file` pointing at it; the Deployment validates strictly against the
Kubernetes schemas and the router's CLI takes the command line. `report_auth: None`, or no
report URL: none of it. The setting from the environment, as the other knobs.
"""

from __future__ import annotations

import kubernetes_validate
import pytest
import typer
from pydantic import ValidationError
from typer.testing import CliRunner

from accordion.operator.config import OperatorConfig
from accordion.operator.k8s import Manifest, router_deployment
from accordion.workers.config import REPORT_AUDIENCE

from .test_k8s_manifests import K8S_VERSION

URL = "http://accordion-reports.accordion-system.svc:8082/v1/reports"


def pod(config: OperatorConfig) -> Manifest:
    deployment = router_deployment("team-a/classifier", "uid-1", config)
    kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    spec: Manifest = deployment["spec"]["template"]["spec"]
    return spec


def test_the_router_gets_a_projected_token_for_the_reports_audience() -> None:
    config = OperatorConfig(report_url=URL)
    assert config.report_auth == "TokenReview"  # the default
    spec = pod(config)
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["report-token"] == {
        "name": "report-token",
        "projected": {
            "sources": [
                {
                    "serviceAccountToken": {
                        "audience": REPORT_AUDIENCE,
                        "expirationSeconds": 3600,
                        "path": "token",
                    }
                }
            ]
        },
    }
    # The pod still mounts no token for the API server.
    assert spec["automountServiceAccountToken"] is False
    (container,) = spec["containers"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["report-token"]["readOnly"] is True
    args = container["args"]
    token_file = args[args.index("--report-token-file") + 1]
    assert token_file == mounts["report-token"]["mountPath"] + "/token"
    assert token_file == "/var/run/secrets/accordion/reports/token"

    # The router's CLI takes that command line.
    cli = pytest.importorskip("accordion.workers.cli")
    result = CliRunner().invoke(cli.app, [*container["command"][1:], *args, "--help"])
    assert result.exit_code == 0, result.output
    route = typer.main.get_command(cli.app).commands["route"]  # type: ignore[attr-defined]
    assert "report_token_file" in {p.name for p in route.params}


@pytest.mark.parametrize(
    "config",
    [OperatorConfig(report_url=URL, report_auth="None"), OperatorConfig()],
    ids=["auth-off", "no-reports"],
)
def test_no_token_without_authentication(config: OperatorConfig) -> None:
    spec = pod(config)
    assert "report-token" not in {v["name"] for v in spec["volumes"]}
    (container,) = spec["containers"]
    assert "report-token" not in {m["name"] for m in container["volumeMounts"]}
    assert "--report-token-file" not in container["args"]


def test_the_setting_from_the_environment() -> None:
    assert OperatorConfig.load({}).report_auth == "TokenReview"
    assert OperatorConfig.load({"ACCORDION_REPORT_AUTH": "None"}).report_auth == "None"
    with pytest.raises(ValidationError, match="report_auth"):
        OperatorConfig.load({"ACCORDION_REPORT_AUTH": "Basic"})
