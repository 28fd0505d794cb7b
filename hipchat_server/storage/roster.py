"""The roster store: rows of ``roster_items``, one per (owner, contact), addressed by the owner's username.

Every method blocks (MariaDB): call it off the reactor thread. `update` reads
and writes one row in a single transaction with the row locked, so two
front ends changing the same item one after the other never lose a change.
"""

from __future__ import annotations

from typing import Callable

from sqlalchemy import and_, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from hipchat_server.storage.database import run_in_transaction
from hipchat_server.storage.schema import roster_items, users
from hipchat_server.xmpp.jid import parse_jid
from hipchat_server.xmpp.roster import RosterItem


class UnknownOwnerError(Exception):
    """The roster's owner is not a user (or was deleted)."""


def _user_id(connection: Connection, username: str) -> int | None:
    query = select(users.c.id).where(users.c.username == username, users.c.deleted_at.is_(None))
    return connection.execute(query).scalar()


def _owner_id(connection: Connection, username: str) -> int:
    user_id = _user_id(connection, username)
    if user_id is None:
        raise UnknownOwnerError(username)
    return user_id


def _item(row) -> RosterItem:
    return RosterItem(
        jid=parse_jid(row["contact_jid"]),
        name=row["name"],
        groups=tuple(row["groups"] or ()),
        subscription=row["subscription"],
        ask_out=bool(row["ask_out"]),
        ask_in=bool(row["ask_in"]),
        ask_in_stanza=row["ask_in_stanza"],
    )


def _values(item: RosterItem) -> dict:
    return {
        "name": item.name,
        "groups": list(item.groups),
        "subscription": item.subscription,
        "ask_out": item.ask_out,
        "ask_in": item.ask_in,
        "ask_in_stanza": item.ask_in_stanza,
    }


def _row_of(user_id: int, contact: str):
    return and_(roster_items.c.user_id == user_id, roster_items.c.contact_jid == contact)


def _write(connection: Connection, user_id: int, contact: str, item: RosterItem | None, exists: bool) -> None:
    if item is None:
        if exists:
            connection.execute(roster_items.delete().where(_row_of(user_id, contact)))
    elif exists:
        connection.execute(roster_items.update().where(_row_of(user_id, contact)).values(**_values(item)))
    else:
        connection.execute(roster_items.insert().values(user_id=user_id, contact_jid=contact, **_values(item)))


class RosterStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    def user_exists(self, username: str) -> bool:
        """True when ``username`` is a user (not deleted)."""
        return run_in_transaction(self.engine, "get_roster_owner", lambda c: _user_id(c, username) is not None)

    def items(self, username: str) -> list[RosterItem]:
        """Every row of the roster of ``username`` (pending requests included), by contact JID."""

        def work(connection):
            query = (
                select(roster_items)
                .select_from(roster_items.join(users, users.c.id == roster_items.c.user_id))
                .where(users.c.username == username)
                .order_by(roster_items.c.contact_jid)
            )
            return [_item(row) for row in connection.execute(query).mappings()]

        return run_in_transaction(self.engine, "get_roster_items", work)

    def get(self, username: str, contact: str) -> RosterItem | None:
        """The row of ``contact`` (a bare JID as text) in the roster of ``username``."""

        def work(connection):
            query = (
                select(roster_items)
                .select_from(roster_items.join(users, users.c.id == roster_items.c.user_id))
                .where(users.c.username == username, roster_items.c.contact_jid == contact)
            )
            row = connection.execute(query).mappings().first()
            return _item(row) if row else None

        return run_in_transaction(self.engine, "get_roster_item", work)

    def upsert(self, username: str, item: RosterItem) -> None:
        """Write ``item`` into the roster of ``username``, replacing the row of the same contact."""
        self.update(username, item.jid.full(), lambda _: item)

    def delete(self, username: str, contact: str) -> RosterItem | None:
        """Remove the row of ``contact``; return it, or None when there was none."""
        old, _ = self.update(username, contact, lambda _: None)
        return old

    def update(
        self, username: str, contact: str, change: Callable[[RosterItem | None], RosterItem | None]
    ) -> tuple[RosterItem | None, RosterItem | None]:
        """Replace the row of ``contact`` by ``change(row)`` (None: no row) in one transaction; return (old, new).

        Raises UnknownOwnerError when ``username`` is not a user. ``change``
        may run twice when a concurrent writer inserted the same row first.
        """

        def work(connection):
            user_id = _owner_id(connection, username)
            query = select(roster_items).where(_row_of(user_id, contact)).with_for_update()
            row = connection.execute(query).mappings().first()
            old = _item(row) if row else None
            new = change(old)
            if new != old:
                _write(connection, user_id, contact, new, row is not None)
            return old, new

        try:
            return run_in_transaction(self.engine, "update_roster_item", work)
        except IntegrityError:  # another writer created the row between our read and insert
            return run_in_transaction(self.engine, "update_roster_item", work)
