"""Group rooms (XEP-0045 Multi-User Chat) on ``<rooms.service>.<domain>``: the domain logic.

`RoomService` takes, from the router, every stanza a client sends to the
rooms service (`ClusterRouter.register_domain_handler`) and the end of every
session. Rooms and affiliations live in MariaDB (`storage.rooms.RoomStore`),
occupants in Redis (`storage.rooms.OccupantStore`) so every front end agrees
on who is in a room; `rooms_admin.RoomAdministration` answers the iqs
(disco, muc#admin, muc#owner) and relays invitations, `rooms_fanout.RoomFanout`
delivers to occupants.

A groupchat message with a body becomes an archive record and is stored
durably (`archive.MessageArchive.store`: spool fsync, then the room's recent
list in Redis) before it is reflected to anyone, the sender included: the
reflection is the sender's confirmation, and the Deferred returned to the
router fires only then, so XEP-0198 acknowledges only durable messages. If
the store fails nothing is reflected and the error reaches the sender.

Fan-out: the occupants (one Redis read per message, after the store) are
grouped by front end; those on this front end get the stanza written to
their stream directly, and each other front end gets one ``muc_deliver``
item naming its recipients. The stanza is serialised once; `muc.with_to`
addresses each copy.

Joining: the new occupant is entered in Redis first, then sent the others'
presence, its own, the history (from the room's recent list, rebuilt from
OpenSearch when Redis lost it) and the subject, in that order; live stanzas
for it arriving meanwhile wait in a buffer and follow, minus those already
sent as history. Because a message is read into the recent list before its
occupants are read, a joiner gets each message either as history or live.
"""

from __future__ import annotations

import datetime
from typing import Callable, Iterable

from twisted.internet import defer
from twisted.logger import Logger
from twisted.words.xish import domish

from hipchat_server import events
from hipchat_server.archive import body_of
from hipchat_server.storage.rooms import Departure, Occupant, Room, RoomExists
from hipchat_server.xmpp import muc
from hipchat_server.xmpp.errors import stanza_error_reply
from hipchat_server.rooms_fanout import MUC_DELIVER, jid_of
from hipchat_server.xmpp.jid import JID
from hipchat_server.xmpp.muc import AFFILIATION_RANK, MucError
from hipchat_server.xmpp.muc_forms import RoomConfig

ROOM_CACHE_SECONDS = 5.0  # how stale a room's settings may be for presence broadcasts (joins always read MariaDB)
NO_HISTORY_SECONDS = 60.0  # after OpenSearch found nothing for a room, do not ask again for this long
NO_HISTORY_AFTER_FAILURE_SECONDS = 10.0  # nor, after OpenSearch failed, for this long


class RoomService:
    """Rooms for the router; see the module docstring.

    ``rooms`` is a `RoomStore`, ``occupants`` an `OccupantStore`, ``recent`` a
    `storage.recent.RecentMessages`; ``archive`` (default ``router.archive``)
    stores messages; ``rebuild_history(room, limit)`` (blocking, optional)
    returns a room's newest records from OpenSearch when Redis lost them.
    ``creators`` is "everyone" or "admins" (users.is_admin).
    """

    log = Logger()
    chat_server = None  # set by room_service(): events.emit announces room events through it

    def __init__(
        self,
        domain: str,
        service: str,
        rooms,
        occupants,
        router,
        *,
        recent=None,
        archive=None,
        rebuild_history: Callable[[str, int], list[dict]] | None = None,
        creators: str = "everyone",
        history_on_join: int = 75,
    ):
        from hipchat_server.rooms_admin import RoomAdministration
        from hipchat_server.rooms_fanout import RoomFanout

        self.domain = domain
        self.service = f"{service}.{domain}"
        self.rooms = rooms
        self.occupants = occupants
        self.router = router
        self.recent = recent
        self._archive = archive
        self.rebuild_history = rebuild_history
        self.creators = creators
        self.history_on_join = history_on_join
        self.admin = RoomAdministration(self)
        self.fanout = RoomFanout(self)
        self.send = self.fanout.send
        self._room_cache: dict[str, tuple[float, Room | None]] = {}
        self._no_history_until: dict[str, float] = {}

    # Wiring.
    def register(self, router) -> None:
        """Take every stanza to the rooms service, the end of every session, and other front ends' room deliveries."""
        router.register_domain_handler(self.service, self.stanza_from_client)
        router.on_session_ended(self.session_ended)
        router.on_session_moved(self.session_moved)
        router.on_published(MUC_DELIVER, self.fanout.published)

    def register_iq_handler(self, namespace: str, name: str, handler) -> None:
        """Have ``handler(connection, iq, target)`` answer iq get/set with a ``{namespace}name`` child sent to a room (MAM)."""
        self.admin.register_iq_handler(namespace, name, handler)

    def serve_archive(self, mam) -> None:
        """Hand MAM queries to a room (XEP-0313) to ``mam.room_query``, which checks who may read the room."""
        for name in ("query", "metadata"):
            self.register_iq_handler(muc.MAM_NS, name, lambda connection, iq, target: mam.room_query(connection, iq, target.bare().full()))

    @property
    def archive(self):
        return self._archive if self._archive is not None else getattr(self.router, "archive", None)

    @property
    def frontend(self) -> str:
        return self.router.frontend_id

    def run_blocking(self, f, *args) -> defer.Deferred:
        """Redis calls, in the router's Redis pool."""
        return self.router.run_blocking(f, *args)

    def read_occupants(self, room: str) -> defer.Deferred:
        """`OccupantStore.occupants`, read through the process's ordered Redis writer when it has one.

        That writer pipelines whatever queued up while its last round trip ran,
        and runs commands in the order asked: a read queued after a message's
        push onto the room's recent list sees Redis after that push.
        """
        occupants = self.occupants
        return self._read(lambda pipe: occupants.occupants_command(pipe, room), occupants.occupants_from, occupants.occupants, room)

    def read_occupant(self, room: str, full: str) -> defer.Deferred:
        """`OccupantStore.occupant`, read like `read_occupants`."""
        occupants = self.occupants
        return self._read(
            lambda pipe: occupants.occupant_command(pipe, room, full), lambda raw: occupants.occupant_from(full, raw), occupants.occupant, room, full
        )

    def read_recent(self, room: str) -> defer.Deferred:
        """The room's recent list (up to the history on join), read like `read_occupants`."""
        recent, limit = self.recent, self.history_on_join
        return self._read(lambda pipe: recent.room_command(pipe, room, limit), recent.records_from, recent.room, room, limit)

    def _read(self, command, parse, blocking, *args) -> defer.Deferred:
        """One Redis read: ``command(pipe)`` queued on the ordered writer and its reply made into a result by
        ``parse``; without a writer (unit tests), ``blocking(*args)`` in the Redis thread pool."""
        writer = self.router.publisher
        if writer is None:
            return self.run_blocking(blocking, *args)
        return writer.submit(command).addCallback(lambda replies: parse(replies[0]))

    def run_database(self, f, *args) -> defer.Deferred:
        """MariaDB (and OpenSearch) calls, in the router's database pool."""
        return self.router.run_database(f, *args)

    def room_jid(self, node: str) -> str:
        return f"{node}@{self.service}"

    def now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.router.clock.seconds(), tz=datetime.timezone.utc)

    # The router's entry points.
    def stanza_from_client(self, connection, stanza: domish.Element, target: JID):
        """Handle one stanza to the service or a room; for messages the Deferred fires once durable."""
        if stanza.name == "iq":
            return self.admin.iq(connection, stanza, target)
        if target.localpart is None:
            if stanza.name == "message" and stanza.getAttribute("type") != "error":
                connection.deliver(stanza_error_reply(stanza, "service-unavailable", text="messages go to a room"))
            return None
        room = self.room_jid(target.localpart)
        if stanza.name == "presence":
            d = defer.maybeDeferred(self._presence, connection, stanza, target, room)
            return d.addErrback(self._presence_failed, connection, stanza)
        return self._message(connection, stanza, target, room)

    def _presence_failed(self, failure, connection, presence: domish.Element) -> None:
        self.log.failure("room presence from {jid} failed", failure, jid=connection.jid)
        if presence.getAttribute("type") not in ("error", "unavailable"):
            connection.deliver(stanza_error_reply(presence, "internal-server-error", by=presence.getAttribute("to")))

    @staticmethod
    def refuse(connection, stanza: domish.Element, condition: str, text: str | None = None) -> None:
        """Answer ``stanza`` with an error from the room (nothing for an error stanza)."""
        if stanza.getAttribute("type") != "error":
            by = jid_of(stanza.getAttribute("to", "")).bare().full() if stanza.getAttribute("to") else None
            payload = stanza.name == "presence"  # XEP-0045 echoes the <x/> of a refused join
            connection.deliver(stanza_error_reply(stanza, condition, text=text, by=by, include_payload=payload))

    # Presence: join, nickname change, presence update, leave.
    @defer.inlineCallbacks
    def _presence(self, connection, presence: domish.Element, target: JID, room: str):
        kind = presence.getAttribute("type")
        if kind not in (None, "unavailable", "error"):
            return  # rooms take no subscriptions or probes
        full = connection.jid.full()
        current = yield self.read_occupant(room, full)
        if kind is not None:
            if current is not None:
                departures = yield self.run_blocking(self.occupants.leave, room, [full])
                yield self.announce_departures(room, departures, own=True)
            return
        if target.resourcepart is None:
            return self.refuse(connection, presence, "jid-malformed", "join a room as room@service/nickname")
        try:
            request = muc.join_request(presence)
        except MucError as e:
            return self.refuse(connection, presence, e.condition, e.text)
        if current is None or request is not None and current.nick == target.resourcepart:
            yield self._join(connection, presence, target, room, request or muc.HistoryRequest())
        elif current.nick != target.resourcepart:
            yield self._change_nick(connection, presence, current, target.resourcepart, room)
        else:
            occupant = Occupant(full, current.nick, current.role, current.affiliation, current.frontend, muc.presence_payload(presence))
            updated = yield self.run_blocking(self.occupants.update, room, [occupant])
            if updated:
                yield self.broadcast_presence(room, occupant)

    def _may_create(self, is_admin: bool) -> bool:
        return self.creators == "everyone" or is_admin

    @defer.inlineCallbacks
    def _join(self, connection, presence: domish.Element, target: JID, room: str, request: muc.HistoryRequest):
        node, username, full = target.localpart, connection.jid.localpart, connection.jid.full()
        entrant = yield self.run_database(self.rooms.entrant, node, username)
        found, affiliation, created = entrant.room, entrant.affiliation, False
        if found is None:
            if not self._may_create(entrant.is_admin):
                return self.refuse(connection, presence, "not-allowed", "only administrators may create rooms")
            try:
                found = yield self.run_database(self.rooms.create, node, username)
                affiliation, created = "owner", True
            except RoomExists:  # created by someone else meanwhile: join it
                entrant = yield self.run_database(self.rooms.entrant, node, username)
                found, affiliation = entrant.room, entrant.affiliation
                if found is None:
                    return self.refuse(connection, presence, "item-not-found", "the room was destroyed")
        self.remember_room(found)
        config = found.config
        if found.locked and affiliation != "owner":
            return self.refuse(connection, presence, "item-not-found", "the room is being set up by its owner")
        if affiliation == "outcast":
            return self.refuse(connection, presence, "forbidden", "you are banned from this room")
        if config.members_only and AFFILIATION_RANK[affiliation] < AFFILIATION_RANK["member"]:
            return self.refuse(connection, presence, "registration-required", "this room is private: members only")
        occupant = Occupant(full, target.resourcepart, muc.role_of(affiliation, config.moderated), affiliation, self.frontend, muc.presence_payload(presence))
        limit = None if affiliation in ("owner", "admin") else config.max_occupants
        self.fanout.start_joining(room, full)  # before Redis names it an occupant: live stanzas for it wait from then on
        history_ids: set[str] = set()
        try:
            outcome = yield self.run_blocking(self.occupants.join, room, occupant, limit)
            if outcome == "conflict":
                return self.refuse(connection, presence, "conflict", "that nickname is in use in this room")
            if outcome == "full":
                return self.refuse(connection, presence, "service-unavailable", "the room is full")
            events.emit(self.chat_server, "room_enter", room, {"sender": connection.jid.bare().full(), "nick": occupant.nick})
            occupants = yield self.read_occupants(room)
            me = occupants.get(full, occupant)
            shows_jids = config.non_anonymous or me.role == "moderator"
            by_nick = {o.nick: o for f, o in sorted(occupants.items(), reverse=True)}  # one presence per nickname
            for nick, other in sorted(by_nick.items()):
                if nick != me.nick:
                    self.fanout.deliver_here(room, full, self._presence_xml(room, other, shows_jid=shows_jids), None, buffered=False)
            codes = [muc.NON_ANONYMOUS] if config.non_anonymous else []
            if created:
                codes.append(muc.CREATED)
            self.broadcast(room, config, me, occupants.values(), self_codes=codes, joiner=full)
            history = yield self._history(room, request)
            for record in history:
                history_ids.add(record["id"])
                xml = muc.delayed(record["xml"], record["timestamp"], room)
                self.fanout.deliver_here(room, full, xml, record["id"], buffered=False)
            subject_from = f"{room}/{found.subject_by}" if found.subject_by else room
            self.fanout.deliver_here(room, full, muc.serialise(muc.subject_message(subject_from, found.subject)), None, buffered=False)
        finally:
            self.fanout.finish_joining(room, full, history_ids)

    @defer.inlineCallbacks
    def _change_nick(self, connection, presence: domish.Element, current: Occupant, nick: str, room: str):
        outcome, old = yield self.run_blocking(self.occupants.change_nick, room, current.full, nick)
        if outcome == "conflict":
            return self.refuse(connection, presence, "conflict", "that nickname is in use in this room")
        if old is None:
            return
        config = yield self.room_config(room)
        occupants = yield self.run_blocking(self.occupants.occupants, room)
        # XEP-0045 7.6: unavailable from the old nickname with 303 and the new one, then the new presence.
        self.broadcast(room, config, old, [*occupants.values()], unavailable=True, codes=[muc.NICK_CHANGED], nick=nick)
        renamed = occupants.get(current.full)
        if renamed is not None:
            renamed = Occupant(renamed.full, renamed.nick, renamed.role, renamed.affiliation, renamed.frontend, muc.presence_payload(presence))
            yield self.run_blocking(self.occupants.update, room, [renamed])
            self.broadcast(room, config, renamed, occupants.values())

    # Presence broadcasts.
    def cached_room(self, room: str) -> defer.Deferred:
        """The room (None when there is none), read from MariaDB at most every few seconds for presence broadcasts."""
        node = room.split("@", 1)[0]
        cached = self._room_cache.get(node)
        if cached is not None and self.router.clock.seconds() - cached[0] < ROOM_CACHE_SECONDS:
            return defer.succeed(cached[1])
        return self.run_database(self.rooms.get, node).addCallback(self.remember_room, node)

    def room_config(self, room: str) -> defer.Deferred:
        """The room's settings (see `cached_room`); a room that is gone counts as default settings."""
        node = room.split("@", 1)[0]
        return self.cached_room(room).addCallback(lambda found: found.config if found else RoomConfig(name=node))

    def remember_room(self, found: Room | None, node: str | None = None) -> Room | None:
        self._room_cache[found.jid_node if found else node] = (self.router.clock.seconds(), found)
        return found

    def forget_room(self, node: str) -> None:
        self._room_cache.pop(node, None)

    def _presence_xml(self, room: str, occupant: Occupant, *, shows_jid: bool, **options) -> str:
        stanza = muc.occupant_presence(
            f"{room}/{occupant.nick}",
            affiliation=options.pop("affiliation", occupant.affiliation),
            role=options.pop("role", occupant.role),
            jid=occupant.full if shows_jid else None,
            payload=occupant.presence,
            **options,
        )
        return muc.serialise(stanza)

    def broadcast(
        self, room: str, config: RoomConfig, occupant: Occupant, recipients: Iterable[Occupant], *, self_codes=(), codes=(), joiner=None, **options
    ) -> None:
        """Send ``occupant``'s presence to ``recipients``: its own session gets 110 and ``self_codes``; real JIDs per whois.

        The session ``joiner`` (being sent its join sequence) gets it at once, past its buffer.
        """
        if options.get("unavailable"):
            options.setdefault("role", "none")
        groups: dict[str, list[Occupant]] = {"self": [], "jid": [], "anonymous": []}
        for recipient in recipients:
            if recipient.full == occupant.full:
                groups["self"].append(recipient)
            elif config.non_anonymous or recipient.role == "moderator":
                groups["jid"].append(recipient)
            else:
                groups["anonymous"].append(recipient)
        for kind, members in groups.items():
            if not members:
                continue
            own = [muc.SELF, *self_codes, *codes] if kind == "self" else list(codes)
            xml = self._presence_xml(room, occupant, shows_jid=kind != "anonymous", codes=own, **options)
            rest = [m for m in members if m.full != joiner]
            if len(rest) < len(members):
                self.fanout.deliver_here(room, joiner, xml, None, buffered=False)
            if rest:
                self.send(room, rest, xml)

    @defer.inlineCallbacks
    def broadcast_presence(self, room: str, occupant: Occupant, **options):
        """``occupant``'s current presence to every occupant of ``room`` (after a presence, role or affiliation change)."""
        config = yield self.room_config(room)
        occupants = yield self.run_blocking(self.occupants.occupants, room)
        self.broadcast(room, config, occupant, occupants.values(), **options)

    @defer.inlineCallbacks
    def announce_departures(self, room: str, departures: list[Departure], own: bool = False, **options):
        """Tell the room who left (each freed nickname once) and, with ``own``, each leaver's session too.

        An empty room that is not persistent, or still locked, is destroyed.
        """
        if not departures:
            return
        node = room.split("@", 1)[0]
        found = yield self.cached_room(room)
        config = found.config if found else RoomConfig(name=node)
        occupants = yield self.run_blocking(self.occupants.occupants, room)
        for departure in departures:
            recipients = list(occupants.values()) if departure.nick_freed else []
            if departure.nick_freed:
                events.emit(self.chat_server, "room_exit", room, {"sender": departure.occupant.bare, "nick": departure.occupant.nick})
            if own:
                recipients.append(departure.occupant)
            self.broadcast(room, config, departure.occupant, recipients, unavailable=True, **options)
        if not occupants:
            if found is not None and (found.locked or not found.config.persistent):
                self.log.info("room {room} is empty and not persistent: destroyed", room=room)
                self.forget_room(node)
                yield self.run_database(self.rooms.delete, node)
                yield self.run_blocking(self.occupants.delete_room, room)

    # Messages.
    def _message(self, connection, message: domish.Element, target: JID, room: str):
        kind = message.getAttribute("type", "normal")
        if kind == "error":
            return None
        if target.resourcepart is not None:
            if kind == "groupchat":
                return self.refuse(connection, message, "bad-request", "a private message is of type chat")
            return self._private(connection, message, target.resourcepart, room)
        if kind == "groupchat":
            return self._groupchat(connection, message, room)
        try:
            found = muc.invitations(message)
        except MucError as e:
            return self.refuse(connection, message, e.condition, e.text)
        if found:
            return self.admin.invitations(connection, message, target.localpart, room, found)
        return self.refuse(connection, message, "bad-request", "messages to a room are of type groupchat")

    @defer.inlineCallbacks
    def _groupchat(self, connection, message: domish.Element, room: str):
        sender = yield self.read_occupant(room, connection.jid.full())
        if sender is None:
            return self.refuse(connection, message, "not-acceptable", "join the room before sending to it")
        if sender.role not in ("moderator", "participant"):
            return self.refuse(connection, message, "forbidden", "visitors may not speak in a moderated room")
        subject = muc.subject_of(message)
        if subject is not None:
            config = yield self.room_config(room)
            if sender.role != "moderator" and not config.change_subject:
                return self.refuse(connection, message, "forbidden", "only moderators may change the subject")
            node = room.split("@", 1)[0]
            yield self.run_database(self.rooms.set_subject, node, subject, sender.nick)
            self.forget_room(node)
            events.emit(self.chat_server, "room_topic_change", room, {"sender": sender.bare, "nick": sender.nick, "topic": subject})
        stanza = muc.reflected(message, f"{room}/{sender.nick}")
        archive, message_id = self.archive, None
        if archive is not None and muc.has_body(message):
            record = archive.new_record(stanza, type="groupchat", sender=sender.bare, body=body_of(message), room=room, sender_name=sender.nick)
            stored = yield archive.store(record)  # a failure propagates: nothing is reflected, the sender gets an error
            if stored.get("duplicate"):
                return None  # a resend (same origin-id) of a message already archived and reflected
            self._no_history_until.pop(room, None)  # it has history now
            events.emit(self.chat_server, "room_message", room, record)  # durable: webhooks and mention mail may go
            xml, message_id = record["xml"], record["id"]
        else:
            xml = muc.serialise(stanza)
        try:
            # Read after the store: whoever joins from now on finds the message in the recent list.
            occupants = yield self.read_occupants(room)
        except Exception as e:
            if message_id is None:
                raise
            # Durable already: an error now would make the sender resend what history has. Only the
            # live copies are lost (Redis failing over); joiners and MAM get the message from history.
            self.log.warn("message {id} in {room} is archived but was not reflected: {error}", id=message_id, room=room, error=e)
            return None
        self.send(room, occupants.values(), xml, message_id)

    @defer.inlineCallbacks
    def _private(self, connection, message: domish.Element, nick: str, room: str):
        occupants = yield self.read_occupants(room)
        sender = occupants.get(connection.jid.full())
        if sender is None:
            return self.refuse(connection, message, "not-acceptable", "join the room before sending to its occupants")
        recipients = [o for o in occupants.values() if o.nick == nick]
        if not recipients:
            return self.refuse(connection, message, "item-not-found", "no occupant has that nickname")
        self.send(room, recipients, muc.serialise(muc.private_message(message, f"{room}/{sender.nick}")))

    # History on join.
    @defer.inlineCallbacks
    def _history(self, room: str, request: muc.HistoryRequest):
        limit = self.history_on_join if request.maxstanzas is None else min(self.history_on_join, request.maxstanzas)
        if self.recent is None or limit <= 0 or request.maxchars == 0:
            return []
        records = yield self.read_recent(room)
        if not records and self.rebuild_history is not None:
            records = yield self._rebuild_history(room)
        return muc.select_history(records, request, limit, self.now())

    @defer.inlineCallbacks
    def _rebuild_history(self, room: str):
        """Redis lost the room's recent list (or the room never had a message): refill it from OpenSearch."""
        now = self.router.clock.seconds()
        if self._no_history_until.get(room, 0) > now:
            return []
        exists = yield self.run_blocking(self.recent.exists_room, room)
        if exists:
            return []
        try:
            records = yield self.run_database(self.rebuild_history, room, self.recent.size)
        except Exception as e:
            self.log.warn("history of {room} could not be rebuilt from OpenSearch: {error}", room=room, error=e)
            self._no_history_until[room] = now + NO_HISTORY_AFTER_FAILURE_SECONDS  # joins do not each wait for the timeout
            return []
        if not records:
            self._no_history_until[room] = now + NO_HISTORY_SECONDS
            return []
        restored = yield self.run_blocking(self.recent.restore_room, room, records)
        self.log.info("rebuilt the recent list of {room} from OpenSearch ({n} messages)", room=room, n=restored)
        return records

    # Sessions.
    @defer.inlineCallbacks
    def session_ended(self, connection):
        """A session ended: it leaves every room it was in (unless it lives on in a newer stream or another front end)."""
        jid = connection.jid
        full = jid.full()
        self.fanout.forget(full)
        successor = self.router.sessions.get(jid)
        if successor is not None and successor is not connection:
            return  # the resource was bound again here: the new stream is the occupant now
        frontends = yield self.run_blocking(self.router.directory.resources, jid.bare().full())
        holder = frontends.get(jid.resourcepart)
        if holder is not None and holder != self.frontend:
            return  # the same resource is bound on another front end now
        joined = yield self.run_blocking(self.occupants.rooms_of, full)
        for room in sorted(joined):
            departures = yield self.run_blocking(self.occupants.leave, room, [full])
            yield self.announce_departures(room, departures)
        yield self.run_blocking(self.occupants.forget_session, full, self.frontend)

    def session_moved(self, connection, frontend: str) -> defer.Deferred:
        """A session moved to ``frontend`` (XEP-0198): its occupant entries name it, so room stanzas go there.

        At once, not when a room stanza finds it gone: this front end may restart
        first, and would then take every entry that still names it out of its room.
        """
        return self.run_blocking(self.occupants.move_session, connection.jid.full(), frontend)

    def clear_frontend_occupants(self) -> int:
        """Blocking, at start: take this front end's sessions from before a crash out of their rooms; return how many.

        The others in those rooms are told once the reactor runs.
        """
        departures = self.occupants.clear_frontend(self.frontend)
        by_room: dict[str, list[Departure]] = {}
        for departure in departures:
            by_room.setdefault(departure.room, []).append(departure)
        for room, gone in by_room.items():
            self.router.clock.callLater(0, self._announce_cleared, room, gone)
        return len(departures)

    def _announce_cleared(self, room: str, departures: list[Departure]) -> None:
        d = self.announce_departures(room, departures)
        d.addErrback(lambda f: self.log.failure("announcing who left {room} at start failed", f, room=room))


def room_service(chat_server, router) -> RoomService:
    """The rooms service of one front end, built from the container (``server.ChatServer``) for ``router``."""
    from hipchat_server.storage.rooms import OccupantStore, RoomStore, newest_room_records

    config = chat_server.get_config()
    rooms = config.rooms
    domain = config.server.domain
    alias = config.archive.index_prefix  # the index template's alias over every month

    def rebuild_history(room: str, limit: int) -> list[dict]:
        return newest_room_records(chat_server.get_opensearch_client(), alias, room, limit)

    service = RoomService(
        domain,
        rooms.service,
        RoomStore(chat_server.get_database_engine(), f"{rooms.service}.{domain}"),
        OccupantStore(chat_server.get_redis_primary()),
        router,
        recent=chat_server.get_recent_messages(),
        rebuild_history=rebuild_history,
        creators=rooms.creators,
        history_on_join=rooms.history_on_join,
    )
    service.chat_server = chat_server
    return service
