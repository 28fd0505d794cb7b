"""The users store: rows of the ``users`` table and their SCRAM keys in ``user_credentials``.

Salts and keys are bytes to callers; the table holds them as base64 text.
"""

from __future__ import annotations

import base64
from typing import Iterable, Mapping

from sqlalchemy import select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from hipchat_server.storage.database import run_in_transaction
from hipchat_server.storage.schema import user_credentials, users

# The unique columns of ``users``, in the order a duplicate is reported.
UNIQUE_COLUMNS = ("username", "email", "mention_name")


class DuplicateKeyError(Exception):
    """An insert would repeat a value of a unique column; ``column`` names it."""

    def __init__(self, column: str):
        super().__init__(f"duplicate {column}")
        self.column = column


def _duplicate_column(error: IntegrityError) -> str | None:
    # MariaDB: "Duplicate entry 'x' for key 'uq_users_email'"; SQLite: "UNIQUE constraint failed: users.email".
    message = str(error.orig)
    for column in UNIQUE_COLUMNS:
        if f"uq_users_{column}" in message or f"users.{column}" in message:
            return column
    return None


def _credential_rows(user_id: int, credentials: Iterable[Mapping]) -> list[dict]:
    return [
        {
            "user_id": user_id,
            "mechanism": c["mechanism"],
            "salt": base64.b64encode(c["salt"]).decode("ascii"),
            "iterations": c["iterations"],
            "stored_key": base64.b64encode(c["stored_key"]).decode("ascii"),
            "server_key": base64.b64encode(c["server_key"]).decode("ascii"),
        }
        for c in credentials
    ]


def _write_credentials(connection: Connection, user_id: int, credentials: Iterable[Mapping]) -> None:
    rows = _credential_rows(user_id, credentials)
    connection.execute(user_credentials.delete().where(user_credentials.c.user_id == user_id))
    if rows:
        connection.execute(user_credentials.insert(), rows)


class UserStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    def _get_by(self, name: str, column, value) -> dict | None:
        def work(connection):
            row = connection.execute(select(users).where(column == value)).mappings().first()
            return dict(row) if row else None

        return run_in_transaction(self.engine, name, work)

    def get_by_username(self, username: str) -> dict | None:
        return self._get_by("get_user_by_username", users.c.username, username)

    def get_by_email(self, email: str) -> dict | None:
        return self._get_by("get_user_by_email", users.c.email, email)

    def get_by_id(self, user_id: int) -> dict | None:
        return self._get_by("get_user_by_id", users.c.id, user_id)

    def get_by_mention_name(self, mention_name: str) -> dict | None:
        return self._get_by("get_user_by_mention_name", users.c.mention_name, mention_name)

    def by_usernames(self, usernames) -> dict[str, dict]:
        """The rows of these usernames (deleted ones too), by username."""
        wanted = sorted(set(usernames))
        if not wanted:
            return {}

        def work(connection):
            query = select(users.c.id, users.c.username, users.c.name, users.c.mention_name).where(users.c.username.in_(wanted))
            return {row["username"]: dict(row) for row in connection.execute(query).mappings()}

        return run_in_transaction(self.engine, "get_users_by_username", work)

    def page(self, *, include_guests: bool, include_deleted: bool, start: int, limit: int) -> tuple[list[dict], int]:
        """A page of users by name (for the REST API's user list) and how many there are."""
        from sqlalchemy import and_, func

        conditions = []
        if not include_guests:
            conditions.append(users.c.is_guest.is_(False))
        if not include_deleted:
            conditions.append(users.c.deleted_at.is_(None))
        where = and_(True, *conditions)

        def work(connection):
            total = connection.execute(select(func.count()).select_from(users).where(where)).scalar()
            query = select(users).where(where).order_by(users.c.name, users.c.id).offset(start).limit(limit)
            return [dict(row) for row in connection.execute(query).mappings()], total

        return run_in_transaction(self.engine, "get_user_page", work)

    def update_fields(self, user_id: int, **values) -> None:
        """Change profile columns (name, email, mention_name, title, timezone, is_admin). Raises DuplicateKeyError."""

        def work(connection):
            connection.execute(users.update().where(users.c.id == user_id).values(**values))

        try:
            run_in_transaction(self.engine, "update_user_fields", work)
        except IntegrityError as e:
            column = _duplicate_column(e)
            if column is None:
                raise
            raise DuplicateKeyError(column) from e

    def mark_deleted(self, user_id: int) -> None:
        """Delete a user as HipChat does: the row stays (history names it), it can no longer log in."""
        from sqlalchemy import func

        def work(connection):
            connection.execute(users.update().where(users.c.id == user_id).values(deleted_at=func.now(), is_active=False))

        run_in_transaction(self.engine, "delete_user", work)

    def insert(self, *, credentials: Iterable[Mapping] = (), **values) -> int:
        """Insert a user and, in the same transaction, its SCRAM ``credentials``; return its id.

        Each credential is a mapping with mechanism, salt, iterations, stored_key and
        server_key. Raises DuplicateKeyError naming the unique column a value repeats.
        """

        def work(connection):
            user_id = connection.execute(users.insert().values(**values)).inserted_primary_key[0]
            _write_credentials(connection, user_id, credentials)
            return user_id

        try:
            return run_in_transaction(self.engine, "insert_user", work)
        except IntegrityError as e:
            column = _duplicate_column(e)
            if column is None:
                raise
            raise DuplicateKeyError(column) from e

    def update_password(self, user_id: int, password_hash: str, credentials: Iterable[Mapping]) -> None:
        """Replace the argon2 hash and every SCRAM credential of one user, in one transaction."""

        def work(connection):
            connection.execute(users.update().where(users.c.id == user_id).values(password_hash=password_hash))
            _write_credentials(connection, user_id, credentials)

        run_in_transaction(self.engine, "update_user_password", work)

    def add_credentials(self, user_id: int, credentials: Iterable[Mapping]) -> None:
        """Replace the SCRAM credentials of one user, leaving its argon2 hash as it is."""
        run_in_transaction(self.engine, "add_user_credentials", lambda c: _write_credentials(c, user_id, credentials))

    def set_active(self, user_id: int, active: bool) -> None:
        run_in_transaction(
            self.engine,
            "set_user_active",
            lambda c: c.execute(users.update().where(users.c.id == user_id).values(is_active=active)),
        )

    def list_all(self) -> list[dict]:
        """Every user not deleted, ordered by username."""

        def work(connection):
            query = select(users).where(users.c.deleted_at.is_(None)).order_by(users.c.username)
            return [dict(row) for row in connection.execute(query).mappings()]

        return run_in_transaction(self.engine, "list_users", work)

    def credential_mechanisms(self, user_id: int) -> set[str]:
        """The mechanisms one user has SCRAM credentials for."""

        def work(connection):
            query = select(user_credentials.c.mechanism).where(user_credentials.c.user_id == user_id)
            return set(connection.execute(query).scalars())

        return run_in_transaction(self.engine, "get_user_credential_mechanisms", work)

    def get_scram_credentials(self, username: str, mechanism: str) -> dict | None:
        """The SCRAM credential of ``username`` for ``mechanism`` (salt and keys as bytes), or None."""

        def work(connection):
            query = (
                select(user_credentials)
                .select_from(user_credentials.join(users, users.c.id == user_credentials.c.user_id))
                .where(users.c.username == username, user_credentials.c.mechanism == mechanism)
            )
            return connection.execute(query).mappings().first()

        row = run_in_transaction(self.engine, "get_user_scram_credentials", work)
        if row is None:
            return None
        return {
            "mechanism": row["mechanism"],
            "salt": base64.b64decode(row["salt"]),
            "iterations": row["iterations"],
            "stored_key": base64.b64decode(row["stored_key"]),
            "server_key": base64.b64decode(row["server_key"]),
        }
