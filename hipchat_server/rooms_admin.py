"""Administering group rooms (XEP-0045): discovery (XEP-0030), moderation (muc#admin), ownership (muc#owner), invitations.

`RoomAdministration` answers, for `rooms.RoomService`, every iq get or set
to the rooms service or to a room, exactly once:

- the service: disco#info (a conference service), disco#items (the rooms the
  asker may see: listed open rooms, and every room the asker is a member,
  admin or owner of), ping;
- a room: disco#info (features and the muc#roominfo form; a private room
  only for its members, a locked one only for its owner), disco#items (the
  occupants, for occupants), ping, muc#admin (kick, ban, voice, moderator,
  affiliation lists), muc#owner (the configuration form, the instant room,
  destroy), and any iq a later module registers (`register_iq_handler`:
  MAM queries to a room);
- an occupant (room/nick): only the XEP-0410 self-ping; other iqs are not
  relayed (``service-unavailable``).
Results and errors sent to a room are dropped: the room asks nothing.

Mediated invitations (`invitations`) go from the room to the invitee (kept
offline when the invitee has no session); an occupant who may invite (every
occupant, unless allowinvites is off: then admins and owners) makes the
invitee a member of a private room. Declines go back to the inviter.
"""

from __future__ import annotations

from dataclasses import replace

from twisted.internet import defer
from twisted.logger import Logger
from twisted.words.xish import domish

from hipchat_server import events
from hipchat_server.storage.rooms import LastOwner, Occupant, RoomExists, UnknownUser, may_change_affiliation
from hipchat_server.xmpp import muc
from hipchat_server.xmpp.disco import DISCO_INFO_NS, DISCO_ITEMS_NS
from hipchat_server.xmpp.errors import stanza_error_reply
from hipchat_server.xmpp.jid import JID, InvalidJID, parse_jid
from hipchat_server.xmpp.muc import AFFILIATION_RANK, MucError
from hipchat_server.xmpp.muc_forms import DATA_NS, FormError, config_form, parse_config_submission, roominfo_form
from hipchat_server.xmpp.ping import PING_NS
from hipchat_server.xmpp.stanzas import iq_result

SERVICE_NAME = "Rooms"
#: What a room's disco#info always lists; the muc_* features follow its settings.
ROOM_FEATURES = (DISCO_INFO_NS, DISCO_ITEMS_NS, muc.MUC_NS, muc.MAM_NS, muc.SID_NS, "muc_unsecured")
RESERVED_NICK_NODE = "x-roomuser-item"


def _identity(query: domish.Element, name: str) -> None:
    identity = query.addElement("identity")
    identity["category"], identity["type"], identity["name"] = "conference", "text", name


def room_features(config) -> list[str]:
    """The disco#info features of a room with settings ``config`` (XEP-0045 6.4 and 15.5)."""
    return sorted(
        [
            *ROOM_FEATURES,
            "muc_persistent" if config.persistent else "muc_temporary",
            "muc_public" if config.listed else "muc_hidden",
            "muc_membersonly" if config.members_only else "muc_open",
            "muc_moderated" if config.moderated else "muc_unmoderated",
            "muc_nonanonymous" if config.non_anonymous else "muc_semianonymous",
        ]
    )


class RoomAdministration:
    """Answers iqs to the rooms service and its rooms; see the module docstring."""

    log = Logger()

    def __init__(self, service):
        self.service = service
        self._handlers: dict[tuple[str, str], object] = {}

    def register_iq_handler(self, namespace: str, name: str, handler) -> None:
        """Have ``handler(connection, iq, target)`` answer iq get/set with a ``{namespace}name`` child sent to a room."""
        self._handlers[(namespace, name)] = handler

    def iq(self, connection, iq: domish.Element, target: JID):
        """Answer one iq get or set with exactly one result or error; never fails."""
        if iq.getAttribute("type") not in ("get", "set"):
            return None
        d = defer.maybeDeferred(self._answer, connection, iq, target)
        d.addErrback(self._refused_or_failed, connection, iq)
        return d

    def _refused_or_failed(self, failure, connection, iq: domish.Element) -> None:
        error = failure.check(MucError, FormError)
        if error is not None:
            connection.deliver(stanza_error_reply(iq, failure.value.condition, text=failure.value.text))
            return
        self.log.failure("a room iq from {jid} failed", failure, jid=connection.jid)
        connection.deliver(stanza_error_reply(iq, "internal-server-error"))

    def _answer(self, connection, iq: domish.Element, target: JID):
        query = iq.firstChildElement()
        key = (query.uri, query.name)
        kind = iq.getAttribute("type")
        if key == (PING_NS, "ping") and target.resourcepart is None:
            return connection.deliver(iq_result(iq))
        if target.localpart is None:
            if kind == "get" and key == (DISCO_INFO_NS, "query"):
                return self._service_info(connection, iq, query)
            if kind == "get" and key == (DISCO_ITEMS_NS, "query"):
                return self._service_items(connection, iq)
            raise MucError("service-unavailable")
        node, room = target.localpart, self.service.room_jid(target.localpart)
        if target.resourcepart is not None:
            return self._occupant_iq(connection, iq, key, target, room)
        if kind == "get" and key == (DISCO_INFO_NS, "query"):
            return self._room_info(connection, iq, query, node, room)
        if kind == "get" and key == (DISCO_ITEMS_NS, "query"):
            return self._room_items(connection, iq, room)
        if key == (muc.MUC_ADMIN_NS, "query"):
            return self._admin(connection, iq, query, node, room)
        if key == (muc.MUC_OWNER_NS, "query"):
            return self._owner(connection, iq, query, node, room)
        handler = self._handlers.get(key)
        if handler is not None:
            return handler(connection, iq, target)
        raise MucError("service-unavailable", "rooms do not answer this request")

    # Mediated invitations (XEP-0045 7.8.2), which make the invitee a member of a private room.
    @defer.inlineCallbacks
    def invitations(self, connection, message: domish.Element, node: str, room: str, invitations: list[muc.Invitation]):
        """Relay invites (to the invitee, from the room) and declines (back to the inviter); refuse the message when one may not."""
        inviter = connection.jid
        for invitation in invitations:
            try:
                invitee = parse_jid(invitation.to)
            except InvalidJID as e:
                return self.service.refuse(connection, message, "jid-malformed", e.reason)
            if invitee.localpart is None or invitee.domainpart != self.service.domain:
                return self.service.refuse(connection, message, "item-not-found", "only users of this server can be invited")
            if invitation.kind == "invite":
                refused = yield self._may_invite(connection, node, room, invitee.localpart)
                if refused:
                    return self.service.refuse(connection, message, *refused)
            sent = muc.invitation_message(room, invitee.full(), invitation, inviter.bare().full())
            yield self.deliver_to_user(invitee, sent)

    @defer.inlineCallbacks
    def _may_invite(self, connection, node: str, room: str, username: str):
        """None when the occupant may invite ``username`` (made a member of a private room); else (condition, text)."""
        sender = yield self.service.run_blocking(self.service.occupants.occupant, room, connection.jid.full())
        if sender is None:
            return "not-acceptable", "join the room before inviting others"
        found = yield self.service.run_database(self.service.rooms.get, node)
        if found is None:
            return "item-not-found", "no such room"
        privileged = sender.affiliation in ("owner", "admin")
        if not (found.config.allow_invites or privileged):
            return "forbidden", "only admins and owners may invite to this room"
        exists = yield self.service.run_database(self.service.rooms.user_exists, username)
        if not exists:
            return "item-not-found", "no such user"
        if found.config.members_only:
            # The inviter may invite, so the invitee may enter: members-only rooms make it a member.
            try:
                yield self.service.run_database(self.service.rooms.set_affiliations, node, {username: "member"}, lambda u, old, new: old == "none")
            except PermissionError:
                pass  # already a member, admin, owner or outcast: left as it is
        return None

    def deliver_to_user(self, jid: JID, stanza: domish.Element) -> defer.Deferred:
        """Hand a room's message (an invitation) to a user's sessions, or keep it offline when none is bound."""
        if jid.resourcepart is not None:
            return self.service.router.deliver_to_full(jid, stanza)
        d = self.service.router.deliver_to_bare(jid, stanza)
        offline = getattr(self.service.router, "offline_store", None)

        def taken(count):
            if count or offline is None:
                return count
            return self.service.run_database(offline.store, jid.localpart, stanza["from"], muc.serialise(stanza))

        return d.addCallback(taken)

    # Discovery.
    def _service_info(self, connection, iq: domish.Element, query: domish.Element) -> None:
        if query.getAttribute("node"):
            raise MucError("item-not-found", "no such disco node")
        answer = domish.Element((DISCO_INFO_NS, "query"))
        _identity(answer, SERVICE_NAME)
        for feature in (DISCO_INFO_NS, DISCO_ITEMS_NS, muc.MUC_NS, PING_NS):
            answer.addElement("feature")["var"] = feature
        connection.deliver(iq_result(iq, answer))

    @defer.inlineCallbacks
    def _service_items(self, connection, iq: domish.Element):
        listed = yield self.service.run_database(self.service.rooms.listed_rooms, connection.jid.localpart)
        answer = domish.Element((DISCO_ITEMS_NS, "query"))
        for node, name in listed:
            item = answer.addElement("item")
            item["jid"], item["name"] = self.service.room_jid(node), name
        connection.deliver(iq_result(iq, answer))

    @defer.inlineCallbacks
    def _room_info(self, connection, iq: domish.Element, query: domish.Element, node: str, room: str):
        asked = query.getAttribute("node")
        if asked == RESERVED_NICK_NODE:  # XEP-0045 7.12: no nicknames are reserved here
            answer = domish.Element((DISCO_INFO_NS, "query"))
            answer["node"] = asked
            return connection.deliver(iq_result(iq, answer))
        if asked:
            raise MucError("item-not-found", "no such disco node")
        entrant = yield self.service.run_database(self.service.rooms.entrant, node, connection.jid.localpart)
        found = entrant.room
        if found is None or not self._may_see(found, entrant.affiliation):
            raise MucError("item-not-found", "no such room")
        count = yield self.service.run_blocking(self.service.occupants.count, room)
        answer = domish.Element((DISCO_INFO_NS, "query"))
        _identity(answer, found.config.name)
        for feature in room_features(found.config):
            answer.addElement("feature")["var"] = feature
        answer.addChild(roominfo_form(found.config, found.subject, count))
        connection.deliver(iq_result(iq, answer))

    @staticmethod
    def _may_see(found, affiliation: str) -> bool:
        """A private room shows itself only to its members (its name and subject are its content); a locked one to its owner."""
        if found.locked:
            return affiliation == "owner"
        return not found.config.members_only or AFFILIATION_RANK[affiliation] >= AFFILIATION_RANK["member"]

    @defer.inlineCallbacks
    def _room_items(self, connection, iq: domish.Element, room: str):
        occupants = yield self.service.run_blocking(self.service.occupants.occupants, room)
        answer = domish.Element((DISCO_ITEMS_NS, "query"))
        if connection.jid.full() in occupants:  # only occupants see who else is in
            for nick in sorted({o.nick for o in occupants.values()}):
                answer.addElement("item")["jid"] = f"{room}/{nick}"
        connection.deliver(iq_result(iq, answer))

    @defer.inlineCallbacks
    def _occupant_iq(self, connection, iq: domish.Element, key, target: JID, room: str):
        if key != (PING_NS, "ping"):
            raise MucError("service-unavailable", "iqs are not relayed to occupants")
        # XEP-0410: a client pings its own occupant JID to learn whether it is still in the room.
        me = yield self.service.run_blocking(self.service.occupants.occupant, room, connection.jid.full())
        if me is None or me.nick != target.resourcepart:
            raise MucError("not-acceptable", "you are not in this room under that nickname")
        connection.deliver(iq_result(iq))

    # muc#admin: roles and affiliations.
    @defer.inlineCallbacks
    def _admin(self, connection, iq: domish.Element, query: domish.Element, node: str, room: str):
        items = muc.admin_items(query)
        entrant = yield self.service.run_database(self.service.rooms.entrant, node, connection.jid.localpart)
        if entrant.room is None:
            raise MucError("item-not-found", "no such room")
        occupants = yield self.service.run_blocking(self.service.occupants.occupants, room)
        actor = occupants.get(connection.jid.full())
        if iq.getAttribute("type") == "get":
            listed = yield self._admin_list(items[0], entrant.affiliation, actor, node, occupants)
            return connection.deliver(iq_result(iq, muc.admin_list(listed)))
        affiliations = [item for item in items if item.affiliation is not None]
        roles = [item for item in items if item.affiliation is None]
        if affiliations:
            yield self._set_affiliations(affiliations, entrant, actor, node, room, occupants)
        if roles:
            yield self._set_roles(roles, entrant.affiliation, actor, room)
        connection.deliver(iq_result(iq))

    @defer.inlineCallbacks
    def _admin_list(self, item: muc.AdminItem, affiliation: str, actor: Occupant | None, node: str, occupants):
        if item.affiliation is not None:
            if affiliation not in ("owner", "admin"):
                raise MucError("forbidden", "only admins and owners see affiliation lists")
            usernames = yield self.service.run_database(self.service.rooms.affiliated, node, item.affiliation)
            return [muc.AdminItem(jid=f"{u}@{self.service.domain}", affiliation=item.affiliation) for u in usernames]
        if actor is None or actor.role != "moderator":
            raise MucError("forbidden", "only moderators see role lists")
        return [
            muc.AdminItem(nick=o.nick, jid=o.full, role=o.role, affiliation=o.affiliation)
            for o in sorted(occupants.values(), key=lambda o: (o.nick, o.full))
            if o.role == item.role
        ]

    def _username_of(self, item: muc.AdminItem, occupants) -> str:
        """The local user an affiliation item names, by ``jid`` or by an occupant's ``nick``."""
        if item.jid:
            try:
                jid = parse_jid(item.jid)
            except InvalidJID as e:
                raise MucError("jid-malformed", e.reason) from None
            if jid.localpart is None or jid.domainpart != self.service.domain:
                raise MucError("item-not-found", f"{item.jid[:80]} is not a user of this server")
            return jid.localpart
        for occupant in occupants.values():
            if occupant.nick == item.nick:
                return occupant.bare.split("@", 1)[0]
        raise MucError("item-not-found" if item.nick else "bad-request", "name the user by jid or by an occupant's nick")

    @defer.inlineCallbacks
    def _set_affiliations(self, items, entrant, actor: Occupant | None, node: str, room: str, occupants):
        mine = entrant.affiliation
        if mine not in ("owner", "admin"):
            raise MucError("forbidden", "only admins and owners change affiliations")
        changes = {self._username_of(item, occupants): item.affiliation for item in items}
        reasons = {self._username_of(item, occupants): item.reason for item in items}
        try:
            yield self.service.run_database(
                self.service.rooms.set_affiliations, node, changes, lambda _, old, new: may_change_affiliation(mine, old, new)
            )
        except PermissionError:
            raise MucError("not-allowed", "admins may only change members, outcasts and others below them") from None
        except LastOwner:
            raise MucError("conflict", "a room keeps at least one owner") from None
        except UnknownUser as e:
            raise MucError("item-not-found", f"{e.username[:80]} is not a user of this server") from None
        self.service.forget_room(node)
        config = entrant.room.config
        for username, affiliation in changes.items():
            bare = f"{username}@{self.service.domain}"
            sessions = [o for o in occupants.values() if o.bare == bare]
            if not sessions:
                continue
            options = dict(reason=reasons[username], actor=actor.nick if actor else None)
            if affiliation == "outcast":
                gone = yield self.service.run_blocking(self.service.occupants.leave, room, [o.full for o in sessions])
                yield self.service.announce_departures(room, gone, own=True, codes=[muc.BANNED], affiliation="outcast", **options)
            elif config.members_only and AFFILIATION_RANK[affiliation] < AFFILIATION_RANK["member"]:
                gone = yield self.service.run_blocking(self.service.occupants.leave, room, [o.full for o in sessions])
                yield self.service.announce_departures(room, gone, own=True, codes=[muc.AFFILIATION_REMOVED], affiliation=affiliation, **options)
            else:
                changed = [replace(o, affiliation=affiliation, role=muc.role_of(affiliation, config.moderated)) for o in sessions]
                yield self._announce_changes(room, changed)

    @defer.inlineCallbacks
    def _announce_changes(self, room: str, changed: list[Occupant]):
        """Store changed roles or affiliations and tell the room (one presence per nickname)."""
        present = yield self.service.run_blocking(self.service.occupants.update, room, changed)
        announced = set()
        for occupant in present:
            if occupant.nick not in announced:
                announced.add(occupant.nick)
                yield self.service.broadcast_presence(room, occupant)

    @defer.inlineCallbacks
    def _set_roles(self, items, affiliation: str, actor: Occupant | None, room: str):
        if actor is None or actor.role != "moderator":
            raise MucError("forbidden", "only moderators change roles")
        occupants = yield self.service.run_blocking(self.service.occupants.occupants, room)
        for item in items:
            targets = [o for o in occupants.values() if o.nick == item.nick]
            if not item.nick or not targets:
                raise MucError("item-not-found" if item.nick else "bad-request", "a role change names an occupant by nick")
            target = targets[0]
            if AFFILIATION_RANK[target.affiliation] >= AFFILIATION_RANK["admin"]:
                raise MucError("not-allowed", "the roles of admins and owners follow their affiliation")
            if (item.role == "moderator" or target.role == "moderator") and affiliation not in ("owner", "admin"):
                raise MucError("not-allowed", "only admins and owners grant or revoke moderation")
            if item.role == "none":  # kick (XEP-0045 8.2)
                gone = yield self.service.run_blocking(self.service.occupants.leave, room, [o.full for o in targets])
                yield self.service.announce_departures(room, gone, own=True, codes=[muc.KICKED], reason=item.reason, actor=actor.nick)
            else:
                yield self._announce_changes(room, [replace(o, role=item.role) for o in targets])

    # muc#owner: configuration and destruction.
    @defer.inlineCallbacks
    def _owner(self, connection, iq: domish.Element, query: domish.Element, node: str, room: str):
        entrant = yield self.service.run_database(self.service.rooms.entrant, node, connection.jid.localpart)
        found = entrant.room
        if found is None:
            raise MucError("item-not-found", "no such room")
        if entrant.affiliation != "owner":
            raise MucError("forbidden", "only owners configure or destroy a room")
        if iq.getAttribute("type") == "get":
            answer = domish.Element((muc.MUC_OWNER_NS, "query"))
            answer.addChild(config_form(found.config))
            return connection.deliver(iq_result(iq, answer))
        destroy = muc.destroy_request(query)
        if destroy is not None:
            reason, alternate = muc.destroy_reason(destroy)
            yield self.destroy(node, room, reason, alternate)
            return connection.deliver(iq_result(iq))
        form = next(query.elements(DATA_NS, "x"), None)
        if form is None:
            raise MucError("bad-request", "send a configuration form or <destroy/>")
        if form.getAttribute("type") == "cancel":
            if found.locked:  # XEP-0045 10.1.3: cancelling the initial configuration destroys the new room
                yield self.destroy(node, room, None, None)
            return connection.deliver(iq_result(iq))
        config = parse_config_submission(form, found.config)
        try:
            stored = yield self.service.run_database(self.service.rooms.configure, node, config)
        except RoomExists:
            raise MucError("conflict", "another room has that name") from None
        if stored is None:
            raise MucError("item-not-found", "no such room")
        self.service.remember_room(stored)
        connection.deliver(iq_result(iq))
        yield self._configured(room, found.config, stored.config)

    @defer.inlineCallbacks
    def _configured(self, room: str, before, after):
        """Tell the occupants what changed (XEP-0045 10.2.1) and let out whoever may no longer stay."""
        if before == after:
            return
        occupants = yield self.service.run_blocking(self.service.occupants.occupants, room)
        codes = [muc.CONFIG_CHANGED]
        if before.whois != after.whois:
            codes.append(muc.NOW_NON_ANONYMOUS if after.non_anonymous else muc.NOW_SEMI_ANONYMOUS)
        self.service.send(room, occupants.values(), muc.serialise(muc.status_message(room, codes)))
        if after.members_only and not before.members_only:
            outsiders = [o.full for o in occupants.values() if AFFILIATION_RANK[o.affiliation] < AFFILIATION_RANK["member"]]
            gone = yield self.service.run_blocking(self.service.occupants.leave, room, outsiders)
            yield self.service.announce_departures(room, gone, own=True, codes=[muc.MEMBERS_ONLY_NOW])

    @defer.inlineCallbacks
    def destroy(self, node: str, room: str, reason: str | None, alternate: str | None):
        """Destroy a room: every occupant is told (XEP-0045 10.9), then the room and its affiliations are deleted."""
        occupants = yield self.service.run_blocking(self.service.occupants.occupants, room)
        gone = yield self.service.run_blocking(self.service.occupants.leave, room, list(occupants))
        self.service.forget_room(node)
        yield events.emit(self.service.chat_server, "room_deleted", room, {})  # before the row (and its webhooks) go
        yield self.service.run_database(self.service.rooms.delete, node)
        config = yield self.service.room_config(room)
        destroy = muc.destroy_element(reason, alternate)
        for departure in gone:
            self.service.broadcast(room, config, departure.occupant, [departure.occupant], unavailable=True, affiliation="none", destroy=destroy)
        yield self.service.run_blocking(self.service.occupants.delete_room, room)
