"""Who may report: routers prove their pod's identity with a ServiceAccount token (TokenReview).

Why: a report moves a service's demand, and demand starts devices. Without authentication any
pod that reaches the report Service could claim demand for any InferenceService of any
namespace and make the operator scale it up, or say that another service's router stopped.
So, as kube-rbac-proxy and metrics-server authenticate their callers:

* every router pod gets a projected ServiceAccount token for the audience `REPORT_AUDIENCE`
  (an hour's expiry; the kubelet rotates it) and sends it with each report as
  `Authorization: Bearer` (`accordion.workers.reporting`). A token for that audience is no
  good against the API server, and the pod's API token is no good here;
* the operator asks the API server who the token is (`authentication.k8s.io/v1` TokenReview,
  `spec.audiences: [REPORT_AUDIENCE]`): the operator holds no key and needs no issuer
  discovery, and a token dies with its pod;
* the token must be authenticated for that audience (else 401), and be a ServiceAccount's,
  `system:serviceaccount:<namespace>:<name>`, of the namespace of the service the report is
  about (else 403): a pod speaks only for services of its own namespace. A token bound to a pod
  (the API server says which, `authentication.kubernetes.io/pod-name`) reports as that pod's
  router only: one router cannot report, or report stopped, for another.
* The API server cannot be asked (an error, a timeout, the operator's RBAC lacks
  `tokenreviews create`): 503; the router keeps its table and reports again, as after any
  failed report.

Reviews are cached per token (its SHA-256), `REVIEW_TTL_S` for an accepted one and never past
the token's own expiry, `REJECT_TTL_S` for a refused one (a misconfigured router retrying every
second costs one review per that), at most `MAX_CACHED` tokens (least recently used go first):
one review per router every few minutes, not one per report. At most `MAX_CONCURRENT_REVIEWS`
run at once (their threads are the API client's, shared with the actuator), one per token, and
beyond `MAX_PENDING_REVIEWS` waiting a report is answered 503 at once: a flood of made-up
tokens costs the API server little and the operator nothing it needs.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from accordion.workers.config import REPORT_AUDIENCE

log = logging.getLogger(__name__)

REVIEW_TTL_S = 300.0
"""How long an accepted token is believed without asking again (a token lives an hour)."""
REJECT_TTL_S = 10.0
"""How long a refused token is refused without asking again."""
MAX_CACHED = 16384
"""Tokens remembered at most: two routers per service and their replacements, some 8,000
services; an entry (hash, deadline, identity) is a few hundred bytes, a few MB in all. Beyond
it every report of the least recent routers would cost a review."""
MAX_CONCURRENT_REVIEWS = 4
MAX_PENDING_REVIEWS = 256
REVIEW_TIMEOUT_S = 5.0
MAX_TOKEN_BYTES = 8192
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
"""The pod a bound ServiceAccount token belongs to, in the TokenReview's `status.user.extra`."""


@dataclass(frozen=True)
class Review:
    """What the API server said of a token (`TokenReview.status`, the parts used here)."""

    authenticated: bool
    username: str = ""
    audiences: tuple[str, ...] = ()
    extra: Mapping[str, tuple[str, ...]] | None = None
    error: str = ""

    @classmethod
    def from_status(cls, status: Mapping[str, Any]) -> Review:
        user = status.get("user") or {}
        return cls(
            authenticated=bool(status.get("authenticated")),
            username=str(user.get("username") or ""),
            audiences=tuple(str(a) for a in status.get("audiences") or ()),
            extra={
                str(k): tuple(str(x) for x in v or ()) for k, v in (user.get("extra") or {}).items()
            },
            error=str(status.get("error") or ""),
        )


Reviewer = Callable[[str], Review]
"""Asks the API server about a token (synchronous: it runs in a thread). Raises on failure."""


class UnauthenticatedError(Exception):
    """No token, or one the API server does not vouch for, for this audience (401)."""


class ReviewUnavailableError(Exception):
    """The API server could not be asked (503)."""


@dataclass(frozen=True)
class Identity:
    """Who sent a report: a user (a ServiceAccount's: its namespace), and the pod its token is
    bound to (if any)."""

    username: str
    namespace: str | None = None
    """The ServiceAccount's namespace; None: the user is no ServiceAccount."""
    pod: str | None = None

    @classmethod
    def of(cls, username: str, pod: str | None = None) -> Identity:
        if not username.startswith(SERVICE_ACCOUNT_PREFIX):
            return cls(username)
        namespace, sep, account = username.removeprefix(SERVICE_ACCOUNT_PREFIX).partition(":")
        return cls(username, namespace if sep and namespace and account else None, pod)

    def refuses(self, service: str, router: str) -> str | None:
        """Why this identity may not report as `router` about `service` (namespace/name);
        None when it may."""
        if self.namespace is None:
            return f"{self.username} is not a ServiceAccount: routers report with theirs"
        namespace = service.partition("/")[0]
        if namespace != self.namespace:
            return (
                f"{self.username} may report only for services of namespace {self.namespace},"
                f" not for {service}"
            )
        if self.pod is not None and router != self.pod:
            return f"the token of pod {self.pod} may report as router {self.pod}, not {router}"
        return None


class TokenAuthenticator:
    """Identities from `Authorization` headers: TokenReview through `review`, cached."""

    def __init__(
        self,
        review: Reviewer,
        audience: str = REPORT_AUDIENCE,
        ttl_s: float = REVIEW_TTL_S,
        reject_ttl_s: float = REJECT_TTL_S,
        max_cached: int = MAX_CACHED,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.review = review
        self.audience = audience
        self.ttl_s = ttl_s
        self.reject_ttl_s = reject_ttl_s
        self.max_cached = max_cached
        self.clock = clock
        self.wall_clock = wall_clock
        self.reviews = 0
        """TokenReviews asked so far."""
        self._cache: OrderedDict[bytes, tuple[float, Identity | str]] = OrderedDict()
        self._pending: dict[bytes, asyncio.Future[Identity | str]] = {}
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_REVIEWS)
        self._failing = False

    async def identity(self, authorization: str | None) -> Identity:
        """Who sent the request with this `Authorization` header. `UnauthenticatedError` (401) or
        `ReviewUnavailableError` (503) otherwise."""
        token = _bearer(authorization)
        key = hashlib.sha256(token.encode()).digest()
        cached = self._cache.get(key)
        if cached is not None and self.clock() < cached[0]:
            self._cache.move_to_end(key)
            outcome = cached[1]
        else:
            pending = self._pending.get(key)
            if pending is None:
                if len(self._pending) >= MAX_PENDING_REVIEWS:
                    raise ReviewUnavailableError(
                        f"{len(self._pending)} token reviews are waiting already; try again"
                    )
                pending = asyncio.ensure_future(self._ask(token, key))
                self._pending[key] = pending
                pending.add_done_callback(lambda _: self._pending.pop(key, None))
            outcome = await asyncio.shield(pending)
        if isinstance(outcome, str):
            raise UnauthenticatedError(outcome)
        return outcome

    async def _ask(self, token: str, key: bytes) -> Identity | str:
        """Review `token`; its identity, or why it is refused (both cached)."""
        async with self._slots:
            self.reviews += 1
            try:
                review = await asyncio.wait_for(
                    asyncio.to_thread(self.review, token), REVIEW_TIMEOUT_S
                )
            except Exception as exc:
                why = str(exc) or type(exc).__name__  # a timeout says nothing by itself
                if not self._failing:
                    log.warning("cannot review the routers' tokens (TokenReview): %s", why)
                self._failing = True
                raise ReviewUnavailableError(
                    f"cannot review the token (TokenReview): {why}"
                ) from None
        if self._failing:
            log.info("reviewing the routers' tokens (TokenReview) again")
        self._failing = False
        outcome = self._judge(review)
        now = self.clock()
        if isinstance(outcome, str):
            until = now + self.reject_ttl_s
        else:
            until = now + self.ttl_s
            expiry = _expiry(token)
            if expiry is not None:
                until = min(until, now + expiry - self.wall_clock())
        self._cache[key] = (until, outcome)
        self._cache.move_to_end(key)
        while len(self._cache) > self.max_cached:
            self._cache.popitem(last=False)
        return outcome

    def _judge(self, review: Review) -> Identity | str:
        """The identity a review vouches for, or why it does not (401's reason)."""
        if not review.authenticated:
            return "the token is not valid" + (f": {review.error}" if review.error else "")
        if self.audience not in review.audiences:
            return f"the token is not for the audience {self.audience}"
        # Authenticated but no ServiceAccount (`Identity.namespace` None) is a 403: it is
        # known who asks, and they may not report.
        pods = (review.extra or {}).get(POD_NAME_EXTRA) or ()
        return Identity.of(review.username, pods[0] if pods else None)


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise UnauthenticatedError(
            "no Authorization header: a router reports with its projected ServiceAccount token "
            f"(audience {REPORT_AUDIENCE}, --report-token-file)"
        )
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise UnauthenticatedError("the Authorization header is not 'Bearer <token>'")
    if len(token) > MAX_TOKEN_BYTES:
        raise UnauthenticatedError(f"the token is longer than {MAX_TOKEN_BYTES} bytes")
    return token


def _expiry(token: str) -> float | None:
    """The `exp` claim (Unix seconds) of a JWT, read without checking it (the API server just
    did); None when the token is not a JWT or has none."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = parts[1] + "=" * (-len(parts[1]) % 4)
        claims = json.loads(base64.urlsafe_b64decode(payload))
        exp = claims.get("exp") if isinstance(claims, dict) else None
    except (binascii.Error, ValueError):
        return None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


def token_reviewer(api_client: Any, audience: str = REPORT_AUDIENCE) -> Reviewer:
    """A `Reviewer` that creates a TokenReview with the operator's API client."""
    from kubernetes import client as k8s

    api: Any = k8s.AuthenticationV1Api(api_client)

    def review(token: str) -> Review:
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [audience]},
        }
        resp = api.create_token_review(
            body, _preload_content=False, _request_timeout=REVIEW_TIMEOUT_S
        )
        if not 200 <= resp.status < 300:
            raise RuntimeError(f"HTTP {resp.status}")
        return Review.from_status(json.loads(resp.data).get("status") or {})

    return review
