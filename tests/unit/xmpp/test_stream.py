"""The XML stream parser and protocol base on StringTransport and task.Clock: framing, limits, bombs, restarts."""

from __future__ import annotations

import re
import time
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import task
from twisted.internet.testing import StringTransport
from twisted.words.xish import domish

from hipchat_server.xmpp.errors import StreamError, stanza_error_reply, stream_error_element
from hipchat_server.xmpp.stream import XmppStreamProtocol
from hipchat_server.xmpp.xml_parser import StreamLimits

XML_DECL = b"<?xml version='1.0'?>"
HEADER = (
    XML_DECL + b"<stream:stream to='example.com' version='1.0' xml:lang='en'"
    b" xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
)
NO_RATE = StreamLimits(rate_bytes_per_second=None)


class RecordingStream(XmppStreamProtocol):
    """Answers each header and records what the parser delivered."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.headers: list[dict] = []
        self.stanzas: list[domish.Element] = []
        self.ended = False
        self.on_stanza = None  # a test's reaction to a stanza

    def stream_started(self, attrs):
        self.headers.append(attrs)
        self.send_stream_header(from_="example.com")

    def stanza_received(self, element):
        self.stanzas.append(element)
        if self.on_stanza:
            self.on_stanza(element)

    def stream_ended(self):
        self.ended = True
        super().stream_ended()

    def xml(self) -> list[str]:
        return [s.toXml() for s in self.stanzas]


def connect(limits: StreamLimits = NO_RATE, header: bytes | None = HEADER):
    clock = task.Clock()
    stream = RecordingStream(limits, clock=clock)
    transport = StringTransport()
    stream.makeConnection(transport)
    if header:
        stream.dataReceived(header)
    return stream, transport, clock


def error_condition(transport: StringTransport) -> str | None:
    match = re.search(rb"<stream:error><([a-z-]+) xmlns='urn:ietf:params:xml:ns:xmpp-streams'", transport.value())
    return match.group(1).decode() if match else None


def assert_closed_with(transport: StringTransport, condition: str) -> None:
    assert error_condition(transport) == condition
    assert transport.value().endswith(b"</stream:stream>")
    assert transport.disconnecting


def message(size: int) -> bytes:
    """A message stanza of exactly ``size`` bytes."""
    shell = b"<message to='a@example.com'><body></body></message>"
    return shell.replace(b"<body>", b"<body>" + b"x" * (size - len(shell)))


# Framing.


def test_stream_header_attributes_reach_the_hook():
    """The header's attributes, xml:lang included, are given to stream_started; our header answers it."""
    stream, transport, _ = connect()
    assert stream.headers == [{"to": "example.com", "version": "1.0", "xml:lang": "en"}]
    assert transport.value().startswith(b"<?xml version='1.0'?><stream:stream from='example.com'")
    assert stream.stream_id and stream.stream_id.encode() in transport.value()


def test_several_stanzas_in_one_chunk():
    """Every complete stanza of one chunk is delivered, in order, with children, text and namespaces."""
    stream, _, _ = connect()
    stream.dataReceived(
        b"<message to='a@example.com' id='1'><body>a &amp; b</body></message><presence/>"
        b"<iq type='get' id='2'><query xmlns='jabber:iq:roster'/></iq>"
    )
    assert [s.name for s in stream.stanzas] == ["message", "presence", "iq"]
    assert str(stream.stanzas[0].body) == "a & b"
    assert stream.stanzas[2].query.uri == "jabber:iq:roster"
    assert stream.stanzas[0].uri == "jabber:client"


def test_stanza_split_byte_by_byte():
    """A stream fed one byte at a time yields the same stanzas, each only once it is complete."""
    stream, _, _ = connect(header=None)
    data = HEADER + b"<message to='a@example.com'><body>\xd0\xb6 > &lt;</body></message><presence/>"
    for i in range(len(data)):
        stream.dataReceived(data[i : i + 1])
    assert stream.xml() == [
        "<message xmlns='jabber:client' to='a@example.com'><body>\u0436 &gt; &lt;</body></message>",
        "<presence xmlns='jabber:client'/>",
    ]


DOCUMENT = HEADER + (
    b" <message to='a@example.com' id='x'><body>caf\xc3\xa9 &amp; \xf0\x9f\x98\x80</body>"
    b"<thread>t</thread></message>\n<presence><show>away</show></presence>"
    b"<iq type='set' id='q'><query xmlns='jabber:iq:roster'><item jid='b@example.com' name=\"a'b\"/></query></iq>"
    b"<presence type='unavailable'/>  </stream:stream>"
)


@settings(max_examples=200, deadline=None, database=None)
@given(st.lists(st.integers(min_value=1, max_value=len(DOCUMENT) - 1), max_size=40))
def test_any_split_gives_the_same_stanzas(cuts):
    """However the bytes are split into chunks (even inside UTF-8 characters), the stanzas are the same."""
    reference, _, _ = connect(header=None)
    reference.dataReceived(DOCUMENT)
    stream, transport, _ = connect(header=None)
    bounds = [0, *sorted(set(cuts)), len(DOCUMENT)]
    for start, end in zip(bounds, bounds[1:]):
        stream.dataReceived(DOCUMENT[start:end])
    assert len(reference.stanzas) == 4
    assert stream.xml() == reference.xml()
    assert stream.ended and error_condition(transport) is None


RESTARTS = HEADER + b"<r/>" + HEADER + b"<r>\n</r >" + HEADER + b"<presence/>"


@settings(max_examples=200, deadline=None, database=None)
@given(st.lists(st.integers(min_value=1, max_value=len(RESTARTS) - 1), max_size=30))
def test_restarts_resume_at_the_right_byte_however_split(cuts):
    """A restart requested by an empty or a non-empty stanza hands exactly the bytes after it to the new stream."""
    stream, transport, _ = connect(header=None)
    stream.on_stanza = lambda element: element.name == "r" and stream.reset_parser()
    bounds = [0, *sorted(set(cuts)), len(RESTARTS)]
    for start, end in zip(bounds, bounds[1:]):
        stream.dataReceived(RESTARTS[start:end])
    assert len(stream.headers) == 3 and [s.name for s in stream.stanzas] == ["r", "r", "presence"]
    assert not transport.disconnecting


EMPTY_AT_LIMIT = b"<presence a='%s' b='%s'/>" % (b"y" * 4085, b"y" * (8192 - 21 - 4085))
FULL_AT_LIMIT = message(8192)


@settings(max_examples=100, deadline=None, database=None)
@given(
    st.sampled_from([EMPTY_AT_LIMIT, FULL_AT_LIMIT]),
    st.booleans(),
    st.lists(st.integers(min_value=1, max_value=8192), max_size=30),
)
def test_size_limit_is_exact_however_split(stanza, over, cuts):
    """An empty or a full stanza of exactly the limit passes and one byte longer fails, however it is split."""
    if over:
        stanza = stanza.replace(b"yyy", b"yyyy", 1) if stanza.startswith(b"<presence") else message(8193)
    data = stanza + b"<presence/>"
    stream, transport, _ = connect()
    bounds = [0, *sorted(set(cuts)), len(data)]
    for start, end in zip(bounds, bounds[1:]):
        stream.dataReceived(data[start:end])
    assert len(stanza) == 8192 + over
    assert transport.disconnecting is over
    assert len(stream.stanzas) == (0 if over else 2)


def test_whitespace_keepalives_are_ignored():
    """Whitespace between stanzas is a keepalive, not an error."""
    stream, transport, _ = connect()
    for _ in range(3):
        stream.dataReceived(b" \n\t")
    stream.dataReceived(b"<presence/>")
    assert len(stream.stanzas) == 1 and not transport.disconnecting


def test_text_between_stanzas_is_bad_format():
    """Text other than whitespace at the top level closes the stream with bad-format."""
    stream, transport, _ = connect()
    stream.dataReceived(b"hello")
    assert_closed_with(transport, "bad-format")


def test_closing_tag_ends_the_stream():
    """</stream:stream> calls stream_ended, which by default closes our side and the connection."""
    stream, transport, _ = connect()
    stream.dataReceived(b"<presence/></stream:stream>")
    assert stream.ended and transport.disconnecting
    assert transport.value().endswith(b"</stream:stream>") and error_condition(transport) is None


def test_nothing_is_read_or_sent_after_closing():
    """After a stream error, the rest of the chunk and later data are ignored, and send() writes nothing."""
    stream, transport, _ = connect()
    stream.dataReceived(b"<presence/>oops<presence/>")
    written = transport.value()
    stream.dataReceived(b"<presence/>")
    stream.send("<presence/>")
    assert len(stream.stanzas) == 1 and transport.value() == written


def test_wrong_stream_namespace_is_invalid_namespace():
    """A root element outside the streams namespace closes the stream with invalid-namespace, header first."""
    _, transport, _ = connect(header=XML_DECL + b"<stream xmlns='jabber:client'>")
    assert_closed_with(transport, "invalid-namespace")
    assert transport.value().startswith(b"<?xml version='1.0'?><stream:stream")


def test_wrong_content_namespace_is_invalid_namespace():
    """A server-to-server content namespace on a client stream is refused with invalid-namespace."""
    _, transport, _ = connect(header=HEADER.replace(b"jabber:client", b"jabber:server"))
    assert_closed_with(transport, "invalid-namespace")


# Sizes.


@pytest.mark.parametrize("authenticated,limit", [(False, 8 * 1024), (True, 256 * 1024)])
def test_stanza_exactly_at_the_limit_passes(authenticated, limit):
    """A stanza of exactly the limit's size is delivered (8 KiB before authentication, 256 KiB after)."""
    stream, transport, _ = connect()
    if authenticated:
        stream.set_authenticated()
    assert stream.max_stanza_size == limit
    stream.dataReceived(message(limit))
    assert len(stream.stanzas) == 1 and not transport.disconnecting


@pytest.mark.parametrize("authenticated,limit", [(False, 8 * 1024), (True, 256 * 1024)])
def test_stanza_one_byte_over_the_limit_is_a_policy_violation(authenticated, limit):
    """One byte over the limit: policy-violation with a text naming the limit, and the transport closes."""
    stream, transport, _ = connect()
    if authenticated:
        stream.set_authenticated()
    stream.dataReceived(message(limit + 1))
    assert stream.stanzas == []
    assert_closed_with(transport, "policy-violation")
    assert f"larger than {limit} bytes".encode() in transport.value()


def test_empty_stanza_is_measured_exactly():
    """A self-closing stanza is measured to its '/>': exactly at the limit passes, one byte more fails."""
    for extra, passes in ((0, True), (1, False)):
        stream, transport, _ = connect()
        shell = b"<presence a='' b='' />"
        stanza = b"<presence a='%s' b='%s' />" % (b"y" * 4085, b"y" * (8192 + extra - len(shell) - 4085))
        stream.dataReceived(stanza + b"<presence/>")
        assert len(stanza) == 8192 + extra
        assert (len(stream.stanzas) == 2) is passes
        assert transport.disconnecting is not passes


def test_oversized_stanza_is_refused_before_it_completes():
    """The size is counted while parsing: an endless stanza is refused as soon as it is over the limit."""
    stream, transport, _ = connect()
    stream.dataReceived(b"<message><body>")
    for _ in range(7):
        stream.dataReceived(b"x" * 1024)
    assert not transport.disconnecting
    stream.dataReceived(b"x" * 1024)
    assert_closed_with(transport, "policy-violation")


def test_header_size_is_limited():
    """A stream header of exactly 8 KiB is accepted; one byte more, or an endless one, is a policy-violation."""
    pad = 8192 - len(HEADER)
    stream, transport, _ = connect(header=HEADER.replace(b"<stream:stream", b"<stream:stream" + b" " * pad))
    assert len(stream.headers) == 1 and not transport.disconnecting
    stream, transport, _ = connect(header=HEADER.replace(b"<stream:stream", b"<stream:stream" + b" " * (pad + 1)))
    assert stream.headers == []
    assert_closed_with(transport, "policy-violation")
    stream, transport, _ = connect(header=b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' ")
    for _ in range(8):
        stream.dataReceived(b" " * 1024)
    assert_closed_with(transport, "policy-violation")


def test_partial_tag_size_is_limited_after_authentication():
    """An attribute value that never ends is refused once expat holds more than max_token_size bytes of it."""
    stream, transport, _ = connect()
    stream.set_authenticated()
    stream.dataReceived(b"<message id='")
    for _ in range(15):
        stream.dataReceived(b"y" * 1024)
    assert not transport.disconnecting
    stream.dataReceived(b"y" * 1024)
    assert_closed_with(transport, "policy-violation")


def test_nesting_depth_is_limited():
    """32 elements nested in a stanza (the stanza included) pass; 33 are a policy-violation."""
    stream, transport, _ = connect()
    stream.dataReceived(b"<message>" + b"<a>" * 31 + b"</a>" * 31 + b"</message>")
    assert len(stream.stanzas) == 1 and not transport.disconnecting
    stream.dataReceived(b"<message>" + b"<a>" * 32)
    assert_closed_with(transport, "policy-violation")


@pytest.mark.parametrize(
    "stanza",
    [
        b"<message " + b" ".join(b"a%d='1'" % i for i in range(65)) + b"/>",
        b"<message " + b" ".join(b"xmlns:p%d='u'" % i for i in range(65)) + b"/>",
        b"<message id='" + b"y" * 4097 + b"'/>",
        b"<message>" + b"<a/>" * 1000 + b"</message>",
    ],
    ids=["attributes", "namespace-declarations", "attribute-length", "elements"],
)
def test_pathological_elements_are_refused(stanza):
    """Too many attributes or namespace declarations, a too long value, too many elements: policy-violation."""
    stream, transport, _ = connect()
    stream.set_authenticated()
    stream.dataReceived(stanza)
    assert stream.stanzas == []
    assert_closed_with(transport, "policy-violation")


# Restricted XML and encodings.

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>
<message><body>&lol9;</body></message>"""

QUADRATIC_BLOWUP = (
    b'<?xml version="1.0"?><!DOCTYPE s [<!ENTITY a "' + b"x" * 5000 + b'">]>'
    b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
    b"<message><body>" + b"&a;" * 1000 + b"</body></message>"
)

EXTERNAL_ENTITY = (
    b'<?xml version="1.0"?><!DOCTYPE s [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
    b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
    b"<message><body>&xxe;</body></message>"
)


@pytest.mark.parametrize(
    "document",
    [
        BILLION_LAUGHS,
        QUADRATIC_BLOWUP,
        EXTERNAL_ENTITY,
        b'<!DOCTYPE stream SYSTEM "http://attacker.example/x.dtd">' + HEADER[len(XML_DECL) :],
    ],
    ids=["billion-laughs", "quadratic-blowup", "external-entity", "external-dtd"],
)
def test_xml_bombs_are_restricted_xml_and_cheap(document):
    """DTDs are refused at '<!DOCTYPE' with restricted-xml: nothing expands, fast, little memory, no file read."""
    tracemalloc.start()
    started = time.perf_counter()
    stream, transport, _ = connect(header=document)
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert_closed_with(transport, "restricted-xml")
    assert stream.stanzas == [] and b"root:" not in transport.value()
    assert elapsed < 0.5 and peak < 1024 * 1024
    other, other_transport, _ = connect()  # the process is unharmed: the next stream works
    other.dataReceived(b"<presence/>")
    assert len(other.stanzas) == 1 and not other_transport.disconnecting


@pytest.mark.parametrize(
    "data",
    [b"<message><body>&lol;</body></message>", b"<?php evil() ?>", b"<!-- note -->"],
    ids=["undefined-entity", "processing-instruction", "comment"],
)
def test_entities_instructions_and_comments_in_the_stream_are_restricted_xml(data):
    """An entity reference other than the five predefined, a processing instruction or a comment: restricted-xml."""
    stream, transport, _ = connect()
    stream.dataReceived(data)
    assert_closed_with(transport, "restricted-xml")


@pytest.mark.parametrize(
    "chunks",
    [[b"caf\xe9"], [b"\xc3", b"("], [b"\xed\xa0\x80"], [b"\xc0\xaf"], [b"\xff\xfe"]],
    ids=["latin-1", "split-bad-continuation", "surrogate", "overlong", "utf-16-bom"],
)
def test_invalid_utf8_is_unsupported_encoding(chunks):
    """Bytes that are not UTF-8, even split across reads, close the stream with unsupported-encoding (RFC 6120 11.6)."""
    stream, transport, _ = connect()
    stream.dataReceived(b"<message><body>")
    for chunk in chunks:
        stream.dataReceived(chunk)
    stream.dataReceived(b"</body></message>")
    assert stream.stanzas == []
    assert_closed_with(transport, "unsupported-encoding")


def test_other_declared_encoding_is_unsupported_encoding():
    """An XML declaration naming another encoding is refused with unsupported-encoding."""
    _, transport, _ = connect(header=HEADER.replace(b"version='1.0'?>", b"version='1.0' encoding='ISO-8859-1'?>"))
    assert_closed_with(transport, "unsupported-encoding")


@pytest.mark.parametrize(
    "data",
    [b"<message></presence>", b"<message a='1' a='2'/>", b"<p:message/>", b"<message>\x01</message>"],
    ids=["mismatched-tag", "duplicate-attribute", "unbound-prefix", "control-character"],
)
def test_malformed_xml_is_not_well_formed_and_closes_only_that_stream(data):
    """Malformed XML closes its stream with not-well-formed; another stream goes on."""
    stream, transport, _ = connect()
    other, other_transport, _ = connect()
    stream.dataReceived(data)
    other.dataReceived(b"<presence/>")
    assert_closed_with(transport, "not-well-formed")
    assert len(other.stanzas) == 1 and not other_transport.disconnecting


# Rate limit.


def test_rate_limit_pauses_and_resumes_reading():
    """Over its byte budget the connection is no longer read (what was read is handled) until the debt is paid."""
    limits = StreamLimits(rate_bytes_per_second=1000, rate_burst_bytes=len(HEADER) + 1000)
    stream, transport, clock = connect(limits)
    stream.dataReceived(b"<presence>" + b" " * 2979 + b"</presence>")  # 3000 bytes: 2000 over budget
    assert transport.producerState == "paused" and len(stream.stanzas) == 1
    clock.advance(1.9)
    assert transport.producerState == "paused"
    clock.advance(0.1)
    assert transport.producerState == "producing" and not transport.disconnecting


def test_rate_limit_waits_for_data_read_while_paused():
    """Data that still arrives while paused deepens the debt, and the pause lasts until it is paid too."""
    limits = StreamLimits(rate_bytes_per_second=1000, rate_burst_bytes=len(HEADER))
    stream, transport, clock = connect(limits)
    stream.dataReceived(b" " * 1000)
    stream.dataReceived(b" " * 1000)
    clock.advance(1)
    assert transport.producerState == "paused"
    clock.advance(1)
    assert transport.producerState == "producing"


def test_traffic_within_the_rate_never_pauses():
    """A client within its rate is never paused."""
    limits = StreamLimits(rate_bytes_per_second=1000, rate_burst_bytes=1000)
    stream, transport, clock = connect(limits, header=None)
    clock.advance(1)
    stream.dataReceived(HEADER)
    for _ in range(10):
        clock.advance(1)
        stream.dataReceived(b"<presence/>" * 50)
    assert transport.producerState == "producing" and len(stream.stanzas) == 500


def test_connection_lost_while_paused_cancels_the_resume():
    """A connection lost while paused leaves no timer behind."""
    limits = StreamLimits(rate_bytes_per_second=10, rate_burst_bytes=10)
    stream, transport, clock = connect(limits)
    assert transport.producerState == "paused" and clock.getDelayedCalls()
    stream.connectionLost(None)
    assert clock.getDelayedCalls() == []


# Restarts.

AUTH = b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGEAYg==</auth>"


def test_restart_after_sasl_parses_pipelined_header_with_new_parser():
    """reset_parser() from a stanza handler restarts after that stanza; pipelined bytes go to the new stream."""
    stream, transport, _ = connect()

    def succeed(element):
        if element.name == "auth":
            stream.send("<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>")
            stream.set_authenticated()
            stream.reset_parser()

    stream.on_stanza = succeed
    stream.dataReceived(AUTH + HEADER + message(9000))
    assert len(stream.headers) == 2
    assert [s.name for s in stream.stanzas] == ["auth", "message"]  # 9000 bytes: over the pre-auth limit
    assert transport.value().count(b"<stream:stream") == 2 and not transport.disconnecting


def test_restart_after_starttls_drops_plaintext_that_followed():
    """reset_parser(discard_pending=True) drops plaintext sent after <starttls/>; the next stream starts clean."""
    stream, transport, _ = connect()
    stream.on_stanza = lambda element: stream.reset_parser(discard_pending=True)
    stream.dataReceived(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/><message>injected</message>")
    assert [s.name for s in stream.stanzas] == ["starttls"]
    stream.on_stanza = None
    stream.dataReceived(HEADER + b"<presence/>")
    assert len(stream.headers) == 2 and [s.name for s in stream.stanzas] == ["starttls", "presence"]
    assert not transport.disconnecting


def test_restart_outside_a_handler_drops_a_partial_stanza():
    """reset_parser() called between reads starts a new stream at once, forgetting a half-received stanza."""
    stream, transport, _ = connect()
    stream.dataReceived(b"<message><body>half")
    stream.reset_parser()
    stream.dataReceived(HEADER + b"<presence/>")
    assert len(stream.headers) == 2 and [s.name for s in stream.stanzas] == ["presence"]


# Hooks and errors.


def test_hook_raising_stream_error_closes_with_that_condition():
    """A hook may raise StreamError; the stream closes with it and later stanzas of the chunk are not delivered."""
    stream, transport, _ = connect()

    def refuse(element):
        raise StreamError("not-authorized", "authenticate first")

    stream.on_stanza = refuse
    stream.dataReceived(b"<message/><message/>")
    assert len(stream.stanzas) == 1
    assert_closed_with(transport, "not-authorized")


def test_hook_bug_closes_only_that_stream_with_internal_server_error():
    """A bug in a hook closes that stream with internal-server-error instead of escaping into the reactor."""
    stream, transport, _ = connect()
    stream.on_stanza = lambda element: 1 / 0
    stream.dataReceived(b"<message/>")
    assert_closed_with(transport, "internal-server-error")


def test_stream_error_before_any_header_sends_a_header_first():
    """RFC 6120 4.9.1.2: an error before our header sends the header, the error, then </stream:stream>."""
    stream, transport, _ = connect(header=None)
    stream.send_stream_error("host-unknown", "no such domain")
    assert re.fullmatch(
        rb"<\?xml version='1.0'\?><stream:stream version='1.0' xml:lang='en' id='[^']+' xmlns='jabber:client'"
        rb" xmlns:stream='http://etherx.jabber.org/streams'><stream:error><host-unknown"
        rb" xmlns='urn:ietf:params:xml:ns:xmpp-streams'/><text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>"
        rb"no such domain</text></stream:error></stream:stream>",
        transport.value(),
    )


def test_unknown_stream_condition_is_refused():
    """A condition RFC 6120 does not define is a programming error, caught before it reaches a client."""
    with pytest.raises(ValueError):
        stream_error_element("no-such-condition")
    with pytest.raises(ValueError):
        StreamError("no-such-condition")


def test_stanza_error_reply_swaps_addresses_and_carries_the_condition():
    """The reply keeps name and id, swaps to/from, has type='error' and the condition with RFC 6120's type."""
    stream, transport, _ = connect()
    stream.dataReceived(b"<iq to='b@example.com/r' from='a@example.com/x' type='get' id='7'><query xmlns='x:y'/></iq>")
    transport.clear()
    stream.send(stanza_error_reply(stream.stanzas[0], "service-unavailable", text="not here"))
    assert transport.value() == (
        b"<iq to='a@example.com/x' from='b@example.com/r' id='7' type='error'><error type='cancel'>"
        b"<service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
        b"<text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>not here</text></error></iq>"
    )


def test_stanza_error_reply_options():
    """The error type can be overridden, 'by' set, and the payload copied without taking it from the original."""
    stanza = domish.Element(("jabber:client", "message"))
    stanza["to"] = "b@example.com"
    stanza.addElement("body", content="hi")
    reply = stanza_error_reply(stanza, "recipient-unavailable", "cancel", by="example.com", include_payload=True)
    assert reply.getAttribute("from") == "b@example.com" and not reply.hasAttribute("to")
    assert [c.name for c in reply.elements()] == ["body", "error"]
    assert reply.error["type"] == "cancel" and reply.error["by"] == "example.com"
    assert stanza.body.parent is stanza


def test_no_error_reply_to_an_error_or_with_an_unknown_condition():
    """An error stanza is never answered with an error; unknown conditions and types are refused."""
    stanza = domish.Element(("jabber:client", "message"))
    stanza["type"] = "error"
    with pytest.raises(ValueError):
        stanza_error_reply(stanza, "service-unavailable")
    stanza["type"] = "chat"
    with pytest.raises(ValueError):
        stanza_error_reply(stanza, "no-such-condition")
    with pytest.raises(ValueError):
        stanza_error_reply(stanza, "bad-request", "sometimes")
