"""The API tokens store: ``api_tokens`` rows, found by the SHA-256 of the token (the token itself is never stored).

Blocking: call it from a thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Engine

from hipchat_server.storage.database import run_in_transaction
from hipchat_server.storage.schema import api_tokens, oauth_clients, rooms, users


@dataclass(frozen=True)
class TokenOwner:
    """Whose personal token a hash is, with what it may do and until when."""

    username: str
    is_active: bool
    scopes: tuple[str, ...]
    expires_at: datetime | None


@dataclass(frozen=True)
class TokenRow:
    """One token as stored, with its user (None for a room token without one), room and OAuth client."""

    id: int
    label: str
    user_id: int | None
    username: str | None
    user_is_active: bool
    user_is_admin: bool
    user_is_deleted: bool
    room_id: int | None
    room_name: str | None
    scopes: tuple[str, ...]
    created_at: datetime | None
    expires_at: datetime | None
    oauth_client_id: int | None
    client_id: str | None


def _token_query():
    return select(
        api_tokens.c.id,
        api_tokens.c.label,
        api_tokens.c.user_id,
        api_tokens.c.room_id,
        api_tokens.c.scopes,
        api_tokens.c.created_at,
        api_tokens.c.expires_at,
        api_tokens.c.oauth_client_id,
        users.c.username,
        users.c.is_active,
        users.c.is_admin,
        users.c.deleted_at,
        rooms.c.name.label("room_name"),
        oauth_clients.c.client_id,
    ).select_from(
        api_tokens.outerjoin(users, users.c.id == api_tokens.c.user_id)
        .outerjoin(rooms, rooms.c.id == api_tokens.c.room_id)
        .outerjoin(oauth_clients, oauth_clients.c.id == api_tokens.c.oauth_client_id)
    )


def _token_row(row) -> TokenRow:
    return TokenRow(
        id=row.id,
        label=row.label,
        user_id=row.user_id,
        username=row.username,
        user_is_active=bool(row.is_active),
        user_is_admin=bool(row.is_admin),
        user_is_deleted=row.deleted_at is not None,
        room_id=row.room_id,
        room_name=row.room_name,
        scopes=tuple(row.scopes or ()),
        created_at=row.created_at,
        expires_at=row.expires_at,
        oauth_client_id=row.oauth_client_id,
        client_id=row.client_id,
    )


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

    def find(self, token_hash: str) -> TokenRow | None:
        """Any token (personal, room, OAuth) by its hash; None for no such token."""
        row = run_in_transaction(
            self.engine, "find_api_token", lambda c: c.execute(_token_query().where(api_tokens.c.token_hash == token_hash)).first()
        )
        return None if row is None else _token_row(row)

    def get(self, token_id: int) -> TokenRow | None:
        row = run_in_transaction(
            self.engine, "get_api_token", lambda c: c.execute(_token_query().where(api_tokens.c.id == token_id)).first()
        )
        return None if row is None else _token_row(row)

    def insert(
        self,
        *,
        token_hash: str,
        label: str,
        scopes: list[str],
        user_id: int | None = None,
        room_id: int | None = None,
        expires_at: datetime | None = None,
        oauth_client_id: int | None = None,
    ) -> int:
        values = dict(
            token_hash=token_hash,
            label=label,
            scopes=list(scopes),
            user_id=user_id,
            room_id=room_id,
            expires_at=expires_at,
            oauth_client_id=oauth_client_id,
        )
        return run_in_transaction(
            self.engine, "insert_api_token", lambda c: c.execute(insert(api_tokens).values(**values)).inserted_primary_key[0]
        )

    def list_all(self, *, include_expired_before: datetime | None = None) -> list[TokenRow]:
        """Every token, oldest first; with ``include_expired_before``, tokens expired before then are left out."""
        query = _token_query().order_by(api_tokens.c.id)
        if include_expired_before is not None:
            query = query.where((api_tokens.c.expires_at.is_(None)) | (api_tokens.c.expires_at > include_expired_before))
        rows = run_in_transaction(self.engine, "list_api_tokens", lambda c: c.execute(query).all())
        return [_token_row(row) for row in rows]

    def delete(self, token_id: int) -> bool:
        """Revoke a token; False when there was none with that id."""
        return run_in_transaction(
            self.engine, "delete_api_token", lambda c: c.execute(delete(api_tokens).where(api_tokens.c.id == token_id)).rowcount > 0
        )

    def delete_expired(self, before: datetime, limit: int = 1000) -> int:
        """Delete up to ``limit`` tokens that expired before ``before``; how many were deleted."""

        def work(connection):
            ids = connection.execute(
                select(api_tokens.c.id).where(api_tokens.c.expires_at < before).limit(limit)
            ).scalars().all()
            if ids:
                connection.execute(delete(api_tokens).where(api_tokens.c.id.in_(ids)))
            return len(ids)

        return run_in_transaction(self.engine, "delete_expired_api_tokens", work)

    def room_id(self, id_or_name: str) -> int | None:
        """The id of the room with this numeric id, display name or address (JID localpart); None for none."""

        def work(connection):
            if id_or_name.isascii() and id_or_name.isdigit():  # "³".isdigit() is True, int("³") fails
                found = connection.execute(select(rooms.c.id).where(rooms.c.id == int(id_or_name))).scalar()
                if found is not None:
                    return found
            found = connection.execute(select(rooms.c.id).where(rooms.c.name == id_or_name)).scalar()
            return found or connection.execute(select(rooms.c.id).where(rooms.c.jid_node == id_or_name)).scalar()

        return run_in_transaction(self.engine, "get_token_room_id", work)
