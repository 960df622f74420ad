"""Reports authenticated with the routers' ServiceAccount tokens (`accordion.operator.reportauth`).

The real aiohttp server (`ReportServer`, through aiohttp's test client) with a reviewer that
stands in for the API server's TokenReview: it knows a few tokens, counts the reviews it is
asked for, and can fail. What is checked: no token 401 (before the body is read), a token the
reviewer refuses 401, a token for another namespace 403, a bound token reporting as another pod
403, a good one 200 with the demand taken; one review per token while cached (accepted and
refused), again after the cache time or past the token's expiry; a failing API 503 and nothing
cached; and the real reviewer's request to the API server (`token_reviewer`, against a stub
HTTP API server: the TokenReview body it sends and the answer it parses).
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest
from aiohttp.test_utils import TestClient, TestServer
from kubernetes import client as k8s

from accordion.operator import metrics, reportauth
from accordion.operator.reportauth import (
    POD_NAME_EXTRA,
    Identity,
    Review,
    ReviewUnavailableError,
    TokenAuthenticator,
    UnauthenticatedError,
    token_reviewer,
)
from accordion.operator.reports import ReportServer
from accordion.workers.config import REPORT_AUDIENCE, REPORT_PATH

from .test_loop import Clock
from .test_reports import SVC, receiver, report

GOOD = "token-of-default-router"  # a ServiceAccount of namespace default, the service's
OTHER = "token-of-team-b"  # a ServiceAccount of another namespace
BOUND = "token-of-pod-r1"  # bound to pod r1 of namespace default
USER = "token-of-a-person"  # authenticated, but no ServiceAccount


class StubReviewer:
    """The API server's TokenReview, for the tokens it knows; counts and can fail."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.failing: Exception | None = None
        self.users = {
            GOOD: ("system:serviceaccount:default:default", None),
            OTHER: ("system:serviceaccount:team-b:default", None),
            BOUND: ("system:serviceaccount:default:default", "r1"),
            USER: ("alice@example.com", None),
        }

    def __call__(self, token: str) -> Review:
        self.asked.append(token)
        if self.failing is not None:
            raise self.failing
        if token not in self.users:
            return Review(authenticated=False, error="invalid bearer token")
        username, pod = self.users[token]
        return Review(
            authenticated=True,
            username=username,
            audiences=(REPORT_AUDIENCE,),
            extra={POD_NAME_EXTRA: (pod,)} if pod else None,
        )


def server_with(reviewer: StubReviewer, clock: Clock) -> ReportServer:
    auth = TokenAuthenticator(reviewer, clock=clock, wall_clock=lambda: 1e9 + clock())
    return ReportServer(receiver(clock), lambda: True, auth)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def answered(code: int) -> float:
    """`accordion_operator_reports_total{code}` as the operator exports it."""
    value = metrics.REGISTRY.get_sample_value(
        "accordion_operator_reports_total", {"code": str(code)}
    )
    return value or 0.0


async def test_a_report_needs_a_token_of_its_services_namespace() -> None:
    clock, reviewer = Clock(), StubReviewer()
    before = {code: answered(code) for code in (200, 400, 401, 403)}
    server = server_with(reviewer, clock)
    body = report("r1", 10, 10).model_dump_json()
    async with TestClient(TestServer(server.app())) as client:
        resp = await client.post(REPORT_PATH, data=body)
        assert resp.status == 401
        assert "no Authorization header" in (await resp.json())["error"]
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        # Authentication comes first: not even a malformed body is looked at.
        resp = await client.post(REPORT_PATH, data=b"{not json")
        assert resp.status == 401
        resp = await client.post(REPORT_PATH, data=body, headers={"Authorization": "Basic eA=="})
        assert resp.status == 401
        assert "Bearer" in (await resp.json())["error"]
        resp = await client.post(REPORT_PATH, data=body, headers=bearer("made-up"))
        assert resp.status == 401
        assert "invalid bearer token" in (await resp.json())["error"]
        assert server.demand.book.routers == {}

        resp = await client.post(REPORT_PATH, data=body, headers=bearer(OTHER))
        assert resp.status == 403
        error = (await resp.json())["error"]
        assert "system:serviceaccount:team-b:default" in error
        assert SVC in error
        resp = await client.post(REPORT_PATH, data=body, headers=bearer(USER))
        assert resp.status == 403
        assert "not a ServiceAccount" in (await resp.json())["error"]
        # A pod's token speaks for that pod's router only.
        resp = await client.post(
            REPORT_PATH, data=report("r2", 10, 10).model_dump_json(), headers=bearer(BOUND)
        )
        assert resp.status == 403
        assert "pod r1" in (await resp.json())["error"]
        assert server.demand.book.routers == {}
        assert server.refused == 7

        # An authenticated token's malformed body is a 400 as before.
        resp = await client.post(REPORT_PATH, data=b"{not json", headers=bearer(GOOD))
        assert resp.status == 400
        for token in (GOOD, BOUND):
            resp = await client.post(REPORT_PATH, data=body, headers=bearer(token))
            assert resp.status == 200, await resp.text()
        assert set(server.demand.book.routers[SVC]) == {"r1"}
    # Every answer is counted by its status code, refusals included (the alert's series).
    counted = {code: answered(code) - value for code, value in before.items()}
    assert counted == {200: 2, 400: 1, 401: 4, 403: 3}


async def test_reviews_are_cached_per_token() -> None:
    clock, reviewer = Clock(), StubReviewer()
    server = server_with(reviewer, clock)
    body = report("r1", 10, 10).model_dump_json()
    async with TestClient(TestServer(server.app())) as client:
        for _ in range(5):
            assert (await client.post(REPORT_PATH, data=body, headers=bearer(GOOD))).status == 200
            assert (await client.post(REPORT_PATH, data=body, headers=bearer("x"))).status == 401
            clock.t += 1.0
        assert sorted(reviewer.asked) == [GOOD, "x"]
        # A refused token is asked about again after REJECT_TTL_S, an accepted one after
        # REVIEW_TTL_S (both tokens are still good or bad: the answers do not change).
        clock.t += 10.0
        assert (await client.post(REPORT_PATH, data=body, headers=bearer("x"))).status == 401
        assert (await client.post(REPORT_PATH, data=body, headers=bearer(GOOD))).status == 200
        assert sorted(reviewer.asked) == [GOOD, "x", "x"]
        clock.t += 300.0
        assert (await client.post(REPORT_PATH, data=body, headers=bearer(GOOD))).status == 200
        assert reviewer.asked.count(GOOD) == 2
        # The review of a token that was deleted since (its pod is gone): refused again.
        del reviewer.users[GOOD]
        clock.t += 300.0
        assert (await client.post(REPORT_PATH, data=body, headers=bearer(GOOD))).status == 401
    assert server.auth is not None
    assert server.auth.reviews == len(reviewer.asked) == 5


async def test_a_failing_api_server_is_a_503_and_not_cached() -> None:
    clock, reviewer = Clock(), StubReviewer()
    server = server_with(reviewer, clock)
    body = report("r1", 10, 10).model_dump_json()
    reviewer.failing = k8s.ApiException(status=403, reason="Forbidden")
    async with TestClient(TestServer(server.app())) as client:
        resp = await client.post(REPORT_PATH, data=body, headers=bearer(GOOD))
        assert resp.status == 503
        assert "TokenReview" in (await resp.json())["error"]
        assert "Forbidden" in (await resp.json())["error"]
        assert server.demand.book.routers == {}
        reviewer.failing = None
        resp = await client.post(REPORT_PATH, data=body, headers=bearer(GOOD))
        assert resp.status == 200
    assert reviewer.asked == [GOOD, GOOD]


def jwt(exp: float) -> str:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256'})}.{part({'exp': exp, 'aud': [REPORT_AUDIENCE]})}.c2ln"


async def test_a_token_is_not_believed_past_its_expiry() -> None:
    clock = Clock()
    now_wall = 1_700_000_000.0
    token = jwt(now_wall + 30.0)  # expires in 30 s, well within REVIEW_TTL_S
    reviewer = StubReviewer()
    reviewer.users[token] = ("system:serviceaccount:default:default", None)
    auth = TokenAuthenticator(reviewer, clock=clock, wall_clock=lambda: now_wall)
    identity = await auth.identity(f"Bearer {token}")
    assert identity == Identity("system:serviceaccount:default:default", "default")
    clock.t += 29.0
    await auth.identity(f"Bearer {token}")
    assert len(reviewer.asked) == 1
    clock.t += 2.0
    await auth.identity(f"bearer  {token}")  # the scheme is case-insensitive
    assert len(reviewer.asked) == 2


async def test_concurrent_reports_of_one_token_share_a_review() -> None:
    release = threading.Event()
    asked: list[str] = []

    def slow(token: str) -> Review:
        asked.append(token)
        release.wait(5)
        return Review(True, "system:serviceaccount:default:default", (REPORT_AUDIENCE,))

    auth = TokenAuthenticator(slow)
    waiting = [asyncio.create_task(auth.identity(f"Bearer {GOOD}")) for _ in range(5)]
    await asyncio.sleep(0.05)  # let them all reach the review (the condition is the count)
    release.set()
    identities = await asyncio.gather(*waiting)
    assert {i.namespace for i in identities} == {"default"}
    assert asked == [GOOD]


async def test_audience_and_header_rules() -> None:
    def wrong_audience(token: str) -> Review:
        return Review(True, "system:serviceaccount:default:default", ("https://kubernetes",))

    auth = TokenAuthenticator(wrong_audience)
    with pytest.raises(UnauthenticatedError, match="audience accordion-reports"):
        await auth.identity("Bearer t")
    for header in ("", "Bearer", "Bearer ", "Token abc", "Bearer a b"):
        with pytest.raises(UnauthenticatedError):
            await auth.identity(header)
    with pytest.raises(UnauthenticatedError, match="longer"):
        await auth.identity("Bearer " + "x" * 9000)

    def broken(token: str) -> Review:
        raise ConnectionError("connection refused")

    with pytest.raises(ReviewUnavailableError, match="connection refused"):
        await TokenAuthenticator(broken).identity("Bearer t")


class _ApiServer(BaseHTTPRequestHandler):
    """Answers POST /apis/authentication.k8s.io/v1/tokenreviews as the API server would."""

    seen: ClassVar[list[tuple[str, dict[str, Any]]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append((self.path, body))
        token = body["spec"]["token"]
        status: dict[str, Any] = {"authenticated": False, "error": "invalid bearer token"}
        if token == GOOD:
            status = {
                "authenticated": True,
                "audiences": body["spec"]["audiences"],
                "user": {
                    "username": "system:serviceaccount:default:router",
                    "extra": {POD_NAME_EXTRA: ["r1"]},
                },
            }
        out = json.dumps({**body, "status": status}).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def api_server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _ApiServer)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    thread.join(5)


def test_the_reviewer_asks_the_api_server(api_server: str) -> None:
    configuration = k8s.Configuration()
    configuration.host = api_server
    review = token_reviewer(k8s.ApiClient(configuration))
    good = review(GOOD)
    assert good.authenticated
    assert Identity.of(good.username, "r1") == Identity(
        "system:serviceaccount:default:router", "default", "r1"
    )
    assert good.extra == {POD_NAME_EXTRA: ("r1",)}
    assert good.audiences == (REPORT_AUDIENCE,)
    bad = review("nope")
    assert not bad.authenticated
    assert bad.error == "invalid bearer token"
    path, body = _ApiServer.seen[0]
    assert path == "/apis/authentication.k8s.io/v1/tokenreviews"
    assert body["kind"] == "TokenReview"
    assert body["spec"] == {"token": GOOD, "audiences": [REPORT_AUDIENCE]}


async def test_the_cache_and_the_waiting_reviews_are_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reviewer = StubReviewer()
    reviewer.users.update({f"t{i}": ("system:serviceaccount:default:default", None) for i in "123"})
    auth = TokenAuthenticator(reviewer, max_cached=2)
    for token in ("t1", "t2", "t1", "t3", "t1", "t2"):  # t2 is the least recently used at t3
        await auth.identity(f"Bearer {token}")
    assert reviewer.asked == ["t1", "t2", "t3", "t2"]

    # Reviews waiting beyond the bound: the next new token is a 503 at once, not a queue.
    monkeypatch.setattr(reportauth, "MAX_PENDING_REVIEWS", 2)
    release = threading.Event()

    def slow(token: str) -> Review:
        release.wait(5)
        return Review(True, "system:serviceaccount:default:default", (REPORT_AUDIENCE,))

    auth = TokenAuthenticator(slow)
    waiting = [asyncio.create_task(auth.identity(f"Bearer w{i}")) for i in range(2)]
    await asyncio.sleep(0)  # both are now waiting for their review
    with pytest.raises(ReviewUnavailableError, match="waiting"):
        await auth.identity("Bearer w3")
    release.set()
    assert len(await asyncio.gather(*waiting)) == 2
    assert (await auth.identity("Bearer w3")).namespace == "default"
