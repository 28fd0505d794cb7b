"""Stanza routing across every front end: the session directory in Redis, delivery over pub/sub.

A front end holds its clients' streams; any front end may need to reach any
user, so each bound session is recorded in Redis (storage/sessions.py) with
the id of the front end holding it. A stanza for a session held elsewhere is
published on that front end's channel; its `DeliveryListener` hands it to
the stream and, for messages, publishes a confirmation back. Each sender's
stanzas are routed one after another, so a client's messages arrive in the
order it sent them.

A message counts as durable (and `stanza_from_client`'s Deferred fires, which
is when XEP-0198 acknowledges it) once it is written to a recipient's stream
on this front end, confirmed written by another front end, stored offline
(XEP-0160) in MariaDB, or answered with an error. A front end that does not
confirm within `CONFIRM_TIMEOUT` counts as gone: the message is stored
offline instead (it may then arrive twice, never zero times). A message the
archive holds (archive.py: in the spool before anything else) needs no
confirmation: the other front end is told to keep it offline itself should
the session be gone, and only a front end that did not take the publish at
all leaves it to this one to store offline.

Message routing follows RFC 6121 section 8.5: to a full JID that is bound,
that session; otherwise (and to a bare JID) every available resource with a
non-negative priority; with none, chat and normal messages are stored
offline and delivered at the user's next available presence. Message
Carbons (XEP-0280) copy chat messages to the other resources that asked.
"""

from __future__ import annotations

import itertools
from collections import deque
import json
import threading
import time
from typing import Callable, Iterable

from twisted.internet import defer, reactor, threads
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.words.xish import domish

from hipchat_server.archive import body_of, is_archived
from hipchat_server.storage.sessions import SessionDirectory, UserSessions
from hipchat_server.xmpp import carbons
from hipchat_server.xmpp.bind import SessionTable
from hipchat_server.xmpp.delay import add_delay
from hipchat_server.xmpp.errors import stanza_error_reply
from hipchat_server.xmpp.jid import JID, parse_jid
from hipchat_server.xmpp.local_routing import ANSWERED_MESSAGE_TYPES, EchoLessRouter
from hipchat_server.xmpp.stanzas import iq_result, stanza_from_xml
from hipchat_server.xmpp.xml_parser import CLIENT_NS

# One-to-one message types that are archived (groupchat is archived by the rooms).
ARCHIVED_ONE_TO_ONE = frozenset({"normal", "chat"})
# Message types kept for a user with no available resource (RFC 6121 8.5.2.2.1; XEP-0160).
STORED_MESSAGE_TYPES = frozenset({"normal", "chat"})
# Seconds another front end has to confirm it wrote a message before it is stored offline instead.
CONFIRM_TIMEOUT = 3.0
ROSTER_NS = "jabber:iq:roster"

IqHandler = Callable[..., "defer.Deferred | None"]


class _Lane:
    """One connection's routing work, run one item at a time in arrival order."""

    __slots__ = ("queue", "running")

    def __init__(self):
        self.queue: deque = deque()
        self.running = False


def _full(bare: JID, resource: str) -> JID:
    """``bare`` with a resource that is already prepared (it comes from the session directory)."""
    return JID(bare.localpart, bare.domainpart, resource)


class ClusterRouter(EchoLessRouter):
    """A `c2s.StanzaRouter` that reaches sessions on every front end through the directory.

    ``presence`` (a `presence.PresenceService`) handles presence stanzas and
    roster queries; ``offline_store`` (a `storage.offline.OfflineStore`) keeps
    messages for users who are not available. Both are optional so the router
    can be tested alone.
    """

    log = Logger()

    def __init__(
        self,
        domain: str,
        sessions: SessionTable,
        directory: SessionDirectory,
        run_blocking=threads.deferToThread,
        *,
        offline_store=None,
        publisher=None,
        run_database=None,
        archive=None,
        clock=None,
    ):
        super().__init__(domain, sessions)
        self.directory = directory
        # Redis calls (fast, on every message) and MariaDB calls (slower, at logins) run in separate
        # thread pools, so a burst of logins never queues the routing of messages behind it.
        self.run_blocking = run_blocking
        self.run_database = run_database or run_blocking
        self.offline_store = offline_store
        self.archive = archive  # an archive.MessageArchive; None routes without archiving (unit tests)
        self.publisher = publisher  # a storage.publisher.OrderedPublisher; None publishes from the thread pool
        self.presence = None
        self.clock = clock or reactor
        self._lanes: dict[object, _Lane] = {}
        # Work a stopping front end must finish first: re-routing what ended sessions left unacknowledged,
        # keeping offline what was published for a session that just ended.
        self._finishing: set[defer.Deferred] = set()
        self._iq_handlers: dict[tuple[str, str], IqHandler] = {}
        self._published_handlers: dict[str, Callable[[dict], None]] = {
            "deliver": self._published_delivery,
            "delivered": self._published_confirmation,
        }
        self._domain_handlers: dict[str, Callable[..., "defer.Deferred | None"]] = {}
        self._session_end_handlers: list[Callable[..., "defer.Deferred | None"]] = []
        self._session_move_handlers: list[Callable[..., "defer.Deferred | None"]] = []
        self._awaiting_confirmation: dict[str, defer.Deferred] = {}
        self._confirmation_ids = itertools.count(1)
        self._confirmation_deadlines: deque[tuple[float, str]] = deque()
        self._deadline_timer = None
        self.register_iq_handler(ROSTER_NS, "query", self._roster_iq)
        self.register_iq_handler(carbons.CARBONS_NS, "enable", self._carbons_iq)
        self.register_iq_handler(carbons.CARBONS_NS, "disable", self._carbons_iq)

    @property
    def frontend_id(self) -> str:
        return self.directory.frontend_id

    # Extension points for the services built on the router.
    def register_iq_handler(self, namespace: str, name: str, handler: IqHandler) -> None:
        """Have ``handler(connection, iq, target)`` answer iq get/set with a ``{namespace}name`` child.

        Used for iqs to the server, to no address, or to any bare JID of this
        domain; the handler delivers exactly one reply and may return a Deferred.
        """
        self._iq_handlers[(namespace, name)] = handler

    def register_domain_handler(self, domainpart: str, handler: Callable[..., "defer.Deferred | None"]) -> None:
        """Have ``handler(connection, stanza, target)`` take every stanza a client sends to ``domainpart``.

        For a service on a subdomain (rooms on ``conference.<domain>``). Runs in
        the connection's order; the Deferred it returns (if any) fires when the
        stanza is done, and for a message that means durable: XEP-0198 counts it
        then, and an errback answers the sender with an error.
        """
        self._domain_handlers[domainpart] = handler

    def service_domains(self) -> list[str]:
        """The services registered with `register_domain_handler`, listed in the server's disco#items."""
        return sorted(self._domain_handlers)

    def on_session_ended(self, handler: Callable[..., "defer.Deferred | None"]) -> None:
        """Run ``handler(connection)`` when a bound session ends, before it leaves the session directory."""
        self._session_end_handlers.append(handler)

    def on_session_moved(self, handler: Callable[..., "defer.Deferred | None"]) -> None:
        """Run ``handler(connection, frontend)`` when a session of this front end moved to ``frontend`` (XEP-0198)."""
        self._session_move_handlers.append(handler)

    def session_moved(self, connection, frontend: str) -> defer.Deferred:
        """``connection``'s session lives on ``frontend`` now; fires once every handler followed it there."""
        moves = [defer.maybeDeferred(handler, connection, frontend) for handler in self._session_move_handlers]
        return defer.gatherResults(moves, consumeErrors=True)

    def frontends_of_user(self, username: str) -> defer.Deferred:
        """The front ends holding a bound session of ``username`` (the session directory)."""
        d = self.run_blocking(self.directory.resources, f"{username}@{self.domain.domainpart}")
        return d.addCallback(lambda resources: sorted(set(resources.values())))

    def on_published(self, kind: str, handler: Callable[[dict], None]) -> None:
        """Run ``handler(payload)`` (on the reactor thread) for each ``kind`` item published to this front end."""
        self._published_handlers[kind] = handler

    def publish_to_frontend(self, frontend_id: str, kind: str, payload: dict) -> defer.Deferred:
        """Publish ``payload`` as a ``kind`` item to another front end; fires with the number of receivers."""
        body = json.dumps(dict(payload, kind=kind))
        return self._publish(frontend_id, body)

    def _publish(self, frontend_id: str, body: str) -> defer.Deferred:
        """Publish on a front end's channel: in call order through ``publisher`` when there is one."""
        if self.publisher is not None:
            return self.publisher.publish(self.directory.channel_of(frontend_id), body)
        return self.run_blocking(self.directory.publish, frontend_id, body)

    # Sessions.
    def session_started(self, connection) -> None:
        jid = connection.jid
        self._in_order(connection, lambda: self.run_blocking(self.directory.add, str(jid.bare()), jid.resourcepart))

    def session_ended(self, connection) -> None:
        jid = connection.jid

        def end():
            handlers = [self.presence.session_ended] if self.presence else []
            cleanups = [defer.maybeDeferred(handler, connection) for handler in handlers + self._session_end_handlers]
            for d in cleanups:
                d.addErrback(lambda f: self.log.failure("cleanup after the session of {jid} failed", f, jid=jid))
            d = defer.DeferredList(cleanups)
            d.addCallback(lambda _: self._remove_from_directory(connection, jid))
            return d

        d = self._finish_before_stop(self._in_order(connection, end))
        d.addBoth(lambda _: self._forget(connection))

    def _remove_from_directory(self, connection, jid: JID):
        successor = self.sessions.get(jid)
        if successor is not None and successor is not connection:
            return None  # a newer stream bound this resource here: the entry is now its own
        return self.run_blocking(self.directory.remove, str(jid.bare()), jid.resourcepart)

    def initial_presence_sent(self, connection) -> defer.Deferred:
        """``connection`` became available: hand it the messages stored while its user was away."""
        return self._in_order(connection, lambda: self._deliver_offline(connection))

    def undelivered(self, connection, stanzas: Iterable[str]) -> defer.Deferred:
        """Stanzas queued for a session that ended before its client acknowledged them (XEP-0198).

        Messages go to the user's other available resources or offline storage;
        an iq request is answered with an error so its sender is not left waiting.
        """
        d = defer.DeferredList([self._reroute(connection.jid, xml) for xml in stanzas], consumeErrors=True)
        return self._finish_before_stop(d)

    def _finish_before_stop(self, d: defer.Deferred) -> defer.Deferred:
        self._finishing.add(d)
        d.addBoth(lambda result: (self._finishing.discard(d), result)[1])
        return d

    def drain(self, timeout: float) -> defer.Deferred:
        """Fires once unacknowledged stanzas of ended sessions are re-routed (or after ``timeout`` seconds).

        A stopping front end waits for this, or those stanzas would die with it.
        """
        pending = defer.DeferredList(list(self._finishing), consumeErrors=True)
        timer = self.clock.callLater(timeout, lambda: pending.called or pending.callback(None))
        pending.addBoth(lambda result: (timer.active() and timer.cancel(), result)[1])
        return pending

    # Stanzas from clients.
    def stanza_from_client(self, connection, element: domish.Element) -> defer.Deferred | None:
        to = element.getAttribute("to")
        target = parse_jid(to) if to else None  # the connection checked that it parses
        service = self._domain_handlers.get(target.domainpart) if target is not None else None
        if service is not None:
            return self._in_order_with_outcome(connection, lambda: service(connection, element, target))
        if element.name == "presence":
            if self.presence is None:
                return None
            return self._in_order(connection, lambda: self.presence.presence_from_client(connection, element))
        if element.name == "message":
            if target is None or target.localpart is None:
                return None  # to the server itself: nothing handles it
            if target.domainpart != self.domain.domainpart:
                connection.deliver(stanza_error_reply(element, "remote-server-not-found"))
                return None
            durable = defer.Deferred()
            self._in_order(connection, lambda: self._route_message(connection, element, target, durable))
            return durable
        handler = self._iq_handler_for(element, target)
        if handler is not None:
            return self._in_order(connection, lambda: handler(connection, element, target))
        if self._is_for_remote_session(connection, target):
            return self._in_order(connection, lambda: self._route_iq(connection, element, target))
        super().stanza_from_client(connection, element)
        return None

    def _iq_handler_for(self, iq: domish.Element, target: JID | None) -> IqHandler | None:
        if iq.name != "iq" or iq.getAttribute("type") not in ("get", "set"):
            return None
        if target is not None and (target.domainpart != self.domain.domainpart or target.resourcepart is not None):
            return None
        child = iq.firstChildElement()
        return self._iq_handlers.get((child.uri, child.name)) if child is not None else None

    def _forget(self, connection) -> None:
        self._lanes.pop(connection, None)

    def _is_for_remote_session(self, connection, target: JID | None) -> bool:
        return (
            target is not None
            and target.resourcepart is not None
            and target.bare() != connection.jid.bare()
            and self.sessions.get(target) is None
        )

    def _in_order(self, connection, work) -> defer.Deferred:
        """Run ``work`` once this connection's earlier routing work has finished; fires when ``work`` has.

        Each connection has a lane (a queue); work that finishes at once does
        not wait for the reactor, and a long queue costs O(1) per item (a
        chain of Deferreds would cost O(n) per callback).
        """
        lane = self._lanes.get(connection)
        if lane is None:
            lane = self._lanes[connection] = _Lane()
        done = defer.Deferred()
        lane.queue.append((work, done))
        if not lane.running:
            self._drain(connection, lane)
        return done

    def _in_order_with_outcome(self, connection, work) -> defer.Deferred:
        """Like `_in_order`, but the Deferred fails when ``work`` fails (the stream answers the error)."""
        outcome = defer.Deferred()

        def run():
            d = defer.maybeDeferred(work)
            d.addBoth(lambda result: outcome.errback(result) if isinstance(result, Failure) else outcome.callback(result))
            return d

        self._in_order(connection, run)
        return outcome

    def _drain(self, connection, lane: "_Lane") -> None:
        lane.running = True
        while lane.queue:
            work, done = lane.queue.popleft()
            d = defer.maybeDeferred(work)
            d.addErrback(self._routing_failed, connection)
            finished_now: list[bool] = []
            d.addBoth(finished_now.append)
            if not finished_now:
                d.addBoth(self._resume, connection, lane, done)
                return  # _resume continues the lane
            done.callback(None)
        lane.running = False

    def _resume(self, _result, connection, lane: "_Lane", done: defer.Deferred) -> None:
        done.callback(None)
        self._drain(connection, lane)

    def _routing_failed(self, failure, connection) -> None:
        self.log.failure("routing a stanza from {jid} failed", failure, jid=connection.jid)

    # Built-in iq handlers.
    def _roster_iq(self, connection, iq: domish.Element, target: JID | None):
        if target is not None and target not in (self.domain, connection.jid.bare()):
            connection.deliver(stanza_error_reply(iq, "forbidden", text="only your own roster"))
            return None
        if self.presence is None:
            connection.deliver(stanza_error_reply(iq, "service-unavailable"))
            return None
        return self.presence.roster_iq(connection, iq)

    def _carbons_iq(self, connection, iq: domish.Element, target: JID | None):
        enable = carbons.carbons_request(iq)
        if enable is None or (target is not None and target != self.domain and target != connection.jid.bare()):
            connection.deliver(stanza_error_reply(iq, "bad-request"))
            return None
        jid = connection.jid
        d = self.run_blocking(self.directory.set_carbons, str(jid.bare()), jid.resourcepart, enable)
        d.addCallback(lambda _: connection.deliver(iq_result(iq)))
        return d

    # Messages.
    @defer.inlineCallbacks
    def _route_message(self, connection, message: domish.Element, target: JID, durable: defer.Deferred):
        """Route one message from a client; ``durable`` fires once it is delivered, stored or answered."""
        try:
            bare, sender_bare = str(target.bare()), str(connection.jid.bare())
            # Where the recipient is first: should Redis fail, nothing is archived yet and the sender's
            # error is true. Once archived, the message is durable whatever happens to its delivery.
            recipient, sender = yield self._lookup_many([bare, sender_bare])
            kind, xml = message.getAttribute("type", "normal"), None
            if self.archive is not None and kind in ARCHIVED_ONE_TO_ONE and is_archived(message):
                record = self.archive.new_record(
                    message, type=kind, sender=sender_bare, body=body_of(message), recipient=bare
                )
                stored = yield self.archive.store(record)  # durable before anyone sees it
                if stored.get("duplicate"):
                    durable.callback(None)  # a resend of a message already archived (and delivered or stored)
                    return
                xml = record["xml"]  # serialised once, with its stanza-id, for every recipient
            if bare == sender_bare:
                sender = recipient
            outcome, settled = yield self._route_to_user(message, target, sender=connection.jid, user=recipient, xml=xml)
            if outcome in ("stored", "delivered"):
                self._send_carbons(connection, message, sender)
            else:
                self._answer_failed_delivery(outcome, connection, message)
        except Exception:
            # The spool, Redis or MariaDB failed: the message is neither delivered nor stored. The stream
            # answers internal-server-error (and counts it for XEP-0198), so the sender knows.
            self.log.failure("routing a message from {jid} failed", jid=connection.jid)
            durable.errback()
            return
        # Routing is done (the sender's next stanza may go); durability may still wait for confirmations.
        if settled is None:
            durable.callback(None)
            return
        settled.addCallback(self._answer_failed_delivery, connection, message)
        settled.chainDeferred(durable)

    def _lookup_many(self, bares: list[str]) -> defer.Deferred:
        """`SessionDirectory.lookup_many` through the ordered Redis writer (one pipeline for many messages' reads)."""
        if self.publisher is None:
            return self.run_blocking(self.directory.lookup_many, bares)
        d = self.publisher.submit(lambda pipe: self.directory.lookup_commands(pipe, bares))
        return d.addCallback(self.directory.lookups_from)

    def _answer_failed_delivery(self, outcome: str | None, connection, message: domish.Element) -> None:
        """Tell the sender when a message ended neither delivered nor stored (``outcome`` is the error)."""
        if outcome in (None, "stored", "delivered"):
            return
        if message.getAttribute("type", "normal") in ANSWERED_MESSAGE_TYPES:
            connection.deliver(stanza_error_reply(message, outcome))

    @defer.inlineCallbacks
    def _route_to_user(
        self, message: domish.Element, target: JID, sender: JID | None, user: UserSessions | None = None, xml: str | None = None
    ):
        """Deliver ``message`` to ``target`` per RFC 6121 8.5.

        Returns ``(outcome, settled)``: outcome is "delivered", "stored", None
        (dropped) or the error condition to answer with; ``settled`` is None or
        a Deferred that fires once other front ends confirmed (or, failing
        that, the message was stored offline).
        """
        kind = message.getAttribute("type", "normal")
        bare = target.bare()
        if user is None:
            user = yield self.run_blocking(self.directory.lookup, str(bare))
        if target.resourcepart is not None and target.resourcepart in user.frontends:
            recipients = [target.resourcepart]
        elif kind == "groupchat":
            return "service-unavailable", None  # no room behind a user's JID (RFC 6121 8.5.3.2.1)
        else:
            recipients = user.available()
        own = sender.resourcepart if sender is not None and sender.bare() == bare else None
        recipients = [r for r in recipients if r != own]  # never echo to the sender's stream
        if not recipients:
            if kind not in STORED_MESSAGE_TYPES:
                return None, None  # headline and error messages are not kept
            return (yield self._store_offline(bare, message)), None
        pending = [self._deliver_confirmed(_full(bare, r), user.frontends[r], message, xml) for r in recipients]
        # Carbons for the recipient's other devices (XEP-0280 "received").
        if carbons.is_copied(message):
            for resource in sorted(user.carbons - set(recipients)):
                full = _full(bare, resource)
                if resource in user.frontends and full != sender:
                    copy = carbons.carbon_copy(message, "received", str(bare), str(full))
                    self._deliver(full, user.frontends[resource], copy).addErrback(self._copy_failed, full)
        return "delivered", self._settle_deliveries(pending, bare, message)

    def _settle_deliveries(self, pending: list[defer.Deferred], bare: JID, message: domish.Element) -> defer.Deferred:
        """Fires when every delivery is confirmed; if none took the message, it is stored offline."""

        def settled(results):
            if any(ok and taken for ok, taken in results):
                return None
            self.log.info("no front end confirmed a message for {bare}; storing it offline", bare=bare)
            return self._store_offline(bare, message)

        if len(pending) == 1:  # the usual case, without DeferredList's bookkeeping
            return pending[0].addCallbacks(lambda taken: [(True, taken)], lambda failure: [(False, failure)]).addCallback(settled)
        return defer.DeferredList(pending, consumeErrors=True).addCallback(settled)

    def _store_offline(self, bare: JID, message: domish.Element) -> defer.Deferred:
        return self._store_offline_xml(bare, message.getAttribute("from", ""), message.toXml(defaultUri=CLIENT_NS))

    @defer.inlineCallbacks
    def _store_offline_xml(self, bare: JID, sender: str, xml: str):
        """Keep a serialised message for ``bare``'s next login: "stored", or the error condition to answer with."""
        if self.offline_store is None:
            return "service-unavailable"
        outcome = yield self.run_database(self.offline_store.store, bare.localpart, sender, xml)
        if outcome == "stored":
            return "stored"
        if outcome == "full":
            self.log.warn("offline storage of {bare} is full; message refused", bare=bare)
        return "service-unavailable"

    def _send_carbons(self, connection, message: domish.Element, user: UserSessions) -> None:
        """Copy a message a client sent to its user's other carbons-enabled resources (XEP-0280 "sent")."""
        if not user.carbons or not carbons.is_copied(message):
            return
        bare = connection.jid.bare()
        for resource in sorted(user.carbons):
            full = _full(bare, resource)
            if full != connection.jid and resource in user.frontends:
                copy = carbons.carbon_copy(message, "sent", str(bare), str(full))
                self._deliver(full, user.frontends[resource], copy).addErrback(self._copy_failed, full)

    def _copy_failed(self, failure, full: JID) -> None:
        self.log.failure("a carbon copy for {jid} was lost", failure, jid=full)

    @defer.inlineCallbacks
    def _deliver_offline(self, connection):
        if self.offline_store is None:
            return
        jid = connection.jid
        while True:
            stored = yield self.run_database(self.offline_store.pending, jid.localpart)
            if not stored or self.sessions.get(jid) is not connection:
                return
            for item in stored:
                stanza = stanza_from_xml(item.stanza)
                stanza["to"] = jid.full()
                add_delay(stanza, item.stored_at, self.domain.full(), "Offline Storage")
                connection.deliver(stanza)
            # Written to the stream: now they may go (a crash before this delivers them again).
            yield self.run_database(self.offline_store.remove, [item.id for item in stored])
            self.log.info("delivered {n} offline messages to {jid}", n=len(stored), jid=jid)

    @defer.inlineCallbacks
    def _reroute(self, gone: JID, xml: str):
        stanza = stanza_from_xml(xml)
        if stanza.name == "message":
            if stanza.getAttribute("type", "normal") not in STORED_MESSAGE_TYPES or stanza.getAttribute("from") is None:
                return
            if not any(child.name == "body" for child in stanza.elements()):
                return  # not a message someone wrote: a carbon copy (the original went elsewhere), a MAM result
            outcome, settled = yield self._route_to_user(stanza, gone.bare(), sender=gone)
            if settled is not None:
                yield settled
            self.log.info("re-routed an unacknowledged message for {jid}: {outcome}", jid=gone, outcome=outcome)
        elif stanza.name == "iq" and stanza.getAttribute("type") in ("get", "set") and stanza.getAttribute("from"):
            reply = stanza_error_reply(stanza, "service-unavailable")
            yield self.deliver_to_full(parse_jid(stanza["from"]), reply)

    # Delivery to sessions, for the router and the services built on it.
    def deliver_to_full(self, full: JID, stanza: domish.Element) -> defer.Deferred:
        """Hand ``stanza`` to the session ``full`` wherever it is; fires True when a session took it."""
        local = self.sessions.get(full)
        if local is not None:
            local.deliver(stanza)
            return defer.succeed(True)

        def found(frontends):
            frontend = frontends.get(full.resourcepart)
            return self._deliver(full, frontend, stanza) if frontend else 0

        d = self.run_blocking(self.directory.resources, str(full.bare()))
        return d.addCallback(found).addCallback(bool)

    def deliver_to_bare(self, bare: JID, stanza: domish.Element, resources: Iterable[str] | None = None) -> defer.Deferred:
        """Hand ``stanza`` to each bound session of ``bare`` (or only ``resources``); fires with how many took it."""
        wanted = set(resources) if resources is not None else None

        @defer.inlineCallbacks
        def deliver(frontends):
            taken = 0
            for resource, frontend in sorted(frontends.items()):
                if wanted is None or resource in wanted:
                    taken += (yield self._deliver(_full(bare, resource), frontend, stanza))
            return taken

        return self.run_blocking(self.directory.resources, str(bare.bare())).addCallback(deliver)

    @defer.inlineCallbacks
    def _route_iq(self, connection, iq: domish.Element, target: JID):
        delivered = yield self.deliver_to_full(target, iq)
        if not delivered and iq.getAttribute("type") in ("get", "set"):
            connection.deliver(stanza_error_reply(iq, "service-unavailable"))

    @defer.inlineCallbacks
    def _deliver(self, full: JID, frontend: str, stanza: domish.Element):
        """Hand ``stanza`` to the session ``full`` on ``frontend``; return 1 when some front end took it."""
        if frontend == self.directory.frontend_id:
            recipient = self.sessions.get(full)
            if recipient is None:
                return 0
            recipient.deliver(stanza)
            return 1
        receivers = yield self._publish(frontend, self._delivery_payload(full, stanza))
        return 1 if receivers else 0

    def _handoff_failed(self, failure, frontend: str) -> bool:
        self.log.failure("publishing to {frontend} failed", failure, frontend=frontend)
        return False

    def _delivery_payload(
        self, full: JID, stanza: domish.Element, confirm: str | None = None, xml: str | None = None, offline_from: str | None = None
    ) -> str:
        """A ``deliver`` item for another front end; with ``confirm`` it answers with a ``delivered`` item.

        With ``offline_from`` (the stanza's sender), that front end stores the stanza offline when the session is gone.
        """
        item = {"kind": "deliver", "to": str(full), "xml": xml if xml is not None else stanza.toXml(defaultUri=CLIENT_NS)}
        if offline_from is not None:
            item["offline_from"] = offline_from
        if confirm is not None:
            item.update(confirm=confirm, origin=self.directory.frontend_id)
        return json.dumps(item)

    def _deliver_confirmed(self, full: JID, frontend: str, stanza: domish.Element, xml: str | None = None) -> defer.Deferred:
        """Like `_deliver`, but a remote front end must confirm it wrote the stanza: fires True or False.

        ``xml`` is the stanza serialised already, when the caller has it.
        """
        if frontend == self.directory.frontend_id:
            recipient = self.sessions.get(full)
            if recipient is not None:
                recipient.deliver(xml if xml is not None else stanza)
            return defer.succeed(recipient is not None)
        if xml is not None:
            # Archived (durable) already: the other front end keeps it offline itself if the session is
            # gone, so no confirmation has to come back through Redis for every message.
            payload = self._delivery_payload(full, stanza, xml=xml, offline_from=stanza.getAttribute("from", ""))
            return self._publish(frontend, payload).addCallbacks(lambda receivers: receivers > 0, self._handoff_failed, errbackArgs=(frontend,))
        token = f"{self.directory.frontend_id}#{next(self._confirmation_ids)}"
        confirmed = defer.Deferred()
        self._awaiting_confirmation[token] = confirmed
        self._await_deadline(token)
        payload = self._delivery_payload(full, stanza, confirm=token, xml=xml)

        def published(receivers):
            if not receivers:
                self._confirm(token, False)

        def failed(failure):
            self.log.failure("publishing to {frontend} failed", failure, frontend=frontend)
            self._confirm(token, False)

        self._publish(frontend, payload).addCallbacks(published, failed)
        return confirmed

    def _confirm(self, token: str, ok: bool) -> None:
        confirmed = self._awaiting_confirmation.pop(token, None)
        if confirmed is not None:
            confirmed.callback(ok)

    def _await_deadline(self, token: str) -> None:
        # One timer for all confirmations rather than one per message: deadlines come in the order
        # they were set, and almost every token is confirmed (and forgotten) long before its deadline.
        self._confirmation_deadlines.append((self.clock.seconds() + CONFIRM_TIMEOUT, token))
        if self._deadline_timer is None:
            self._deadline_timer = self.clock.callLater(CONFIRM_TIMEOUT, self._expire_confirmations)

    def _expire_confirmations(self) -> None:
        self._deadline_timer = None
        deadlines, now = self._confirmation_deadlines, self.clock.seconds()
        while deadlines and deadlines[0][0] <= now:
            _, token = deadlines.popleft()
            if token in self._awaiting_confirmation:
                self.log.warn("no delivery confirmation for {token} within {s}s", token=token, s=CONFIRM_TIMEOUT)
                self._confirm(token, False)
        if deadlines:
            self._deadline_timer = self.clock.callLater(max(0.0, deadlines[0][0] - now), self._expire_confirmations)

    # Items other front ends published to this one.
    def deliver_published(self, payload: str | bytes) -> None:
        """Act on one item another front end published on this front end's channel."""
        item = json.loads(payload)
        handler = self._published_handlers.get(item.get("kind", "deliver"))
        if handler is None:
            self.log.warn("ignored a published item of unknown kind {kind}", kind=item.get("kind"))
            return
        handler(item)

    def _published_delivery(self, item: dict) -> None:
        recipient = self.sessions.get(parse_jid(item["to"]))
        if recipient is not None:
            recipient.deliver(item["xml"])
        elif item.get("offline_from") is not None:
            bare = parse_jid(item["to"]).bare()
            self.log.info("the session {to} ended: its message is kept offline", to=item["to"])
            d = self._finish_before_stop(self._store_offline_xml(bare, item["offline_from"], item["xml"]))
            d.addErrback(lambda f: self.log.failure("keeping a message for {bare} offline failed (it is in the archive)", f, bare=bare))
        else:
            self.log.info("dropped a stanza for {to}: the session ended", to=item["to"])
        if item.get("confirm"):
            confirmation = json.dumps({"kind": "delivered", "token": item["confirm"], "ok": recipient is not None})
            d = self._publish(item["origin"], confirmation)
            d.addErrback(lambda f: self.log.failure("confirming a delivery failed", f))

    def _published_confirmation(self, item: dict) -> None:
        self._confirm(item["token"], bool(item.get("ok")))


class DeliveryListener:
    """Listens on this front end's channel in a thread and hands each item to the reactor."""

    log = Logger()
    RETRY_SECONDS = 0.5
    MAX_BATCH = 500
    # How long a listener waits for a message before looking whether it should stop.
    POLL_SECONDS = 0.25
    # How long stopping waits for Redis to confirm the unsubscribe.
    UNSUBSCRIBE_SECONDS = 3.0

    def __init__(self, redis_primary_factory, channel: str, deliver):
        self.redis_primary_factory = redis_primary_factory
        self.channel = channel
        self.deliver = deliver
        self.subscribed = threading.Event()
        self._stopping = threading.Event()
        self._stopped = defer.Deferred()

    def start(self) -> None:
        threading.Thread(target=self._run, name="xmpp-delivery-listener", daemon=True).start()

    def stop(self) -> defer.Deferred:
        """Unsubscribe; fires once every item received until then has been acted on.

        From then on a publish to this front end reaches nobody, so its sender
        keeps the message offline itself: no item is taken and then dropped
        with the process.
        """
        self._stopping.set()
        return self._stopped

    def _deliver_all(self, payloads: list) -> None:
        for payload in payloads:
            try:
                self.deliver(payload)
            except Exception:
                self.log.failure("acting on a published item failed")

    def _run(self) -> None:
        pubsub = None
        while not self._stopping.is_set():
            try:
                pubsub = self.redis_primary_factory().pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self.channel)
                self.subscribed.set()
                while not self._stopping.is_set():
                    item = pubsub.get_message(timeout=self.POLL_SECONDS)
                    # Everything that arrived already goes over in one hop: waking the reactor per item
                    # cost more than delivering it under load.
                    batch = []
                    while item is not None:
                        if item["type"] == "message":
                            batch.append(item["data"])
                        if len(batch) >= self.MAX_BATCH:
                            break
                        item = pubsub.get_message(timeout=0.0)
                    if batch:
                        reactor.callFromThread(self._deliver_all, batch)
            except Exception as e:  # Redis restarting or failing over: subscribe again to the new primary
                self.subscribed.clear()
                pubsub = None
                self.log.warn("delivery channel lost ({error}); subscribing again", error=e)
                time.sleep(self.RETRY_SECONDS)
        try:
            if pubsub is not None:
                self._unsubscribe(pubsub)
        except Exception as e:
            self.log.warn("unsubscribing from the delivery channel failed ({error})", error=e)
        finally:
            reactor.callFromThread(self._stopped.callback, None)  # after the last batch: calls run in order

    def _unsubscribe(self, pubsub) -> None:
        """Unsubscribe, handing over what Redis sent before its confirmation."""
        pubsub.unsubscribe(self.channel)
        deadline = time.monotonic() + self.UNSUBSCRIBE_SECONDS
        batch = []
        while pubsub.subscribed and time.monotonic() < deadline:
            item = pubsub.get_message(timeout=0.1)
            if item is not None and item["type"] == "message":
                batch.append(item["data"])
        if batch:
            reactor.callFromThread(self._deliver_all, batch)
        self.subscribed.clear()
        pubsub.close()
