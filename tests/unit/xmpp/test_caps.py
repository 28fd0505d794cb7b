"""Entity Capabilities (XEP-0115): the verification string and hash, the server's <c/>, the caps cache."""

from __future__ import annotations

import pytest
from twisted.words.xish import domish

from hipchat_server.xmpp import caps, disco
from hipchat_server.xmpp.caps import CapsCache, Identity, InvalidCapsInfo
from hipchat_server.xmpp.xml_parser import StreamLimits, StreamParser

CAPS = "http://jabber.org/protocol/caps"
INFO = "http://jabber.org/protocol/disco#info"
ITEMS = "http://jabber.org/protocol/disco#items"
MUC = "http://jabber.org/protocol/muc"

# XEP-0115 section 5.2, "Simple Generation Example": its published S and ver.
SIMPLE_S = f"client/pc//Exodus 0.9.1<{CAPS}<{INFO}<{ITEMS}<{MUC}<"
SIMPLE_VER = "QgayPKawpkPSDYmwT/WM94uAlu0="
# XEP-0115 section 5.3, "Complex Generation Example": two languages and one extended info form.
COMPLEX_S = (
    f"client/pc/el/\u03a8 0.11<client/pc/en/Psi 0.11<{CAPS}<{INFO}<{ITEMS}<{MUC}<"
    "urn:xmpp:dataforms:softwareinfo<ip_version<ipv4<ipv6<os<Mac<os_version<10.5.1<"
    "software<Psi<software_version<0.11<"
)
COMPLEX_VER = "q07IKJEyjvHSyhy//CH0CxmKi8w="


def parse(xml: str) -> domish.Element:
    """One element as the client stream's parser builds it."""
    stanzas: list[domish.Element] = []
    parser = StreamParser(StreamLimits(), 256 * 1024, lambda attrs: None, stanzas.append, lambda: None)
    parser.feed(b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>")
    parser.feed(xml.encode("utf-8"))
    return stanzas[0]


def complex_query(extra: str = "", form_type_field: str = "type='hidden'") -> domish.Element:
    """The disco#info answer of section 5.3 as a client sends it, children deliberately out of order."""
    iq = parse(f"""<iq type='result' id='disco1'><query xmlns='{INFO}' node='http://psi-im.org#{COMPLEX_VER}'>
        <identity xml:lang='en' category='client' name='Psi 0.11' type='pc'/>
        <identity xml:lang='el' category='client' name='\u03a8 0.11' type='pc'/>
        <feature var='{INFO}'/><feature var='{ITEMS}'/><feature var='{MUC}'/><feature var='{CAPS}'/>
        <x xmlns='jabber:x:data' type='result'>
          <field var='FORM_TYPE' {form_type_field}><value>urn:xmpp:dataforms:softwareinfo</value></field>
          <field var='ip_version'><value>ipv6</value><value>ipv4</value></field>
          <field var='os'><value>Mac</value></field>
          <field var='os_version'><value>10.5.1</value></field>
          <field var='software'><value>Psi</value></field>
          <field var='software_version'><value>0.11</value></field>
        </x>{extra}</query></iq>""")
    return iq.firstChildElement()


def simple_query(extra: str = "") -> domish.Element:
    iq = parse(f"""<iq type='result' id='disco1'><query xmlns='{INFO}'>
        <identity category='client' name='Exodus 0.9.1' type='pc'/>
        <feature var='{INFO}'/><feature var='{ITEMS}'/><feature var='{MUC}'/><feature var='{CAPS}'/>{extra}
        </query></iq>""")
    return iq.firstChildElement()


def test_simple_generation_example_of_the_spec():
    """Section 5.2's identity and features give the published verification string and ver."""
    identities = [Identity("client", "pc", "", "Exodus 0.9.1")]
    features = [MUC, INFO, CAPS, ITEMS]  # any order: the algorithm sorts them
    assert caps.verification_string(identities, features) == SIMPLE_S
    assert caps.verification_hash(identities, features) == SIMPLE_VER


def test_simple_generation_example_from_the_xml():
    """The section 5.2 disco#info answer, parsed from XML, hashes to its published ver."""
    assert caps.info_hash(simple_query()) == SIMPLE_VER


def test_complex_generation_example_of_the_spec():
    """Section 5.3 (two xml:lang identities, a software-info form) gives the published S and ver."""
    identities = [Identity("client", "pc", "en", "Psi 0.11"), Identity("client", "pc", "el", "\u03a8 0.11")]
    form = {
        "FORM_TYPE": ["urn:xmpp:dataforms:softwareinfo"],
        "software_version": ["0.11"],
        "ip_version": ["ipv6", "ipv4"],
        "os": ["Mac"],
        "os_version": ["10.5.1"],
        "software": ["Psi"],
    }
    features = [INFO, ITEMS, MUC, CAPS]
    assert caps.verification_string(identities, features, [form]) == COMPLEX_S
    assert caps.verification_hash(identities, features, [form]) == COMPLEX_VER


def test_complex_generation_example_from_the_xml():
    """The section 5.3 answer parsed from XML: xml:lang, field and value order do not change the ver."""
    assert caps.info_hash(complex_query()) == COMPLEX_VER


def test_a_form_without_a_hidden_form_type_is_left_out():
    """A form whose FORM_TYPE is not hidden is ignored (section 5.4), so the ver is that of the rest."""
    without_form = caps.verification_hash(
        [Identity("client", "pc", "en", "Psi 0.11"), Identity("client", "pc", "el", "\u03a8 0.11")],
        [INFO, ITEMS, MUC, CAPS],
    )
    assert caps.info_hash(complex_query(form_type_field="")) == without_form


@pytest.mark.parametrize(
    "extra",
    [
        f"<feature var='{MUC}'/>",
        "<identity category='client' name='Exodus 0.9.1' type='pc'/>",
        "<x xmlns='jabber:x:data' type='result'><field var='FORM_TYPE' type='hidden'>"
        "<value>urn:xmpp:dataforms:softwareinfo</value></field></x>",
    ],
    ids=["repeated feature", "repeated identity", "repeated FORM_TYPE"],
)
def test_ill_formed_answers_are_refused(extra):
    """A repeated feature, identity or FORM_TYPE makes the whole answer ill-formed (section 5.4)."""
    query = complex_query(extra) if extra.startswith("<x") else simple_query(extra)
    with pytest.raises(InvalidCapsInfo):
        caps.info_hash(query)


def test_form_type_with_two_different_values_is_refused():
    """A FORM_TYPE field holding two different values is ill-formed (section 5.4)."""
    form = (
        "<x xmlns='jabber:x:data' type='result'><field var='FORM_TYPE' type='hidden'>"
        "<value>urn:xmpp:dataforms:softwareinfo</value><value>urn:example:other</value></field></x>"
    )
    with pytest.raises(InvalidCapsInfo):
        caps.info_hash(simple_query(form))


def test_server_caps_element_carries_the_hash_of_the_servers_disco_info():
    """The server's <c/> names sha-1, the project node, and the ver of what disco#info answers."""
    element = caps.server_caps_element()
    assert (element.uri, element.name) == (CAPS, "c")
    assert element["hash"] == "sha-1"
    assert element["node"] == caps.SERVER_NODE
    assert element["ver"] == caps.info_hash(disco.server_info())


def test_server_disco_info_advertises_caps_and_vcard():
    """The server lists Entity Capabilities and vcard-temp among its features."""
    features = {f["var"] for f in disco.server_info().elements(INFO, "feature")}
    assert {CAPS, "vcard-temp"} <= features


def test_disco_info_for_the_caps_node_is_the_plain_answer_with_the_node_echoed():
    """disco#info to node#ver answers the same identities and features, with that node."""
    node = f"{caps.SERVER_NODE}#{caps.server_caps_element()['ver']}"
    plain, with_node = disco.server_info(), disco.server_info(node)
    assert with_node["node"] == node
    del with_node["node"]
    assert with_node.toXml() == plain.toXml()


def test_disco_info_for_an_unknown_node_is_none():
    """Any other node is not the server's: no answer (the router replies with an error)."""
    assert disco.server_info(f"{caps.SERVER_NODE}#not-the-ver") is None
    assert disco.server_info("http://jabber.org/protocol/commands") is None


def test_cache_keeps_only_answers_that_verify():
    """An answer is cached under a ver only when it hashes to that ver."""
    cache = CapsCache()
    assert not cache.add(COMPLEX_VER, simple_query())
    assert cache.get(COMPLEX_VER) is None
    assert cache.add(SIMPLE_VER, simple_query())
    identities, features = cache.get(SIMPLE_VER)
    assert identities == {Identity("client", "pc", "", "Exodus 0.9.1")}
    assert MUC in features


def test_cache_refuses_ill_formed_answers_and_unknown_hashes():
    """An ill-formed answer or a hash function we do not compute is never cached."""
    cache = CapsCache()
    assert not cache.add(SIMPLE_VER, simple_query(f"<feature var='{MUC}'/>"))
    assert not cache.add(SIMPLE_VER, simple_query(), hash_name="md5")
    assert cache.get(SIMPLE_VER) is None


def test_cache_drops_the_least_recently_used_entry():
    """Beyond max_entries, the entry used longest ago goes first."""
    cache = CapsCache(max_entries=2)
    assert cache.add(SIMPLE_VER, simple_query())
    assert cache.add(COMPLEX_VER, complex_query())
    cache.get(SIMPLE_VER)  # now the complex one is the least recently used
    sha256_ver = caps.info_hash(simple_query(), "sha-256")
    assert cache.add(sha256_ver, simple_query(), hash_name="sha-256")
    assert cache.get(COMPLEX_VER) is None
    assert cache.get(SIMPLE_VER) is not None
    assert cache.get(sha256_ver, "sha-256") is not None
