"""The API tokens store: ``api_tokens`` rows, found by the SHA-256 of the token (the token itself is never stored).

Blocking: call it from a thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.engine import Engine

from hipchat_server.storage.database import run_in_transaction
from hipchat_server.storage.schema import api_tokens, users


@dataclass(frozen=True)
class TokenOwner:
    """Whose personal token a hash is, with what it may do and until when."""

    username: str
    is_active: bool
    scopes: tuple[str, ...]
    expires_at: datetime | None


class ApiTokenStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    def personal_token(self, token_hash: str) -> TokenOwner | None:
        """The user a personal token (one with a user, not a room's) belongs to; None for no such token."""

        def work(connection):
            query = (
                select(users.c.username, users.c.is_active, api_tokens.c.scopes, api_tokens.c.expires_at)
                .select_from(api_tokens.join(users, users.c.id == api_tokens.c.user_id))
                .where(api_tokens.c.token_hash == token_hash, users.c.deleted_at.is_(None))
            )
            return connection.execute(query).first()

        row = run_in_transaction(self.engine, "get_personal_token", work)
        if row is None:
            return None
        return TokenOwner(row.username, bool(row.is_active), tuple(row.scopes or ()), row.expires_at)
