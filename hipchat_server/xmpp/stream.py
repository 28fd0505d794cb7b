"""XML streams (RFC 6120 section 4): the Twisted protocol base every client connection builds on.

It feeds received bytes to :class:`~hipchat_server.xmpp.xml_parser.StreamParser`,
paces a client that sends too fast (reading pauses, as ejabberd's shaper
does, rather than disconnecting), and turns any limit or protocol violation
into a stream error that closes that one stream.
"""

from __future__ import annotations

import secrets

from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.words.xish import domish

from hipchat_server.xmpp.errors import STREAM_NS, StreamError, stream_error_element
from hipchat_server.xmpp.xml_parser import CLIENT_NS, StreamLimits, StreamParser

class TokenBucket:
    """A byte budget refilled at ``rate`` per second up to ``burst``; the clock is injectable."""

    def __init__(self, rate: float, burst: int, clock):
        self.rate, self.burst, self.clock = rate, burst, clock
        self._tokens, self._stamp = float(burst), clock.seconds()

    def consume(self, amount: int) -> float:
        """Take ``amount`` bytes from the budget; the seconds to wait until it is no longer in debt."""
        now = self.clock.seconds()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate) - amount
        self._stamp = now
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


class XmppStreamProtocol(Protocol):
    """The receiving side of one client XML stream over TCP or TLS.

    Subclasses override the hooks `stream_started`, `stanza_received` and
    `stream_ended`; a hook may raise StreamError to close the stream with that
    error. Reading pauses (rather than disconnecting, like ejabberd's shaper)
    while the connection is over its byte rate.
    """

    content_namespace = CLIENT_NS
    log = Logger()

    def __init__(self, limits: StreamLimits | None = None, clock=None):
        if clock is None:
            from twisted.internet import reactor as clock
        self.limits, self.clock = limits or StreamLimits(), clock
        self.authenticated = False
        self.stream_id: str | None = None
        self._closed = self._header_sent = self._parsing = False
        self._restart: bool | None = None  # a requested restart: whether to drop what follows
        self._resume_call = None
        rate = self.limits.rate_bytes_per_second
        self._bucket = TokenBucket(rate, self.limits.rate_burst_bytes, clock) if rate else None
        self._parser = self._new_parser()

    # Hooks for subclasses.
    def stream_started(self, attrs: dict[str, str]) -> None:
        """The client opened a stream (first, and after each restart); ``attrs`` has 'to', 'version', 'xml:lang'."""

    def stanza_received(self, element: domish.Element) -> None:
        """A complete first-level element (stanza or negotiation element) arrived."""

    def stream_ended(self) -> None:
        """The client sent ``</stream:stream>``; by default we close our side too."""
        self.close_stream()

    # Actions.
    @property
    def max_stanza_size(self) -> int:
        """The stanza size limit in force: small until `set_authenticated`."""
        return self._parser.max_stanza_size

    def set_authenticated(self) -> None:
        """Raise the stanza size limit to the authenticated one, for this and later streams."""
        self.authenticated = True
        self._parser.max_stanza_size = self.limits.max_stanza_size

    def reset_parser(self, discard_pending: bool = False) -> None:
        """Start parsing a new stream (RFC 6120 4.3.3 restart), after the stanza being handled.

        After SASL success, bytes the client pipelined after the stanza go to the
        new parser. After STARTTLS pass ``discard_pending=True``: bytes that came
        in plaintext after <starttls/> must never pass as protected by TLS.
        """
        if self._parsing:
            self._restart = discard_pending
            self._parser.interrupt()
        else:
            self._parser = self._new_parser()

    def send(self, data: domish.Element | str | bytes) -> None:
        """Write an element (serialised in the stream's namespaces) or raw XML, unless closed."""
        if self._closed:
            return
        if isinstance(data, domish.Element):
            data = data.toXml(
                prefixes={STREAM_NS: "stream"}, defaultUri=self.content_namespace, prefixesInScope=["stream"]
            )
        self.transport.write(data.encode("utf-8") if isinstance(data, str) else data)

    def send_stream_header(self, from_: str | None = None, to: str | None = None, version: str | None = "1.0") -> str:
        """Open our side of the stream with a new unpredictable id (RFC 6120 4.7.3); returns the id."""
        self.stream_id = secrets.token_urlsafe(16)
        attrs = {"from": from_, "to": to, "version": version, "xml:lang": "en", "id": self.stream_id}
        text = "".join(f" {k}='{domish.escapeToXml(v, 1)}'" for k, v in attrs.items() if v is not None)
        self._header_sent = True
        namespaces = f" xmlns='{self.content_namespace}' xmlns:stream='{STREAM_NS}'"
        self.send(f"<?xml version='1.0'?><stream:stream{text}{namespaces}>")
        return self.stream_id

    def send_stream_error(self, condition: str, text: str | None = None) -> None:
        """Send ``<stream:error/>`` and close the stream and the connection (RFC 6120 4.9.1).

        When our header has not been sent yet it goes first (4.9.1.2).
        """
        if self._closed:
            return
        peer = self.transport.getPeer() if self.transport else None
        self.log.info("Closing the stream from {peer}: {condition} {text}", peer=peer, condition=condition, text=text)
        if not self._header_sent:
            self.send_stream_header()
        self.send(stream_error_element(condition, text))
        self.close_stream()

    def close_stream(self) -> None:
        """Send ``</stream:stream>`` and close the connection; nothing more is parsed or sent."""
        if self._closed:
            return
        if not self._header_sent:
            self.send_stream_header()
        self.send("</stream:stream>")
        self._closed = True
        self._parser.interrupt()
        self.transport.loseConnection()

    # Twisted.
    def dataReceived(self, data: bytes) -> None:
        if self._closed:
            return
        if self._bucket is not None:
            self._pause(self._bucket.consume(len(data)))
        self._parsing = True
        try:
            while not self._closed:
                rest = self._parser.feed(data)
                if rest is None or self._restart is None:
                    break
                discard, self._restart = self._restart, None
                self._parser = self._new_parser()
                if discard or not rest:
                    break
                data = rest
        except StreamError as e:
            self.send_stream_error(e.condition, e.text)
        finally:
            self._parsing = False

    def connectionLost(self, reason) -> None:
        self._closed = True
        if self._resume_call is not None and self._resume_call.active():
            self._resume_call.cancel()
        self._resume_call = None

    def _pause(self, delay: float) -> None:
        if delay > 0 and self._resume_call is None:
            self.transport.pauseProducing()
            self._resume_call = self.clock.callLater(delay, self._resume)

    def _resume(self) -> None:
        self._resume_call = None
        delay = self._bucket.consume(0)  # data read while pausing may have deepened the debt
        if delay > 0:
            self._resume_call = self.clock.callLater(delay, self._resume)
        elif not self._closed:
            self.transport.resumeProducing()

    def _new_parser(self) -> StreamParser:
        size = self.limits.max_stanza_size if self.authenticated else self.limits.max_stanza_size_unauthenticated
        hooks = (self.stream_started, self.stanza_received, self.stream_ended)
        return StreamParser(self.limits, size, *(self._guarded(hook) for hook in hooks), self.content_namespace)

    def _guarded(self, hook):
        # A hook's StreamError closes the stream with that error; a bug closes only this stream.
        def call(*args):
            try:
                hook(*args)
            except StreamError as e:
                self.send_stream_error(e.condition, e.text)
            except Exception:
                self.log.failure("XMPP stream handler failed")
                self.send_stream_error("internal-server-error")

        return call
