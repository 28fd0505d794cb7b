"""The vCards store: each user's vcard-temp document (XEP-0054) in ``vcards``, by username.

Blocking: the XMPP process calls it through ``run_blocking``. A deleted user
(``deleted_at`` set) counts as no user at all.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.dialects import mysql, sqlite
from sqlalchemy.engine import Connection, Engine

from hipchat_server.storage.database import run_in_transaction
from hipchat_server.storage.schema import users, vcards


@dataclass(frozen=True)
class VCardRecord:
    """What a vCard get needs of one user: the vCard XML they set (None: never set) and their names."""

    name: str
    mention_name: str
    vcard: str | None


def _upsert(connection: Connection, user_id: int, xml: str):
    """Insert or replace one user's vCard in one statement, so two concurrent sets cannot collide."""
    if connection.dialect.name in ("mysql", "mariadb"):
        statement = mysql.insert(vcards).values(user_id=user_id, vcard=xml)
        return statement.on_duplicate_key_update(vcard=statement.inserted.vcard, updated_at=func.now())
    statement = sqlite.insert(vcards).values(user_id=user_id, vcard=xml)
    return statement.on_conflict_do_update(
        index_elements=[vcards.c.user_id], set_={"vcard": statement.excluded.vcard, "updated_at": func.now()}
    )


class VCardStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    def get_by_username(self, username: str) -> VCardRecord | None:
        """The user's names and stored vCard, or None when no (undeleted) user has this username."""

        def work(connection):
            query = (
                select(users.c.name, users.c.mention_name, vcards.c.vcard)
                .select_from(users.outerjoin(vcards, vcards.c.user_id == users.c.id))
                .where(users.c.username == username, users.c.deleted_at.is_(None))
            )
            row = connection.execute(query).mappings().first()
            return VCardRecord(row["name"], row["mention_name"], row["vcard"]) if row else None

        return run_in_transaction(self.engine, "get_vcard_by_username", work)

    def set_by_username(self, username: str, xml: str) -> bool:
        """Replace the user's vCard with ``xml``; False (nothing stored) when there is no such user."""

        def work(connection):
            query = select(users.c.id).where(users.c.username == username, users.c.deleted_at.is_(None))
            user_id = connection.execute(query).scalar()
            if user_id is None:
                return False
            connection.execute(_upsert(connection, user_id, xml))
            return True

        return run_in_transaction(self.engine, "set_vcard_by_username", work)
