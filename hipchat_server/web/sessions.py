"""Browser sessions of the HTTPS pages (the admin console, the search page): server-side in Redis, a signed cookie.

A session is the Redis hash ``web:session:<id>`` (username, admin flag, CSRF
token, creation time) that expires `SESSION_TTL` seconds after login; the
browser holds only the cookie ``hipchat_session=<id>.<signature>`` with
``Secure; HttpOnly; SameSite=Strict``. The signature is an HMAC of the id
under a key kept in Redis (made once by whichever process needs it first),
so a forged or truncated cookie is refused before Redis is asked for it.
``web:user-sessions:<username>`` lists a user's sessions so that
deactivating the account ends every one of them at once (`end_user`).

Every POST carries the session's CSRF token (a hidden ``csrf_token`` form
field or an ``X-CSRF-Token`` header); `csrf_ok` compares it in constant time.

Passwords are checked by `authentication.Authenticator.password_caller` (the
REST API's Basic check and active-account rule, never a remembered result, so
a reset password or a deactivated account cannot log in again), failures
counted per address like XMPP and API logins.

`WebSessions`' methods block (Redis, password check): call them from a
thread. `session_of` and `login` are the reactor-side helpers a resource uses.
"""

from __future__ import annotations

import functools
import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from urllib.parse import parse_qs

from twisted.internet import defer, threads

from hipchat_server.authentication import AuthenticationFailed

#: Seconds a session lasts after login (the contract's 12 hours; no sliding renewal).
SESSION_TTL = 12 * 3600
SESSION_KEY = "web:session:{id}"
USER_SESSIONS_KEY = "web:user-sessions:{username}"
SIGNING_KEY = "web:session-signing-key"
COOKIE_NAME = b"hipchat_session"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = b"x-csrf-token"
#: Largest form body read (a CSV import of a few thousand users fits).
MAX_FORM_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class WebSession:
    """One logged-in browser: who, whether an admin at login, and the token every POST must carry."""

    id: str
    username: str
    is_admin: bool
    csrf_token: str
    created_at: float


class LoginRefused(Exception):
    """Wrong username or password, an inactive account, or too many failures from this address."""


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


class WebSessions:
    """Sessions in Redis. ``redis_primary`` is a zero-argument callable answering the primary's client.

    ``authenticator`` is an `authentication.Authenticator` (its ``caller``
    checks a password and says whether the account is an admin);
    ``limiter`` an `xmpp.auth_limits.AuthFailureLimiter` or None.
    """

    def __init__(self, redis_primary, authenticator=None, *, limiter=None, clock=time.time, ttl: int = SESSION_TTL):
        self.redis_primary, self.authenticator, self.limiter = redis_primary, authenticator, limiter
        self.clock, self.ttl = clock, ttl
        self._signing_key: bytes | None = None

    # Cookie values.
    def _key(self) -> bytes:
        if self._signing_key is None:
            redis = self.redis_primary()
            redis.set(SIGNING_KEY, secrets.token_hex(32), nx=True)  # first process to need it makes it
            self._signing_key = _text(redis.get(SIGNING_KEY)).encode()
        return self._signing_key

    def _signature(self, session_id: str) -> str:
        digest = hmac.new(self._key(), session_id.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def cookie_value(self, session: WebSession) -> str:
        return f"{session.id}.{self._signature(session.id)}"

    def session_id_from_cookie(self, value: str | bytes | None) -> str | None:
        """The session id a cookie value carries when its signature is right; None otherwise."""
        if not value:
            return None
        session_id, dot, signature = _text(value).partition(".")
        if not dot or not session_id or not hmac.compare_digest(signature.encode(), self._signature(session_id).encode()):
            return None
        return session_id

    # Sessions.
    def create(self, username: str, is_admin: bool) -> WebSession:
        session = WebSession(secrets.token_urlsafe(32), username, bool(is_admin), secrets.token_urlsafe(32), self.clock())
        key = SESSION_KEY.format(id=session.id)
        user_key = USER_SESSIONS_KEY.format(username=username)
        pipe = self.redis_primary().pipeline()
        pipe.hset(
            key,
            mapping={
                "username": username,
                "is_admin": "1" if session.is_admin else "0",
                "csrf_token": session.csrf_token,
                "created_at": repr(session.created_at),
            },
        )
        pipe.expire(key, self.ttl)
        pipe.sadd(user_key, session.id)
        pipe.expire(user_key, self.ttl)  # outlives none of its sessions: each login renews it
        pipe.execute()
        return session

    def get(self, session_id: str | None) -> WebSession | None:
        """The live session ``session_id`` names; None when it expired, was ended or never existed."""
        if not session_id:
            return None
        fields = self.redis_primary().hgetall(SESSION_KEY.format(id=session_id))
        if not fields:
            return None
        fields = {_text(k): _text(v) for k, v in fields.items()}
        try:
            return WebSession(
                session_id, fields["username"], fields["is_admin"] == "1", fields["csrf_token"], float(fields["created_at"])
            )
        except (KeyError, ValueError):
            return None  # a half-written or foreign hash: treat as logged out

    def from_cookie(self, value: str | bytes | None) -> WebSession | None:
        return self.get(self.session_id_from_cookie(value))

    def end(self, session: WebSession) -> None:
        """Log one session out."""
        pipe = self.redis_primary().pipeline()
        pipe.delete(SESSION_KEY.format(id=session.id))
        pipe.srem(USER_SESSIONS_KEY.format(username=session.username), session.id)
        pipe.execute()

    def end_user(self, username: str) -> int:
        """End every session of ``username`` (deactivated, password reset); return how many were live."""
        redis = self.redis_primary()
        user_key = USER_SESSIONS_KEY.format(username=username)
        ids = [_text(i) for i in redis.smembers(user_key)]
        pipe = redis.pipeline()
        for session_id in ids:
            pipe.delete(SESSION_KEY.format(id=session_id))
        pipe.delete(user_key)
        return sum(pipe.execute()[: len(ids)])

    # Logging in.
    def login(self, username: str, password: str, address: str) -> WebSession:
        """Check the password (as the REST API's Basic does) and open a session; LoginRefused otherwise."""
        if self.limiter is not None and self.limiter.blocked(address):
            raise LoginRefused("too many failed logins from this address; wait a minute")
        try:
            if not username or not password:
                raise AuthenticationFailed("empty")
            caller = self.authenticator.password_caller(username, password)
        except AuthenticationFailed:
            if self.limiter is not None:
                self.limiter.record_failure(address)
            raise LoginRefused("wrong username or password") from None
        return self.create(caller.username, caller.is_admin)


def csrf_ok(session: WebSession | None, token: str | bytes | None) -> bool:
    """True when ``token`` is ``session``'s CSRF token."""
    if session is None or not token:
        return False
    return hmac.compare_digest(_text(token).encode(), session.csrf_token.encode())


def set_cookie(request, sessions: WebSessions, session: WebSession) -> None:
    """Give the browser ``session``'s cookie (Secure, HttpOnly, SameSite=Strict, for the whole host)."""
    request.addCookie(
        COOKIE_NAME, sessions.cookie_value(session).encode(), path=b"/", secure=True, httpOnly=True, sameSite="strict",
        max_age=str(sessions.ttl).encode(),
    )


def clear_cookie(request) -> None:
    request.addCookie(COOKIE_NAME, b"", path=b"/", secure=True, httpOnly=True, sameSite="strict", max_age=b"0")


def session_of(request, sessions: WebSessions, run_blocking=threads.deferToThread) -> defer.Deferred:
    """Fires with the request's live `WebSession`, or None (no cookie, bad signature, expired, ended)."""
    value = request.getCookie(COOKIE_NAME)
    if not value:
        return defer.succeed(None)
    return run_blocking(sessions.from_cookie, value)


def read_form(request) -> dict[str, str]:
    """A POST's ``application/x-www-form-urlencoded`` body as name -> first value (the site parses no forms itself)."""
    request.content.seek(0)
    body = request.content.read(MAX_FORM_BYTES + 1)
    if len(body) > MAX_FORM_BYTES:
        raise ValueError("the form is too large")
    return {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()}


def posted_csrf_token(request, form: dict[str, str]) -> str | None:
    """The CSRF token a POST carries: the form field, else the ``X-CSRF-Token`` header."""
    return form.get(CSRF_FIELD) or _text(request.getHeader(CSRF_HEADER))


def client_address(request) -> str:
    peer = request.getClientAddress()
    return getattr(peer, "host", None) or "unknown"


def web_sessions(chat_server) -> WebSessions:
    """This process's `WebSessions` (one per process: the signing key and the failure counts are kept in it)."""
    existing = getattr(chat_server, "_web_sessions", None)
    if existing is not None:
        return existing
    from twisted.internet import reactor

    from hipchat_server.authentication import Authenticator
    from hipchat_server.storage.users import UserStore
    from hipchat_server.users import UserCredentials, account_of
    from hipchat_server.xmpp.auth_limits import AuthFailureLimiter

    user_store = UserStore(chat_server.get_database_engine())

    account = functools.partial(account_of, user_store)

    config = chat_server.get_config()
    sessions = WebSessions(
        chat_server.get_redis_primary,
        Authenticator(UserCredentials(user_store), accounts=account),
        limiter=AuthFailureLimiter(config.xmpp.auth_failures_per_minute, 60.0, clock=reactor),
    )
    chat_server._web_sessions = sessions
    return sessions
