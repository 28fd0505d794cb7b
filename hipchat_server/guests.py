"""Guest access: anyone with a room's guest link chats in that room only, from the web client, without an account.

A room owner or admin turns guest access on for a public room (`PUT
/v2/room/<id>` with ``is_guest_accessible``, or the console's Rooms page);
the room then has a guest link ``https://<host>/guest/<token>`` (a new random
token each time it is turned on). On that page a person types a name and
`Guests.admit` makes a short-lived guest account: a ``users`` row with
``is_guest`` (named ``guest-<random>``, shown as "<name> (guest)", so its
messages are stored, searched and attributed like any other, marked as a
guest's) with a random password the page hands to the web client, and a
``guests`` row naming its room.

The account is good for one session, over the web client's WebSocket only
(`users.UserCredentials` refuses guests everywhere else: TCP XMPP, the REST
API, web logins), begun within `LOGIN_WINDOW`; `xmpp.guests` keeps that
session to its room. The account ends (disabled, marked deleted) when the
session ends, when guest access is turned off for the room (its guests'
streams are closed at once), or when the ``guest_access`` feature flag goes
off (each guest stream checks every few seconds). The flag is evaluated for
the room's owner: in chosen-groups mode, guest links work for rooms owned by
people in those groups.

Blocking (MariaDB, Redis, password hashing): call from a thread.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from hipchat_server import feature_flags
from hipchat_server import users as accounts

#: Every guest account's username starts so (then 12 random hex digits).
USERNAME_PREFIX = "guest-"
#: Appended to the name a guest types: how its messages and presence show it is a guest.
NAME_MARK = " (guest)"
NAME_MAX_LENGTH = 50
#: A guest page's account must log in this soon; one never used is ended after it.
LOGIN_WINDOW = timedelta(minutes=10)
EMAIL_DOMAIN = "guests.invalid"  # RFC 2606: a guest has no mailbox


class GuestRefused(Exception):
    """The guest link does not work (now); the message says why, for the guest page."""


@dataclass(frozen=True)
class GuestRoom:
    id: int
    jid: str  # node@service
    name: str


@dataclass(frozen=True)
class Guest:
    username: str
    name: str  # with `NAME_MARK`
    room: GuestRoom


@dataclass(frozen=True)
class Admission:
    """A new guest account and the password its web client logs in with (shown to nobody else)."""

    guest: Guest
    password: str


def guest_link(public_url: str, token: str) -> str:
    """The guest link of a room whose guest token is ``token``."""
    return f"{public_url.rstrip('/')}/guest/{token}"


def utc_now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def display_name(name: str) -> str:
    """The name a guest typed, checked, with `NAME_MARK`; GuestRefused when unusable."""
    name = " ".join((name or "").split())
    if not name or len(name) > NAME_MAX_LENGTH or any(not c.isprintable() for c in name):
        raise GuestRefused(f"type a name of 1 to {NAME_MAX_LENGTH} characters")
    return name + NAME_MARK


class Guests:
    """Guest links and guest accounts. ``store`` a `storage.guests.GuestStore`, ``user_store`` a
    `storage.users.UserStore`, ``flags`` a `feature_flags.FeatureFlags`, ``closer`` a
    `users_admin.SessionCloser` (None: streams are left to their own checks)."""

    def __init__(self, store, user_store, flags, closer=None, *, service: str, clock=utc_now):
        self.store, self.user_store, self.flags, self.closer = store, user_store, flags, closer
        self.service, self.clock = service, clock

    def _refusal(self, row: dict | None) -> str | None:
        """Why guests may not be in this room now; None when they may."""
        if row is None or not row["is_guest_accessible"] or row["is_locked"]:
            return "this guest link does not work (any more); ask for a new one"
        if row["privacy"] != "public" or row["is_archived"]:
            return "this room is not open to guests"
        if not self.flags.enabled(feature_flags.GUEST_ACCESS, row["owner"]):
            return "guest access is turned off on this server"
        return None

    def _room(self, row: dict) -> GuestRoom:
        return GuestRoom(row["room_id"], f"{row['jid_node']}@{self.service}", row["room_name"])

    def room(self, token: str) -> GuestRoom:
        """The room a guest link opens; GuestRefused when it does not (now)."""
        row = self.store.room_by_token(token) if token else None
        refusal = self._refusal(row)
        if refusal:
            raise GuestRefused(refusal)
        return self._room(row)

    def admit(self, token: str, name: str) -> Admission:
        """Make a guest account for the room of ``token``, shown as ``name`` (marked a guest)."""
        name = display_name(name)
        room = self.room(token)
        self.end_unused()
        username = USERNAME_PREFIX + secrets.token_hex(6)
        password = secrets.token_urlsafe(24)
        user = accounts.create_user(self.user_store, username, name, f"{username}@{EMAIL_DOMAIN}", password, is_guest=True)
        self.store.add(user.id, room.id, self.clock())
        return Admission(Guest(username, name, room), password)

    def login(self, username: str) -> Guest | None:
        """The guest ``username`` logging in (its password proved): its Guest, or None when it may not (any more).

        A guest logs in once, within `LOGIN_WINDOW` of its making, while its room takes guests.
        """
        if not username.startswith(USERNAME_PREFIX):
            return None
        row = self.store.get(username)
        if row is None or row["ended_at"] is not None or row["logged_in_at"] is not None:
            return None
        if row["created_at"] < self.clock() - LOGIN_WINDOW or self._refusal(row):
            return None
        if not self.store.mark_logged_in(row["user_id"], self.clock()):
            return None
        return Guest(row["username"], row["name"], self._room(row))

    def still_admitted(self, username: str) -> bool:
        """Whether the guest's session may go on: not ended, and its room still takes guests."""
        row = self.store.get(username)
        return row is not None and row["ended_at"] is None and self._refusal(row) is None

    def leave(self, username: str) -> None:
        """The guest's session ended: end its account."""
        row = self.store.get(username)
        if row is not None:
            self.store.end([row["user_id"]], self.clock())

    def close_room(self, room_id: int, reason: str = "guest access to this room was turned off") -> int:
        """Guest access went off for the room: end its guests' accounts and streams at once; answers how many."""
        live = self.store.live(room_id)
        self.store.end([g["user_id"] for g in live], self.clock())
        if self.closer is not None:
            for guest in live:
                self.closer.close(guest["username"], reason)
        return len(live)

    def end_unused(self) -> int:
        """End the accounts of guest pages left without logging in (older than `LOGIN_WINDOW`)."""
        return self.store.end(self.store.unused_before(self.clock() - LOGIN_WINDOW), self.clock())


def guests_for(chat_server) -> Guests:
    """This process's `Guests` (made once)."""
    existing = getattr(chat_server, "_guests", None)
    if existing is not None:
        return existing
    from hipchat_server.storage.guests import GuestStore
    from hipchat_server.storage.users import UserStore
    from hipchat_server.users_admin import SessionCloser

    config = chat_server.get_config()
    engine = chat_server.get_database_engine()
    guests = Guests(
        GuestStore(engine),
        UserStore(engine),
        feature_flags.for_server(chat_server),
        SessionCloser(chat_server.get_redis_primary, None, config.server.domain),
        service=f"{config.rooms.service}.{config.server.domain}",
    )
    chat_server._guests = guests
    return guests
