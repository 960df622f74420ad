"""A router's reports carry its ServiceAccount token (`--report-token-file`), and the token the
kubelet rotates is the one sent next.

The token directory is written as the kubelet writes a projected volume (its atomic writer: a
timestamped directory, `..data` a symlink to it, `token` a symlink through `..data`; a rotation
writes a new directory and swaps `..data`). The operator is a real aiohttp server that records
the Authorization header and refuses tokens it does not know (401), as the operator's
TokenReview check does.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import typer
from aiohttp import web
from aiohttp.test_utils import TestServer
from typer.testing import CliRunner

from accordion.workers.cli import app as cli_app
from accordion.workers.config import REPORT_PATH, REPORT_TOKEN_FILE_ENV, ReportAnswer, RouterReport
from accordion.workers.reporting import Reporter, ReportPolicy
from accordion.workers.tokenfile import TokenFile

from .test_reporting import table

COUNTER = iter(range(1_000_000))


def kubelet_write(directory: Path, token: str) -> None:
    """Write (or rotate) `directory/token` as the kubelet's atomic writer does."""
    directory.mkdir(exist_ok=True)
    stamp = directory / f"..2026_12_03_{next(COUNTER):06d}"
    stamp.mkdir()
    (stamp / "token").write_text(token)
    tmp = directory / "..data_tmp"
    tmp.symlink_to(stamp.name)
    tmp.replace(directory / "..data")
    link = directory / "token"
    if not link.is_symlink():
        link.symlink_to("..data/token")


@dataclass
class Operator:
    tokens: set[str]
    seen: list[str | None] = field(default_factory=list)
    taken: list[RouterReport] = field(default_factory=list)

    def app(self) -> web.Application:
        async def take(request: web.Request) -> web.Response:
            header = request.headers.get("Authorization")
            self.seen.append(header)
            if header is None or header.removeprefix("Bearer ") not in self.tokens:
                return web.json_response({"error": "the token is not valid"}, status=401)
            self.taken.append(RouterReport.model_validate_json(await request.read()))
            return web.Response(body=ReportAnswer().model_dump_json())

        app = web.Application()
        app.router.add_post(REPORT_PATH, take)
        return app


@pytest.fixture
async def operator() -> AsyncIterator[tuple[Operator, str]]:
    op = Operator(tokens={"first-token"})
    async with TestServer(op.app()) as server:
        yield op, str(server.make_url(REPORT_PATH))


def reporter(url: str, token_file: Path | None) -> Reporter:
    t = table("http://127.0.0.1:9", {"big": 1.0}, revision=1)
    # heartbeat 0: every window is reported (what is tested here is the header).
    return Reporter(
        url,
        table=lambda: t,
        requests_total=lambda: 0,
        adopt=lambda _: None,
        policy=ReportPolicy(interval_s=1.0, heartbeat_s=0.0),
        token_file=token_file,
    )


async def test_reports_carry_the_token_and_its_rotation(
    operator: tuple[Operator, str], tmp_path: Path
) -> None:
    op, url = operator
    directory = tmp_path / "reports"
    kubelet_write(directory, "first-token\n")
    rep = reporter(url, directory / "token")
    try:
        assert await rep.step() == "first"
        assert await rep.step() == "heartbeat"
        assert op.seen == ["Bearer first-token", "Bearer first-token"]
        assert len(op.taken) == 2
        assert rep.token is not None
        assert rep.token.reads == 1  # once per change, not per report

        # The kubelet rotates the token (the operator knows the new one, and still the old).
        op.tokens.add("second-token")
        kubelet_write(directory, "second-token")
        await rep.step()
        assert op.seen[-1] == "Bearer second-token"
        assert rep.reachable is True

        # A refused token: the report failed (retried next window), the file is read again.
        op.tokens = {"third-token"}
        reads = rep.token.reads
        assert await rep.step() == "heartbeat"
        assert rep.reachable is False
        assert rep.token.reads == reads
        assert await rep.step() == "retry"  # the file did not change, yet it is read again
        assert rep.token.reads == reads + 1
        kubelet_write(directory, "third-token")
        assert await rep.step() == "retry"
        assert rep.reachable is True
        assert op.seen[-3:] == ["Bearer second-token", "Bearer second-token", "Bearer third-token"]
    finally:
        await rep.stop()


async def test_an_unreadable_token_fails_the_report_not_the_router(
    operator: tuple[Operator, str], tmp_path: Path
) -> None:
    op, url = operator
    directory = tmp_path / "reports"
    rep = reporter(url, directory / "token")
    try:
        assert await rep.step() == "first"  # due, but not sent: no file yet
        assert rep.reachable is False
        assert op.seen == []
        kubelet_write(directory, "first-token")
        assert await rep.step() == "first"  # never delivered yet: still the first
        assert rep.reachable is True
        assert op.seen == ["Bearer first-token"]
    finally:
        await rep.stop()


async def test_without_a_token_file_no_header(operator: tuple[Operator, str]) -> None:
    op, url = operator
    rep = reporter(url, None)
    try:
        await rep.step()
        assert op.seen == [None]
        assert rep.reachable is False  # this operator wants one
    finally:
        await rep.stop()


def test_a_token_file_is_read_again_after_forget(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("  abc \n")
    token = TokenFile(path)
    assert token.header() == {"Authorization": "Bearer abc"}
    assert token.token() == "abc"
    assert token.reads == 1
    token.forget()
    assert token.token() == "abc"
    assert token.reads == 2
    path.write_text("")
    os.utime(path, ns=(0, 0))
    with pytest.raises(OSError, match="empty"):
        token.token()


def test_the_router_cli_takes_the_token_file() -> None:
    route = typer.main.get_command(cli_app).commands["route"]  # type: ignore[attr-defined]
    (option,) = [p for p in route.params if p.name == "report_token_file"]
    assert option.opts == ["--report-token-file"]
    assert option.envvar == REPORT_TOKEN_FILE_ENV == "ACCORDION_REPORT_TOKEN_FILE"
    result = CliRunner().invoke(cli_app, ["route", "--help"])
    assert result.exit_code == 0
    assert "--report-token-file" in result.output
