"""The feature flags store: ``feature_flags`` (everyone's value) and ``group_flags`` (a group's own value).

Blocking: call it from a thread.
"""

from __future__ import annotations

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Engine

from hipchat_server.storage.database import run_in_transaction
from hipchat_server.storage.schema import feature_flags, group_flags, group_members, users


class FeatureFlagStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    def snapshot(self) -> dict[str, tuple[bool, dict[int, bool]]]:
        """Every stored flag: name -> (everyone's value, {group id: that group's value})."""

        def work(connection):
            flags = {row.name: (bool(row.enabled), {}) for row in connection.execute(select(feature_flags))}
            for row in connection.execute(select(group_flags)):
                if row.flag_name in flags:
                    flags[row.flag_name][1][row.group_id] = bool(row.enabled)
            return flags

        return run_in_transaction(self.engine, "feature_flags_snapshot", work)

    def groups_of(self, username: str) -> frozenset[int]:
        """The ids of the groups ``username`` belongs to."""

        def work(connection):
            query = (
                select(group_members.c.group_id)
                .select_from(group_members.join(users, users.c.id == group_members.c.user_id))
                .where(users.c.username == username)
            )
            return frozenset(connection.execute(query).scalars())

        return run_in_transaction(self.engine, "feature_flag_groups_of", work)

    def put(self, name: str, description: str, enabled: bool, groups: dict[int, bool]) -> None:
        """Set a flag's value for everyone and replace its group values, in one transaction."""

        def work(connection):
            changed = connection.execute(
                update(feature_flags).where(feature_flags.c.name == name).values(enabled=enabled, description=description)
            ).rowcount
            if not changed:
                exists = connection.execute(select(feature_flags.c.name).where(feature_flags.c.name == name)).first()
                if exists is None:
                    connection.execute(insert(feature_flags).values(name=name, description=description, enabled=enabled))
            connection.execute(delete(group_flags).where(group_flags.c.flag_name == name))
            if groups:
                connection.execute(
                    insert(group_flags), [{"flag_name": name, "group_id": g, "enabled": v} for g, v in groups.items()]
                )

        run_in_transaction(self.engine, "put_feature_flag", work)
