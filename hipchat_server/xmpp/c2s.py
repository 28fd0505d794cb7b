"""Client-to-server streams (RFC 6120): the negotiation of one client connection, then its stanzas.

Each connection goes through the same steps, each ending in a stream restart:

1. TLS: on the client port STARTTLS is required and nothing else is accepted
   before it (5.3.1, ``policy-violation``); on the direct-TLS port TLS is on
   from the first byte.
2. SASL (section 6): the mechanisms of `hipchat_server.xmpp.sasl`; credential
   lookups run in a thread (they query MariaDB). Failed attempts count per
   client address; too many close the stream.
3. Resource binding (section 7), and the RFC 3921 session for old clients.

After binding, stanzas are checked and stamped (`stanzas.check_from_client`)
and handed to a `StanzaRouter`. A stanza before authentication or binding is
a ``not-authorized`` stream error.

Stream Management (XEP-0198, `stream_management`): a client counts as having
its stanza handled only once the router's Deferred for it fired (durable),
in order; with resumption on, a connection lost without ``</stream>``
hibernates its session for ``sm_resume_timeout`` seconds instead of ending it,
and a later stream of the same user resumes it here or on another front end.
"""

from __future__ import annotations

import weakref
from typing import Callable, Protocol

from twisted.internet import defer, protocol, threads
from twisted.words.xish import domish

from hipchat_server.xmpp import bind, tls
from hipchat_server.xmpp import caps
from hipchat_server.xmpp import stream_management as sm
from hipchat_server.xmpp.auth_limits import AuthFailureLimiter
from hipchat_server.xmpp.errors import STREAM_NS, StreamError, stanza_error_reply, stream_error_element
from hipchat_server.xmpp.features import (
    SASL_NS,
    optional_session,
    resource_binding,
    sasl_mechanisms,
    starttls_required,
    stream_features,
    stream_management,
)
from hipchat_server.xmpp.jid import JID, InvalidJID, is_valid_jid, parse_jid
from hipchat_server.xmpp.sasl import ABORTED, TEMPORARY_AUTH_FAILURE, Challenge, Failure, SaslServer, Success
from hipchat_server.xmpp.stanzas import Refused, check_from_client, iq_result
from hipchat_server.xmpp.stream import XmppStreamProtocol
from hipchat_server.xmpp.stream_management import ResumableSessions, StreamState
from hipchat_server.xmpp.xml_parser import StreamLimits

#: SASL failures that say nothing about the client's credentials, so they do not count against its address.
_UNCOUNTED_FAILURES = frozenset({ABORTED, TEMPORARY_AUTH_FAILURE})
#: Seconds between a stanza sent under Stream Management and the ``<r/>`` asking the client to acknowledge it.
ACK_REQUEST_DELAY = 0.5
#: Elements a stream may send while its resumption is under way, kept until it is answered.
MAX_HELD_DURING_RESUME = 100


class StanzaRouter(Protocol):
    """Where bound client streams send their stanzas, and learn of each other.

    ``connection.jid`` is the stream's full JID; ``connection.deliver(stanza)``
    writes a stanza (an element, or serialized XML) to that client. Stanzas
    come checked, with ``from`` stamped. A session whose client enabled
    resumption outlives its connection for a while (it queues what is
    delivered to it) and may move to another connection, even on another front
    end: ``session_started`` is then called for the new connection and
    ``session_ended`` for neither.
    """

    def session_started(self, connection: "ClientConnection") -> None:
        """``connection`` bound its resource and may receive stanzas."""

    def session_ended(self, connection: "ClientConnection") -> None:
        """``connection`` is gone (closed, lost, or replaced by a newer stream with its resource)."""

    def stanza_from_client(self, connection: "ClientConnection", element: domish.Element) -> defer.Deferred | None:
        """Route one stanza: None, or a Deferred that fires once it is durable (delivered, stored, answered)."""

    def undelivered(self, connection: "ClientConnection", stanzas: list[str]) -> None:
        """The stanzas an ended session's client never acknowledged (optional: store or bounce them)."""


def _sasl_element(outcome: Challenge | Success | Failure) -> domish.Element:
    if isinstance(outcome, Failure):
        element = domish.Element((SASL_NS, "failure"))
        element.addElement(outcome.condition)
        if outcome.text:
            element.addElement("text", content=outcome.text)
        return element
    element = domish.Element((SASL_NS, "challenge" if isinstance(outcome, Challenge) else "success"))
    data = outcome.encoded()
    if data:
        element.addContent(data)
    return element


class ClientConnection(XmppStreamProtocol):
    """One client's stream, from its first byte to its last stanza."""

    def __init__(self, factory: "ClientFactory"):
        super().__init__(factory.limits, factory.clock)
        self.factory = factory
        self.tls_active = factory.direct_tls
        self.username: str | None = None
        self.jid: JID | None = None  # bound full JID
        self.peer_host = "unknown"
        self._sasl = None
        self._sasl_pending = False
        self._held: list[bytes] | None = None  # bytes read while a SASL step runs in a thread
        self._gone = self._session_over = False
        self._timeout_call = None
        # Stream Management (XEP-0198).
        self.sm: StreamState | None = None
        self._hibernation = self._ack_call = self._forget_call = None
        self._ack_requested = self._lent = self._clean_close = False
        self._successor: Callable | None = None  # after the session moved: where deliveries go
        self._handover_mark: int | None = None  # at shutdown, while offered to a peer: stanzas queued before
        self._held_elements: list[domish.Element] | None = None  # received while a resumption is under way

    @property
    def gone(self) -> bool:
        """True once this connection's transport is closed."""
        return self._gone

    @property
    def hibernating(self) -> bool:
        """The connection is lost but its session waits for the client to resume it."""
        return self._hibernation is not None

    @property
    def may_hand_over(self) -> bool:
        """A bound, resumable session still served here (not ended, moved or being moved)."""
        resumable = self.sm is not None and self.sm.resumable
        return self.jid is not None and resumable and not (self._session_over or self._lent or self._successor is not None)

    # Actions for the router.
    def deliver(self, stanza: domish.Element | str) -> None:
        """Write a stanza (element or serialized XML) to this client; under Stream Management keep it until acked."""
        if self._successor is not None:
            return self._successor(stanza)
        if self.sm is None:
            return self.send(stanza)
        text = stanza if isinstance(stanza, str) else self.stanza_text(stanza)
        self.sm.queue(text)
        if len(self.sm.unacked) > self.factory.sm_max_unacked:
            return self._too_many_unacked()
        if not self._gone and not self._lent:
            self.send(text)
            if len(self.sm.unacked) * 2 >= self.factory.sm_max_unacked and not self._ack_requested:
                # Filling up fast (a MAM page is 51 stanzas): ask now, not in half a second, or a client
                # paging quickly reaches the cap and its stream is closed.
                self._cancel_ack_request()
                self._request_ack()
            else:
                self._request_ack_soon()

    def stanza_text(self, element: domish.Element) -> str:
        """``element`` serialized as `send` writes it (what the unacked queue keeps)."""
        return element.toXml(
            prefixes={STREAM_NS: "stream"}, defaultUri=self.content_namespace, prefixesInScope=["stream"]
        )

    def replace_session(self) -> None:
        """A newer stream bound this stream's resource: end the session and close with ``conflict``."""
        self._end_session()
        self.send_stream_error("conflict", "replaced by a new connection with the same resource")

    def close_stream(self) -> None:
        """Close cleanly (``</stream>``, ours or echoing the client's): the session ends, it cannot be resumed."""
        self.closing_cleanly()
        super().close_stream()

    def closing_cleanly(self) -> None:
        """The stream ends by a close, not a lost connection: its session will not hibernate.

        A subclass that frames the close its own way (RFC 7395's ``<close/>``) calls this.
        """
        self._clean_close = True

    def send_stream_error(self, condition: str, text: str | None = None) -> None:
        if self._gone and self.hibernating:
            self._end_session()  # e.g. system-shutdown: a hibernating session ends, its queue goes to the router
            return
        super().send_stream_error(condition, text)

    def system_shutdown(self) -> None:
        """The server stops: tell the client, and end the session now, not at the connection's loss.

        Its unacknowledged stanzas go to the router while the process still
        runs; waiting for the connection to close would leave them to a
        reactor already stopping. A session being handed over is left to the
        handover.
        """
        self.send_stream_error("system-shutdown")
        if not self._lent:
            self._end_session()

    # Actions for the sessions of `stream_management.ResumableSessions`.
    def lend(self) -> defer.Deferred:
        """Stop serving this session while it is handed over; fires once its client's stanzas settled."""
        self._lent = True
        self._stop_hibernating()
        if not self._gone:
            self._drop_transport()
        return self.sm.settled(self.clock, sm.SETTLE_TIMEOUT)

    def pause_for_handover(self) -> defer.Deferred:
        """At shutdown: stop reading from the client, keep the connection; fires once its stanzas settled.

        What the client sends from now on is not read; it resends it after
        resuming, since the ``h`` it is told does not count it.
        """
        self._lent = True
        self._handover_mark = len(self.sm.unacked)
        self._stop_hibernating()
        if not self._gone:
            self.transport.pauseProducing()
        return self.sm.settled(self.clock, sm.SETTLE_TIMEOUT)

    def handover_failed(self) -> None:
        """No peer took the session: serve it here again (the stanzas queued meanwhile are sent now)."""
        queued_meanwhile = list(self.sm.unacked)[self._handover_mark or 0 :]
        self._handover_mark = None
        if self._gone:
            return self.lend_cancelled()
        self._lent = False
        self.transport.resumeProducing()
        for text in queued_meanwhile:
            self.send(text)

    def drop_connection(self) -> None:
        """Close the connection without ``</stream>`` or a stream error: the client resumes the session elsewhere."""
        self._handover_mark = None
        if not self._gone:
            self._drop_transport()

    def adopt(self, jid: JID, username: str, state: StreamState, holder: str) -> None:
        """Become a session handed over by stopping front end ``holder``: no connection, hibernating."""
        self.username, self.jid, self.sm = username, jid, state
        self._gone = self._closed = True  # no transport until the client resumes the session on a new stream
        self.peer_host = f"front end {holder}"
        self._cancel_timeout()
        self.factory.sessions.add(self)
        self.factory.resumable.add(self)
        self.factory.router.session_started(self)
        self._hibernate()

    def lend_cancelled(self) -> None:
        """The handover did not happen: hibernate again (for a whole resume timeout)."""
        self._lent = False
        if not self._session_over and self._successor is None:
            self._hibernate()

    def moved(self, successor: Callable) -> None:
        """The session now lives elsewhere: what is still delivered here goes to ``successor``."""
        self._lent = False
        self._successor = successor
        self._stop_hibernating()
        self._forget_call = self.clock.callLater(sm.MOVED_GRACE, self._forget_moved)

    def take_over(self, jid: JID, state: StreamState) -> None:
        """Become the stream of a resumed session: answer ``<resumed/>`` and resend what the client lacks."""
        self._held_elements, held = None, self._held_elements or []
        self.jid, self.sm = jid, state
        state.restart_inbound()
        self._cancel_timeout()
        previous = self.factory.sessions.get(jid)
        if previous is not None and previous is not self:
            previous.replace_session()
        self.factory.sessions.add(self)
        self.factory.resumable.add(self)
        self.send(sm.resumed(state.handled, state.id))
        for text in state.unacked:
            self.send(text)
        if state.unacked:
            self._request_ack_soon()
        self.log.info("{jid} resumed its session from {peer}", jid=jid, peer=self.peer_host)
        self.factory.router.session_started(self)
        self._replay(held)

    def resume_failed(self, condition: str) -> None:
        """The session could not be resumed: say so; the client may bind a new one."""
        self._held_elements, held = None, self._held_elements or []
        self.send(sm.failed(condition))
        self._replay(held)

    # Twisted.
    def connectionMade(self) -> None:
        self.peer_host = getattr(self.transport.getPeer(), "host", "unknown")
        # A room join or a MAM page is several small writes; with Nagle's algorithm each waits for the
        # client's delayed ACK (40 ms). Twisted already gathers one reactor turn's writes into one send.
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        self._timeout_call = self.clock.callLater(self.factory.negotiation_timeout, self._negotiation_timed_out)

    def connectionLost(self, reason) -> None:
        super().connectionLost(reason)
        self._gone = True
        self._cancel_timeout()
        self._cancel_ack_request()
        if self._successor is not None or self._lent:
            return  # the session moved, or is moving, to another stream
        if self.jid is not None and self.sm is not None and self.sm.resumable and not self._clean_close:
            self._hibernate()
        else:
            self._end_session()

    @property
    def handing_over(self) -> bool:
        """Offered to a peer at shutdown: what the client sends now is not read (it resends it after resuming)."""
        return self._handover_mark is not None

    def dataReceived(self, data: bytes) -> None:
        if self.handing_over:
            return
        if self._held is None:
            return super().dataReceived(data)
        self._held.append(data)  # replayed once the SASL step answered
        if sum(map(len, self._held)) > self.limits.max_stanza_size_unauthenticated:
            self.send_stream_error("policy-violation", "wait for the answer to the last SASL element")

    # Stream hooks.
    def stream_started(self, attrs: dict[str, str]) -> None:
        peer, to, domain = attrs.get("from"), attrs.get("to"), self.factory.domain
        self.send_stream_header(from_=domain, to=peer if peer and is_valid_jid(peer) else None)
        if not to or not is_valid_jid(to) or parse_jid(to) != parse_jid(domain):
            raise StreamError("host-unknown", f"this server serves {domain}")
        major = (attrs.get("version") or "0").partition(".")[0]
        if not major.isdigit() or int(major) < 1:
            raise StreamError("unsupported-version", "XMPP 1.0 streams only")
        self.send(self._features())

    def stanza_received(self, element: domish.Element) -> None:
        if self._held_elements is not None:
            if len(self._held_elements) >= MAX_HELD_DURING_RESUME:
                raise StreamError("policy-violation", "wait for the answer to <resume/>")
            self._held_elements.append(element)
        elif not self.tls_active:
            self._before_tls(element)
        elif not self.authenticated:
            self._authenticating(element)
        elif self.jid is None:
            self._binding(element)
        else:
            self._bound(element)

    # Negotiation steps.
    def _features(self) -> domish.Element:
        if not self.tls_active:
            return stream_features(starttls_required())
        if not self.authenticated:
            return stream_features(sasl_mechanisms(self.factory.sasl_server.mechanisms(tls_active=True)))
        if self.jid is None:
            # The server's capabilities (XEP-0115) let a client skip its disco#info when the ver is known.
            return stream_features(resource_binding(), optional_session(), stream_management(), caps.server_caps_element())
        return stream_features()

    def _before_tls(self, element: domish.Element) -> None:
        if not tls.is_starttls(element):
            raise StreamError("policy-violation", "STARTTLS is required before anything else")
        self.send(tls.proceed())
        self.transport.startTLS(self.factory.tls_options)
        self.tls_active = True
        # Bytes that came in plaintext after <starttls/> must not pass as protected by TLS.
        self.reset_parser(discard_pending=True)

    def _authenticating(self, element: domish.Element) -> None:
        if element.uri != SASL_NS:
            raise StreamError("not-authorized", "authenticate first")
        if self._sasl_pending:
            raise StreamError("policy-violation", "wait for the answer to the last SASL element")
        if self._sasl is None:
            self._sasl = self.factory.sasl_server.session(tls_active=True)
        if element.name == "auth":
            if self.factory.auth_limiter.blocked(self.peer_host):
                return self._refuse_blocked_address()
            self._sasl_step(self._sasl.start, element.getAttribute("mechanism", ""), str(element))
        elif element.name == "response":
            self._sasl_step(self._sasl.respond, str(element))
        elif element.name == "abort":
            self._sasl_outcome(self._sasl.abort())
        else:
            raise StreamError("unsupported-stanza-type", f"<{element.name}/> is not a SASL element")

    def _sasl_step(self, step: Callable, *args) -> None:
        self._sasl_pending, self._held = True, []
        d = self.factory.run_blocking(step, *args)
        d.addErrback(self._sasl_crashed)
        d.addCallback(self._sasl_outcome)

    def _sasl_crashed(self, failure) -> Failure:
        self.log.failure("SASL step for {peer} failed", failure, peer=self.peer_host)
        return Failure(TEMPORARY_AUTH_FAILURE)

    def _sasl_outcome(self, outcome: Challenge | Success | Failure) -> None:
        self._sasl_pending = False
        held, self._held = self._held, None
        if self._gone:
            return
        self.send(_sasl_element(outcome))
        if isinstance(outcome, Success):
            self.username = outcome.username
            self.set_authenticated()
            self.reset_parser()
            # One line per login costs a tenth of a front end's time in a login storm: counted here,
            # logged once a minute by the process (`ClientFactory.logins`); per login only at debug level.
            self.factory.logins += 1
            self.log.debug("{user} logged in from {peer}", user=self.username, peer=self.peer_host)
        elif isinstance(outcome, Failure) and outcome.condition not in _UNCOUNTED_FAILURES and not outcome.credentials_proved:
            if self.factory.auth_limiter.record_failure(self.peer_host):
                return self._refuse_blocked_address()
        if held:
            self.dataReceived(b"".join(held))

    def _refuse_blocked_address(self) -> None:
        self.send(_sasl_element(Failure("not-authorized", "too many failed logins; try again later")))
        self.send_stream_error("policy-violation", "too many failed logins from this address")

    def _binding(self, element: domish.Element) -> None:
        if sm.is_sm(element):
            return self._sm_before_binding(element)
        if not bind.is_bind_request(element):
            raise StreamError("not-authorized", "bind a resource first")
        domain = self.factory.domain
        try:
            jid = bind.bound_jid(element, parse_jid(f"{self.username}@{domain}"))
        except InvalidJID as e:
            return self.send(stanza_error_reply(element, "bad-request", text=f"resource: {e.reason}"))
        sessions = self.factory.sessions
        previous = sessions.get(jid)
        if previous is None and len(sessions.resources(jid.bare())) >= self.factory.max_sessions_per_user:
            limit = self.factory.max_sessions_per_user
            return self.send(stanza_error_reply(element, "resource-constraint", text=f"at most {limit} sessions"))
        if previous is not None:
            previous.replace_session()
        self.jid = jid
        self._cancel_timeout()
        sessions.add(self)
        self.send(bind.bind_result(element, jid))
        self.factory.router.session_started(self)

    def _bound(self, element: domish.Element) -> None:
        if sm.is_sm(element):
            return self._sm_after_binding(element)
        if bind.is_session_request(element):
            reply = iq_result(element)
            reply["to"] = self.jid.full()
            self._count_handled(None)
            return self.deliver(reply)
        try:
            check_from_client(element, self.jid)
        except Refused as refused:
            self._count_handled(None)
            if refused.reply is not None:
                self.deliver(refused.reply)
            return
        durable = self.factory.router.stanza_from_client(self, element)
        if isinstance(durable, defer.Deferred):
            durable.addErrback(self._routing_failed, element)
        self._count_handled(durable)

    def _count_handled(self, durable: defer.Deferred | None) -> None:
        """Under Stream Management, count the client's stanza as handled once ``durable`` fired (now if None)."""
        if self.sm is None:
            return
        done = self.sm.inbound()
        if durable is None:
            done()
        else:
            durable.addBoth(done)

    def _routing_failed(self, failure, element: domish.Element) -> None:
        # The router could not even answer: answer for it, so the stanza is handled (its sender knows it failed).
        self.log.failure("routing a stanza from {jid} failed", failure, jid=self.jid)
        if element.getAttribute("type") != "error" and element.name != "presence":
            self.deliver(stanza_error_reply(element, "internal-server-error"))

    # Stream Management (XEP-0198).
    def _sm_before_binding(self, element: domish.Element) -> None:
        if element.name != "resume":
            return self.send(sm.failed("unexpected-request"))
        h, previd = sm.parse_h(element), element.getAttribute("previd")
        if h is None or not previd:
            return self.send(sm.failed("bad-request"))
        self._held_elements = []  # what the client sends next waits for <resumed/> or <failed/>
        self.factory.resumable.resume(self, previd, h)

    def _sm_after_binding(self, element: domish.Element) -> None:
        if element.name == "enable":
            return self._enable(element)
        if element.name == "resume" or self.sm is None:
            if element.name in ("resume", "r", "a"):
                return self.send(sm.failed("unexpected-request"))
            raise StreamError("unsupported-stanza-type", f"<{element.name}/> is not a Stream Management element")
        if element.name == "r":
            self.sm.handled_so_far().addCallback(self._answer_ack_request)
            return None
        if element.name == "a":
            return self._acknowledged(element)
        raise StreamError("unsupported-stanza-type", f"<{element.name}/> is not a Stream Management element")

    def _enable(self, element: domish.Element) -> None:
        if self.sm is not None:
            return self.send(sm.failed("unexpected-request"))
        if element.getAttribute("resume", "false") in ("true", "1"):
            timeout = int(self.factory.sm_resume_timeout)
            asked = element.getAttribute("max", "")
            if asked.isdigit() and 0 < int(asked) < timeout:
                timeout = int(asked)
            self.sm = StreamState(self.factory.resumable.new_id(), timeout)
            self.factory.resumable.add(self)
        else:
            self.sm = StreamState()
        self.send(sm.enabled(self.sm.id, self.sm.max_seconds))

    def _answer_ack_request(self, h: int) -> None:
        if not self._gone:
            self.send(sm.ack(h))

    def _acknowledged(self, element: domish.Element) -> None:
        h = sm.parse_h(element)
        if h is None:
            raise StreamError("bad-format", "<a/> needs an h attribute: an integer below 2^32")
        try:
            self.sm.acknowledge(h)
        except sm.HandledCountTooHigh as e:
            error = stream_error_element("undefined-condition", str(e))
            error.addChild(sm.handled_count_too_high(e))
            self.send(error)
            return self.close_stream()
        self._ack_requested = False
        if self.sm.unacked:
            self._request_ack_soon()

    def _request_ack_soon(self) -> None:
        if self._ack_call is None and not self._ack_requested:
            self._ack_call = self.clock.callLater(ACK_REQUEST_DELAY, self._request_ack)

    def _request_ack(self) -> None:
        self._ack_call = None
        if self.sm is not None and self.sm.unacked and not self._gone and not self._lent:
            self._ack_requested = True
            self.send(sm.request())

    def _cancel_ack_request(self) -> None:
        if self._ack_call is not None and self._ack_call.active():
            self._ack_call.cancel()
        self._ack_call = None

    def _too_many_unacked(self) -> None:
        if self._lent:
            return  # being handed over: the new holder gets the whole queue (or it comes back here)
        if self._gone:
            self.log.info("{jid}'s hibernating session queued too much; it ends now", jid=self.jid)
            self._end_session()
        else:
            self.send_stream_error("policy-violation", "too many unacknowledged stanzas; answer <r/>")

    def _hibernate(self) -> None:
        self._stop_hibernating()
        self._hibernation = self.clock.callLater(self.sm.max_seconds, self._hibernation_over)
        self.log.info(
            "{jid} lost its connection; the session waits {s}s to be resumed", jid=self.jid, s=self.sm.max_seconds
        )

    def _hibernation_over(self) -> None:
        self._hibernation = None
        self._end_session()

    def _stop_hibernating(self) -> None:
        if self._hibernation is not None and self._hibernation.active():
            self._hibernation.cancel()
        self._hibernation = None

    def _drop_transport(self) -> None:
        # Closes without </stream>, and without ending the session: it lives on in another stream.
        self._closed = True
        abort = getattr(self.transport, "abortConnection", None)
        (abort or self.transport.loseConnection)()

    def _forget_moved(self) -> None:
        self._forget_call = None
        self.factory.sessions.remove(self)
        self.factory.resumable.forget_moved(self.sm.id)

    def _replay(self, elements: list[domish.Element]) -> None:
        handle = self._guarded(self.stanza_received)
        for element in elements:
            if self._closed:
                return
            handle(element)

    # Housekeeping.
    def _end_session(self) -> None:
        if self.jid is None or self._session_over or self._successor is not None:
            return
        self._session_over = True
        self._stop_hibernating()
        self._cancel_ack_request()
        self.factory.sessions.remove(self)
        if self.sm is not None and self.sm.resumable:
            self.factory.resumable.ended(self)
        router = self.factory.router
        router.session_ended(self)
        if self.sm is not None and self.sm.unacked:
            # XEP-0198: what the client did not acknowledge was not delivered.
            stanzas, self.sm.unacked = list(self.sm.unacked), type(self.sm.unacked)()
            undelivered = getattr(router, "undelivered", None)
            if undelivered is not None:
                undelivered(self, stanzas)
            else:
                self.log.warn("{n} unacknowledged stanzas for {jid} are dropped", n=len(stanzas), jid=self.jid)

    def _negotiation_timed_out(self) -> None:
        self._timeout_call = None
        self.send_stream_error("connection-timeout", "log in and bind a resource sooner")

    def _cancel_timeout(self) -> None:
        if self._timeout_call is not None and self._timeout_call.active():
            self._timeout_call.cancel()
        self._timeout_call = None


#: The resumable sessions of each process, by its session table (shared by its factories).
_RESUMABLE: "weakref.WeakKeyDictionary[bind.SessionTable, ResumableSessions]" = weakref.WeakKeyDictionary()


class ClientFactory(protocol.ServerFactory):
    """Builds a `ClientConnection` per accepted client; one per listening port.

    The factories of one process share ``sessions``, ``router`` and
    ``auth_limiter`` (and through ``sessions``, the resumable sessions).
    ``direct_tls`` is for the port wrapped in TLS from the first byte.
    ``run_blocking(f, *args)`` returns a Deferred of ``f(*args)`` run off the
    reactor thread (tests run it inline).
    """

    def __init__(
        self,
        domain: str,
        sasl_server: SaslServer,
        router: StanzaRouter,
        tls_options,
        *,
        direct_tls: bool = False,
        sessions: bind.SessionTable | None = None,
        auth_limiter: AuthFailureLimiter | None = None,
        limits: StreamLimits | None = None,
        clock=None,
        max_sessions_per_user: int = 10,
        negotiation_timeout: float = 60.0,
        run_blocking: Callable[..., defer.Deferred] = threads.deferToThread,
        sm_resume_timeout: float = 300.0,
        sm_max_unacked: int = 1000,
        resumable: ResumableSessions | None = None,
    ):
        if clock is None:
            from twisted.internet import reactor as clock
        self.domain, self.sasl_server, self.router, self.tls_options = domain, sasl_server, router, tls_options
        self.direct_tls = direct_tls
        self.sessions = sessions if sessions is not None else bind.SessionTable()
        self.auth_limiter = auth_limiter or AuthFailureLimiter(clock=clock)
        self.limits, self.clock = limits or StreamLimits(), clock
        self.max_sessions_per_user = max_sessions_per_user
        self.negotiation_timeout = negotiation_timeout
        self.run_blocking = run_blocking
        self.logins = 0  # successful authentications since the process started
        self.sm_resume_timeout, self.sm_max_unacked = sm_resume_timeout, sm_max_unacked
        if resumable is None:
            resumable = _RESUMABLE.get(self.sessions)
            if resumable is None:
                resumable = _RESUMABLE[self.sessions] = ResumableSessions(router, clock)
        self.resumable = resumable
        if resumable.adopt is None:
            resumable.adopt = self.adopt_hibernating

    def buildProtocol(self, addr) -> ClientConnection:
        return ClientConnection(self)

    def adopt_hibernating(self, state: dict) -> ClientConnection | None:
        """A session a stopping front end handed over (`ResumableSessions.hand_over_all`), hibernating here.

        None when its resource is bound here already: that newer session keeps it.
        """
        jid = parse_jid(state["jid"])
        if jid.resourcepart is None or self.sessions.get(jid) is not None:
            return None
        connection = ClientConnection(self)
        connection.adopt(jid, state["user"], StreamState.from_snapshot(state), state["holder"])
        return connection
