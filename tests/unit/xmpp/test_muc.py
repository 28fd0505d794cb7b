"""Multi-User Chat stanzas (XEP-0045): parsing joins, history limits, admin items, invitations and forms; building presences."""

from __future__ import annotations

import datetime

import pytest
from twisted.words.xish import domish

from hipchat_server.xmpp import muc
from hipchat_server.xmpp.muc_forms import (
    ROOMCONFIG_FORM,
    FormError,
    RoomConfig,
    config_form,
    form_fields,
    parse_config_submission,
    roominfo_form,
)
from hipchat_server.xmpp.stanzas import stanza_from_xml

ROOM = "eng@conference.chat.example.com"
UTC = datetime.timezone.utc


def parse(xml: str) -> domish.Element:
    return stanza_from_xml(xml)


def record(n: int, minute: int, xml: str | None = None) -> dict:
    return {
        "id": f"{n:026d}",
        "timestamp": f"2026-11-26T09:{minute:02d}:00.000Z",
        "xml": xml or f"<message from='{ROOM}/alice' type='groupchat'><body>m{n}</body></message>",
    }


def test_join_without_muc_x_is_no_join_request_and_history_limits_are_parsed():
    """A presence without <x xmlns=muc/> is not a join request; maxstanzas, seconds and since are read."""
    assert muc.join_request(parse(f"<presence to='{ROOM}/al'/>")) is None
    plain = muc.join_request(parse(f"<presence to='{ROOM}/al'><x xmlns='{muc.MUC_NS}'/></presence>"))
    assert plain == muc.HistoryRequest()
    asked = muc.join_request(
        parse(
            f"<presence to='{ROOM}/al'><x xmlns='{muc.MUC_NS}'>"
            "<history maxstanzas='5' maxchars='900' seconds='60' since='2026-11-26T09:00:00Z'/></x></presence>"
        )
    )
    assert asked == muc.HistoryRequest(5, 900, 60, datetime.datetime(2026, 11, 26, 9, 0, tzinfo=UTC))


@pytest.mark.parametrize("attribute", ["maxstanzas='-1'", "maxchars='x'", "since='yesterday'"])
def test_malformed_history_limits_are_bad_requests(attribute):
    """A negative or non-numeric limit, or an unreadable date, is answered bad-request."""
    with pytest.raises(muc.MucError) as raised:
        muc.join_request(parse(f"<presence to='{ROOM}/al'><x xmlns='{muc.MUC_NS}'><history {attribute}/></x></presence>"))
    assert raised.value.condition == "bad-request"


def test_history_is_oldest_first_and_within_every_limit():
    """The newest records within the room's limit, maxstanzas, maxchars and since/seconds, delivered oldest first."""
    newest_first = [record(n, n) for n in range(9, -1, -1)]
    now = datetime.datetime(2026, 11, 26, 9, 10, tzinfo=UTC)
    assert [r["id"][-1] for r in muc.select_history(newest_first, muc.HistoryRequest(), 3, now)] == ["7", "8", "9"]
    assert len(muc.select_history(newest_first, muc.HistoryRequest(maxstanzas=2), 75, now)) == 2
    assert muc.select_history(newest_first, muc.HistoryRequest(maxstanzas=0), 75, now) == []
    one_size = len(newest_first[0]["xml"])
    assert len(muc.select_history(newest_first, muc.HistoryRequest(maxchars=2 * one_size + 1), 75, now)) == 2
    assert [r["id"][-1] for r in muc.select_history(newest_first, muc.HistoryRequest(seconds=150), 75, now)] == ["8", "9"]
    since = datetime.datetime(2026, 11, 26, 9, 7, tzinfo=UTC)
    assert [r["id"][-1] for r in muc.select_history(newest_first, muc.HistoryRequest(since=since), 75, now)] == ["7", "8", "9"]


def test_with_to_and_delayed_address_a_serialised_stanza_without_reparsing():
    """'to' goes after the element name (escaped); the delay stamp goes last in the message; the result parses."""
    xml = f"<message from='{ROOM}/al' type='groupchat'><body>hi</body></message>"
    addressed = muc.with_to(muc.delayed(xml, "2026-11-26T09:15:21.123Z", ROOM), "bob@chat.example.com/it's")
    stanza = parse(addressed)
    assert stanza["to"] == "bob@chat.example.com/it's"
    delay = next(stanza.elements("urn:xmpp:delay", "delay"))
    assert (delay["stamp"], delay["from"]) == ("2026-11-26T09:15:21.123Z", ROOM)
    assert str(next(stanza.elements("jabber:client", "body"))) == "hi"


def test_occupant_presence_carries_item_status_codes_and_payload():
    """The room's presence of an occupant: the occupant's show/status, item (affiliation, role, jid) and status codes."""
    presence = parse(f"<presence to='{ROOM}/al'><show>away</show><x xmlns='{muc.MUC_NS}'/></presence>")
    payload = muc.presence_payload(presence)
    assert "<show>away</show>" in payload and muc.MUC_NS not in payload
    built = parse(
        muc.serialise(
            muc.occupant_presence(
                f"{ROOM}/al", affiliation="owner", role="moderator", jid="alice@chat.example.com/desk", codes=[muc.SELF, muc.CREATED], payload=payload
            )
        )
    )
    assert str(next(built.elements("jabber:client", "show"))) == "away"
    x = next(built.elements(muc.MUC_USER_NS, "x"))
    item = next(x.elements(muc.MUC_USER_NS, "item"))
    assert (item["affiliation"], item["role"], item["jid"]) == ("owner", "moderator", "alice@chat.example.com/desk")
    assert [s["code"] for s in x.elements(muc.MUC_USER_NS, "status")] == ["110", "201"]


def test_kicked_presence_is_unavailable_with_actor_and_reason():
    """An occupant removed by a moderator gets unavailable with role none, the actor's nick, the reason and 307."""
    built = muc.occupant_presence(
        f"{ROOM}/bob", affiliation="none", role="none", unavailable=True, codes=[muc.KICKED], reason="spam", actor="al", payload="<show>dnd</show>"
    )
    assert built["type"] == "unavailable"
    assert "show" not in muc.serialise(built)  # an unavailable presence carries no show
    item = next(next(built.elements(muc.MUC_USER_NS, "x")).elements(muc.MUC_USER_NS, "item"))
    assert next(item.elements(muc.MUC_USER_NS, "actor"))["nick"] == "al"
    assert str(next(item.elements(muc.MUC_USER_NS, "reason"))) == "spam"


def test_reflected_message_comes_from_the_occupant_and_keeps_the_payload():
    """The room's copy of a groupchat message: from room/nick, no 'to', same id and children."""
    message = parse(f"<message to='{ROOM}' from='alice@chat.example.com/d' id='m1' type='groupchat'><body>hi</body></message>")
    copy = muc.reflected(message, f"{ROOM}/al")
    assert (copy["from"], copy.getAttribute("to"), copy["id"]) == (f"{ROOM}/al", None, "m1")
    assert muc.has_body(copy) and muc.subject_of(copy) is None
    assert muc.subject_of(parse(f"<message to='{ROOM}' type='groupchat'><subject>Ship it</subject></message>")) == "Ship it"


def test_invitations_and_declines_are_parsed_and_built():
    """muc#user invite/decline are read with their reason; a missing 'to' is a bad request."""
    message = parse(
        f"<message to='{ROOM}'><x xmlns='{muc.MUC_USER_NS}'><invite to='bob@chat.example.com'><reason>join us</reason></invite>"
        "<decline to='carol@chat.example.com'/></x></message>"
    )
    assert muc.invitations(message) == [
        muc.Invitation("invite", "bob@chat.example.com", "join us"),
        muc.Invitation("decline", "carol@chat.example.com", None),
    ]
    sent = muc.invitation_message(ROOM, "bob@chat.example.com", muc.invitations(message)[0], "alice@chat.example.com")
    invite = next(next(sent.elements(muc.MUC_USER_NS, "x")).elements(muc.MUC_USER_NS, "invite"))
    assert (sent["from"], invite["from"]) == (ROOM, "alice@chat.example.com")
    with pytest.raises(muc.MucError):
        muc.invitations(parse(f"<message to='{ROOM}'><x xmlns='{muc.MUC_USER_NS}'><invite/></x></message>"))


def test_admin_items_are_validated_and_lists_built():
    """muc#admin items need a known role or affiliation; lists carry each item's attributes."""
    query = parse(
        f"<iq type='set' id='1' to='{ROOM}'><query xmlns='{muc.MUC_ADMIN_NS}'><item nick='bob' role='none'><reason>bye</reason></item>"
        "<item jid='eve@chat.example.com' affiliation='outcast'/></query></iq>"
    ).firstChildElement()
    assert muc.admin_items(query) == [
        muc.AdminItem(nick="bob", role="none", reason="bye"),
        muc.AdminItem(jid="eve@chat.example.com", affiliation="outcast"),
    ]
    for bad in ("<item nick='bob' role='king'/>", "<item nick='bob'/>", ""):
        with pytest.raises(muc.MucError):
            muc.admin_items(parse(f"<iq type='set' id='1'><query xmlns='{muc.MUC_ADMIN_NS}'>{bad}</query></iq>").firstChildElement())
    listed = muc.admin_list([muc.AdminItem(jid="eve@chat.example.com", affiliation="outcast")])
    assert next(listed.elements(muc.MUC_ADMIN_NS, "item"))["affiliation"] == "outcast"


def test_roles_follow_affiliations():
    """Owners and admins moderate; members participate; others are visitors only in moderated rooms."""
    assert muc.role_of("owner", False) == "moderator" and muc.role_of("admin", True) == "moderator"
    assert muc.role_of("member", True) == "participant"
    assert muc.role_of("none", False) == "participant" and muc.role_of("none", True) == "visitor"


# Forms.
def submit(fields: dict[str, str], form_type: str = ROOMCONFIG_FORM) -> domish.Element:
    body = "".join(f"<field var='{var}'><value>{value}</value></field>" for var, value in fields.items())
    return parse(
        f"<iq type='set' id='1'><query xmlns='{muc.MUC_OWNER_NS}'><x xmlns='jabber:x:data' type='submit'>"
        f"<field var='FORM_TYPE'><value>{form_type}</value></field>{body}</x></query></iq>"
    ).firstChildElement().firstChildElement()


def test_config_form_offers_every_supported_field_with_current_values():
    """The owner's form lists each supported muc#roomconfig field with the room's value."""
    fields = form_fields(config_form(RoomConfig(name="Eng", members_only=True, max_occupants=50, whois="moderators")))
    assert fields["FORM_TYPE"] == [ROOMCONFIG_FORM]
    assert fields["muc#roomconfig_roomname"] == ["Eng"]
    assert fields["muc#roomconfig_membersonly"] == ["1"]
    assert fields["muc#roomconfig_maxusers"] == ["50"]
    assert fields["muc#roomconfig_whois"] == ["moderators"]
    assert set(fields) >= {
        "muc#roomconfig_roomdesc",
        "muc#roomconfig_persistentroom",
        "muc#roomconfig_publicroom",
        "muc#roomconfig_moderatedroom",
        "muc#roomconfig_changesubject",
        "muc#roomconfig_allowinvites",
    }


def test_submission_changes_what_it_names_and_keeps_the_rest():
    """Submitted fields replace the current values; an empty submit (instant room) keeps them all."""
    current = RoomConfig(name="eng", description="old")
    changed = parse_config_submission(
        submit({"muc#roomconfig_roomname": "Engineering", "muc#roomconfig_membersonly": "true", "muc#roomconfig_maxusers": "none"}), current
    )
    assert changed == RoomConfig(name="Engineering", description="old", members_only=True, max_occupants=None)
    assert parse_config_submission(parse("<x xmlns='jabber:x:data' type='submit'/>"), current) == current


@pytest.mark.parametrize(
    "fields, named",
    [
        ({"muc#roomconfig_whois": "everyone"}, "muc#roomconfig_whois"),
        ({"muc#roomconfig_membersonly": "maybe"}, "muc#roomconfig_membersonly"),
        ({"muc#roomconfig_maxusers": "-3"}, "muc#roomconfig_maxusers"),
        ({"muc#roomconfig_roomname": ""}, "muc#roomconfig_roomname"),
        ({"muc#roomconfig_passwordprotectedroom": "1"}, "muc#roomconfig_passwordprotectedroom"),
    ],
)
def test_values_we_cannot_honour_are_refused_naming_the_field(fields, named):
    """An unsupported value, or an unknown field that asks for something, is not-acceptable with the field's name."""
    with pytest.raises(FormError) as raised:
        parse_config_submission(submit(fields), RoomConfig(name="eng"))
    assert raised.value.condition == "not-acceptable" and named in raised.value.text


def test_unknown_fields_that_ask_for_nothing_are_ignored():
    """Clients send back whole forms of other servers: an unknown field set to 0 or empty changes nothing."""
    current = RoomConfig(name="eng")
    assert parse_config_submission(submit({"muc#roomconfig_passwordprotectedroom": "0", "x-custom": ""}), current) == current


def test_another_form_type_is_a_bad_request():
    with pytest.raises(FormError) as raised:
        parse_config_submission(submit({}, form_type="urn:example:other"), RoomConfig(name="eng"))
    assert raised.value.condition == "bad-request"


def test_roominfo_form_describes_the_room():
    """disco#info's muc#roominfo form: description, subject, occupant count, name."""
    fields = form_fields(roominfo_form(RoomConfig(name="Eng", description="builds"), "Ship it", 3))
    assert fields["muc#roominfo_description"] == ["builds"]
    assert fields["muc#roominfo_subject"] == ["Ship it"]
    assert fields["muc#roominfo_occupants"] == ["3"]
    assert fields["muc#roomconfig_roomname"] == ["Eng"]
