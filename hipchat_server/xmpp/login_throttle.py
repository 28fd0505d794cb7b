"""The login throttle: a front end stops accepting connections while too many are still logging in.

A reconnect storm (every client of a failed front end or network coming back
in the same second) is HipChat's most common outage: each new connection
costs a TLS handshake, a SASL exchange and a database lookup, and a server
that accepts them all at once spends its CPU on handshakes that time out.
Here a front end holds at most ``max_negotiating`` connections between
accept and resource binding; at that count it stops reading its listening
sockets, so further clients wait in the kernel's accept queue (and, past
that, retry their SYN with TCP's own back-off) until logins finish. Bound
sessions never count: holding many is cheap, starting many is not.
"""

from __future__ import annotations

from twisted.logger import Logger
from twisted.protocols import policies


def _innermost(protocol):
    """The client stream under any TLS or other wrappers."""
    while hasattr(protocol, "wrappedProtocol"):
        protocol = protocol.wrappedProtocol
    return protocol


class _CountedConnection(policies.ProtocolWrapper):
    """Counts as logging in until the stream under it binds a resource or the connection ends."""

    counted = True

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        if self.counted and getattr(_innermost(self), "jid", None) is not None:
            self.counted = False
            self.factory.login_finished()

    def connectionLost(self, reason) -> None:
        if self.counted:
            self.counted = False
            self.factory.login_finished()
        super().connectionLost(reason)


class _ThrottledFactory(policies.WrappingFactory):
    protocol = _CountedConnection

    def __init__(self, wrapped_factory, throttle: "LoginThrottle"):
        super().__init__(wrapped_factory)
        self.throttle = throttle

    def buildProtocol(self, addr):
        protocol = super().buildProtocol(addr)
        if protocol is not None:
            self.throttle.login_started()
        return protocol

    def login_finished(self) -> None:
        self.throttle.login_finished()


class LoginThrottle:
    """Counts one front end's logins in progress over all its ports; pauses the ports at ``max_negotiating``.

    Accepting resumes once the count falls below ``resume_below`` (hysteresis,
    so the ports do not flap on every login).
    """

    log = Logger()

    def __init__(self, max_negotiating: int = 300, resume_below: int | None = None):
        self.max_negotiating = max_negotiating
        self.resume_below = resume_below if resume_below is not None else max(1, max_negotiating * 3 // 4)
        self.negotiating = 0
        self.paused = False
        self.times_paused = 0
        self.ports: list = []

    def wrap(self, factory) -> policies.WrappingFactory:
        """A factory to listen with: ``factory``'s connections, counted by this throttle."""
        return _ThrottledFactory(factory, self)

    def watch(self, port) -> None:
        """Pause and resume ``port`` (a listening port) with the throttle."""
        self.ports.append(port)
        if self.paused:
            port.stopReading()

    def login_started(self) -> None:
        self.negotiating += 1
        if self.negotiating >= self.max_negotiating and not self.paused:
            self.paused = True
            self.times_paused += 1
            self.log.warn("{n} logins in progress: pausing new connections", n=self.negotiating)
            for port in self.ports:
                port.stopReading()

    def login_finished(self) -> None:
        self.negotiating -= 1
        if self.paused and self.negotiating < self.resume_below:
            self.paused = False
            self.log.info("{n} logins in progress: accepting again", n=self.negotiating)
            for port in self.ports:
                if getattr(port, "connected", True):  # not one closed since (a front end stopping)
                    port.startReading()
