"""Who is calling the HTTP API: ``Authorization: Basic`` (the XMPP username and password) or ``Bearer`` (a personal token).

Basic checks the password against the account's SCRAM-SHA-256 keys (one
PBKDF2, a few milliseconds; the argon2 hash, ~50 ms, only for an account
without SCRAM keys). A successful check is remembered for `VERIFIED_TTL`
seconds (as a keyed hash, never the password), so a client that sends
Basic on every request does not pay it every time; a password change takes
effect once that has passed. (The HTTP resources limit failures per client
address, like XMPP logins: `xmpp.auth_limits`.)

A Bearer token is looked up by its SHA-256 in ``api_tokens``: a personal
token (one that has a user), not expired, of an active user, with the
``view_messages`` scope.

Blocking (MariaDB, PBKDF2): call `authenticate` from a thread.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import threading
import time
from datetime import datetime, timezone

from scramp import ScramException, ScramMechanism

from hipchat_server.users import UserCredentials

#: Seconds a checked username and password is taken without checking again.
VERIFIED_TTL = 300.0
MAX_VERIFIED = 10_000
SCRAM_MECHANISM = "SCRAM-SHA-256"
#: The scope a token needs to read messages (HipChat's name for it).
VIEW_MESSAGES = "view_messages"


class AuthenticationFailed(Exception):
    """No valid credentials; the message says what was wrong (never whether the user exists)."""


def claimed_username(authorization: str | None) -> str | None:
    """The username a Basic header claims (unchecked), to count failed logins per account; None otherwise."""
    scheme, _, value = (authorization or "").strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        username, colon, _ = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return username if colon and username else None


class Authenticator:
    """Checks HTTP ``Authorization`` headers. ``credentials`` is a `users.UserCredentials`;
    ``tokens`` a `storage.api_tokens.ApiTokenStore` (None: Bearer is refused).
    """

    def __init__(self, credentials: UserCredentials, tokens=None, *, clock=time.monotonic, now=None):
        self.credentials, self.tokens = credentials, tokens
        self.now = now or (lambda: datetime.now(timezone.utc).replace(tzinfo=None))  # MariaDB keeps naive UTC
        self.clock = clock
        self._key = secrets.token_bytes(32)
        self._verified: dict[bytes, float] = {}
        self._lock = threading.Lock()  # authenticate runs in several threads at once

    def authenticate(self, authorization: str | None) -> str:
        """The username the header proves; AuthenticationFailed otherwise."""
        scheme, _, value = (authorization or "").strip().partition(" ")
        if scheme.lower() == "basic":
            return self._basic(value.strip())
        if scheme.lower() == "bearer":
            return self._bearer(value.strip())
        raise AuthenticationFailed("send Authorization: Basic (username and password) or Bearer (a personal token)")

    def _basic(self, value: str) -> str:
        username = claimed_username(f"Basic {value}")
        if username is None:
            raise AuthenticationFailed("malformed Basic credentials")
        password = base64.b64decode(value).decode("utf-8").partition(":")[2]
        fingerprint = hmac.new(self._key, f"{username}\0{password}".encode(), hashlib.sha256).digest()
        with self._lock:
            expires = self._verified.get(fingerprint)
        if expires is not None and expires > self.clock():
            return username
        if not (self._password_matches(username, password) and self.credentials.is_active(username)):
            raise AuthenticationFailed("wrong username or password")
        with self._lock:
            if len(self._verified) >= MAX_VERIFIED:
                self._verified.pop(next(iter(self._verified)))
            self._verified[fingerprint] = self.clock() + VERIFIED_TTL
        return username

    def _password_matches(self, username: str, password: str) -> bool:
        stored = self.credentials.get_scram_credentials(username, SCRAM_MECHANISM)
        if stored is None:
            return self.credentials.check_password(username, password)
        try:
            _, stored_key, _, _ = ScramMechanism(SCRAM_MECHANISM).make_auth_info(
                password, iteration_count=stored.iterations, salt=stored.salt
            )
        except ScramException:  # not a password SASLprep accepts: it cannot be this account's
            return False
        return hmac.compare_digest(stored_key, stored.stored_key)

    def _bearer(self, token: str) -> str:
        if not token or self.tokens is None:
            raise AuthenticationFailed("invalid token")
        owner = self.tokens.personal_token(hashlib.sha256(token.encode("utf-8")).hexdigest())
        if owner is None or not owner.is_active:
            raise AuthenticationFailed("invalid token")
        if owner.expires_at is not None and owner.expires_at <= self.now():
            raise AuthenticationFailed("this token has expired")
        if VIEW_MESSAGES not in owner.scopes:
            raise AuthenticationFailed(f"this token lacks the {VIEW_MESSAGES} scope")
        return owner.username
