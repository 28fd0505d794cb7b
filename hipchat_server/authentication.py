"""Who is calling the HTTP API: ``Authorization: Basic`` (the XMPP username and password) or ``Bearer`` (a token).

`Authenticator.caller` answers a `Caller`: who it is and which of HipChat's
scopes it holds. Basic callers hold every scope their account allows (an
admin all, others all but ``admin_group``). A Bearer token is a personal
token (a user's, with the scopes chosen at creation, never more than the
user's account allows), a room notification token (``send_notification``
for its room only) or a token issued to an OAuth client.

Basic checks the password against the account's SCRAM-SHA-256 keys (one
PBKDF2, a few milliseconds; the argon2 hash, ~50 ms, only for an account
without SCRAM keys). A successful check is remembered for `VERIFIED_TTL`
seconds (as a keyed hash, never the password), so a client that sends
Basic on every request does not pay it every time; a password change takes
effect once that has passed. (The HTTP resources limit failures per client
address, like XMPP logins: `xmpp.auth_limits`.)

A Bearer token is looked up by its SHA-256 in ``api_tokens`` (remembered
for `TOKEN_CACHE_TTL` seconds, so a busy bot does not cost a query per
request; `forget_token` drops it at once when this process revokes it).
A Basic caller's account (id and admin flag) is remembered as long.
`authenticate` (the older interface) takes only personal tokens with the
``view_messages`` scope and answers the username.

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
from dataclasses import dataclass
from datetime import datetime, timezone

from scramp import ScramException, ScramMechanism

from hipchat_server.users import UserCredentials

#: Seconds a checked username and password is taken without checking again.
VERIFIED_TTL = 300.0
MAX_VERIFIED = 10_000
SCRAM_MECHANISM = "SCRAM-SHA-256"
#: The scope a token needs to read messages (HipChat's name for it).
VIEW_MESSAGES = "view_messages"
#: HipChat's API scopes.
SCOPES = (
    "admin_group",
    "admin_room",
    "manage_rooms",
    "send_message",
    "send_notification",
    "view_group",
    "view_messages",
    "view_room",
)
ADMIN_ONLY_SCOPES = frozenset({"admin_group"})
#: Seconds a looked-up token is taken without asking MariaDB again (expiry is still checked every time).
TOKEN_CACHE_TTL = 10.0
MAX_CACHED_TOKENS = 10_000


def scopes_allowed(is_admin: bool) -> frozenset[str]:
    """The scopes an account may hold: an admin every one, anyone else all but ``admin_group``."""
    return frozenset(SCOPES) if is_admin else frozenset(SCOPES) - ADMIN_ONLY_SCOPES


@dataclass(frozen=True)
class Caller:
    """Who is calling the API and what they may do.

    ``username`` and ``user_id`` are None for a room token without a user
    (and for anonymous callers); ``room_id`` is a room notification token's
    room. ``rate_key`` is what the rate limit counts by: the token
    (``token:<id>``), the user for Basic (``user:<name>``), the address
    for anonymous callers (``address:<ip>``).
    """

    username: str | None
    user_id: int | None
    scopes: frozenset[str]
    rate_key: str
    room_id: int | None = None
    token_id: int | None = None
    is_admin: bool = False
    token_label: str = ""
    oauth_client_id: str | None = None
    expires_at: datetime | None = None

    @property
    def authenticated(self) -> bool:
        return self.rate_key.split(":", 1)[0] != "address"

    @classmethod
    def anonymous(cls, address: str) -> "Caller":
        return cls(username=None, user_id=None, scopes=frozenset(), rate_key=f"address:{address}")


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

    def __init__(self, credentials: UserCredentials, tokens=None, *, accounts=None, clock=time.monotonic, now=None):
        """``accounts(username)`` answers ``(user_id, is_admin)`` for Basic callers (None: unknown id, not admin)."""
        self.credentials, self.tokens, self.accounts = credentials, tokens, accounts
        self._tokens_seen: dict[str, tuple[float, object]] = {}
        self._accounts_seen: dict[str, tuple[float, tuple[int | None, bool]]] = {}  # (user id, is admin) of Basic callers
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

    def caller(self, authorization: str | None) -> Caller:
        """The `Caller` an ``Authorization`` value (Basic or Bearer) proves; AuthenticationFailed otherwise."""
        scheme, _, value = (authorization or "").strip().partition(" ")
        if scheme.lower() == "basic":
            username = self._basic(value.strip())
            user_id, is_admin = self._account(username)
            return Caller(username, user_id, scopes_allowed(is_admin), f"user:{username}", is_admin=is_admin)
        if scheme.lower() == "bearer":
            return self._token_caller(value.strip())
        raise AuthenticationFailed("send Authorization: Basic (username and password) or Bearer (a token)")

    def _account(self, username: str) -> tuple[int | None, bool]:
        """``accounts(username)``, remembered for `TOKEN_CACHE_TTL` seconds like a token: a script calling
        with Basic credentials would otherwise cost a query per request (a demotion takes effect within that)."""
        if self.accounts is None:
            return None, False
        return self._remembered(self._accounts_seen, username, self.accounts)

    def password_caller(self, username: str, password: str) -> Caller:
        """The `Caller` a username and password prove, checked now (never a remembered result): a web login."""
        if not (username and self._password_matches(username, password) and self.credentials.is_active(username)):
            raise AuthenticationFailed("wrong username or password")
        user_id, is_admin = self.accounts(username) if self.accounts is not None else (None, False)
        return Caller(username, user_id, scopes_allowed(is_admin), f"user:{username}", is_admin=is_admin)

    def _token_caller(self, token: str) -> Caller:
        if not token or self.tokens is None:
            raise AuthenticationFailed("invalid token")
        token_hash = hashlib.sha256(token.encode("utf-8")).hexdigest()
        row = self._find_token(token_hash)
        if row is None:
            raise AuthenticationFailed("invalid token")
        if row.expires_at is not None and row.expires_at <= self.now():
            raise AuthenticationFailed("this token has expired")
        scopes = frozenset(row.scopes)
        if row.user_id is not None:
            if row.user_is_deleted or not row.user_is_active:
                raise AuthenticationFailed("invalid token")
            scopes &= scopes_allowed(row.user_is_admin)  # a demoted admin's tokens lose admin_group
        if row.room_id is not None:
            scopes &= {"send_notification"}
        return Caller(
            username=row.username,
            user_id=row.user_id,
            scopes=scopes,
            rate_key=f"token:{row.id}",
            room_id=row.room_id,
            token_id=row.id,
            is_admin=row.user_is_admin and row.room_id is None,
            token_label=row.label,
            oauth_client_id=row.client_id,
            expires_at=row.expires_at,
        )

    def _find_token(self, token_hash: str):
        return self._remembered(self._tokens_seen, token_hash, self.tokens.find)

    def _remembered(self, seen: dict, key: str, load):
        """``load(key)``, remembered in ``seen`` for `TOKEN_CACHE_TTL` seconds (at most `MAX_CACHED_TOKENS` keys)."""
        now = self.clock()
        with self._lock:
            entry = seen.get(key)
        if entry is not None and entry[0] > now:
            return entry[1]
        value = load(key)
        with self._lock:
            if len(seen) >= MAX_CACHED_TOKENS:
                seen.pop(next(iter(seen)))
            seen[key] = (now + TOKEN_CACHE_TTL, value)
        return value

    def forget_token(self, token_hash: str | None = None) -> None:
        """Drop a remembered token (every one when ``token_hash`` is None): after a revocation in this process."""
        with self._lock:
            if token_hash is None:
                self._tokens_seen.clear()
            else:
                self._tokens_seen.pop(token_hash, None)

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
