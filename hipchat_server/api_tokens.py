"""API tokens and OAuth clients: creating, listing and revoking them, and the client-credentials grant.

Three kinds of token, all in ``api_tokens`` as the SHA-256 of the token (the
token itself is shown once, when it is made):

- personal: a user's, with the scopes chosen at creation (never more than
  the account allows: ``admin_group`` only for an administrator);
- room notification: a room's, scope ``send_notification`` for that room;
- OAuth: issued to an OAuth client by the client-credentials grant
  (``POST /v2/oauth/token``), expiring after ``api.oauth_token_seconds``,
  with the scopes asked for (within the client's); deleting the client
  revokes them.

Blocking (MariaDB): call from a thread.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from hipchat_server.authentication import SCOPES, scopes_allowed
from hipchat_server.users import UnknownUserError, get_user

TOKEN_ALPHABET = string.ascii_letters + string.digits
#: HipChat's tokens are 40 letters and digits (238 bits here).
TOKEN_LENGTH = 40
CLIENT_ID_LENGTH = 36
MAX_LABEL = 100
#: Expired tokens deleted per grant, so the table does not grow with every issued token.
EXPIRED_BATCH = 100


class TokenError(ValueError):
    """A token or client request refused; the message says why."""


class ClientAuthenticationFailed(TokenError):
    """Unknown OAuth client or wrong secret (the message never says which)."""


def new_secret(length: int = TOKEN_LENGTH) -> str:
    return "".join(secrets.choice(TOKEN_ALPHABET) for _ in range(length))


def hash_secret(secret: str) -> str:
    """The SHA-256 hex digest a token or secret is kept as."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def parse_scopes(text: str | list[str] | tuple[str, ...]) -> list[str]:
    """Scopes from ``a,b``, ``a b`` or a list; TokenError names an unknown one. Order kept, duplicates dropped."""
    items = text.replace(",", " ").split() if isinstance(text, str) else list(text)
    unknown = [s for s in items if s not in SCOPES]
    if unknown:
        raise TokenError(f"unknown scope {unknown[0]!r}; the scopes are {', '.join(SCOPES)}")
    return list(dict.fromkeys(items))


@dataclass(frozen=True)
class IssuedToken:
    """A token just made: ``token`` is the only time it is ever shown."""

    id: int
    token: str
    scopes: list[str]
    expires_at: datetime | None


@dataclass(frozen=True)
class NewClient:
    client_id: str
    secret: str  # shown once
    scopes: list[str]


def _utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)  # MariaDB keeps naive UTC


class ApiTokens:
    """Tokens and OAuth clients over their stores (`storage.api_tokens`, `storage.oauth_clients`, `storage.users`)."""

    def __init__(self, tokens, clients, users, *, oauth_token_seconds: int = 3600, now=_utcnow):
        self.tokens, self.clients, self.users = tokens, clients, users
        self.oauth_token_seconds, self.now = oauth_token_seconds, now

    def _user(self, username: str):
        try:
            user = get_user(self.users, username)
        except UnknownUserError:
            raise TokenError(f"no user {username!r}") from None
        if not user.is_active:
            raise TokenError(f"user {username!r} is disabled")
        return user

    @staticmethod
    def _label(label: str) -> str:
        label = (label or "").strip()
        if len(label) > MAX_LABEL:
            raise TokenError(f"the label is longer than {MAX_LABEL} characters")
        return label

    def create_personal(self, username: str, scopes, *, label: str = "", expires_days: int | None = None) -> IssuedToken:
        """A personal token of ``username`` with ``scopes`` (within what the account allows)."""
        user = self._user(username)
        scopes = self._scopes_of(user, username, scopes, "a token of theirs")
        if expires_days is not None and expires_days < 1:
            raise TokenError("--expires-days: expected 1 or more")
        expires_at = self.now() + timedelta(days=expires_days) if expires_days else None
        return self._issue(user_id=user.id, scopes=scopes, label=self._label(label), expires_at=expires_at)

    def create_room_token(self, room: str, *, label: str = "", username: str | None = None) -> IssuedToken:
        """A room notification token for ``room`` (id, name or address); ``label`` is the notifications' sender name."""
        room_id = self.tokens.room_id(room)
        if room_id is None:
            raise TokenError(f"no room {room!r}")
        user_id = self._user(username).id if username else None
        return self._issue(user_id=user_id, room_id=room_id, scopes=["send_notification"], label=self._label(label))

    @staticmethod
    def _scopes_of(user, username: str, scopes, holder: str) -> list[str]:
        """``scopes`` parsed, at least one, and none beyond what ``user``'s account allows (TokenError naming them)."""
        scopes = parse_scopes(scopes)
        if not scopes:
            raise TokenError("name at least one scope")
        beyond = [s for s in scopes if s not in scopes_allowed(user.is_admin)]
        if beyond:
            raise TokenError(f"{username} is not an administrator: {holder} cannot hold {', '.join(beyond)}")
        return scopes

    def _issue(self, **values) -> IssuedToken:
        token = new_secret()
        token_id = self.tokens.insert(token_hash=hash_secret(token), **values)
        return IssuedToken(token_id, token, values["scopes"], values.get("expires_at"))

    def list(self, *, include_expired: bool = False):
        """Every token (`storage.api_tokens.TokenRow`), oldest first; expired ones only when asked."""
        return self.tokens.list_all(include_expired_before=None if include_expired else self.now())

    def revoke(self, token_id: int) -> bool:
        return self.tokens.delete(token_id)

    def find(self, token: str):
        """The stored row of a token string, or None."""
        return self.tokens.find(hash_secret(token))

    # OAuth clients.

    def create_client(self, username: str, scopes, *, label: str = "") -> NewClient:
        user = self._user(username)
        scopes = self._scopes_of(user, username, scopes, "a client acting for them")
        client_id, secret = _client_id(), new_secret()
        self.clients.insert(client_id=client_id, secret_hash=hash_secret(secret), label=self._label(label), user_id=user.id, scopes=scopes)
        return NewClient(client_id, secret, scopes)

    def list_clients(self):
        return self.clients.list_all()

    def delete_client(self, client_id: str) -> bool:
        """Delete the client and every token issued to it."""
        return self.clients.delete(client_id)

    def grant_client_credentials(self, client_id: str, secret: str, scope: str | None) -> tuple[IssuedToken, object]:
        """The client-credentials grant: an expiring token for the client's user; ``(token, client row)``.

        ``scope`` (space-separated) must be within the client's; None or empty
        asks for all of them. ClientAuthenticationFailed for an unknown client,
        a wrong secret, or a client whose user is gone or disabled.
        """
        client = self.clients.get(client_id) if client_id else None
        if client is None or not hmac.compare_digest(client.secret_hash, hash_secret(secret or "")):
            raise ClientAuthenticationFailed("invalid OAuth client credentials")
        if client.user_is_deleted or not client.user_is_active:
            raise ClientAuthenticationFailed("invalid OAuth client credentials")
        wanted = parse_scopes(scope) if scope and scope.strip() else list(client.scopes)
        beyond = [s for s in wanted if s not in client.scopes]
        if beyond:
            raise TokenError(f"this client may not ask for {', '.join(beyond)}; it may have {' '.join(client.scopes)}")
        wanted = [s for s in wanted if s in scopes_allowed(client.user_is_admin)]
        now = self.now()
        self.tokens.delete_expired(now, EXPIRED_BATCH)
        issued = self._issue(
            user_id=client.user_id,
            scopes=wanted,
            label=client.label or client.client_id,
            expires_at=now + timedelta(seconds=self.oauth_token_seconds),
            oauth_client_id=client.id,
        )
        return issued, client


def _client_id() -> str:
    """A client id in the form HipChat used (a UUID)."""
    import uuid

    return str(uuid.uuid4())
