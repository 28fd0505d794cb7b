"""Who may read which room's messages: MariaDB's ``rooms`` and ``room_members``, read for history and search.

The rule (the same for MAM, search, facets, counts and permalinks): a user may
read a room's messages when the room is public and they are not an outcast,
or the room is private (members-only) and they are its owner, an admin or a
member. Who sent what (the real JIDs behind nicknames) shows only in rooms
whose ``whois`` is ``anyone``, or to the room's owners and admins.

Blocking: call it through ``run_database``.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import and_, select
from sqlalchemy.engine import Engine

from hipchat_server.storage.database import run_in_transaction
from hipchat_server.storage.schema import room_members, rooms, users

MEMBER_AFFILIATIONS = frozenset({"owner", "admin", "member"})
MODERATOR_AFFILIATIONS = frozenset({"owner", "admin"})


@dataclass(frozen=True)
class RoomAccess:
    """What one user may do with one room's archive."""

    readable: bool
    real_jids: bool  # may see who (which account) sent each message


@dataclass(frozen=True)
class RoomsByAccess:
    """Every existing room, as one user sees them: ``readable`` (by JID, with the access) and ``unreadable``.

    A user unknown or deleted has neither. Rooms that no longer exist (destroyed:
    their rows are gone) are in neither either, though the index keeps their messages.
    """

    readable: dict[str, RoomAccess]
    unreadable: frozenset[str]


def access_of(privacy: str, whois: str | None, affiliation: str | None) -> RoomAccess:
    """The rule itself, for a room's privacy and ``whois`` and the user's affiliation (None: none)."""
    if privacy == "private":
        readable = affiliation in MEMBER_AFFILIATIONS
    else:
        readable = affiliation != "outcast"
    real_jids = readable and (whois in (None, "anyone") or affiliation in MODERATOR_AFFILIATIONS)
    return RoomAccess(readable, real_jids)


class RoomAccessStore:
    """Reads room permissions; ``service`` is the rooms' domain (``conference.<domain>``)."""

    def __init__(self, engine: Engine, service: str):
        self.engine = engine
        self.service = service

    def _rows(self, connection, username: str, jid_node: str | None = None):
        """(jid_node, privacy, whois, affiliation) of each room; none at all for a deleted or unknown user.

        One statement (the user's id as a subquery): a search reads this on every request.
        """
        user_id = (
            select(users.c.id).where(users.c.username == username, users.c.deleted_at.is_(None)).scalar_subquery()
        )
        joined = rooms.outerjoin(
            room_members, and_(room_members.c.room_id == rooms.c.id, room_members.c.user_id == user_id)
        )
        query = (
            select(rooms.c.jid_node, rooms.c.privacy, rooms.c.whois, room_members.c.affiliation)
            .select_from(joined)
            .where(user_id.is_not(None))
        )
        if jid_node is not None:
            query = query.where(rooms.c.jid_node == jid_node)
        return connection.execute(query).all()

    def readable_rooms(self, username: str) -> dict[str, RoomAccess]:
        """Every room ``username`` may read, by room JID."""
        return self.rooms_by_access(username).readable

    def rooms_by_access(self, username: str) -> RoomsByAccess:
        """Every room, split into those ``username`` may read and those they may not (one read)."""
        rows = run_in_transaction(self.engine, "get_readable_rooms", lambda c: self._rows(c, username))
        readable, unreadable = {}, set()
        for jid_node, privacy, whois, affiliation in rows:
            access = access_of(privacy, whois, affiliation)
            if access.readable:
                readable[f"{jid_node}@{self.service}"] = access
            else:
                unreadable.add(f"{jid_node}@{self.service}")
        return RoomsByAccess(readable, frozenset(unreadable))

    def access(self, username: str, room_jid: str) -> RoomAccess | None:
        """What ``username`` may do with the room ``room_jid``; None when there is no such room."""
        node, _, service = room_jid.partition("@")
        if service != self.service or not node:
            return None
        rows = run_in_transaction(self.engine, "get_room_access", lambda c: self._rows(c, username, node))
        if not rows:
            return None  # no such room (or no such reader: nothing to read either way)
        _, privacy, whois, affiliation = rows[0]
        return access_of(privacy, whois, affiliation)
