"""Rosters and presence (RFC 6121 sections 2 to 4): the glue of protocol, storage and the router.

`PresenceService` handles, for the router, every ``<presence/>`` a bound
client sends, every roster iq, and the end of each session:

- Rosters live in MariaDB (`storage.roster.RosterStore`); roster pushes go to
  the resources that asked for the roster (kept in Redis, so they are found
  on any front end).
- The current available presence of every resource lives in Redis
  (`storage.presence.PresenceStore`): broadcasts go to the *available*
  resources of each contact whose subscription is ``from`` or ``both``;
  probes at initial presence are answered from Redis, never by asking
  another front end.
- Subscription stanzas change both parties' items through the pure state
  machine of `xmpp.presence` (RFC 6121 Appendix A). Every user is local:
  the stanza a user sends is processed as outbound for the sender, then as
  inbound for the contact. A request to a contact who is offline is kept
  with the contact's item and shown at the contact's next initial presence.
- Whoever gains a subscription ``from`` a contact sends the contact its
  current presence; whoever loses it sends the contact ``unavailable``.

Per-session state (initial presence sent, directed-presence targets) is kept
here per connection and dropped when the session ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from twisted.internet import defer
from twisted.logger import Logger
from twisted.words.xish import domish

from hipchat_server.xmpp.errors import stanza_error_reply
from hipchat_server.xmpp.jid import JID, parse_jid
from hipchat_server.xmpp.presence import (
    SUBSCRIPTION_KINDS,
    PresenceError,
    SubscriptionState,
    copy_stanza,
    inbound,
    outbound,
    presence_element,
    presence_kind,
    priority,
)
from hipchat_server.xmpp.stanzas import stanza_from_xml, stanza_to_xml
from hipchat_server.xmpp.roster import (
    RosterError,
    RosterItem,
    parse_roster_set,
    roster_push,
    roster_result,
)
from hipchat_server.xmpp.stanzas import iq_result


@dataclass
class _Session:
    """What the service remembers about one bound session."""

    available: bool = False  # sent available presence, and no unavailable since
    announced: bool = False  # the router was told of its first available presence
    ended: bool = False
    directed: set[JID] = field(default_factory=set)  # targets of directed available presence


def _state(item: RosterItem | None) -> SubscriptionState:
    return item.state if item is not None else SubscriptionState()


class PresenceService:
    """Presence and rosters for the router; see the module docstring.

    ``router`` offers ``deliver_to_full``, ``deliver_to_bare``,
    ``initial_presence_sent`` and ``run_blocking`` (used unless
    ``run_blocking`` is given). Store methods block and run through
    ``run_blocking``.
    """

    log = Logger()

    def __init__(self, domain: JID | str, roster_store, presence_store, router, run_blocking=None):
        self.domain = parse_jid(domain) if isinstance(domain, str) else domain
        self.rosters = roster_store
        self.presences = presence_store
        self.router = router
        self._run_blocking = run_blocking
        self._sessions: dict[object, _Session] = {}

    # The router's entry points.
    def presence_from_client(self, connection, element: domish.Element) -> defer.Deferred:
        """Handle one presence stanza from a bound client (checked and ``from``-stamped)."""
        return self._guarded(self._presence(connection, element), "presence", connection)

    def roster_iq(self, connection, iq: domish.Element) -> defer.Deferred | None:
        """Answer a roster get or set (RFC 6121 2.1.3, 2.3 to 2.5); results and errors (answers to pushes) are dropped."""
        kind = iq.getAttribute("type")
        if kind == "get":
            work = self._roster_get(connection, iq)
        elif kind == "set":
            work = self._roster_set(connection, iq)
        else:
            return None

        def failed(failure):
            self.log.failure("roster {kind} of {jid} failed", failure, kind=kind, jid=connection.jid)
            connection.deliver(stanza_error_reply(iq, "internal-server-error"))

        return work.addErrback(failed)

    def session_ended(self, connection) -> defer.Deferred:
        """The session is gone: broadcast its unavailable presence if needed and forget it."""
        session = self._sessions.pop(connection, None) or _Session()
        session.ended = True
        return self._guarded(self._end(connection, session), "end of session", connection)

    # Helpers.
    def run_blocking(self, f, *args) -> defer.Deferred:
        return (self._run_blocking or self.router.run_blocking)(f, *args)

    def _guarded(self, d: defer.Deferred, what: str, connection) -> defer.Deferred:
        def failed(failure):
            self.log.failure("{what} of {jid} failed", failure, what=what, jid=connection.jid)

        return d.addErrback(failed)

    def _session(self, connection) -> _Session:
        return self._sessions.setdefault(connection, _Session())

    def _is_local_user(self, jid: JID) -> bool:
        return jid.localpart is not None and jid.domainpart == self.domain.domainpart

    @staticmethod
    def _refuse(connection, stanza: domish.Element, condition: str, text: str) -> None:
        if stanza.getAttribute("type") != "error":
            connection.deliver(stanza_error_reply(stanza, condition, text=text))

    @defer.inlineCallbacks
    def _deliver_to_available(self, bare: JID, stanza: domish.Element, available=None):
        """Deliver ``stanza`` to every available resource of ``bare``; return how many took it."""
        if available is None:
            available = yield self.run_blocking(self.presences.available, bare.full())
        if not available:
            return 0
        return (yield self.router.deliver_to_bare(bare, stanza, sorted(available)))

    @defer.inlineCallbacks
    def _deliver_directed(self, target: JID, stanza: domish.Element):
        if target.resourcepart is not None:
            yield self.router.deliver_to_full(target, stanza)
        else:
            yield self._deliver_to_available(target, stanza)

    @defer.inlineCallbacks
    def _push(self, owner: JID, item: RosterItem, removed: bool = False):
        """Send a roster push of ``item`` to each resource of ``owner`` that asked for the roster."""
        resources = yield self.run_blocking(self.presences.roster_interested, owner.full())
        for resource in sorted(resources):
            yield self.router.deliver_to_full(owner.with_resource(resource), roster_push(owner.with_resource(resource), item, removed))

    @defer.inlineCallbacks
    def _send_presence(self, owner: JID, to: JID, unavailable: bool = False):
        """Send ``to`` (a bare JID) the presence of each available resource of ``owner``, or its unavailable."""
        available = yield self.run_blocking(self.presences.available, owner.full())
        for resource, (_, xml) in sorted(available.items()):
            if unavailable:
                stanza = presence_element("unavailable", owner.with_resource(resource).full(), to.full())
            else:
                stanza = copy_stanza(stanza_from_xml(xml), to=to.full())
            yield self._deliver_to_available(to, stanza)

    # Presence stanzas.
    @defer.inlineCallbacks
    def _presence(self, connection, element: domish.Element):
        try:
            kind = presence_kind(element)
        except PresenceError as e:
            return self._refuse(connection, element, e.condition, e.text)
        to = element.getAttribute("to")
        target = parse_jid(to) if to else None
        user = connection.jid.bare()
        if target is not None and target.domainpart != self.domain.domainpart:
            return self._refuse(connection, element, "remote-server-not-found", "only users of this server are reachable")
        if kind in SUBSCRIPTION_KINDS:
            if target is None or target.localpart is None:
                return self._refuse(connection, element, "bad-request", "a subscription stanza is addressed to a user")
            if target.bare() != user:
                yield self._outbound_subscription(user, target.bare(), kind, element)
        elif kind == "probe":
            if target is not None and target.localpart is not None:
                yield self._probe(connection, target.bare())
        elif target is None:
            if kind == "available":
                yield self._available(connection, element)
            elif kind == "unavailable":
                yield self._unavailable(connection, self._session(connection), element)
        elif target.localpart is not None:
            yield self._directed(connection, kind, target, element)

    @defer.inlineCallbacks
    def _available(self, connection, element: domish.Element):
        """Initial or subsequent available presence (RFC 6121 4.2 and 4.4)."""
        session = self._session(connection)
        full = connection.jid
        user = full.bare()
        stanza = copy_stanza(element, to=None)
        stanza["from"] = full.full()
        yield self.run_blocking(
            self.presences.set_available, user.full(), full.resourcepart, priority(element), stanza_to_xml(stanza)
        )
        if session.ended:  # the session ended while Redis was written: take the entry back
            yield self.run_blocking(self.presences.remove_resource, user.full(), full.resourcepart)
            return
        initial, session.available = not session.available, True
        try:
            items = yield self.run_blocking(self.rosters.items, user.localpart)
            subscribers = [i.jid for i in items if i.state.has_from and self._is_local_user(i.jid)]
            publishers = [i.jid for i in items if i.state.has_to and self._is_local_user(i.jid)] if initial else []
            available = yield self.run_blocking(
                self.presences.available_many, [j.full() for j in subscribers + publishers + [user]]
            )
            for contact in subscribers:
                yield self._deliver_to_available(contact, copy_stanza(stanza, to=contact.full()), available.get(contact.full(), {}))
            own = available.get(user.full(), {})
            # Every available resource of the user sees it, this one included (4.2.2, 4.4.2).
            yield self._deliver_to_available(user, copy_stanza(stanza, to=user.full()), own)
            if not initial:
                return
            # The probes of 4.2.2, answered from Redis: contacts, then the user's other resources.
            for contact in publishers:
                for _, (_, xml) in sorted(available.get(contact.full(), {}).items()):
                    yield self.router.deliver_to_full(full, copy_stanza(stanza_from_xml(xml), to=full.full()))
            for resource, (_, xml) in sorted(own.items()):
                if resource != full.resourcepart:
                    yield self.router.deliver_to_full(full, copy_stanza(stanza_from_xml(xml), to=full.full()))
            # Subscription requests that came while the user was away (3.1.3).
            for item in items:
                if item.ask_in and item.ask_in_stanza:
                    yield self.router.deliver_to_full(full, copy_stanza(stanza_from_xml(item.ask_in_stanza), to=full.full()))
        finally:
            if initial and not session.announced and not session.ended:
                session.announced = True
                self.router.initial_presence_sent(connection)

    @defer.inlineCallbacks
    def _unavailable(self, connection, session: _Session, element: domish.Element | None):
        """Unavailable presence, sent by the client or on its behalf when the session ends (4.5)."""
        full = connection.jid
        user = full.bare()
        if element is None:
            stanza = presence_element("unavailable", full.full())
        else:
            stanza = copy_stanza(element, to=None)
            stanza["from"] = full.full()
        was_available, session.available = session.available, False
        targets, session.directed = session.directed, set()
        yield self.run_blocking(self.presences.set_unavailable, user.full(), full.resourcepart)
        covered: set[JID] = set()
        if was_available:
            items = yield self.run_blocking(self.rosters.items, user.localpart)
            subscribers = [i.jid for i in items if i.state.has_from and self._is_local_user(i.jid)]
            available = yield self.run_blocking(self.presences.available_many, [j.full() for j in subscribers + [user]])
            for contact in subscribers:
                covered.add(contact)
                yield self._deliver_to_available(contact, copy_stanza(stanza, to=contact.full()), available.get(contact.full(), {}))
            own = {r: v for r, v in available.get(user.full(), {}).items() if r != full.resourcepart}
            yield self._deliver_to_available(user, copy_stanza(stanza, to=user.full()), own)
        # Those the session sent directed presence to, and that the broadcast did not reach (4.6.3).
        for target in sorted(targets, key=JID.full):
            if target.bare() not in covered:
                yield self._deliver_directed(target, copy_stanza(stanza, to=target.full()))

    @defer.inlineCallbacks
    def _directed(self, connection, kind: str, target: JID, element: domish.Element):
        """Presence addressed to one entity (4.6): delivered whatever the subscription; remembered until unavailable."""
        session = self._session(connection)
        if kind == "available":
            session.directed.add(target)
        elif kind == "unavailable":
            session.directed.discard(target)
        yield self._deliver_directed(target, element)

    @defer.inlineCallbacks
    def _probe(self, connection, target: JID):
        """A client's probe (4.3): answered from Redis when the user may see ``target``'s presence."""
        full = connection.jid
        user = full.bare()
        if target != user:
            item = yield self.run_blocking(self.rosters.get, user.localpart, target.full())
            if not _state(item).has_to:
                return  # never reveal presence to someone not subscribed to it
        available = yield self.run_blocking(self.presences.available, target.full())
        if not available:
            yield self.router.deliver_to_full(full, presence_element("unavailable", target.full(), full.full()))
        for _, (_, xml) in sorted(available.items()):
            yield self.router.deliver_to_full(full, copy_stanza(stanza_from_xml(xml), to=full.full()))

    @defer.inlineCallbacks
    def _end(self, connection, session: _Session):
        if session.available or session.directed:
            yield self._unavailable(connection, session, None)
        jid = connection.jid
        yield self.run_blocking(self.presences.remove_resource, jid.bare().full(), jid.resourcepart)

    # Subscriptions.
    def _change(self, owner: JID, contact: JID, machine, kind: str, stanza_xml: str | None = None) -> defer.Deferred:
        """Apply ``machine(kind, state)`` to ``owner``'s item for ``contact``; a Deferred of (old, new, transition)."""
        outcome = {}

        def change(item: RosterItem | None) -> RosterItem | None:
            current = item or RosterItem(contact)
            outcome["transition"] = transition = machine(kind, current.state)
            new = current.with_state(transition.state, stanza_xml)
            if new.is_empty and (item is None or not item.on_roster):
                return None  # a row that only held a request, or none at all: nothing to keep
            return new

        d = self.run_blocking(self.rosters.update, owner.localpart, contact.full(), change)
        return d.addCallback(lambda old_new: (*old_new, outcome["transition"]))

    @defer.inlineCallbacks
    def _push_change(self, owner: JID, old: RosterItem | None, new: RosterItem | None, transition):
        if not transition.push:
            return
        if new is not None and new.on_roster:
            yield self._push(owner, new)
        elif old is not None and old.on_roster:
            yield self._push(owner, old, removed=True)

    @defer.inlineCallbacks
    def _presence_after_change(self, owner: JID, contact: JID, old: SubscriptionState, new: SubscriptionState):
        """Gaining ``from`` sends the contact the owner's presence; losing it sends unavailable (3.1.5, 3.2.2, 3.3.3)."""
        if new.has_from and not old.has_from:
            yield self._send_presence(owner, contact)
        elif old.has_from and not new.has_from:
            yield self._send_presence(owner, contact, unavailable=True)

    @defer.inlineCallbacks
    def _outbound_subscription(self, user: JID, contact: JID, kind: str, element: domish.Element):
        """A subscription stanza from ``user`` about ``contact`` (3.1 to 3.4): the user's side, then the contact's."""
        stanza = copy_stanza(element, **{"from": user.full(), "to": contact.full()})  # stamped with the bare JID (3.1.2)
        exists = yield self.run_blocking(self.rosters.user_exists, contact.localpart)
        old, new, transition = yield self._change(user, contact, outbound, kind)
        yield self._push_change(user, old, new, transition)
        if transition.route:
            if exists:
                yield self._inbound(contact, user, kind, stanza)
            elif kind == "subscribe":  # no such user: the request is answered unsubscribed (RFC 6121 8.5.1)
                yield self._inbound(user, contact, "unsubscribed", presence_element("unsubscribed", contact.full(), user.full()))
        yield self._presence_after_change(user, contact, _state(old), _state(new))

    @defer.inlineCallbacks
    def _inbound(self, owner: JID, sender: JID, kind: str, stanza: domish.Element):
        """A subscription stanza from ``sender`` arriving at ``owner`` (Appendix A.3)."""
        stanza_xml = stanza_to_xml(stanza) if kind == "subscribe" else None
        old, new, transition = yield self._change(owner, sender, inbound, kind, stanza_xml)
        yield self._push_change(owner, old, new, transition)
        if transition.route:
            yield self._deliver_to_available(owner, stanza)
        if transition.auto_reply == "subscribed":
            # The sender is already subscribed: approve again and send the owner's presence (3.1.3).
            reply = presence_element("subscribed", owner.full(), sender.full())
            yield self._inbound(sender, owner, "subscribed", reply)
            yield self._send_presence(owner, sender)
        yield self._presence_after_change(owner, sender, _state(old), _state(new))

    # Rosters.
    @defer.inlineCallbacks
    def _roster_get(self, connection, iq: domish.Element):
        user = connection.jid.bare()
        yield self.run_blocking(self.presences.set_roster_interest, user.full(), connection.jid.resourcepart)
        items = yield self.run_blocking(self.rosters.items, user.localpart)
        connection.deliver(roster_result(iq, items))

    @defer.inlineCallbacks
    def _roster_set(self, connection, iq: domish.Element):
        user = connection.jid.bare()
        try:
            request = parse_roster_set(iq)
        except RosterError as e:
            return connection.deliver(stanza_error_reply(iq, e.condition, text=e.text))
        if request.jid.bare() == user:
            return connection.deliver(stanza_error_reply(iq, "not-allowed", text="your own JID is not a contact"))
        contact = request.jid
        if request.remove:
            return (yield self._roster_remove(connection, iq, contact))

        def change(item: RosterItem | None) -> RosterItem:
            if item is None:
                return RosterItem(contact, request.name, request.groups)
            return replace(item, name=request.name, groups=request.groups)

        _, new = yield self.run_blocking(self.rosters.update, user.localpart, contact.full(), change)
        connection.deliver(iq_result(iq))
        yield self._push(user, new)

    @defer.inlineCallbacks
    def _roster_remove(self, connection, iq: domish.Element, contact: JID):
        """Remove an item (2.5): cancel both subscriptions and any pending request, push the removal."""
        user = connection.jid.bare()
        old = yield self.run_blocking(self.rosters.delete, user.localpart, contact.full())
        if old is None:
            return connection.deliver(stanza_error_reply(iq, "item-not-found", text="no such item in the roster"))
        connection.deliver(iq_result(iq))
        yield self._push(user, old, removed=True)
        state = old.state
        if self._is_local_user(contact) and contact.is_bare:
            exists = yield self.run_blocking(self.rosters.user_exists, contact.localpart)
            if exists and (state.has_to or state.ask_out):
                yield self._inbound(contact, user, "unsubscribe", presence_element("unsubscribe", user.full(), contact.full()))
            if exists and (state.has_from or state.ask_in):
                yield self._inbound(contact, user, "unsubscribed", presence_element("unsubscribed", user.full(), contact.full()))
            yield self._presence_after_change(user, contact, state, SubscriptionState())
