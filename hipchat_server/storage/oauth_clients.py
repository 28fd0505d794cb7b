"""The OAuth clients store: ``oauth_clients`` rows (client id, SHA-256 of the secret, owner, allowed scopes).

Blocking: call it from a thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Engine

from hipchat_server.storage.database import run_in_transaction
from hipchat_server.storage.schema import oauth_clients, users


@dataclass(frozen=True)
class OAuthClientRow:
    id: int
    client_id: str
    secret_hash: str
    label: str
    user_id: int
    username: str
    user_is_active: bool
    user_is_admin: bool
    user_is_deleted: bool
    scopes: tuple[str, ...]
    created_at: datetime | None


def _query():
    return select(
        oauth_clients, users.c.username, users.c.is_active, users.c.is_admin, users.c.deleted_at
    ).select_from(oauth_clients.join(users, users.c.id == oauth_clients.c.user_id))


def _row(row) -> OAuthClientRow:
    return OAuthClientRow(
        id=row.id,
        client_id=row.client_id,
        secret_hash=row.secret_hash,
        label=row.label,
        user_id=row.user_id,
        username=row.username,
        user_is_active=bool(row.is_active),
        user_is_admin=bool(row.is_admin),
        user_is_deleted=row.deleted_at is not None,
        scopes=tuple(row.scopes or ()),
        created_at=row.created_at,
    )


class OAuthClientStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    def get(self, client_id: str) -> OAuthClientRow | None:
        row = run_in_transaction(
            self.engine, "get_oauth_client", lambda c: c.execute(_query().where(oauth_clients.c.client_id == client_id)).first()
        )
        return None if row is None else _row(row)

    def insert(self, *, client_id: str, secret_hash: str, label: str, user_id: int, scopes: list[str]) -> int:
        values = dict(client_id=client_id, secret_hash=secret_hash, label=label, user_id=user_id, scopes=list(scopes))
        return run_in_transaction(
            self.engine, "insert_oauth_client", lambda c: c.execute(insert(oauth_clients).values(**values)).inserted_primary_key[0]
        )

    def list_all(self) -> list[OAuthClientRow]:
        rows = run_in_transaction(self.engine, "list_oauth_clients", lambda c: c.execute(_query().order_by(oauth_clients.c.id)).all())
        return [_row(row) for row in rows]

    def delete(self, client_id: str) -> bool:
        """Delete a client and (by the foreign key) every token issued to it; False when there was none."""
        return run_in_transaction(
            self.engine,
            "delete_oauth_client",
            lambda c: c.execute(delete(oauth_clients).where(oauth_clients.c.client_id == client_id)).rowcount > 0,
        )
