"""Stanza routing across every front end: the session directory in Redis, delivery over pub/sub.

A front end holds its clients' streams; any front end may need to reach any
user, so each bound session is recorded in Redis (storage/sessions.py) with
the id of the front end holding it. A stanza for a session held elsewhere is
published on that front end's channel; its `DeliveryListener` writes it to
the stream. Each sender's stanzas are routed one after another, so a
client's messages arrive in the order it sent them.

Not durable yet: a message published while its recipient's front end is
down, or while Redis fails over, is lost (the durable message path, issue 4,
stores every message before it is routed).
"""

from __future__ import annotations

import json
import threading
import time

from twisted.internet import defer, reactor, threads
from twisted.logger import Logger
from twisted.words.xish import domish

from hipchat_server.storage.sessions import SessionDirectory
from hipchat_server.xmpp.bind import SessionTable
from hipchat_server.xmpp.errors import stanza_error_reply
from hipchat_server.xmpp.jid import JID, parse_jid
from hipchat_server.xmpp.local_routing import EchoLessRouter

# Message types answered with an error when nobody can receive them (RFC 6121 8.5.2 and 8.5.3).
ANSWERED_MESSAGE_TYPES = frozenset({"normal", "chat", "groupchat"})


class ClusterRouter(EchoLessRouter):
    """A `c2s.StanzaRouter` that reaches sessions on every front end through the directory."""

    log = Logger()

    def __init__(self, domain: str, sessions: SessionTable, directory: SessionDirectory, run_blocking=threads.deferToThread):
        super().__init__(domain, sessions)
        self.directory = directory
        self.run_blocking = run_blocking
        self._chains: dict[object, defer.Deferred] = {}

    def session_started(self, connection) -> None:
        jid = connection.jid
        self._in_order(connection, lambda: self.run_blocking(self.directory.add, str(jid.bare()), jid.resourcepart))

    def session_ended(self, connection) -> None:
        jid = connection.jid
        d = self._in_order(connection, lambda: self.run_blocking(self.directory.remove, str(jid.bare()), jid.resourcepart))
        d.addBoth(lambda _: self._forget(connection))

    def stanza_from_client(self, connection, element: domish.Element) -> None:
        to = element.getAttribute("to")
        target = parse_jid(to) if to else None
        if element.name == "message" and target is not None and target.localpart is not None:
            self._in_order(connection, lambda: self._route_message(connection, element, target))
        elif element.name == "iq" and self._is_for_remote_session(connection, target):
            self._in_order(connection, lambda: self._route_iq(connection, element, target))
        else:
            super().stanza_from_client(connection, element)

    def _forget(self, connection) -> None:
        self._chains.pop(connection, None)

    def deliver_published(self, payload: str | bytes) -> None:
        """Write a stanza another front end published for a session held here."""
        item = json.loads(payload)
        recipient = self.sessions.get(parse_jid(item["to"]))
        if recipient is None:
            self.log.info("dropped a stanza for {to}: the session ended", to=item["to"])
            return
        recipient.send(item["xml"])

    def _is_for_remote_session(self, connection, target: JID | None) -> bool:
        return (
            target is not None
            and target.resourcepart is not None
            and target.bare() != connection.jid.bare()
            and self.sessions.get(target) is None
        )

    def _in_order(self, connection, work) -> defer.Deferred:
        """Run ``work`` after this connection's earlier routing work has finished."""
        previous = self._chains.get(connection) or defer.succeed(None)
        d = previous.addCallback(lambda _: work())
        d.addErrback(self._routing_failed, connection)
        self._chains[connection] = d
        return d

    def _routing_failed(self, failure, connection) -> None:
        self.log.failure("routing a stanza from {jid} failed", failure, jid=connection.jid)

    @defer.inlineCallbacks
    def _route_message(self, connection, message: domish.Element, target: JID):
        resources = yield self.run_blocking(self.directory.resources, str(target.bare()))
        if target.resourcepart is not None and target.resourcepart in resources:
            resources = {target.resourcepart: resources[target.resourcepart]}
        # Otherwise a full JID nobody holds is treated like the bare JID (RFC 6121 8.5.3.2.1).
        delivered = 0
        for resource, frontend in sorted(resources.items()):
            full = target.bare().with_resource(resource)
            if full == connection.jid:
                continue  # never echo a message back to its own stream
            delivered += (yield self._deliver(full, frontend, message))
        if not delivered and message.getAttribute("type", "normal") in ANSWERED_MESSAGE_TYPES:
            connection.deliver(stanza_error_reply(message, "service-unavailable"))

    @defer.inlineCallbacks
    def _route_iq(self, connection, iq: domish.Element, target: JID):
        resources = yield self.run_blocking(self.directory.resources, str(target.bare()))
        frontend = resources.get(target.resourcepart)
        delivered = (yield self._deliver(target, frontend, iq)) if frontend else 0
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
        payload = json.dumps({"to": str(full), "xml": stanza.toXml(defaultUri="jabber:client")})
        receivers = yield self.run_blocking(self.directory.publish, frontend, payload)
        return 1 if receivers else 0


class DeliveryListener:
    """Listens on this front end's channel in a thread and hands each stanza to the reactor."""

    log = Logger()
    RETRY_SECONDS = 0.5

    def __init__(self, redis_primary_factory, channel: str, deliver):
        self.redis_primary_factory = redis_primary_factory
        self.channel = channel
        self.deliver = deliver
        self._stopping = threading.Event()
        self.subscribed = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._run, name="xmpp-delivery-listener", daemon=True).start()
        reactor.addSystemEventTrigger("before", "shutdown", self._stopping.set)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                pubsub = self.redis_primary_factory().pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self.channel)
                self.subscribed.set()
                while not self._stopping.is_set():
                    item = pubsub.get_message(timeout=1.0)
                    if item is not None and item["type"] == "message":
                        reactor.callFromThread(self.deliver, item["data"])
            except Exception as e:  # Redis restarting or failing over: subscribe again to the new primary
                self.subscribed.clear()
                self.log.warn("delivery channel lost ({error}); subscribing again", error=e)
                time.sleep(self.RETRY_SECONDS)
