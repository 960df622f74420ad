"""The commands the operator puts into router and worker pods work with the worker image.

The worker image (workers/Dockerfile) provides `accordion-worker`, a wrapper of
`python -m accordion.workers`. The operator's pod commands (`OperatorConfig.worker_command`,
`router_command` and their args) must be accepted by that CLI, and the worker must read the
configuration the operator hands it (`worker_config_env`).
"""

from __future__ import annotations

import pytest

from .conftest import REPO


def test_worker_image_provides_the_operators_command() -> None:
    config = pytest.importorskip("accordion.operator.config").OperatorConfig()
    dockerfile = (REPO / "workers" / "Dockerfile").read_text()
    for command in (config.worker_command, config.router_command):
        assert command[0] == "accordion-worker"
    assert "/usr/local/bin/accordion-worker" in dockerfile
    assert 'exec python -m accordion.workers "$@"' in dockerfile


def _cli_accepts(args: list[str]) -> tuple[bool, str]:
    typer_testing = pytest.importorskip("typer.testing")
    cli = pytest.importorskip("accordion.workers.cli")
    # --help after the arguments: options are parsed (unknown ones are errors), nothing runs.
    result = typer_testing.CliRunner().invoke(cli.app, [*args, "--help"])
    return result.exit_code == 0, result.output


def _error_line(output: str) -> str:
    lines = [line.strip("│╭╮╰╯─ ") for line in output.splitlines()]
    return " ".join(line for line in lines if "option" in line.lower()) or output


def test_router_command_line_is_accepted() -> None:
    config_module = pytest.importorskip("accordion.operator.config")
    k8s = pytest.importorskip("accordion.operator.k8s")
    # The router pod's whole command line: the configured args and those the operator adds
    # (its drain, gRPC port, reports and their token).
    config = config_module.OperatorConfig(report_url="http://accordion-reports:8082/v1/reports")
    (container,) = k8s.router_deployment("ml/svc", "uid", config)["spec"]["template"]["spec"][
        "containers"
    ]
    assert "--drain-seconds" in container["args"]
    ok, output = _cli_accepts([*container["command"][1:], *container["args"]])
    assert ok, _error_line(output)


def test_worker_command_line_is_accepted_and_reads_its_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = pytest.importorskip("accordion.operator.config").OperatorConfig()
    ok, output = _cli_accepts([*config.worker_command[1:], *config.worker_args])
    assert ok, output
    cli = pytest.importorskip("accordion.workers.cli")
    # The worker reads the WorkerConfig the operator puts in its environment.
    worker_config = pytest.importorskip("accordion.workers.config").WorkerConfig(
        model_name="m", model="builtin:demo-xs", host="0.0.0.0", port=9123
    )
    seen: list[object] = []
    server = pytest.importorskip("accordion.workers.server")
    monkeypatch.setattr(server, "serve", seen.append)
    result = (
        pytest.importorskip("typer.testing")
        .CliRunner()
        .invoke(
            cli.app,
            [*config.worker_command[1:], *config.worker_args],
            env={config.worker_config_env: worker_config.model_dump_json()},
        )
    )
    assert result.exit_code == 0, result.output
    assert seen == [worker_config]
