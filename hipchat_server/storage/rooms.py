"""Group rooms: the rooms and their affiliations in MariaDB, the occupants of each room in Redis.

`RoomStore` (MariaDB, ``rooms`` and ``room_members``): persistent rooms, their
settings (the muc#roomconfig form), subject and affiliations. Users are
addressed by username (every user is local: there is no federation).

`OccupantStore` (Redis): who is in which room right now, so every front end
agrees. Per room, ``muc:occupants:<room jid>`` maps each occupant session's
full JID to JSON ``{nick, role, affiliation, frontend, presence}`` (a fan-out
reads this one hash), and ``muc:nicks:<room jid>`` maps each nickname to the
bare JID that holds it (unique nicknames; one user's several devices may
share theirs). ``muc:joined:<full jid>`` maps the rooms a session is in to
its nickname (to leave them when it ends), and
``muc:frontend:<id>:occupants`` lists the sessions a front end put in rooms
(to clear them when it restarts after a crash). Joins, leaves and nickname
changes run as WATCH/MULTI transactions on the room's keys.

Every method blocks: call it off the reactor thread.
"""

from __future__ import annotations

import functools
import json
import secrets
from dataclasses import dataclass, replace
from typing import Callable, Iterable

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from hipchat_server.storage.database import run_in_transaction
from hipchat_server.storage.schema import room_members, rooms, users
from hipchat_server.xmpp.muc import AFFILIATION_RANK
from hipchat_server.xmpp.muc_forms import RoomConfig

#: Random bytes of a room's guest link token (32 URL-safe characters).
GUEST_TOKEN_BYTES = 24


class RoomExists(Exception):
    """A room with that address (or that display name) exists already."""


class LastOwner(Exception):
    """The change would leave the room without an owner (XEP-0045 10.6: conflict)."""


class UnknownUser(Exception):
    """An affiliation names someone who is not a user of this server."""

    def __init__(self, username: str):
        super().__init__(username)
        self.username = username


@dataclass(frozen=True)
class Room:
    """A persistent room as stored."""

    id: int
    jid_node: str
    config: RoomConfig
    subject: str = ""
    subject_by: str | None = None  # the nickname that set the subject
    locked: bool = False  # created by a join, not configured yet


@dataclass(frozen=True)
class Entrant:
    """What a join needs to know in one query: the room (None if there is none), the user's affiliation and rights."""

    room: Room | None
    affiliation: str
    is_admin: bool  # the user is a server administrator (users.is_admin)
    exists: bool  # the user exists (not deleted)


def _room(row) -> Room:
    config = RoomConfig(
        name=row["name"],
        description=row["description"],
        persistent=bool(row["is_persistent"]),
        listed=bool(row["is_listed"]),
        members_only=row["privacy"] == "private",
        moderated=bool(row["is_moderated"]),
        whois=row["whois"],
        max_occupants=row["max_occupants"],
        change_subject=bool(row["occupants_change_subject"]),
        allow_invites=bool(row["occupants_invite"]),
    )
    return Room(row["id"], row["jid_node"], config, row["subject"] or "", row["subject_by"], bool(row["is_locked"]))


def _config_values(config: RoomConfig) -> dict:
    return {
        "name": config.name,
        "description": config.description,
        "is_persistent": config.persistent,
        "is_listed": config.listed,
        "privacy": "private" if config.members_only else "public",
        "is_moderated": config.moderated,
        "whois": config.whois,
        "max_occupants": config.max_occupants,
        "occupants_change_subject": config.change_subject,
        "occupants_invite": config.allow_invites,
    }


def _user(connection: Connection, username: str):
    query = select(users.c.id, users.c.is_admin).where(users.c.username == username, users.c.deleted_at.is_(None))
    return connection.execute(query).first()


def _room_row(connection: Connection, node: str, lock: bool = False):
    query = select(rooms).where(rooms.c.jid_node == node)
    if lock:
        query = query.with_for_update()
    return connection.execute(query).mappings().first()


def _affiliation(connection: Connection, room_id: int, user_id: int) -> str:
    query = select(room_members.c.affiliation).where(room_members.c.room_id == room_id, room_members.c.user_id == user_id)
    return connection.execute(query).scalar() or "none"


def _affiliation_of_username(connection: Connection, room_id: int, username: str) -> str:
    query = (
        select(room_members.c.affiliation)
        .select_from(room_members.join(users, users.c.id == room_members.c.user_id))
        .where(room_members.c.room_id == room_id, users.c.username == username, users.c.deleted_at.is_(None))
    )
    return connection.execute(query).scalar() or "none"


def _details_row(connection: Connection, id_or_name: str):
    """The room row (with its owner's username) by numeric id, display name or address, or None."""
    query = select(rooms, users.c.username.label("owner_username")).select_from(rooms.outerjoin(users, users.c.id == rooms.c.owner_id))
    if id_or_name.isascii() and id_or_name.isdigit() and len(id_or_name) < 10:  # an id (INT), not "¹" or a huge number
        row = connection.execute(query.where(rooms.c.id == int(id_or_name))).mappings().first()
        if row is not None:
            return row
    row = connection.execute(query.where(rooms.c.name == id_or_name)).mappings().first()
    return row or connection.execute(query.where(rooms.c.jid_node == id_or_name)).mappings().first()


class RoomStore:
    """Rooms and affiliations in MariaDB; room JIDs are ``<jid_node>@<service_domain>``."""

    def __init__(self, engine: Engine, service_domain: str):
        self.engine = engine
        self.service_domain = service_domain

    def _jid(self, node: str) -> str:
        return f"{node}@{self.service_domain}"

    def get(self, node: str) -> Room | None:
        """The room at ``<node>@service``, or None."""

        def work(connection):
            row = _room_row(connection, node)
            return _room(row) if row else None

        return run_in_transaction(self.engine, "get_room", work)

    def entrant(self, node: str, username: str) -> Entrant:
        """The room, ``username``'s affiliation with it and whether the user is an administrator (one transaction)."""

        def work(connection):
            user = _user(connection, username)
            row = _room_row(connection, node)
            room = _room(row) if row else None
            affiliation = _affiliation(connection, row["id"], user.id) if row and user else "none"
            return Entrant(room, affiliation, bool(user and user.is_admin), user is not None)

        return run_in_transaction(self.engine, "get_room_entrant", work)

    def create(self, node: str, owner: str, config: RoomConfig | None = None, locked: bool = True) -> Room:
        """Create the room ``node`` owned by ``owner``; locked until configured. Raises RoomExists, UnknownUser.

        The display name defaults to the address; if another room already
        uses that name, a number is appended (names are unique, as in HipChat).
        """
        config = config or RoomConfig(name=node[:100])

        def work(connection):
            user = _user(connection, owner)
            if user is None:
                raise UnknownUser(owner)
            if _room_row(connection, node) is not None:
                raise RoomExists(node)
            name, n = config.name, 1
            while connection.execute(select(rooms.c.id).where(rooms.c.name == name)).first() is not None:
                n += 1
                name = f"{config.name[:90]} ({n})"
            values = _config_values(replace(config, name=name))
            result = connection.execute(rooms.insert().values(jid_node=node, owner_id=user.id, is_locked=locked, **values))
            room_id = result.inserted_primary_key[0]
            connection.execute(room_members.insert().values(room_id=room_id, user_id=user.id, affiliation="owner"))
            return _room(_room_row(connection, node))

        try:
            return run_in_transaction(self.engine, "create_room", work)
        except IntegrityError:  # another front end created it (or took the name) between our check and insert
            raise RoomExists(node) from None

    def configure(self, node: str, config: RoomConfig) -> Room | None:
        """Store ``config`` and unlock the room; None when the room is gone. Raises RoomExists when the name is taken."""

        def work(connection):
            if _room_row(connection, node, lock=True) is None:
                return None
            taken = select(rooms.c.id).where(rooms.c.name == config.name, rooms.c.jid_node != node)
            if connection.execute(taken).first() is not None:
                raise RoomExists(config.name)
            connection.execute(update(rooms).where(rooms.c.jid_node == node).values(is_locked=False, **_config_values(config)))
            return _room(_room_row(connection, node))

        return run_in_transaction(self.engine, "configure_room", work)

    def set_subject(self, node: str, subject: str, by: str | None) -> None:
        """Keep the subject (and HipChat's ``topic``, cut to its 250 characters)."""
        values = {"subject": subject, "subject_by": by, "topic": subject[:250]}
        run_in_transaction(self.engine, "set_room_subject", lambda c: c.execute(update(rooms).where(rooms.c.jid_node == node).values(**values)))

    def delete(self, node: str) -> None:
        """Remove the room and its affiliations (archived messages stay in the archive)."""
        run_in_transaction(self.engine, "delete_room", lambda c: c.execute(delete(rooms).where(rooms.c.jid_node == node)))

    def user_exists(self, username: str) -> bool:
        return run_in_transaction(self.engine, "get_room_user", lambda c: _user(c, username) is not None)

    def affiliation(self, node: str, username: str) -> str:
        """``username``'s affiliation with the room: owner, admin, member, outcast or none."""

        def work(connection):
            row, user = _room_row(connection, node), _user(connection, username)
            return _affiliation(connection, row["id"], user.id) if row and user else "none"

        return run_in_transaction(self.engine, "get_room_affiliation", work)

    def affiliated(self, node: str, affiliation: str) -> list[str]:
        """The usernames with ``affiliation`` (not "none") in the room, sorted."""
        query = (
            select(users.c.username)
            .select_from(room_members.join(users, users.c.id == room_members.c.user_id).join(rooms, rooms.c.id == room_members.c.room_id))
            .where(rooms.c.jid_node == node, room_members.c.affiliation == affiliation)
            .order_by(users.c.username)
        )
        return run_in_transaction(self.engine, "get_room_affiliated", lambda c: list(c.execute(query).scalars()))

    def set_affiliations(self, node: str, changes: dict[str, str], may: Callable[[str, str, str], bool] | None = None) -> dict[str, str]:
        """Apply ``changes`` (username -> affiliation, "none" removes) in one transaction; return each previous affiliation.

        ``may(username, previous, new)`` vets each change against the current
        rows (the caller's permission rules); a refusal raises PermissionError
        and changes nothing. Raises UnknownUser, LastOwner; None-room: KeyError.
        """

        def work(connection):
            row = _room_row(connection, node, lock=True)
            if row is None:
                raise KeyError(node)
            room_id, previous = row["id"], {}
            for username, affiliation in changes.items():
                user = _user(connection, username)
                if user is None:
                    raise UnknownUser(username)
                old = _affiliation(connection, room_id, user.id)
                if may is not None and not may(username, old, affiliation):
                    raise PermissionError(username)
                previous[username] = old
                where = and_(room_members.c.room_id == room_id, room_members.c.user_id == user.id)
                connection.execute(delete(room_members).where(where))
                if affiliation != "none":
                    connection.execute(room_members.insert().values(room_id=room_id, user_id=user.id, affiliation=affiliation))
            owners = select(func.count()).where(room_members.c.room_id == room_id, room_members.c.affiliation == "owner")
            if connection.execute(owners).scalar() == 0:
                raise LastOwner(node)
            return previous

        return run_in_transaction(self.engine, "set_room_affiliations", work)

    def listed_rooms(self, username: str) -> list[tuple[str, str]]:
        """(jid_node, name) of the rooms ``username`` sees in the room list, by name.

        Listed, unlocked, open rooms where the user is not an outcast, and any
        room where the user is a member, admin or owner.
        """

        def work(connection):
            user = _user(connection, username)
            user_id = user.id if user else -1
            mine = room_members.c.affiliation.in_(("owner", "admin", "member"))
            query = (
                select(rooms.c.jid_node, rooms.c.name)
                .select_from(rooms.outerjoin(room_members, and_(room_members.c.room_id == rooms.c.id, room_members.c.user_id == user_id)))
                .where(
                    rooms.c.is_locked.is_(False),
                    or_(
                        mine,
                        and_(rooms.c.is_listed.is_(True), rooms.c.privacy == "public", or_(room_members.c.affiliation.is_(None), room_members.c.affiliation != "outcast")),
                    ),
                )
                .order_by(rooms.c.name)
            )
            return [(row.jid_node, row.name) for row in connection.execute(query)]

        return run_in_transaction(self.engine, "get_listed_rooms", work)

    def readable_room_jids(self, username: str) -> set[str]:
        """The rooms whose messages ``username`` may read (history, search), as room JIDs.

        Public rooms where the user is not an outcast, and private rooms where
        the user is owner, admin or member. Locked rooms count: their owner is
        the only one in them.
        """

        def work(connection):
            user = _user(connection, username)
            if user is None:
                return set()
            joined = rooms.outerjoin(room_members, and_(room_members.c.room_id == rooms.c.id, room_members.c.user_id == user.id))
            affiliation = room_members.c.affiliation
            query = select(rooms.c.jid_node).select_from(joined).where(
                or_(
                    and_(rooms.c.privacy == "public", or_(affiliation.is_(None), affiliation != "outcast")),
                    and_(rooms.c.privacy == "private", affiliation.in_(("owner", "admin", "member"))),
                )
            )
            return {self._jid(node) for node in connection.execute(query).scalars()}

        return run_in_transaction(self.engine, "get_readable_rooms", work)

    # The REST API's reads and writes (rooms_api): HipChat's fields beyond the XMPP settings.
    def details(self, id_or_name: str) -> "RoomDetails | None":
        """The room with this numeric id, display name or address (JID localpart), or None."""
        row = run_in_transaction(self.engine, "get_room_details", lambda connection: _details_row(connection, id_or_name))
        return _details(row) if row else None

    def details_and_affiliation(self, id_or_name: str, username: str | None) -> tuple["RoomDetails | None", str]:
        """`details`, and ``username``'s affiliation with that room ("none" for no user), in one transaction.

        The REST API reads both on every call about a room; apart they cost two
        transactions and four queries.
        """

        def work(connection):
            row = _details_row(connection, id_or_name)
            if row is None:
                return None, "none"
            return _details(row), _affiliation_of_username(connection, row["id"], username) if username else "none"

        return run_in_transaction(self.engine, "get_room_details_and_affiliation", work)

    def directory(self, username: str | None, *, every_private: bool, include_private: bool, include_archived: bool, start: int, limit: int):
        """A page of rooms by name for the room list, and how many there are: ``(list of RoomDetails, total)``.

        Private rooms only with ``include_private``, and then only those
        ``username`` is owner, admin or member of (every one with
        ``every_private``: an administrator). Locked rooms never.
        """

        def work(connection):
            user = _user(connection, username) if username else None
            user_id = user.id if user else -1
            mine = room_members.c.affiliation.in_(("owner", "admin", "member"))
            joined = rooms.outerjoin(users, users.c.id == rooms.c.owner_id).outerjoin(
                room_members, and_(room_members.c.room_id == rooms.c.id, room_members.c.user_id == user_id)
            )
            conditions = [rooms.c.is_locked.is_(False)]
            if not include_archived:
                conditions.append(rooms.c.is_archived.is_(False))
            if not include_private:
                conditions.append(rooms.c.privacy == "public")
            elif not every_private:
                conditions.append(or_(rooms.c.privacy == "public", mine))
            where = and_(*conditions)
            total = connection.execute(select(func.count()).select_from(joined).where(where)).scalar()
            query = (
                select(rooms, users.c.username.label("owner_username"))
                .select_from(joined)
                .where(where)
                .order_by(rooms.c.name)
                .offset(start)
                .limit(limit)
            )
            return [_details(row) for row in connection.execute(query).mappings()], total

        return run_in_transaction(self.engine, "get_room_directory", work)

    def set_details(self, node: str, *, archived: bool | None = None, guest_accessible: bool | None = None, owner: str | None = None) -> None:
        """Change HipChat's archived and guest-access flags and the owner (who also becomes an owner by affiliation).

        Turning guest access on gives the room a new random guest link token; turning it off removes it.
        """

        def work(connection):
            row = _room_row(connection, node, lock=True)
            if row is None:
                raise KeyError(node)
            values = {}
            if archived is not None:
                values["is_archived"] = archived
            if guest_accessible is not None:
                values["is_guest_accessible"] = guest_accessible
                # The guest link: a new one each time guest access goes on, none while it is off.
                if not guest_accessible:
                    values["guest_token"] = None
                elif not row["is_guest_accessible"] or not row["guest_token"]:
                    values["guest_token"] = secrets.token_urlsafe(GUEST_TOKEN_BYTES)
            if owner is not None:
                user = _user(connection, owner)
                if user is None:
                    raise UnknownUser(owner)
                values["owner_id"] = user.id
                where = and_(room_members.c.room_id == row["id"], room_members.c.user_id == user.id)
                connection.execute(delete(room_members).where(where))
                connection.execute(room_members.insert().values(room_id=row["id"], user_id=user.id, affiliation="owner"))
            if values:
                connection.execute(update(rooms).where(rooms.c.id == row["id"]).values(**values))

        run_in_transaction(self.engine, "set_room_details", work)

    def members(self, node: str) -> list[dict]:
        """The owners, admins and members of the room (user id, username, name, mention_name, affiliation), by username."""
        query = (
            select(users.c.id, users.c.username, users.c.name, users.c.mention_name, room_members.c.affiliation)
            .select_from(room_members.join(users, users.c.id == room_members.c.user_id).join(rooms, rooms.c.id == room_members.c.room_id))
            .where(rooms.c.jid_node == node, room_members.c.affiliation.in_(("owner", "admin", "member")), users.c.deleted_at.is_(None))
            .order_by(users.c.username)
        )
        return run_in_transaction(self.engine, "get_room_members", lambda c: [dict(r) for r in c.execute(query).mappings()])


@dataclass(frozen=True)
class RoomDetails:
    """A room with HipChat's fields beyond its XMPP settings (for the REST API)."""

    room: Room
    topic: str
    is_archived: bool
    is_guest_accessible: bool
    owner: str | None  # the owner's username
    created_at: object  # datetime (naive UTC)
    guest_token: str | None = None  # the random part of the guest link, while guest access is on


def _details(row) -> RoomDetails:
    return RoomDetails(
        _room(row), row["topic"] or "", bool(row["is_archived"]), bool(row["is_guest_accessible"]), row["owner_username"], row["created_at"],
        row["guest_token"] if row["is_guest_accessible"] else None,
    )


def may_change_affiliation(actor: str, old: str, new: str) -> bool:
    """XEP-0045 sections 9 and 10: owners change anything; admins only members, outcasts and nobodies."""
    if actor == "owner":
        return True
    if actor == "admin":
        return AFFILIATION_RANK[old] <= AFFILIATION_RANK["member"] and AFFILIATION_RANK[new] <= AFFILIATION_RANK["member"]
    return False


# Occupants (Redis).
OCCUPANTS_KEY = "muc:occupants:{room}"
NICKS_KEY = "muc:nicks:{room}"
JOINED_KEY = "muc:joined:{full}"
FRONTEND_KEY = "muc:frontend:{frontend}:occupants"


@dataclass(frozen=True)
class Occupant:
    """One session in a room."""

    full: str  # the session's real full JID
    nick: str
    role: str
    affiliation: str
    frontend: str  # the front end holding the session
    presence: str = ""  # the payload of its last presence (show, status...), serialised

    @property
    def bare(self) -> str:
        return self.full.split("/", 1)[0]

    def to_json(self) -> str:
        return json.dumps(
            {"nick": self.nick, "role": self.role, "affiliation": self.affiliation, "frontend": self.frontend, "presence": self.presence},
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, full: str, text) -> "Occupant":
        item = json.loads(text)
        return cls(full, item["nick"], item["role"], item["affiliation"], item["frontend"], item.get("presence", ""))


@functools.lru_cache(maxsize=20_000)
def _parsed_occupant(full, value) -> Occupant:
    """An occupant entry as Redis holds it, parsed; remembered, as every message to a room reads them all again."""
    return Occupant.from_json(_text(full), value)


@dataclass(frozen=True)
class Departure:
    """An occupant session that left a room; ``nick_freed`` when it was the last session using its nickname."""

    room: str
    occupant: Occupant
    nick_freed: bool


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _bare(full: str) -> str:
    return full.split("/", 1)[0]


class OccupantStore:
    """The occupants of every room, in Redis (see the module docstring)."""

    def __init__(self, redis_primary):
        self.redis = redis_primary

    def _transaction(self, keys: list[str], work):
        """Run ``work(pipe)`` under WATCH of ``keys`` until no one changed them meanwhile; return its result.

        ``work`` reads with the pipe, calls ``pipe.multi()`` before queueing its writes, and returns its result.
        """
        from redis.exceptions import WatchError

        while True:
            with self.redis.pipeline() as pipe:
                try:
                    pipe.watch(*keys)
                    result = work(pipe)
                    if pipe.explicit_transaction:
                        pipe.execute()
                    return result
                except WatchError:
                    continue

    def join(self, room: str, occupant: Occupant, limit: int | None = None) -> str:
        """Enter ``occupant`` into ``room`` (or update its entry): "joined", "conflict" (the nick is someone else's) or "full".

        ``limit`` is the most nicknames the room may hold (None: no limit); a
        user's further device sharing its nickname always fits.
        """
        occupants, nicks = OCCUPANTS_KEY.format(room=room), NICKS_KEY.format(room=room)

        def work(pipe):
            holder = pipe.hget(nicks, occupant.nick)
            if holder is not None and _text(holder) != occupant.bare:
                return "conflict"
            if holder is None and limit is not None and pipe.hlen(nicks) >= limit:
                return "full"
            pipe.multi()
            pipe.hset(nicks, occupant.nick, occupant.bare)
            pipe.hset(occupants, occupant.full, occupant.to_json())
            pipe.hset(JOINED_KEY.format(full=occupant.full), room, occupant.nick)
            pipe.sadd(FRONTEND_KEY.format(frontend=occupant.frontend), occupant.full)
            return "joined"

        return self._transaction([nicks], work)

    def change_nick(self, room: str, full: str, nick: str) -> tuple[str, Occupant | None]:
        """Give session ``full`` the nickname ``nick``: ("changed", the old entry), ("conflict", None) or ("gone", None)."""
        occupants, nicks = OCCUPANTS_KEY.format(room=room), NICKS_KEY.format(room=room)

        def work(pipe):
            raw = pipe.hget(occupants, full)
            if raw is None:
                return "gone", None
            old = Occupant.from_json(full, raw)
            holder = pipe.hget(nicks, nick)
            if holder is not None and _text(holder) != old.bare:
                return "conflict", None
            others = [Occupant.from_json(_text(f), v) for f, v in pipe.hgetall(occupants).items() if _text(f) != full]
            pipe.multi()
            if not any(o.nick == old.nick for o in others):
                pipe.hdel(nicks, old.nick)
            pipe.hset(nicks, nick, old.bare)
            pipe.hset(occupants, full, replace(old, nick=nick).to_json())
            pipe.hset(JOINED_KEY.format(full=full), room, nick)
            return "changed", old

        return self._transaction([occupants, nicks], work)

    def occupants(self, room: str) -> dict[str, Occupant]:
        """Every occupant session of ``room`` by full JID."""
        return self.occupants_from(self.redis.hgetall(OCCUPANTS_KEY.format(room=room)))

    @staticmethod
    def occupants_command(pipe, room: str) -> None:
        """Queue the read of `occupants` on a pipeline (the process's ordered Redis writer batches it)."""
        pipe.hgetall(OCCUPANTS_KEY.format(room=room))

    @staticmethod
    def occupants_from(raw: dict) -> dict[str, Occupant]:
        entries = (_parsed_occupant(full, value) for full, value in raw.items())
        return {occupant.full: occupant for occupant in entries}

    def occupant(self, room: str, full: str) -> Occupant | None:
        return self.occupant_from(full, self.redis.hget(OCCUPANTS_KEY.format(room=room), full))

    @staticmethod
    def occupant_command(pipe, room: str, full: str) -> None:
        """Queue the read of `occupant` on a pipeline."""
        pipe.hget(OCCUPANTS_KEY.format(room=room), full)

    @staticmethod
    def occupant_from(full: str, raw) -> Occupant | None:
        return Occupant.from_json(full, raw) if raw is not None else None

    def count(self, room: str) -> int:
        """How many nicknames are in ``room`` (what the room list shows as occupants)."""
        return self.redis.hlen(NICKS_KEY.format(room=room))

    def update(self, room: str, changed: Iterable[Occupant]) -> list[Occupant]:
        """Rewrite the entries of ``changed`` that are still in the room; return those."""
        occupants = OCCUPANTS_KEY.format(room=room)
        changed = list(changed)

        def work(pipe):
            present = [o for o in changed if pipe.hexists(occupants, o.full)]
            pipe.multi()
            for occupant in present:
                pipe.hset(occupants, occupant.full, occupant.to_json())
                pipe.sadd(FRONTEND_KEY.format(frontend=occupant.frontend), occupant.full)  # it may have moved
            return present

        return self._transaction([occupants], work) if changed else []

    def leave(self, room: str, fulls: Iterable[str]) -> list[Departure]:
        """Take sessions out of ``room``; return who left (sessions that were not in it are skipped)."""
        occupants, nicks = OCCUPANTS_KEY.format(room=room), NICKS_KEY.format(room=room)
        fulls = set(fulls)

        def work(pipe):
            current = {_text(f): Occupant.from_json(_text(f), v) for f, v in pipe.hgetall(occupants).items()}
            leaving = [current[f] for f in sorted(fulls) if f in current]
            staying = {o.nick for f, o in current.items() if f not in fulls}
            pipe.multi()
            departures = []
            for occupant in leaving:
                freed = occupant.nick not in staying
                pipe.hdel(occupants, occupant.full)
                pipe.hdel(JOINED_KEY.format(full=occupant.full), room)
                if freed:
                    pipe.hdel(nicks, occupant.nick)
                departures.append(Departure(room, occupant, freed))
            # Nicknames of the same user leaving with several sessions are freed once.
            seen: set[str] = set()
            unique = []
            for d in departures:
                unique.append(replace(d, nick_freed=d.nick_freed and d.occupant.nick not in seen))
                seen.add(d.occupant.nick)
            return unique

        return self._transaction([occupants, nicks], work)

    def rooms_of(self, full: str) -> dict[str, str]:
        """The rooms session ``full`` is in, with its nickname in each."""
        return {_text(room): _text(nick) for room, nick in self.redis.hgetall(JOINED_KEY.format(full=full)).items()}

    def move_session(self, full: str, frontend: str) -> int:
        """Session ``full`` lives on ``frontend`` now (XEP-0198): point its entry in each of its rooms there; return how many."""
        moved = 0
        for room in self.rooms_of(full):
            entry = self.occupant(room, full)
            if entry is not None and entry.frontend != frontend:
                moved += len(self.update(room, [replace(entry, frontend=frontend)]))
        return moved

    def forget_session(self, full: str, frontend: str) -> None:
        """Drop a session from its front end's list once it has left every room (`leave` emptied its joined hash)."""
        self.redis.srem(FRONTEND_KEY.format(frontend=frontend), full)

    def clear_frontend(self, frontend: str) -> list[Departure]:
        """Take out of every room the sessions ``frontend`` held before it restarted; return them."""
        own = FRONTEND_KEY.format(frontend=frontend)
        departures = []
        for full in sorted(_text(f) for f in self.redis.smembers(own)):
            for room in sorted(self.rooms_of(full)):
                entry = self.occupant(room, full)
                if entry is not None and entry.frontend == frontend:
                    departures.extend(self.leave(room, [full]))
        self.redis.delete(own)
        return departures

    def delete_room(self, room: str) -> None:
        """Forget a destroyed room's occupancy (its sessions' entries must have left already)."""
        self.redis.delete(OCCUPANTS_KEY.format(room=room), NICKS_KEY.format(room=room))


def newest_room_records(opensearch, index_alias: str, room: str, limit: int, timeout: float = 2.0) -> list[dict]:
    """A room's ``limit`` newest records from OpenSearch, newest first (to refill the recent list Redis lost).

    ``index_alias`` covers every month (``messages``); ids sort by time. A short
    timeout: a join waits for this, and without it gets no history rather than no answer.
    """
    body = {"query": {"bool": {"filter": [{"term": {"room": room}}]}}, "sort": [{"id": "desc"}], "size": limit}
    found = opensearch.search(index=index_alias, body=body, params={"request_timeout": timeout, "ignore_unavailable": "true"})
    return [hit["_source"] for hit in found["hits"]["hits"]]
