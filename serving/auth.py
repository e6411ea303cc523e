"""Bearer-JWT auth for every ``/api/*`` call, and the request body limit (SPEC §8, issue 6).

Tokens are HS256 JWTs signed with ``JWT_SECRET``; ``exp`` and ``sub`` are required.

- A *user token* has ``sub`` = the user id as a decimal string; it acts on that user only.
- A *service token* has ``role`` = ``"service"`` (its ``sub`` names the service); it acts on
  any user.

Missing, malformed, expired, wrongly signed and ``alg: none`` (or any algorithm but HS256)
tokens get 401 problem details with a ``WWW-Authenticate: Bearer`` challenge; a valid
token acting on another user gets 403. :class:`ApiGuard`, a pure ASGI middleware,
authenticates before the body is read (an anonymous caller never gets as far as a 422),
refuses bodies over the limit with 413, and leaves ``/health``, ``/ready``, ``/metrics``
and ``/docs`` open.

Verified tokens are cached (bounded, keyed by the exact token text, expiry re-checked on
every hit), so a client re-using its token pays the HMAC once.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

import jwt
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipelines.domain.events import MAX_USER_ID
from pipelines.settings import SettingsError
from serving.errors import Forbidden, Unauthorized, problem_response

logger = logging.getLogger(__name__)

ALGORITHM: Final = "HS256"
SERVICE_ROLE: Final = "service"
MIN_SECRET_LEN: Final = 32
DEFAULT_TTL: Final = timedelta(hours=1)
MAX_BODY_BYTES: Final = 64 * 1024
PRINCIPAL_SCOPE_KEY: Final = "cc.principal"
API_PREFIX: Final = "/api/"

_USER_SUB = re.compile(r"[1-9][0-9]{0,18}")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a user (``user_id``) or a service (``is_service``)."""

    subject: str
    user_id: int | None
    is_service: bool

    def may_act_on(self, user_id: int) -> bool:
        return self.is_service or self.user_id == user_id


AUTH_DISABLED_PRINCIPAL: Final = Principal("auth-disabled", None, True)


def authorize(principal: Principal, user_id: int) -> None:
    """403 unless ``principal`` may act on ``user_id``."""
    if not principal.may_act_on(user_id):
        raise Forbidden(f"this token may not act on user {user_id}")


def check_secret(secret: str | None, *, auth_disabled: bool) -> str | None:
    """The API's JWT secret rule: required unless auth is explicitly disabled.

    Raises :class:`SettingsError` (one line naming the variable).
    """
    if auth_disabled:
        return None
    if not secret:
        raise SettingsError(
            "JWT_SECRET is not set (see .env.example); set AUTH_DISABLED=true to run "
            "the API without auth"
        )
    if len(secret) < MIN_SECRET_LEN or secret.startswith("change-me"):
        raise SettingsError(
            f"JWT_SECRET is malformed: use a random secret of at least {MIN_SECRET_LEN} "
            "characters (python -c 'import secrets; print(secrets.token_urlsafe(48))')"
        )
    return secret


def mint_token(
    secret: str,
    sub: str | int,
    role: str | None = None,
    ttl: timedelta | float = DEFAULT_TTL,
    *,
    now: float | None = None,
) -> str:
    """Sign a bearer token: ``sub`` (a user id, or a service name with ``role="service"``).

    ``ttl`` is a timedelta or seconds; ``exp`` = now + ttl; ``iat`` = now.
    """
    seconds = ttl.total_seconds() if isinstance(ttl, timedelta) else float(ttl)
    issued = time.time() if now is None else now
    claims: dict[str, Any] = {"sub": str(sub), "iat": int(issued), "exp": int(issued + seconds)}
    if role is not None:
        claims["role"] = role
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def principal_from_claims(claims: dict[str, Any]) -> Principal:
    sub = claims["sub"]
    role = claims.get("role")
    if role is not None and not isinstance(role, str):
        raise Unauthorized("invalid token: role must be a string")
    is_service = role == SERVICE_ROLE
    user_id = None
    if _USER_SUB.fullmatch(sub) and int(sub) <= MAX_USER_ID:
        user_id = int(sub)
    return Principal(subject=sub, user_id=user_id, is_service=is_service)


class TokenVerifier:
    """Verifies HS256 bearer tokens; remembers good ones until they expire."""

    def __init__(self, secret: str, *, cache_size: int = 10_000) -> None:
        self._secret = secret
        self._cache: dict[str, tuple[Principal, float]] = {}
        self._cache_size = cache_size

    def verify(self, token: str) -> Principal:
        hit = self._cache.get(token)
        if hit is not None:
            principal, expires = hit
            if time.time() < expires:
                return principal
            self._cache.pop(token, None)
            raise Unauthorized("token expired")
        try:
            claims = jwt.decode(
                token, self._secret, algorithms=[ALGORITHM], options={"require": ["exp", "sub"]}
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except jwt.InvalidSignatureError:
            raise Unauthorized("invalid token: bad signature") from None
        except jwt.InvalidAlgorithmError:
            raise Unauthorized(f"invalid token: only {ALGORITHM} is accepted") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized(f"invalid token: missing claim {exc.claim!r}") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"invalid token: {exc}") from None
        principal = principal_from_claims(claims)
        if len(self._cache) >= self._cache_size:
            self._cache.pop(next(iter(self._cache)))
        self._cache[token] = (principal, float(claims["exp"]))
        return principal


class Authenticator:
    """Bearer header -> :class:`Principal` (or a 401)."""

    def __init__(self, secret: str | None) -> None:
        self._verifier = TokenVerifier(secret) if secret else None

    @property
    def enabled(self) -> bool:
        return self._verifier is not None

    def authenticate(self, authorization: bytes | None) -> Principal:
        if self._verifier is None:
            return AUTH_DISABLED_PRINCIPAL
        if authorization is None:
            raise Unauthorized("missing bearer token", invalid_token=False)
        scheme, _, token = authorization.partition(b" ")
        token = token.strip()
        if scheme.lower() != b"bearer" or not token:
            raise Unauthorized("malformed Authorization header: expected 'Bearer <token>'")
        try:
            text = token.decode("ascii")
        except UnicodeDecodeError:
            raise Unauthorized("malformed bearer token") from None
        return self._verifier.verify(text)


class _BodyTooLarge(StarletteHTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is larger than {limit} bytes")


class ApiGuard:
    """Pure ASGI middleware: auth for ``/api/*``, body limit for all, one-line start-up errors.

    The :class:`Authenticator` is read from ``app.state.authenticator`` (set by the lifespan).
    """

    def __init__(self, app: ASGIApp, *, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self._lifespan(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        authorization = None
        content_length = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
            elif name == b"content-length":
                content_length = value
        path: str = scope["path"]
        if path.startswith(API_PREFIX):
            authenticator: Authenticator | None = getattr(scope["app"].state, "authenticator", None)
            if authenticator is None:
                await problem_response(503, "the API is starting", instance=path)(
                    scope, receive, send
                )
                return
            try:
                scope[PRINCIPAL_SCOPE_KEY] = authenticator.authenticate(authorization)
            except Unauthorized as exc:
                await exc.response(path)(scope, receive, send)
                return
        limit = self.max_body_bytes
        if content_length is not None:
            try:
                declared = int(content_length)
            except ValueError:
                declared = -1
            if declared > limit:
                response = problem_response(
                    413, f"request body is larger than {limit} bytes", instance=path
                )
                await response(scope, receive, send)
                return
            if declared >= 0:
                # the server enforces Content-Length framing: no need to count
                await self.app(scope, receive, send)
                return
        await self.app(scope, _limited_receive(receive, limit), send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Report a settings error at start-up as its one line, not a traceback."""
        failed: list[Message] = []

        async def capture(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed":
                failed.append(message)
                return
            await send(message)

        try:
            await self.app(scope, receive, capture)
        except SettingsError as exc:
            logger.error("%s", exc)
            await send({"type": "lifespan.startup.failed", "message": str(exc)})
            return
        except BaseException:
            for message in failed:
                await send(message)
            raise
        for message in failed:
            await send(message)


def _limited_receive(receive: Receive, limit: int) -> Callable[[], Awaitable[Message]]:
    received = 0

    async def limited() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise _BodyTooLarge(limit)
        return message

    return limited
