"""The pure parts of the XMPP load generator (bench/xmpp_load): stream splitting, SCRAM, figures."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", "bench"))

from scramp import ScramMechanism  # noqa: E402

from xmpp_load.figures import percentiles  # noqa: E402
from xmpp_load.scram import ScramClient  # noqa: E402
from xmpp_load.splitter import ELEMENT, STREAM_END, STREAM_START, StanzaSplitter, attributes, element_name, text_of  # noqa: E402

STREAM = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
    b" from='localhost' id='x' version='1.0'><stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
    b"<mechanism>PLAIN</mechanism></mechanisms></stream:features><a xmlns='urn:xmpp:sm:3' h='5'/>"
    b"<message to='a@b' type='chat'><body>1 2 3</body></message></stream:stream>"
)


def test_splits_a_stream_in_one_piece():
    """The header, each top-level element (empty or not) and the stream's end come out in order."""
    out = StanzaSplitter().feed(STREAM)
    assert [kind for kind, _ in out] == [STREAM_START, ELEMENT, ELEMENT, ELEMENT, STREAM_END]
    assert out[1][1].startswith(b"<stream:features>") and out[1][1].endswith(b"</stream:features>")
    assert out[2][1] == b"<a xmlns='urn:xmpp:sm:3' h='5'/>"
    assert element_name(out[3][1]) == b"message"


def test_splits_the_same_stream_fed_byte_by_byte():
    """Elements cut anywhere, even inside a tag, come out whole and identical."""
    splitter = StanzaSplitter()
    out = []
    for i in range(len(STREAM)):
        out.extend(splitter.feed(STREAM[i : i + 1]))
    assert out == StanzaSplitter().feed(STREAM)


def test_attribute_and_text_helpers():
    """Attributes in either quote style and the text of a simple element are read."""
    assert attributes(b"<a h='5' x=\"y\"/>") == {b"h": b"5", b"x": b"y"}
    assert text_of(b"<challenge xmlns='s'>abc=</challenge>") == b"abc="
    assert text_of(b"<success xmlns='s'/>") == b""


def test_scram_client_logs_in_against_scramp_server():
    """The client's proof satisfies scramp's server and the server's signature satisfies the client."""
    for mechanism_name in ("SCRAM-SHA-256", "SCRAM-SHA-1"):
        mechanism = ScramMechanism(mechanism_name)
        auth_info = mechanism.make_auth_info("secret password", iteration_count=4096)
        server = mechanism.make_server(lambda username: auth_info)
        client = ScramClient(mechanism_name, "bench-1", "secret password")
        server.set_client_first(client.first().decode())
        client_final = client.final(server.get_server_first().encode())
        server.set_client_final(client_final.decode())
        client.verify(server.get_server_final().encode())


def test_percentiles_by_nearest_rank():
    """Percentiles use the nearest-rank method and say None when there is nothing to rank."""
    assert percentiles([], (50,)) == {50: None}
    values = list(range(1, 101))
    assert percentiles(values, (50, 95, 99, 100)) == {50: 50, 95: 95, 99: 99, 100: 100}
