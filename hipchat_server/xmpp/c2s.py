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
"""

from __future__ import annotations

from typing import Callable, Protocol

from twisted.internet import defer, protocol, threads
from twisted.words.xish import domish

from hipchat_server.xmpp import bind, tls
from hipchat_server.xmpp.auth_limits import AuthFailureLimiter
from hipchat_server.xmpp.errors import StreamError, stanza_error_reply
from hipchat_server.xmpp.features import (
    SASL_NS,
    optional_session,
    resource_binding,
    sasl_mechanisms,
    starttls_required,
    stream_features,
)
from hipchat_server.xmpp.jid import JID, InvalidJID, is_valid_jid, parse_jid
from hipchat_server.xmpp.sasl import ABORTED, TEMPORARY_AUTH_FAILURE, Challenge, Failure, SaslServer, Success
from hipchat_server.xmpp.stanzas import Refused, check_from_client, iq_result
from hipchat_server.xmpp.stream import XmppStreamProtocol
from hipchat_server.xmpp.xml_parser import StreamLimits

#: SASL failures that say nothing about the client's credentials, so they do not count against its address.
_UNCOUNTED_FAILURES = frozenset({ABORTED, TEMPORARY_AUTH_FAILURE})


class StanzaRouter(Protocol):
    """Where bound client streams send their stanzas, and learn of each other.

    ``connection.jid`` is the stream's full JID; ``connection.deliver(element)``
    writes a stanza to that client. Stanzas come checked, with ``from`` stamped.
    """

    def session_started(self, connection: "ClientConnection") -> None:
        """``connection`` bound its resource and may receive stanzas."""

    def session_ended(self, connection: "ClientConnection") -> None:
        """``connection`` is gone (closed, lost, or replaced by a newer stream with its resource)."""

    def stanza_from_client(self, connection: "ClientConnection", element: domish.Element) -> None:
        """Route or answer one stanza the client of ``connection`` sent."""


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

    # Actions for the router.
    def deliver(self, element: domish.Element) -> None:
        """Write a stanza to this client."""
        self.send(element)

    def replace_session(self) -> None:
        """A newer stream bound this stream's resource: end the session and close with ``conflict``."""
        self._end_session()
        self.send_stream_error("conflict", "replaced by a new connection with the same resource")

    # Twisted.
    def connectionMade(self) -> None:
        self.peer_host = getattr(self.transport.getPeer(), "host", "unknown")
        self._timeout_call = self.clock.callLater(self.factory.negotiation_timeout, self._negotiation_timed_out)

    def connectionLost(self, reason) -> None:
        super().connectionLost(reason)
        self._gone = True
        self._cancel_timeout()
        self._end_session()

    def dataReceived(self, data: bytes) -> None:
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
        if not self.tls_active:
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
            return stream_features(resource_binding(), optional_session())
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
            self.log.info("{user} logged in from {peer}", user=self.username, peer=self.peer_host)
        elif isinstance(outcome, Failure) and outcome.condition not in _UNCOUNTED_FAILURES:
            if self.factory.auth_limiter.record_failure(self.peer_host):
                return self._refuse_blocked_address()
        if held:
            self.dataReceived(b"".join(held))

    def _refuse_blocked_address(self) -> None:
        self.send(_sasl_element(Failure("not-authorized", "too many failed logins; try again later")))
        self.send_stream_error("policy-violation", "too many failed logins from this address")

    def _binding(self, element: domish.Element) -> None:
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
        if bind.is_session_request(element):
            reply = iq_result(element)
            reply["to"] = self.jid.full()
            return self.send(reply)
        try:
            check_from_client(element, self.jid)
        except Refused as refused:
            if refused.reply is not None:
                self.send(refused.reply)
            return
        self.factory.router.stanza_from_client(self, element)

    # Housekeeping.
    def _end_session(self) -> None:
        if self.jid is None or self._session_over:
            return
        self._session_over = True
        self.factory.sessions.remove(self)
        self.factory.router.session_ended(self)

    def _negotiation_timed_out(self) -> None:
        self._timeout_call = None
        self.send_stream_error("connection-timeout", "log in and bind a resource sooner")

    def _cancel_timeout(self) -> None:
        if self._timeout_call is not None and self._timeout_call.active():
            self._timeout_call.cancel()
        self._timeout_call = None


class ClientFactory(protocol.ServerFactory):
    """Builds a `ClientConnection` per accepted client; one per listening port.

    The factories of one process share ``sessions``, ``router`` and
    ``auth_limiter``. ``direct_tls`` is for the port wrapped in TLS from the
    first byte. ``run_blocking(f, *args)`` returns a Deferred of ``f(*args)``
    run off the reactor thread (tests run it inline).
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

    def buildProtocol(self, addr) -> ClientConnection:
        return ClientConnection(self)
