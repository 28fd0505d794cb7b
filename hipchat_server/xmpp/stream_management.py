"""Stream Management (XEP-0198): acks, and resuming a session after its connection dropped.

Once a bound client sends ``<enable/>``, both sides count the stanzas they
handled (``h``, modulo 2^32). The server counts a client's stanza only when
the router says it is durable (delivered to a session, stored, or answered
with an error), strictly in order, and keeps each stanza it sends to the
client, serialized, until the client's ``<a h=.../>`` acknowledges it.

With ``resume='true'`` a connection lost without ``</stream>`` does not end
the session: it hibernates for the resume timeout, still queuing what is
delivered to it. A new stream of the same user resumes it with
``<resume previd=... h=.../>``: the server answers ``<resumed/>`` with its own
``h`` and resends what the client had not received.

The session may hibernate on another front end than the one the client
reconnects to. The SM id names the front end that created the session (its
origin); that front end keeps a forwarding entry while the session lives
elsewhere. The handover, over `router.publish_to_frontend`:

1. ``sm.resume`` (new front end -> origin, relayed by the origin to the
   holder): session id, user, the client's ``h``, who asks.
2. ``sm.state`` or ``sm.refused`` (holder -> new): the holder detaches the
   old transport, waits for the client's pending stanzas to become durable,
   applies ``h`` and sends the session: JID, counters, unacked stanzas. The
   session is *lent*: it keeps queuing deliveries meanwhile.
3. ``sm.taken`` or ``sm.declined`` (new -> holder): taken, the new front end
   has registered the session; the holder forwards (``sm.forward``) what was
   queued after its reply and anything delivered to it later. Declined (the
   new front end gave up waiting after 5 s), the session hibernates again.

A front end that stops hands its resumable sessions over the same way before
it exits (`hand_over_all`): it stops reading from each client, waits for the
client's stanzas to become durable, and offers the session to a live peer
(``sm.hibernate``). The peer adopts it as a hibernating session and answers
``sm.taken``; only then is the client's connection dropped, without a stream
error, so the client resumes on the peer instead of binding anew. The holder
of a moved session is the one its client finds: a front end asked to resume a
session it neither holds nor can trace (its origin restarted, or is down)
asks the front ends holding that user's other sessions in the session
directory.
"""

from __future__ import annotations

import base64
import binascii
import collections
import re
import secrets
from typing import TYPE_CHECKING, Callable

from twisted.internet import defer
from twisted.logger import Logger
from twisted.words.xish import domish

from hipchat_server.xmpp.errors import STANZA_ERRORS_NS
from hipchat_server.xmpp.features import SM_NS
from hipchat_server.xmpp.jid import parse_jid

if TYPE_CHECKING:
    from hipchat_server.xmpp.c2s import ClientConnection

MAX_SEQ = 2**32

#: How long a front end waits for the holder of a session to hand it over.
HANDOVER_TIMEOUT = 5.0
#: How long the holder waits for the client's in-flight stanzas to become durable before answering.
SETTLE_TIMEOUT = 3.0
#: How long a lent session waits for the new front end to say whether it took it.
LEND_TIMEOUT = 15.0
#: How long a session that moved away still forwards what stale routes deliver to it.
MOVED_GRACE = 60.0
#: How long a stopping front end waits for peers to take its sessions before it ends the rest.
SHUTDOWN_HANDOVER_TIMEOUT = 5.0

_URLSAFE_B64 = re.compile(r"[A-Za-z0-9_-]+")

# Message kinds between front ends.
RESUME, STATE, REFUSED, TAKEN, DECLINED, FORWARD, MOVED, ENDED, HIBERNATE = (
    "sm.resume",
    "sm.state",
    "sm.refused",
    "sm.taken",
    "sm.declined",
    "sm.forward",
    "sm.moved",
    "sm.ended",
    "sm.hibernate",
)


class HandledCountTooHigh(Exception):
    """The client acknowledged more stanzas than were sent to it."""

    def __init__(self, h: int, sent: int):
        super().__init__(f"h={h} but only {sent} stanzas were sent")
        self.h, self.sent = h, sent


# Elements.
def _element(name: str, **attrs) -> domish.Element:
    element = domish.Element((SM_NS, name))
    for key, value in attrs.items():
        if value is not None:
            element[key] = str(value)
    return element


def is_sm(element: domish.Element) -> bool:
    """True for an element of the Stream Management namespace."""
    return element.uri == SM_NS


def enabled(sm_id: str | None, max_seconds: int | None) -> domish.Element:
    """``<enabled/>``, with ``resume``, ``id`` and ``max`` when the session can be resumed."""
    if sm_id is None:
        return _element("enabled")
    return _element("enabled", id=sm_id, resume="true", max=max_seconds)


def resumed(h: int, previd: str) -> domish.Element:
    return _element("resumed", h=h, previd=previd)


def failed(condition: str, h: int | None = None) -> domish.Element:
    """``<failed><condition xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>``, with ``h`` when known."""
    element = _element("failed", h=h)
    element.addElement((STANZA_ERRORS_NS, condition))
    return element


def ack(h: int) -> domish.Element:
    return _element("a", h=h)


def request() -> domish.Element:
    return _element("r")


def handled_count_too_high(error: HandledCountTooHigh) -> domish.Element:
    """The application condition of the ``undefined-condition`` stream error for a too high ``h``."""
    return _element("handled-count-too-high", h=error.h, **{"send-count": error.sent})


def parse_h(element: domish.Element) -> int | None:
    """The ``h`` attribute as an integer in 0..2^32-1, or None when absent or malformed."""
    value = element.getAttribute("h", "")
    if not value.isdigit() or int(value) >= MAX_SEQ:
        return None
    return int(value)


def new_id(frontend_id: str) -> str:
    """A new, unguessable SM id naming the front end that creates it."""
    origin = base64.urlsafe_b64encode(frontend_id.encode()).decode().rstrip("=")
    return f"{origin}.{secrets.token_urlsafe(18)}"


def origin_of(sm_id: str) -> str | None:
    """The front end that created ``sm_id``, or None when the id is not one of ours."""
    origin, dot, secret = sm_id.partition(".")
    if not dot or not secret or not _URLSAFE_B64.fullmatch(origin):
        return None
    try:
        return base64.urlsafe_b64decode(origin + "=" * (-len(origin) % 4)).decode() or None
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None


class StreamState:
    """The counters and unacked queue of one session with Stream Management enabled."""

    def __init__(self, sm_id: str | None = None, max_seconds: int | None = None):
        self.id = sm_id  # None: not resumable
        self.max_seconds = max_seconds
        # Inbound: stanzas the client sent, counted as handled in order once durable.
        self.handled = 0
        self._pending: collections.deque[list[bool]] = collections.deque()
        self._settled_waiters: list[defer.Deferred] = []
        # Answers to <r/> waiting for the stanzas received before it: (count of stanzas handled needed, Deferred).
        self._received_total = self._handled_total = 0
        self._ack_waiters: collections.deque[tuple[int, defer.Deferred]] = collections.deque()
        # Outbound: stanzas sent to the client, kept until acknowledged.
        self.sent = 0
        self.acked = 0
        self.unacked: collections.deque[str] = collections.deque()

    @property
    def resumable(self) -> bool:
        return self.id is not None

    # Inbound.
    def inbound(self) -> Callable[[], None]:
        """Note a stanza from the client; call what this returns when it is durable."""
        slot = [False]
        self._pending.append(slot)
        self._received_total += 1

        def done(*_):
            slot[0] = True
            self._advance()

        return done

    def _advance(self) -> None:
        while self._pending and self._pending[0][0]:
            self._pending.popleft()
            self.handled = (self.handled + 1) % MAX_SEQ
            self._handled_total += 1
        while self._ack_waiters and (self._ack_waiters[0][0] <= self._handled_total or not self._pending):
            self._ack_waiters.popleft()[1].callback(self.handled)
        if not self._pending:
            waiters, self._settled_waiters = self._settled_waiters, []
            for d in waiters:
                d.callback(self.handled)

    def restart_inbound(self) -> None:
        """Forget stanzas still in flight on a stream that was left: the client resends what ``handled`` does not count."""
        self._pending = collections.deque()
        self._advance()

    def handled_so_far(self) -> defer.Deferred:
        """Fires with ``h`` once every stanza received until now is handled: the answer to an ``<r/>``.

        Answering at once would acknowledge less than the client sent before
        asking, and it would have to ask again; answering when those stanzas
        are durable is exactly what it wants to know.
        """
        if not self._pending:
            return defer.succeed(self.handled)
        d = defer.Deferred()
        self._ack_waiters.append((self._received_total, d))
        return d

    @property
    def in_flight(self) -> int:
        """The client's stanzas received but not yet durable."""
        return len(self._pending)

    def settled(self, clock, timeout: float) -> defer.Deferred:
        """Fires with ``handled`` once no stanza is in flight, or after ``timeout`` seconds."""
        if not self._pending:
            return defer.succeed(self.handled)
        d = defer.Deferred()
        self._settled_waiters.append(d)
        call = clock.callLater(timeout, lambda: d.called or (self._settled_waiters.remove(d), d.callback(self.handled)))
        d.addBoth(lambda result: (call.active() and call.cancel(), result)[1])
        return d

    # Outbound.
    def queue(self, text: str) -> None:
        """Keep a stanza sent (or to be sent) to the client until it is acknowledged."""
        self.unacked.append(text)
        self.sent = (self.sent + 1) % MAX_SEQ

    def acknowledge(self, h: int) -> int:
        """Drop the stanzas the client's ``h`` acknowledges; return how many. Raises HandledCountTooHigh."""
        count = (h - self.acked) % MAX_SEQ
        if count > len(self.unacked):
            raise HandledCountTooHigh(h, self.sent)
        for _ in range(count):
            self.unacked.popleft()
        self.acked = h
        return count

    # Handover between front ends.
    def snapshot(self) -> dict:
        return {
            "id": self.id,
            "max": self.max_seconds,
            "handled": self.handled,
            "sent": self.sent,
            "acked": self.acked,
            "unacked": list(self.unacked),
        }

    @classmethod
    def from_snapshot(cls, data: dict) -> "StreamState":
        state = cls(data["id"], data.get("max"))
        state.handled, state.sent, state.acked = int(data["handled"]), int(data["sent"]), int(data["acked"])
        state.unacked.extend(data["unacked"])
        return state


class _ResumeRequest:
    """A resumption this front end asked other front ends for: the waiting stream, who was asked, who may still answer."""

    def __init__(self, stream: "ClientConnection", timer, payload: dict):
        self.stream, self.timer, self.payload = stream, timer, payload
        self.id: str = payload["request"]
        self.asking: set[str] = set()  # asked, no answer yet
        self.asked: set[str] = set()  # asked at all
        self.searched = False  # the session directory was consulted


class ResumableSessions:
    """The resumable sessions of one front-end process, and the handover of sessions between front ends.

    One per process, shared by its client factories. ``router`` may lack the
    cross-front-end methods (``frontend_id``, ``publish_to_frontend``,
    ``on_published``): then only sessions of this process can be resumed.
    """

    log = Logger()

    def __init__(self, router, clock):
        self.router, self.clock = router, clock
        self.frontend_id: str = getattr(router, "frontend_id", None) or "local"
        self._clustered = hasattr(router, "publish_to_frontend") and hasattr(router, "on_published")
        #: Builds a hibernating session from a stopping front end's ``sm.hibernate`` (set by the first `ClientFactory`).
        self.adopt: Callable[[dict], "ClientConnection | None"] | None = None
        self._by_id: dict[str, ClientConnection] = {}
        self._elsewhere: dict[str, str] = {}  # on the origin: sessions it created that now live on another front end
        self._waiting: dict[str, _ResumeRequest] = {}  # our resume requests, by request id
        self._lent: dict[str, tuple[ClientConnection, int, object]] = (
            {}
        )  # session id -> (session, queued at reply, timer)
        self._handing: dict[str, defer.Deferred] = {}  # at shutdown: session id -> fires True once a peer took it
        self._stopping = False  # this front end hands its sessions over: it adopts none
        self._forwarding: dict[str, defer.Deferred] = {}  # per moved session: publishes, one after another
        if self._clustered:
            for kind, handler in (
                (RESUME, self._on_resume),
                (STATE, self._on_state),
                (REFUSED, self._on_refused),
                (TAKEN, self._on_taken),
                (DECLINED, self._on_declined),
                (FORWARD, self._on_forward),
                (MOVED, self._on_moved),
                (ENDED, self._on_ended),
                (HIBERNATE, self._on_hibernate),
            ):
                router.on_published(kind, self._guarded(handler))

    def _guarded(self, handler):
        def call(payload: dict) -> None:
            try:
                handler(payload)
            except Exception:
                self.log.failure("stream management message {payload} failed", payload=payload)

        return call

    def new_id(self) -> str:
        return new_id(self.frontend_id)

    # Sessions of this process.
    def add(self, connection: "ClientConnection") -> None:
        self._by_id[connection.sm.id] = connection

    def get(self, sm_id: str) -> "ClientConnection | None":
        return self._by_id.get(sm_id)

    def ended(self, connection: "ClientConnection") -> None:
        """``connection``'s resumable session is over for good."""
        sm_id = connection.sm.id
        if self._by_id.get(sm_id) is connection:
            del self._by_id[sm_id]
        self._elsewhere.pop(sm_id, None)
        origin = origin_of(sm_id)
        if self._clustered and origin and origin != self.frontend_id:
            self._publish(origin, ENDED, {"id": sm_id})

    def forget_moved(self, sm_id: str) -> None:
        """A session that moved away stopped forwarding (its grace period is over)."""
        self._forwarding.pop(sm_id, None)

    # Resuming.
    def resume(self, stream: "ClientConnection", sm_id: str, h: int) -> None:
        """Resume session ``sm_id`` on the new ``stream`` (authenticated, not bound); it is answered later or now."""
        local = self._by_id.get(sm_id)
        if local is not None:
            if local.username != stream.username or sm_id in self._lent:
                return stream.resume_failed("item-not-found")
            self._release_local(local, stream, h)
            return
        origin = origin_of(sm_id)
        if not self._clustered or origin is None:
            return stream.resume_failed("item-not-found")
        request_id = secrets.token_hex(8)
        timer = self.clock.callLater(HANDOVER_TIMEOUT, self._gave_up, request_id)
        payload = {"id": sm_id, "user": stream.username, "h": h, "from": self.frontend_id, "request": request_id}
        request = self._waiting[request_id] = _ResumeRequest(stream, timer, payload)
        holder = self._elsewhere.get(sm_id) or (origin if origin != self.frontend_id else None)
        if holder is None:  # created here, and where it went was forgotten (this front end restarted since)
            self._search(request)
        else:
            self._ask(request, [holder])

    def _ask(self, request: "_ResumeRequest", frontends) -> None:
        """Ask each of ``frontends`` for the session; each answers with it or refuses (directly or via the origin)."""
        for frontend in frontends:
            request.asking.add(frontend)
            request.asked.add(frontend)
            d = self._publish(frontend, RESUME, dict(request.payload, to=frontend))
            d.addCallback(lambda receivers, f=frontend: receivers or self._no_session_at(request.id, f))

    def _no_session_at(self, request_id: str, frontend: str | None) -> None:
        """``frontend`` does not hold the session (or is not running); once none asked does, search, then give up."""
        request = self._waiting.get(request_id)
        if request is None:
            return
        if frontend is None:  # a refusal from a front end of an older release names no one
            request.asking.clear()
        request.asking.discard(frontend)
        if request.asking:
            return
        if request.searched:
            self._gave_up(request_id)
        else:
            self._search(request)

    def _search(self, request: "_ResumeRequest") -> None:
        """Ask the front ends that hold the user's other sessions (the session directory), but not this one."""
        request.searched = True
        lookup = getattr(self.router, "frontends_of_user", None)
        if lookup is None:
            return self._gave_up(request.id)

        def ask(frontends) -> None:
            candidates = sorted(set(frontends) - request.asked - {self.frontend_id})
            if request.id not in self._waiting:
                return
            if not candidates:
                return self._gave_up(request.id)
            self._ask(request, candidates)

        def failed(failure) -> None:
            self.log.failure("looking up where session {id} is failed", failure, id=request.payload["id"])
            self._gave_up(request.id)

        d = defer.maybeDeferred(lookup, request.stream.username)
        d.addCallback(ask)
        d.addErrback(failed)

    def _release_local(self, old: "ClientConnection", stream: "ClientConnection", h: int) -> None:
        """Move a session of this process to a new stream of this process."""
        d = old.lend()
        self._lent[old.sm.id] = (old, 0, None)

        def release(_):
            del self._lent[old.sm.id]
            if stream.gone:
                return old.lend_cancelled()
            try:
                old.sm.acknowledge(h)
            except HandledCountTooHigh:
                old.lend_cancelled()
                return stream.resume_failed("undefined-condition")
            state = old.sm
            old.moved(stream.deliver)
            stream.take_over(old.jid, state)

        d.addCallback(release)

    def _gave_up(self, request_id: str) -> None:
        request = self._waiting.pop(request_id, None)
        if request is not None:
            if request.timer.active():
                request.timer.cancel()
            request.stream.resume_failed("item-not-found")

    # The holder's side.
    def _on_resume(self, payload: dict) -> None:
        sm_id, requester = payload["id"], payload["from"]
        refuse = {"request": payload["request"], "to": payload.get("to")}  # on behalf of the front end asked
        if sm_id in self._elsewhere:  # we are the origin; relay to the current holder
            target = self._elsewhere[sm_id]
            if target != requester:
                self._publish(target, RESUME, payload)
                return
        session = self._by_id.get(sm_id)
        if session is None or session.username != payload["user"] or sm_id in self._lent:
            self._publish(requester, REFUSED, refuse)
            return
        d = session.lend()
        self._lent[sm_id] = (session, 0, None)

        def reply(_):
            try:
                session.sm.acknowledge(int(payload["h"]))
            except (HandledCountTooHigh, ValueError):
                self._lent.pop(sm_id, None)
                session.lend_cancelled()
                self._publish(requester, REFUSED, refuse)
                return
            timer = self.clock.callLater(LEND_TIMEOUT, self._lend_expired, sm_id)
            self._lent[sm_id] = (session, len(session.sm.unacked), timer)
            state = dict(
                session.sm.snapshot(), request=payload["request"], jid=session.jid.full(), holder=self.frontend_id
            )
            self._publish(requester, STATE, state)

        d.addCallback(reply)

    def _lend_expired(self, sm_id: str) -> None:
        lent = self._lent.pop(sm_id, None)
        if lent is not None:
            self.log.warn("the front end resuming session {id} never answered; it hibernates again", id=sm_id)
            lent[0].lend_cancelled()

    def _on_taken(self, payload: dict) -> None:
        sm_id, new_holder = payload["id"], payload["from"]
        lent = self._lent.pop(sm_id, None)
        if lent is None:
            return
        session, queued_at_reply, timer = lent
        if timer is not None and timer.active():
            timer.cancel()
        later = list(session.sm.unacked)[queued_at_reply:]
        session.moved(lambda stanza: self._forward(sm_id, new_holder, stanza))
        for text in later:
            self._forward(sm_id, new_holder, text)
        if self._by_id.get(sm_id) is session:
            del self._by_id[sm_id]
        self._record_move(sm_id, new_holder)
        rooms_follow = self._tell_router_moved(session, new_holder)
        handing = self._handing.pop(sm_id, None)
        if handing is not None:  # handed over at shutdown: only now may its client reconnect, to the peer
            session.drop_connection()
            rooms_follow.addBoth(lambda _: handing.callback(True))

    def _tell_router_moved(self, session: "ClientConnection", new_holder: str) -> defer.Deferred:
        """The router moves what names this front end as the session's home (room occupancy) to ``new_holder``."""
        moved = getattr(self.router, "session_moved", None)
        d = defer.maybeDeferred(moved, session, new_holder) if moved is not None else defer.succeed(None)
        d.addErrback(lambda f: self.log.failure("moving {jid}'s rooms to {to} failed", f, jid=session.jid, to=new_holder))
        return d

    def _on_declined(self, payload: dict) -> None:
        if payload["id"] in self._handing:
            return self._handover_failed(payload["id"])
        lent = self._lent.pop(payload["id"], None)
        if lent is not None:
            session, _, timer = lent
            if timer is not None and timer.active():
                timer.cancel()
            session.lend_cancelled()

    def _forward(self, sm_id: str, frontend: str, stanza: domish.Element | str) -> None:
        text = stanza if isinstance(stanza, str) else stanza.toXml(defaultUri="jabber:client")
        self._publish(frontend, FORWARD, {"id": sm_id, "xml": text}, chain=sm_id)

    def _record_move(self, sm_id: str, new_holder: str) -> None:
        origin = origin_of(sm_id)
        if origin == self.frontend_id:
            self._on_moved({"id": sm_id, "to": new_holder})
        elif origin:
            self._publish(origin, MOVED, {"id": sm_id, "to": new_holder})

    # Handing every session over when this front end stops.
    def stop_adopting(self) -> None:
        """This front end is stopping: it declines the sessions others hand over (it could only end them)."""
        self._stopping = True

    def hand_over_all(self, peers: list[str]) -> defer.Deferred:
        """Offer each resumable session here to a running front end of ``peers``; fires with how many were taken.

        A session a peer took hibernates there and its client's connection is
        dropped, so the client resumes on the peer. A session none took is
        served here again, for the shutdown to end as before. Waits at most
        `SHUTDOWN_HANDOVER_TIMEOUT`.
        """
        self.stop_adopting()
        sessions = [s for s in list(self._by_id.values()) if s.may_hand_over]
        d = defer.gatherResults([self._hand_over(session, list(peers)) for session in sessions])
        return d.addCallback(sum)

    def _hand_over(self, session: "ClientConnection", peers: list[str]) -> defer.Deferred:
        sm_id = session.sm.id
        done = self._handing[sm_id] = defer.Deferred()
        timer = self.clock.callLater(SHUTDOWN_HANDOVER_TIMEOUT, self._handover_failed, sm_id)
        self._lent[sm_id] = (session, 0, timer)

        def offer(_) -> None:
            if sm_id not in self._handing:
                return  # timed out while the client's stanzas settled
            self._lent[sm_id] = (session, len(session.sm.unacked), timer)
            state = dict(session.sm.snapshot(), jid=session.jid.full(), user=session.username, holder=self.frontend_id)
            self._offer(sm_id, state, peers)

        session.pause_for_handover().addCallback(offer)
        return done

    def _offer(self, sm_id: str, state: dict, peers: list[str]) -> None:
        """Publish the session to the first of ``peers`` that is running; fail the handover when none is."""
        if sm_id not in self._handing:
            return
        if not peers:
            return self._handover_failed(sm_id)
        d = self._publish(peers[0], HIBERNATE, state)
        d.addCallback(lambda receivers: receivers or self._offer(sm_id, state, peers[1:]))

    def _handover_failed(self, sm_id: str) -> None:
        # A peer that took the session after this gave up keeps a copy that only its client's resumption
        # would use: its stanzas may then arrive twice, never zero times (this front end re-routes them).
        lent, done = self._lent.pop(sm_id, None), self._handing.pop(sm_id, None)
        if lent is not None:
            session, _, timer = lent
            if timer is not None and timer.active():
                timer.cancel()
            session.handover_failed()
        if done is not None:
            done.callback(False)

    def _on_hibernate(self, payload: dict) -> None:
        """A stopping front end hands a session over: it hibernates here until its client resumes it."""
        # A front end stopping too (all restarted at once) would only end the session later, unannounced.
        adopted = self.adopt(payload) if self.adopt is not None and not self._stopping else None
        reply = {"id": payload["id"], "from": self.frontend_id}
        self._publish(payload["holder"], TAKEN if adopted is not None else DECLINED, reply)

    # The origin's forwarding entries.
    def _on_moved(self, payload: dict) -> None:
        if payload["to"] == self.frontend_id:
            self._elsewhere.pop(payload["id"], None)
        else:
            self._elsewhere[payload["id"]] = payload["to"]

    def _on_ended(self, payload: dict) -> None:
        self._elsewhere.pop(payload["id"], None)

    # The new front end's side.
    def _on_state(self, payload: dict) -> None:
        request = self._waiting.pop(payload["request"], None)
        reply = {"id": payload["id"], "from": self.frontend_id}
        if request is None or request.stream.gone:
            self._publish(payload["holder"], DECLINED, reply)
            return
        stream = request.stream
        if request.timer.active():
            request.timer.cancel()
        jid = parse_jid(payload["jid"])
        if jid.localpart != stream.username:
            self._publish(payload["holder"], DECLINED, reply)
            return stream.resume_failed("item-not-found")
        self._elsewhere.pop(payload["id"], None)
        stream.take_over(jid, StreamState.from_snapshot(payload))
        self._publish(payload["holder"], TAKEN, reply)

    def _on_refused(self, payload: dict) -> None:
        self._no_session_at(payload["request"], payload.get("to"))

    def _on_forward(self, payload: dict) -> None:
        session = self._by_id.get(payload["id"])
        if session is None:
            self.log.warn("a stanza forwarded to session {id} found it gone", id=payload["id"])
            return
        session.deliver(payload["xml"])

    def _publish(self, frontend: str, kind: str, payload: dict, chain: str | None = None) -> defer.Deferred:
        def publish(_=None):
            d = defer.maybeDeferred(self.router.publish_to_frontend, frontend, kind, payload)
            d.addErrback(self._publish_failed, kind, frontend)
            return d

        if chain is None:
            return publish()
        d = self._forwarding.get(chain) or defer.succeed(None)
        d = d.addCallback(publish)
        self._forwarding[chain] = d
        return d

    def _publish_failed(self, failure, kind: str, frontend: str) -> int:
        self.log.failure("publishing {kind} to {frontend} failed", failure, kind=kind, frontend=frontend)
        return 0
