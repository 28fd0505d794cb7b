"""The login throttle pauses accepting at the limit of logins in progress and resumes as they finish."""

from __future__ import annotations

from twisted.internet import protocol
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.python import failure

from hipchat_server.xmpp.login_throttle import LoginThrottle


class FakePort:
    def __init__(self):
        self.reading = True

    def stopReading(self):
        self.reading = False

    def startReading(self):
        self.reading = True


class FakeStream(protocol.Protocol):
    """Binds a resource when it reads b'bind'."""

    jid = None

    def dataReceived(self, data):
        if data == b"bind":
            self.jid = "alice@example.com/phone"


def connect(throttle):
    wrapper = throttle.wrap(protocol.ServerFactory.forProtocol(FakeStream)).buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
    wrapper.makeConnection(StringTransport())
    return wrapper


def make(limit=4):
    throttle = LoginThrottle(max_negotiating=limit, resume_below=2)
    port = FakePort()
    throttle.watch(port)
    return throttle, port


def test_ports_pause_at_the_limit_and_resume_below_the_low_mark():
    throttle, port = make()
    connections = [connect(throttle) for _ in range(4)]
    assert throttle.negotiating == 4 and not port.reading
    connections[0].dataReceived(b"bind")
    connections[1].dataReceived(b"bind")
    assert throttle.negotiating == 2 and not port.reading  # not yet below the low mark
    connections[2].connectionLost(failure.Failure(ConnectionError("gone")))
    assert throttle.negotiating == 1 and port.reading
    assert throttle.times_paused == 1


def test_a_bound_session_is_counted_once_even_when_it_later_disconnects():
    throttle, port = make()
    wrapper = connect(throttle)
    wrapper.dataReceived(b"bind")
    wrapper.dataReceived(b"more")
    wrapper.connectionLost(failure.Failure(ConnectionError("gone")))
    assert throttle.negotiating == 0


def test_ports_watched_while_paused_start_paused():
    throttle, first = make(limit=1)
    connect(throttle)
    late = FakePort()
    throttle.watch(late)
    assert not first.reading and not late.reading
