"""Rooms as the REST API v2 sees them: HipChat's room operations over the same rooms XMPP clients use.

`RoomsApi` lists, creates, changes, archives and deletes rooms, sets their
topic, lists members and participants, invites, reads history and posts
messages and notifications (through `room_posting.RoomPoster`). Rooms and
affiliations are `storage.rooms.RoomStore`'s, occupants
`storage.rooms.OccupantStore`'s, history `history.History`'s: what the API
does shows at once to XMPP occupants (a topic is a subject message, a
deleted room sends its occupants XEP-0045's destroy presence, a member
removed from a private room leaves it).

Who may see what: a public room everyone; a private room its owners,
admins and members, and group administrators; others get NotFound, as if it
did not exist. Changing a room needs its owner or admin affiliation, or a
group administrator. A room notification token reaches only its own room.
A room is named in URLs by its numeric id, its name, or its address.
"""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import datetime, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from twisted.internet import defer
from twisted.logger import Logger

from hipchat_server.history import Archive, HistoryError, Paging
from hipchat_server.room_posting import Notification, PostingError
from hipchat_server.storage.room_access import access_of
from hipchat_server.storage.message_search import is_message_id, message_id_milliseconds
from hipchat_server.storage.rooms import LastOwner, RoomExists, UnknownUser
from hipchat_server.users_api import Caller, Conflict, Forbidden, Invalid, NotFound
from hipchat_server.xmpp import muc
from hipchat_server.xmpp.muc import AFFILIATION_RANK
from hipchat_server.xmpp.muc_forms import RoomConfig

NAME_MAX_LENGTH = 50  # HipChat's limit for a room name
# No control characters, and something besides spaces; the OpenAPI fragment (rooms.yaml) has the same pattern.
NAME_PATTERN = re.compile(r"[^\x00-\x1f\x7f]*[^\x00-\x20\x7f][^\x00-\x1f\x7f]*")
TOPIC_MAX_LENGTH = 250
PRIVACIES = ("public", "private")
MAX_HISTORY_WINDOW = 10_000  # start-index + max-results of a dated history query
MEMBER_AFFILIATIONS = ("owner", "admin", "member")


def room_node_for(name: str) -> str:
    """A room address (JID localpart) for a new room named ``name``."""
    node = re.sub(r"[^a-z0-9._-]+", "_", name.lower()).strip("_.") or "room"
    return node[:60]


def parse_date(text: str, tz_name: str | None) -> int:
    """Milliseconds since the epoch of an ISO-8601 date or time; one without an offset is in ``tz_name`` (UTC by default)."""
    cleaned = text.strip().upper()  # RFC 3339 allows a lower-case 't' and 'z'; Python does not
    if "T" in cleaned:
        cleaned = cleaned.replace(" ", "+")  # an offset's '+' that arrived unencoded in the query string
        cleaned = re.sub(r"(T\d\d:\d\d):60", r"\1:59", cleaned)  # a leap second, which Python cannot represent
    try:
        moment = datetime.fromisoformat(cleaned)
    except ValueError:
        raise Invalid(f"date: expected 'recent' or an ISO-8601 date, found {text[:40]!r}") from None
    if moment.tzinfo is None:
        try:
            moment = moment.replace(tzinfo=ZoneInfo(tz_name) if tz_name and tz_name != "UTC" else timezone.utc)
        except (ZoneInfoNotFoundError, ValueError):
            raise Invalid(f"timezone: unknown time zone {tz_name[:40]!r}") from None
    return int(moment.timestamp() * 1000)


class RoomsApi:
    """HipChat's room operations; see the module docstring. Every method returns a Deferred.

    ``rooms`` a `RoomStore`, ``users`` a `storage.users.UserStore`, ``history`` a
    `History`, ``poster`` a `RoomPoster` (its ordered writer also carries the
    room's presence and subject stanzas), ``delivery`` a `users_api.UserDelivery`
    (invitations); ``emit(kind, room, payload)`` announces room events;
    ``guests`` (a `guests.Guests`) ends a room's guests when its guest access is turned off.
    """

    log = Logger()

    def __init__(self, rooms, users, history, poster, delivery, *, domain: str, service: str, run_database, emit=None, guests=None):
        self.rooms, self.users, self.history, self.poster, self.delivery = rooms, users, history, poster, delivery
        self.domain, self.service = domain, service
        self.run_database = run_database
        self.emit = emit
        self.guests = guests  # a guests.Guests: ends a room's guests when its guest access goes off

    def room_jid(self, node: str) -> str:
        return f"{node}@{self.service}"

    # Finding a room and what the caller may do with it.
    def _load(self, caller: Caller, key: str):
        """Blocking: (details, caller's affiliation); NotFound when there is no such room or the caller may not see it."""
        details, affiliation = self.rooms.details_and_affiliation(key, caller.username)
        if details is None or details.room.locked:
            raise NotFound(f"no room {key[:100]!r}")
        if not self._may_see(caller, details, affiliation):
            raise NotFound(f"no room {key[:100]!r}")
        return details, affiliation

    @staticmethod
    def _may_see(caller: Caller, details, affiliation: str) -> bool:
        if caller.room_id is not None:
            return caller.room_id == details.room.id
        if caller.is_admin:
            return True
        if details.room.config.members_only:
            return affiliation in MEMBER_AFFILIATIONS
        return affiliation != "outcast"

    @staticmethod
    def _may_administer(caller: Caller, affiliation: str) -> bool:
        return caller.is_admin or affiliation in ("owner", "admin")

    def administered(self, caller: Caller, key: str):
        details, affiliation = self._load(caller, key)
        if caller.room_id is not None or not self._may_administer(caller, affiliation):
            raise Forbidden("only the room's owners and admins, or group administrators, may do this")
        return details, affiliation

    def _emit(self, kind: str, room: str, payload: dict) -> defer.Deferred:
        """Announce an event; fires once it is queued (never fails: an event lost is logged, the operation goes on)."""
        if self.emit is None:
            return defer.succeed(None)
        try:
            d = defer.maybeDeferred(self.emit, kind, room, payload)
        except Exception:
            self.log.failure("announcing {kind} in {room} failed", kind=kind, room=room)
            return defer.succeed(None)
        return d.addErrback(lambda f: self.log.failure("announcing {kind} in {room} failed", f, kind=kind, room=room))

    # Rooms.
    def page(self, caller, *, include_private: bool, include_archived: bool, start: int, limit: int) -> defer.Deferred:
        """``(list of RoomDetails, total)`` of the room list, by name."""
        caller = Caller.of(caller)
        return self.run_database(
            lambda: self.rooms.directory(
                caller.username,
                every_private=caller.is_admin,
                include_private=include_private,
                include_archived=include_archived,
                start=start,
                limit=limit,
            )
        )

    @defer.inlineCallbacks
    def get(self, caller, key: str):
        """``(details, owner row or None, participants rows)`` of a room the caller may see."""
        caller = Caller.of(caller)
        details, _ = yield self.run_database(self._load, caller, key)
        occupants = yield self.poster.read_occupants(self.room_jid(details.room.jid_node))
        usernames = {o.bare.partition("@")[0] for o in occupants.values()}
        if details.owner:
            usernames.add(details.owner)
        rows = yield self.run_database(self.users.by_usernames, usernames)
        participants = [rows[u] for u in sorted({o.bare.partition("@")[0] for o in occupants.values()}) if u in rows]
        return details, rows.get(details.owner), participants

    def create(self, caller, fields: dict) -> defer.Deferred:
        """Create a room from HipChat's fields (name, privacy, topic, guest_access, owner_user_id); fires with its details."""
        return self.run_database(self._create, Caller.of(caller), fields)

    def _create(self, caller: Caller, fields: dict):
        if caller.username is None:
            raise Forbidden("a room token cannot create rooms")
        name = self._check_name(fields.get("name"))
        privacy = fields.get("privacy", "public")
        if privacy not in PRIVACIES:
            raise Invalid("privacy: expected public or private")
        topic = fields.get("topic") or ""
        if not isinstance(topic, str) or len(topic) > TOPIC_MAX_LENGTH:
            raise Invalid(f"topic: expected a string of at most {TOPIC_MAX_LENGTH} characters")
        owner = caller.username
        if fields.get("owner_user_id") is not None:
            row = self.users.get_by_id(fields["owner_user_id"]) if isinstance(fields["owner_user_id"], int) else None
            if row is None or row.get("deleted_at") is not None:
                raise NotFound("owner_user_id: no such user")
            owner = row["username"]
        if self.rooms.details(name) is not None:
            raise Conflict(f"a room named {name!r} exists already")
        base = room_node_for(name)
        node, n = base, 1
        while True:
            try:
                created = self.rooms.create(node, owner, RoomConfig(name=name, members_only=privacy == "private"), locked=False)
                break
            except RoomExists:
                if self.rooms.details(name) is not None:
                    raise Conflict(f"a room named {name!r} exists already") from None
                n += 1
                node = f"{base}-{n}"
        if topic:
            self.rooms.set_subject(node, topic, None)
        if "guest_access" in fields:
            # Only a public room takes guests. HipChat's clients ask for guest access by default
            # (hypchat's create_room sends guest_access=True): a private room is created without it, not refused.
            self.rooms.set_details(node, guest_accessible=bool(fields["guest_access"]) and privacy == "public")
        self.log.info("{user} created room {node} through the API", user=caller.username, node=created.jid_node)
        self._emit("room_created", self.room_jid(node), {"room": self.room_jid(node), "by": caller.username})
        return self.rooms.details(str(created.id))

    @staticmethod
    def _check_name(name) -> str:
        if not isinstance(name, str) or len(name) > NAME_MAX_LENGTH or not NAME_PATTERN.fullmatch(name):
            raise Invalid(f"name: expected 1 to {NAME_MAX_LENGTH} characters, not all spaces, no control characters")
        return name

    @defer.inlineCallbacks
    def update(self, caller, key: str, fields: dict):
        """Change name, privacy, is_archived, is_guest_accessible, topic and owner (``{"id": ...}``), each when given."""
        caller = Caller.of(caller)
        details, _ = yield self.run_database(self.administered, caller, key)
        node, room = details.room.jid_node, self.room_jid(details.room.jid_node)
        config = details.room.config
        if "name" in fields:
            config = replace(config, name=self._check_name(fields["name"]))
        if "privacy" in fields:
            if fields["privacy"] not in PRIVACIES:
                raise Invalid("privacy: expected public or private")
            config = replace(config, members_only=fields["privacy"] == "private")
        guest = fields.get("is_guest_accessible")
        if config.members_only:
            if guest:
                raise Invalid("is_guest_accessible: only a public room takes guests")
            if details.is_guest_accessible:
                guest = False  # a room made private lets its guests out
        owner = None
        if isinstance(fields.get("owner"), dict) and fields["owner"].get("id") is not None:
            row = yield self.run_database(self.users.get_by_id, fields["owner"]["id"]) if isinstance(fields["owner"]["id"], int) else None
            if row is None or row.get("deleted_at") is not None:
                raise NotFound("owner.id: no such user")
            owner = row["username"]
        if config != details.room.config:
            try:
                yield self.run_database(self.rooms.configure, node, config)
            except RoomExists:
                raise Conflict(f"a room named {config.name!r} exists already") from None
        archived = fields.get("is_archived")
        if archived is not None or guest is not None or owner is not None:
            try:
                yield self.run_database(
                    lambda: self.rooms.set_details(
                        node,
                        archived=None if archived is None else bool(archived),
                        guest_accessible=None if guest is None else bool(guest),
                        owner=owner,
                    )
                )
            except UnknownUser:
                raise NotFound("owner.id: no such user") from None
        if guest is not None and not guest and details.is_guest_accessible and self.guests is not None:
            yield self.run_database(self.guests.close_room, details.room.id)
        if config.members_only and not details.room.config.members_only:
            yield self._let_out_non_members(room)
        if archived and not details.is_archived:
            self._emit("room_archived", room, {"room": room, "by": caller.username})
        if "topic" in fields and (fields["topic"] or "") != details.topic:
            yield self._set_topic(caller, details, fields["topic"] or "")

    @defer.inlineCallbacks
    def delete(self, caller, key: str):
        """Destroy the room: its occupants get XEP-0045's destroy presence; archived messages stay in the archive."""
        caller = Caller.of(caller)
        details, _ = yield self.run_database(self.administered, caller, key)
        node, room = details.room.jid_node, self.room_jid(details.room.jid_node)
        occupants = yield self.poster.read_occupants(room)
        gone = yield self.run_database(self.poster.occupants.leave, room, list(occupants))
        # Announced (its webhook jobs queued) before the row goes: the room's webhooks are deleted with it.
        yield self._emit("room_deleted", room, {"room": room, "by": caller.username})
        yield self.run_database(self.rooms.delete, node)
        destroy = muc.destroy_element("the room was deleted", None)
        for departure in gone:
            presence = muc.occupant_presence(
                f"{room}/{departure.occupant.nick}", affiliation="none", role="none", unavailable=True, codes=[muc.SELF], destroy=destroy
            )
            yield self.poster.deliver(room, [departure.occupant], muc.serialise(presence))
        yield self.run_database(self.poster.occupants.delete_room, room)
        self.log.info("{user} deleted room {node} through the API", user=caller.username, node=node)

    @defer.inlineCallbacks
    def set_topic(self, caller, key: str, topic):
        """Set the topic (the XMPP subject): occupants get the subject message at once."""
        caller = Caller.of(caller)
        details, affiliation = yield self.run_database(self._load, caller, key)
        if caller.room_id is not None:
            raise Forbidden("a room notification token may only send notifications")
        if not (details.room.config.change_subject or self._may_administer(caller, affiliation)):
            raise Forbidden("only the room's owners and admins may change its topic")
        yield self._set_topic(caller, details, topic)

    @defer.inlineCallbacks
    def _set_topic(self, caller: Caller, details, topic):
        if not isinstance(topic, str) or len(topic) > TOPIC_MAX_LENGTH:
            raise Invalid(f"topic: expected a string of at most {TOPIC_MAX_LENGTH} characters")
        node, room = details.room.jid_node, self.room_jid(details.room.jid_node)
        rows = yield self.run_database(self.users.by_usernames, [caller.username] if caller.username else [])
        by = rows[caller.username]["name"] if caller.username in rows else None
        yield self.run_database(self.rooms.set_subject, node, topic, by)
        occupants = yield self.poster.read_occupants(room)
        subject = muc.subject_message(f"{room}/{by}" if by else room, topic)
        yield self.poster.deliver(room, occupants.values(), muc.serialise(subject))
        self._emit("room_topic_change", room, {"room": room, "topic": topic, "by": caller.username})

    @defer.inlineCallbacks
    def statistics(self, caller, key: str):
        """``{"messages_sent", "last_active"}``: how many messages the room's archive holds, and when the newest was sent."""
        caller = Caller.of(caller)
        details, _ = yield self.run_database(self._load, caller, key)
        room = self.room_jid(details.room.jid_node)
        page = yield self._query(self.history.criteria(self._archive(room)), Paging(before="", max=1))
        return {"messages_sent": page.count or 0, "last_active": page.records[-1]["timestamp"] if page.records else None}

    # Members and participants.
    @defer.inlineCallbacks
    def members(self, caller, key: str):
        """The owners, admins and members (user rows with their affiliation)."""
        caller = Caller.of(caller)
        details, _ = yield self.run_database(self._load, caller, key)
        return (yield self.run_database(self.rooms.members, details.room.jid_node))

    @defer.inlineCallbacks
    def participants(self, caller, key: str):
        """The users in the room right now (user rows), by username."""
        _, _, participants = yield self.get(caller, key)
        return participants

    @defer.inlineCallbacks
    def add_member(self, caller, key: str, user_key: str):
        """Make a user a member (an owner or admin stays what it is)."""
        caller = Caller.of(caller)
        details, _ = yield self.run_database(self.administered, caller, key)
        user = yield self.run_database(self._user, user_key)
        try:
            yield self.run_database(
                self.rooms.set_affiliations, details.room.jid_node, {user["username"]: "member"}, lambda u, old, new: old in ("none", "outcast", "member")
            )
        except PermissionError:
            pass  # an owner or admin already: left as it is

    @defer.inlineCallbacks
    def remove_member(self, caller, key: str, user_key: str):
        """Take a member's affiliation away; in a private room the user's sessions leave it."""
        caller = Caller.of(caller)
        details, _ = yield self.run_database(self.administered, caller, key)
        user = yield self.run_database(self._user, user_key)
        try:
            yield self.run_database(self.rooms.set_affiliations, details.room.jid_node, {user["username"]: "none"}, lambda u, old, new: old != "owner")
        except PermissionError:
            raise Conflict("the room's owner cannot be removed; give the room another owner first") from None
        except LastOwner:
            raise Conflict("a room keeps at least one owner") from None
        if details.room.config.members_only:
            yield self._let_out(self.room_jid(details.room.jid_node), {f"{user['username']}@{self.domain}"}, muc.AFFILIATION_REMOVED)

    def _user(self, key: str) -> dict:
        key = str(key)
        if key.isascii() and key.isdigit() and len(key) < 10:
            row = self.users.get_by_id(int(key))
        elif key.startswith("@"):
            row = self.users.get_by_mention_name(key[1:])
        elif "@" in key:
            row = self.users.get_by_email(key)
        else:
            row = self.users.get_by_username(key)
        if row is None or row.get("deleted_at") is not None:
            raise NotFound(f"no user {key[:100]!r}")
        return row

    @defer.inlineCallbacks
    def _let_out_non_members(self, room: str):
        """A room became private: occupants who are not members leave it (XEP-0045 status 322)."""
        occupants = yield self.poster.read_occupants(room)
        node = room.partition("@")[0]
        members = yield self.run_database(self.rooms.members, node)
        allowed = {f"{m['username']}@{self.domain}" for m in members}
        outsiders = {o.bare for o in occupants.values() if o.bare not in allowed}
        yield self._let_out(room, outsiders, muc.MEMBERS_ONLY_NOW)

    @defer.inlineCallbacks
    def _let_out(self, room: str, bares: set[str], code: str):
        occupants = yield self.poster.read_occupants(room)
        leaving = [full for full, o in occupants.items() if o.bare in bares]
        if not leaving:
            return
        gone = yield self.run_database(self.poster.occupants.leave, room, leaving)
        staying = [o for full, o in occupants.items() if full not in leaving]
        for departure in gone:
            occupant = departure.occupant
            own = muc.occupant_presence(f"{room}/{occupant.nick}", affiliation="none", role="none", unavailable=True, codes=[muc.SELF, code])
            yield self.poster.deliver(room, [occupant], muc.serialise(own))
            if departure.nick_freed and staying:
                others = muc.occupant_presence(f"{room}/{occupant.nick}", affiliation="none", role="none", unavailable=True, codes=[code])
                yield self.poster.deliver(room, staying, muc.serialise(others))

    @defer.inlineCallbacks
    def invite(self, caller, key: str, user_key: str, reason: str | None):
        """Invite a user (a mediated XEP-0045 invitation, kept offline when the user is not online); a private room makes them a member."""
        caller = Caller.of(caller)
        if caller.username is None:
            raise Forbidden("a room token cannot invite")
        details, affiliation = yield self.run_database(self._load, caller, key)
        config = details.room.config
        if not (self._may_administer(caller, affiliation) or (config.allow_invites and AFFILIATION_RANK[affiliation] >= AFFILIATION_RANK["none"])):
            raise Forbidden("only the room's owners and admins may invite to this room")
        if reason is not None and (not isinstance(reason, str) or len(reason) > 250):
            raise Invalid("reason: expected a string of at most 250 characters")
        user = yield self.run_database(self._user, user_key)
        node, room = details.room.jid_node, self.room_jid(details.room.jid_node)
        if config.members_only:
            try:
                yield self.run_database(self.rooms.set_affiliations, node, {user["username"]: "member"}, lambda u, old, new: old == "none")
            except PermissionError:
                pass
        invitee = f"{user['username']}@{self.domain}"
        message = muc.invitation_message(room, invitee, muc.Invitation("invite", invitee, reason), f"{caller.username}@{self.domain}")
        del message["to"]
        yield self.delivery.deliver(invitee, message)

    # History.
    def _archive(self, room: str):
        return Archive(room, room=True, real_jids=True)

    @defer.inlineCallbacks
    def _readable(self, caller: Caller, key: str):
        """(details, archive) of a room whose history the caller may read."""
        if caller.username is None:
            raise Forbidden("a room notification token may only send notifications")
        details, affiliation = yield self.run_database(self._load, caller, key)
        return details, self._archive_of(caller, details, affiliation)

    def _archive_of(self, caller: Caller, details, affiliation: str) -> Archive:
        """The room's archive as ``caller`` may read it; Forbidden when they may not."""
        # The archive's own rule (storage.room_access), from what _load read already: no second query.
        config = details.room.config
        access = access_of("private" if config.members_only else "public", config.whois, affiliation)
        if not (access.readable or caller.is_admin):
            raise Forbidden("this room's history is for its members")
        return Archive(self.room_jid(details.room.jid_node), room=True, real_jids=access.real_jids or caller.is_admin)

    def _query(self, criteria, paging: Paging) -> defer.Deferred:
        d = self.history.query(criteria, paging)

        def failed(failure):
            failure.trap(HistoryError)
            error = failure.value
            if error.condition == "item-not-found":
                raise NotFound(error.text)
            if error.condition == "internal-server-error":
                raise Unavailable(error.text)
            raise Invalid(error.text)

        return d.addErrback(failed)

    def recent(self, caller, key: str, limit: int) -> defer.Deferred:
        """``date=recent``: ``(records, real_jids, senders)``: up to ``limit`` of the room's newest messages
        (at most the 75 Redis holds), oldest first, and their senders' rows when real JIDs are shown.

        The busiest read of the API, so the room, the permission, Redis and the
        senders are read in one trip to the thread pool instead of three.
        """
        caller = Caller.of(caller)
        if caller.username is None:
            return defer.fail(Forbidden("a room notification token may only send notifications"))
        return self.run_database(self._recent, caller, key, limit)

    def _recent(self, caller: Caller, key: str, limit: int):
        archive = self._archive_of(caller, *self._load(caller, key))
        try:
            records = self.history.recent.room(archive.jid, min(limit, self.history.recent_size))
        except Exception as e:  # Redis failing over: say so (503) instead of failing obscurely
            self.log.warn("recent messages of {room} unavailable: {error}", room=archive.jid, error=e)
            raise Unavailable("recent history is not available right now; try again shortly") from None
        records.sort(key=lambda record: record["id"])
        senders = self._senders(records) if archive.real_jids else {}
        return records, archive.real_jids, senders

    @defer.inlineCallbacks
    def dated(self, caller, key: str, *, date: str, end_date: str | None, tz: str | None, start: int, limit: int, newest_first: bool):
        """Messages sent at or before ``date`` (and at or after ``end_date``), skipping the ``start`` newest: ``(records, total, real_jids)``."""
        caller = Caller.of(caller)
        if start + limit > MAX_HISTORY_WINDOW:
            raise Invalid(f"start-index + max-results: at most {MAX_HISTORY_WINDOW}")
        end_ms = parse_date(date, tz)
        start_ms = parse_date(end_date, tz) if end_date else None
        if start_ms is not None and start_ms > end_ms:
            raise Invalid("end-date: must be before date (history runs backwards from date to end-date)")
        details, archive = yield self._readable(caller, key)
        page = yield self._query(self.history.criteria(archive, start_ms=start_ms, end_ms=end_ms), Paging(before="", max=start + limit))
        records = page.records[: max(len(page.records) - start, 0)][-limit:] if limit else []
        if newest_first:
            records.reverse()
        return records, page.count or 0, archive.real_jids

    @defer.inlineCallbacks
    def latest(self, caller, key: str, *, limit: int, not_before: str | None):
        """The newest ``limit`` messages, none older than the message ``not_before`` (which is included); oldest first."""
        caller = Caller.of(caller)
        if not_before is not None and not is_message_id(not_before):
            raise NotFound(f"no message {not_before[:40]!r} in this room")
        details, archive = yield self._readable(caller, key)
        start_ms = message_id_milliseconds(not_before) if not_before else None
        page = yield self._query(self.history.criteria(archive, start_ms=start_ms), Paging(before="", max=limit))
        records = [r for r in page.records if not_before is None or r["id"] >= not_before]
        return records, archive.real_jids

    @defer.inlineCallbacks
    def message(self, caller, key: str, message_id: str):
        """One message of the room by id: ``(record, real_jids)``; NotFound when it is not this room's."""
        caller = Caller.of(caller)
        details, archive = yield self._readable(caller, key)
        room = self.room_jid(details.room.jid_node)
        try:
            found = yield self.history.message(f"{caller.username}@{self.domain}", message_id)
        except HistoryError as e:
            raise Unavailable(e.text) from None
        if found is None and is_message_id(message_id):
            # Not indexed yet (a second or two): the room's recent list has every message the indexer has not.
            recent = yield self.history.run_redis(self.history.recent.room, room, self.history.recent_size)
            record = next((r for r in recent if r["id"] == message_id), None)
            found = (record, archive.real_jids) if record is not None else None
        if found is None or found[0].get("room") != room:
            raise NotFound(f"no message {message_id[:40]!r} in this room")
        return found

    def senders(self, records: list[dict]) -> defer.Deferred:
        """The user rows of the records' senders, by bare JID (for HipChat's ``from`` objects)."""
        return self.run_database(self._senders, records)

    def _senders(self, records: list[dict]) -> dict[str, dict]:
        names = {r["sender"].partition("@")[0] for r in records if r.get("sender", "").endswith(f"@{self.domain}")}
        return {f"{name}@{self.domain}": row for name, row in self.users.by_usernames(names).items()}

    # Posting.
    @defer.inlineCallbacks
    def send_message(self, caller, key: str, message, extra: dict | None = None, admit=None):
        """Post a message as the calling user (named by their display name); fires with the record.

        ``admit(room_id)``, when given, runs once the room is known and may fail to refuse the
        message (the API's flood control, counted per room whichever way the URL names it).
        """
        caller = Caller.of(caller)
        if caller.username is None:
            raise Forbidden("a room notification token may only send notifications")
        details, _ = yield self.run_database(self._load, caller, key)
        if admit is not None:
            yield admit(details.room.id)
        rows = yield self.run_database(self.users.by_usernames, [caller.username])
        name = rows[caller.username]["name"] if caller.username in rows else caller.username
        try:
            return (
                yield self.poster.post_message(self.room_jid(details.room.jid_node), f"{caller.username}@{self.domain}", name, message, extra)
            )
        except PostingError as e:
            raise Invalid(str(e)) from None

    @defer.inlineCallbacks
    def reply(self, caller, key: str, parent_id: str, message, admit=None):
        """A message in reply to ``parent_id`` (a message of this room)."""
        yield self.message(caller, key, parent_id)
        return (yield self.send_message(caller, key, message, {"parent_message_id": parent_id}, admit))

    def share_link(self, caller, key: str, link, message, admit=None) -> defer.Deferred:
        """A message sharing ``link`` (http or https), with ``message`` before it."""
        if not isinstance(link, str) or not re.fullmatch(r"https?://[!-~]+", link) or len(link) > 2000:
            return defer.fail(Invalid("link: expected an http or https URL"))
        if message is not None and not isinstance(message, str):
            return defer.fail(Invalid("message: expected a string"))
        return self.send_message(caller, key, f"{message} {link}" if message else link, {"link": link}, admit)

    @defer.inlineCallbacks
    def send_notification(self, caller, key: str, notification: Notification, admit=None):
        """Post a notification (any caller who may see the room; a room token only into its own room); ``admit`` as in `send_message`."""
        caller = Caller.of(caller)
        details, _ = yield self.run_database(self._load, caller, key)
        if admit is not None:
            yield admit(details.room.id)
        sender = f"{caller.username}@{self.domain}" if caller.username else None
        try:
            return (yield self.poster.post_notification(self.room_jid(details.room.jid_node), notification, sender))
        except PostingError as e:
            raise Invalid(str(e)) from None


class Unavailable(Invalid):
    """History cannot be read right now (OpenSearch down); try again."""

    status = 503


def rooms_api(chat_server, history) -> RoomsApi:
    """The RoomsApi of a process, over ``chat_server``'s stores, ``history`` and its RoomPoster."""
    from twisted.internet import threads

    from hipchat_server.guests import guests_for
    from hipchat_server.storage.rooms import RoomStore
    from hipchat_server.storage.users import UserStore
    from hipchat_server.users_api import user_delivery

    config = chat_server.get_config()
    service = f"{config.rooms.service}.{config.server.domain}"
    poster = chat_server.get_room_poster()
    engine = chat_server.get_database_engine()
    return RoomsApi(
        RoomStore(engine, service),
        UserStore(engine),
        history,
        poster,
        user_delivery(chat_server),
        domain=config.server.domain,
        service=service,
        run_database=threads.deferToThread,
        emit=poster.emit,
        guests=guests_for(chat_server),
    )
