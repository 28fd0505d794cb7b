"""The groups store: ``groups`` and ``group_members`` (the groups feature flags can be turned on for).

Blocking: call it from a thread.
"""

from __future__ import annotations

from sqlalchemy import delete, func, insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from hipchat_server.storage.database import run_in_transaction
from hipchat_server.storage.schema import group_members, groups, users


class GroupExists(Exception):
    """Another group has this name."""


class GroupStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    def all(self) -> list[dict]:
        """Every group with its member count, by name."""

        def work(connection):
            count = func.count(group_members.c.user_id)
            query = (
                select(groups.c.id, groups.c.name, count.label("members"))
                .select_from(groups.outerjoin(group_members, group_members.c.group_id == groups.c.id))
                .group_by(groups.c.id, groups.c.name)
                .order_by(groups.c.name)
            )
            return [dict(row) for row in connection.execute(query).mappings()]

        return run_in_transaction(self.engine, "list_groups", work)

    def get(self, group_id: int) -> dict | None:
        def work(connection):
            row = connection.execute(select(groups).where(groups.c.id == group_id)).mappings().first()
            return dict(row) if row else None

        return run_in_transaction(self.engine, "get_group", work)

    def create(self, name: str) -> int:
        def work(connection):
            return connection.execute(insert(groups).values(name=name)).inserted_primary_key[0]

        try:
            return run_in_transaction(self.engine, "create_group", work)
        except IntegrityError as e:
            raise GroupExists(name) from e

    def delete(self, group_id: int) -> bool:
        def work(connection):
            connection.execute(delete(group_members).where(group_members.c.group_id == group_id))
            return connection.execute(delete(groups).where(groups.c.id == group_id)).rowcount > 0

        return run_in_transaction(self.engine, "delete_group", work)

    def members(self, group_id: int) -> list[dict]:
        """The users in a group (id, username, name), by username."""

        def work(connection):
            query = (
                select(users.c.id, users.c.username, users.c.name)
                .select_from(users.join(group_members, group_members.c.user_id == users.c.id))
                .where(group_members.c.group_id == group_id)
                .order_by(users.c.username)
            )
            return [dict(row) for row in connection.execute(query).mappings()]

        return run_in_transaction(self.engine, "group_members", work)

    def groups_of(self, user_id: int) -> list[dict]:
        def work(connection):
            query = (
                select(groups.c.id, groups.c.name)
                .select_from(groups.join(group_members, group_members.c.group_id == groups.c.id))
                .where(group_members.c.user_id == user_id)
                .order_by(groups.c.name)
            )
            return [dict(row) for row in connection.execute(query).mappings()]

        return run_in_transaction(self.engine, "groups_of_user", work)

    def set_groups_of(self, user_id: int, group_ids) -> None:
        """Make ``group_ids`` exactly the groups of ``user_id``."""
        wanted = sorted({int(g) for g in group_ids})

        def work(connection):
            connection.execute(delete(group_members).where(group_members.c.user_id == user_id))
            if wanted:
                connection.execute(insert(group_members), [{"group_id": g, "user_id": user_id} for g in wanted])

        run_in_transaction(self.engine, "set_groups_of_user", work)

    def add_member(self, group_id: int, user_id: int) -> bool:
        def work(connection):
            present = connection.execute(
                select(group_members.c.user_id).where(group_members.c.group_id == group_id, group_members.c.user_id == user_id)
            ).first()
            if present is None:
                connection.execute(insert(group_members).values(group_id=group_id, user_id=user_id))
            return present is None

        return run_in_transaction(self.engine, "add_group_member", work)

    def remove_member(self, group_id: int, user_id: int) -> bool:
        def work(connection):
            return connection.execute(
                delete(group_members).where(group_members.c.group_id == group_id, group_members.c.user_id == user_id)
            ).rowcount > 0

        return run_in_transaction(self.engine, "remove_group_member", work)
