"""Message Archive Management (XEP-0313) with RSM (XEP-0059): parsing queries, the results and <fin/>, permissions."""

from __future__ import annotations

import pytest
from twisted.words.xish import domish

from hipchat_server.xmpp.jid import parse_jid
from hipchat_server.xmpp.mam import (
    FULLTEXT_FIELD,
    MAM_NS,
    MamRequestError,
    MamService,
    parse_query,
    parse_timestamp,
)
from hipchat_server.xmpp.stanzas import stanza_from_xml
from tests.unit.fakes import FakeConnection
from tests.unit.history_fakes import ALICE, BOB, D, ENG, SECRET, Corpus, FakeOpenSearch, FakeRecent, make_history

STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
RSM = "http://jabber.org/protocol/rsm"


def form(**fields) -> str:
    values = "".join(
        f"<field var='{name}'>"
        + "".join(f"<value>{v}</value>" for v in (value if isinstance(value, list) else [value]))
        + "</field>"
        for name, value in fields.items()
    )
    return f"<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>{MAM_NS}</value></field>{values}</x>"


def rsm(max=None, after=None, before=None) -> str:
    parts = [f"<max>{max}</max>" if max is not None else ""]
    if after is not None:
        parts.append(f"<after>{after}</after>")
    if before is not None:
        parts.append(f"<before>{before}</before>" if before else "<before/>")
    return f"<set xmlns='{RSM}'>{''.join(parts)}</set>"


def mam_iq(payload: str = "", kind: str = "set", to: str | None = None, child: str = "query", queryid: str = "q1"):
    to_attribute = f" to='{to}'" if to else ""
    iq = stanza_from_xml(
        f"<iq xmlns='jabber:client' type='{kind}' id='mam1'{to_attribute}>"
        f"<{child} xmlns='{MAM_NS}' queryid='{queryid}'>{payload}</{child}></iq>"
    )
    iq["from"] = f"{ALICE}/laptop"
    return iq


def query_of(payload: str):
    return parse_query(mam_iq(payload).firstChildElement())


@pytest.fixture
def client():
    return FakeOpenSearch()


@pytest.fixture
def recent():
    return FakeRecent()


@pytest.fixture
def corpus(client, recent):
    return Corpus(client, recent)


@pytest.fixture
def service(client, recent):
    return MamService(make_history(client, recent))


def ask(service, iq, room: str | None = None, sender: str = f"{ALICE}/laptop") -> list:
    """Send ``iq`` the way the router (or, for a room, the rooms service) would; return what the client got."""
    connection = FakeConnection(sender)
    if room is not None:
        service.room_query(connection, iq, room)
    else:
        to = iq.getAttribute("to")
        service.iq(connection, iq, parse_jid(to) if to else None)
    return [
        stanza_from_xml(s) if isinstance(s, str) else stanza_from_xml(s.toXml(defaultUri="jabber:client"))
        for s in connection.delivered
    ]


def condition(reply) -> str:
    assert reply["type"] == "error", reply.toXml()
    error = next(e for e in reply.elements() if e.name == "error")
    return next(e.name for e in error.elements() if e.uri == STANZAS)


def fin_of(reply) -> tuple[dict, dict]:
    assert reply.name == "iq" and reply["type"] == "result" and reply["id"] == "mam1"
    fin = next(reply.elements(MAM_NS, "fin"))
    rsm_set = next(fin.elements(RSM, "set"))
    return dict(fin.attributes), {child.name: str(child) for child in rsm_set.elements()}


def result_ids(stanzas) -> list[str]:
    return [next(s.elements(MAM_NS, "result"))["id"] for s in stanzas if s.name == "message"]


# Parsing.
def test_parse_reads_every_filter_and_the_page():
    query = query_of(
        form(
            **{
                "with": BOB,
                "start": "2026-11-01T00:00:00Z",
                "end": "2026-11-02T00:00:00.500+01:00",
                FULLTEXT_FIELD: "deploy",
            }
        )
        + rsm(max=20, before="")
        + "<flip-page/>"
    )
    assert query.queryid == "q1" and str(query.with_jid) == BOB and query.fulltext == "deploy" and query.flip
    assert query.start_ms == parse_timestamp("2026-11-01T00:00:00Z")
    assert query.end_ms == parse_timestamp("2026-11-01T23:00:00.500Z")
    assert (query.paging.before, query.paging.after, query.paging.max) == ("", None, 20)


def test_without_a_form_or_page_a_query_is_the_first_fifty_of_the_whole_archive():
    query = query_of("")
    assert (query.with_jid, query.start_ms, query.paging.after, query.paging.before, query.paging.max) == (
        None,
        None,
        None,
        None,
        50,
    )


def test_max_is_capped_at_250():
    assert query_of(rsm(max=100000)).paging.max == 250


@pytest.mark.parametrize(
    "payload, expected",
    [
        (form(**{"include-groupchat": "true"}), "feature-not-implemented"),  # a field we do not support
        (form(start="yesterday"), "bad-request"),
        (form(**{"with": "@nope"}), "jid-malformed"),
        (rsm(max="ten"), "bad-request"),
        (f"<set xmlns='{RSM}'><index>3</index></set>", "feature-not-implemented"),
        (f"<set xmlns='{RSM}'><after/></set>", "bad-request"),
        (
            "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>urn:xmpp:mam:1</value></field></x>",
            "bad-request",
        ),
        (form(**{FULLTEXT_FIELD: "x" * 501}), "not-acceptable"),
    ],
)
def test_malformed_queries_are_refused_with_the_right_condition(payload, expected):
    with pytest.raises(MamRequestError) as refused:
        query_of(payload)
    assert refused.value.condition == expected


# Results and fin.
def test_a_query_sends_each_message_forwarded_with_its_delay_then_fin(service, corpus):
    """Each result: to the requesting resource, queryid and record id, forwarded stanza in jabber:client, delay stamp."""
    records = [corpus.add(recipient=BOB, body=f"hi {n}") for n in range(3)]
    replies = ask(service, mam_iq())
    messages, fin = replies[:-1], replies[-1]
    assert result_ids(messages) == [r["id"] for r in records]
    first = messages[0]
    assert first["to"] == f"{ALICE}/laptop" and not first.hasAttribute("from")  # from the account itself
    result = next(first.elements(MAM_NS, "result"))
    assert result["queryid"] == "q1"
    forwarded = next(result.elements("urn:xmpp:forward:0", "forwarded"))
    delay = next(forwarded.elements("urn:xmpp:delay", "delay"))
    assert delay["stamp"] == records[0]["timestamp"]
    inner = next(forwarded.elements("jabber:client", "message"))
    assert str(next(inner.elements("jabber:client", "body"))) == "hi 0"
    attributes, page = fin_of(fin)
    assert attributes.get("complete") == "true"
    assert page == {"first": records[0]["id"], "last": records[-1]["id"], "count": "3"}


def test_paging_backwards_with_before_walks_the_whole_conversation(service, corpus):
    """<before/> then <before>first</before>: every message once, complete on the oldest page."""
    records = [corpus.add(recipient=BOB) for _ in range(130)]
    seen, before = [], ""
    for _ in range(10):
        replies = ask(service, mam_iq(form(**{"with": BOB}) + rsm(max=50, before=before)))
        attributes, page = fin_of(replies[-1])
        seen = result_ids(replies[:-1]) + seen
        assert page["count"] == "130"
        if attributes.get("complete") == "true":
            break
        before = page["first"]
    assert seen == [r["id"] for r in records]


def test_a_flipped_page_is_sent_newest_first_with_the_same_fin(service, corpus):
    records = [corpus.add(recipient=BOB) for _ in range(5)]
    replies = ask(service, mam_iq(rsm(max=3, before="") + "<flip-page/>"))
    assert result_ids(replies[:-1]) == [r["id"] for r in reversed(records[2:])]
    _, page = fin_of(replies[-1])
    assert (page["first"], page["last"]) == (records[2]["id"], records[4]["id"])


def test_an_empty_archive_answers_complete_with_a_zero_count(service):
    replies = ask(service, mam_iq())
    attributes, page = fin_of(replies[0])
    assert len(replies) == 1 and attributes["complete"] == "true" and page == {"count": "0"}


def test_an_unknown_after_id_is_item_not_found(service, corpus):
    corpus.add(recipient=BOB)
    [reply] = ask(service, mam_iq(rsm(after="01ARZ3NDEKTSV4RRFFQ69G5FAV")))
    assert condition(reply) == "item-not-found"


def test_the_form_lists_the_supported_fields(service):
    [reply] = ask(service, mam_iq(kind="get"))
    form_element = next(next(reply.elements(MAM_NS, "query")).elements("jabber:x:data", "x"))
    names = [f["var"] for f in form_element.elements("jabber:x:data", "field")]
    assert names == ["FORM_TYPE", "with", "start", "end", "before-id", "after-id", "ids", FULLTEXT_FIELD]


def test_metadata_names_the_first_and_last_message(service, corpus):
    records = [corpus.add(recipient=BOB) for _ in range(4)]
    [reply] = ask(service, mam_iq(kind="get", child="metadata"))
    metadata = next(reply.elements(MAM_NS, "metadata"))
    start, end = next(metadata.elements(MAM_NS, "start")), next(metadata.elements(MAM_NS, "end"))
    assert (start["id"], end["id"], end["timestamp"]) == (records[0]["id"], records[-1]["id"], records[-1]["timestamp"])


# Who may read what.
def test_another_users_archive_is_forbidden(service, corpus):
    corpus.add(sender=BOB, recipient=f"carol@{D}")
    [reply] = ask(service, mam_iq(to=BOB))
    assert condition(reply) == "forbidden"


def test_the_own_bare_jid_is_the_own_archive(service, corpus):
    record = corpus.add(recipient=BOB)
    replies = ask(service, mam_iq(to=ALICE))
    assert result_ids(replies[:-1]) == [record["id"]]


def test_a_room_archive_goes_through_room_query(service, corpus):
    """The rooms service hands room-addressed MAM iqs to room_query: the room's messages, from the room's JID."""
    records = [corpus.add(room=ENG, body=f"r{n}") for n in range(3)]
    corpus.add(room=SECRET)
    replies = ask(service, mam_iq(to=ENG), room=ENG, sender=f"{BOB}/desk")
    assert result_ids(replies[:-1]) == [r["id"] for r in records]
    assert replies[0]["from"] == ENG


def test_a_private_rooms_archive_is_forbidden_to_a_non_member(service, corpus):
    corpus.add(room=SECRET, body="the launch date")
    [reply] = ask(service, mam_iq(to=SECRET), room=SECRET, sender=f"{BOB}/desk")
    assert condition(reply) == "forbidden"
    assert "launch" not in reply.toXml()
    replies = ask(service, mam_iq(to=SECRET), room=SECRET)  # alice is a member
    assert len(replies) == 2


def test_a_public_rooms_archive_is_forbidden_to_an_outcast(service, corpus):
    corpus.add(room=ENG)
    [reply] = ask(service, mam_iq(to=ENG), room=ENG, sender=f"mallory@{D}/x")
    assert condition(reply) == "forbidden"


def test_a_failure_is_answered_with_internal_server_error(service, corpus, client):
    records = [corpus.add(room=ENG) for _ in range(100)]
    client.down = True
    [reply] = ask(service, mam_iq(rsm(before=records[3]["id"])), room=ENG)
    assert condition(reply) == "internal-server-error"


def test_register_takes_query_and_metadata_iqs(service):
    handlers = {}

    class Router:
        def register_iq_handler(self, namespace, name, handler):
            handlers[(namespace, name)] = handler

    service.register(Router())
    assert set(handlers) == {(MAM_NS, "query"), (MAM_NS, "metadata")}


def test_a_result_keeps_the_stanza_as_recipients_got_it():
    """The stored XML (serialised without a namespace) is forwarded inside jabber:client."""
    from hipchat_server.xmpp.mam import result_message

    record = {
        "id": "01ARZ3NDEKTSV4RRFFQ69G5FAV",
        "timestamp": "2026-11-26T09:15:21.123Z",
        "xml": "<message from='a@d/x' type='chat'><body>1 &lt; 2</body></message>",
    }
    text = result_message("b@d/y", "b@d", "q'1", record)
    stanza = stanza_from_xml(text)
    inner = next(next(next(stanza.elements(MAM_NS, "result")).elements()).elements("jabber:client", "message"))
    assert str(next(inner.elements())) == "1 < 2" and next(stanza.elements(MAM_NS, "result"))["queryid"] == "q'1"
    assert isinstance(stanza, domish.Element)
