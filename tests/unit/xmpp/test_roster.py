"""Roster get and set parsing and validation, results and pushes (RFC 6121 section 2)."""

from __future__ import annotations

import pytest
from twisted.words.xish import domish

from hipchat_server.xmpp.jid import parse_jid
from hipchat_server.xmpp.roster import (
    MAX_GROUP_LENGTH,
    MAX_NAME_LENGTH,
    ROSTER_NS,
    RosterError,
    RosterItem,
    parse_roster_set,
    roster_push,
    roster_query,
    roster_result,
)

DOMAIN = "chat.example.com"
ALICE = f"alice@{DOMAIN}/laptop"


def roster_iq(kind="set", items=()):
    """An iq with a roster query holding ``items``: (attributes, [group texts]) pairs."""
    iq = domish.Element(("jabber:client", "iq"))
    iq["type"], iq["id"], iq["from"] = kind, "r1", ALICE
    query = iq.addElement((ROSTER_NS, "query"))
    for attributes, groups in items:
        item = query.addElement("item")
        for key, value in attributes.items():
            item[key] = value
        for group in groups:
            item.addElement("group", content=group)
    return iq


def refused(iq) -> str:
    with pytest.raises(RosterError) as raised:
        parse_roster_set(iq)
    return raised.value.condition


def test_roster_set_reads_jid_name_and_groups():
    """A set names the contact, an optional name and its groups in order."""
    request = parse_roster_set(roster_iq(items=[({"jid": "Bob@Chat.Example.com", "name": "Bob"}, ["Team", "Friends"])]))
    assert request.jid == parse_jid(f"bob@{DOMAIN}")
    assert (request.name, request.groups, request.remove) == ("Bob", ("Team", "Friends"), False)


def test_subscription_other_than_remove_is_ignored_and_remove_is_read():
    """In a set, subscription='remove' removes the item; any other subscription value is ignored (2.1.2.5)."""
    assert parse_roster_set(roster_iq(items=[({"jid": f"bob@{DOMAIN}", "subscription": "both"}, [])])).remove is False
    assert parse_roster_set(roster_iq(items=[({"jid": f"bob@{DOMAIN}", "subscription": "remove"}, [])])).remove is True


def test_empty_name_means_no_name():
    """name='' is the same as no name."""
    assert parse_roster_set(roster_iq(items=[({"jid": f"bob@{DOMAIN}", "name": ""}, [])])).name is None


@pytest.mark.parametrize("count", [0, 2])
def test_set_without_exactly_one_item_is_bad_request(count):
    """A roster set carries exactly one item (2.3.3)."""
    items = [({"jid": f"u{i}@{DOMAIN}"}, []) for i in range(count)]
    assert refused(roster_iq(items=items)) == "bad-request"


def test_item_without_jid_is_bad_request():
    """An item must say which contact it is about."""
    assert refused(roster_iq(items=[({"name": "nobody"}, [])])) == "bad-request"


def test_malformed_jid_is_jid_malformed():
    """An item JID that does not parse is jid-malformed."""
    assert refused(roster_iq(items=[({"jid": "@@bad"}, [])])) == "jid-malformed"


def test_duplicate_group_is_bad_request():
    """The same group twice in one item is bad-request (2.3.3)."""
    assert refused(roster_iq(items=[({"jid": f"bob@{DOMAIN}"}, ["Friends", "Friends"])])) == "bad-request"


def test_empty_group_is_not_acceptable():
    """An empty group name is not-acceptable (2.3.3)."""
    assert refused(roster_iq(items=[({"jid": f"bob@{DOMAIN}"}, [""])])) == "not-acceptable"


def test_overlong_name_or_group_is_not_acceptable():
    """A name or group longer than the server's limit is not-acceptable (2.3.3)."""
    assert refused(roster_iq(items=[({"jid": f"bob@{DOMAIN}", "name": "n" * (MAX_NAME_LENGTH + 1)}, [])])) == "not-acceptable"
    assert refused(roster_iq(items=[({"jid": f"bob@{DOMAIN}"}, ["g" * (MAX_GROUP_LENGTH + 1)])])) == "not-acceptable"


def test_roster_query_is_found_by_namespace():
    """The roster query child is recognised by its namespace only."""
    assert roster_query(roster_iq("get")) is not None
    other = domish.Element(("jabber:client", "iq"))
    other.addElement(("jabber:iq:version", "query"))
    assert roster_query(other) is None


def test_result_lists_items_with_subscription_ask_name_and_groups_but_not_pending_requests():
    """A roster result shows each item; a row that only holds a contact's request is not on the roster."""
    items = [
        RosterItem(parse_jid(f"carol@{DOMAIN}"), "Carol", ("Team",), "both"),
        RosterItem(parse_jid(f"bob@{DOMAIN}"), None, (), "none", ask_out=True),
        RosterItem(parse_jid(f"mallory@{DOMAIN}"), None, (), "none", ask_in=True, ask_in_stanza="<presence/>"),
        RosterItem(parse_jid(f"dave@{DOMAIN}"), "Dave", (), "none", ask_in=True),
    ]
    result = roster_result(roster_iq("get"), items)
    assert (result["type"], result["id"], result["to"]) == ("result", "r1", ALICE)
    shown = list(result.firstChildElement().elements())
    assert [i["jid"] for i in shown] == [f"bob@{DOMAIN}", f"carol@{DOMAIN}", f"dave@{DOMAIN}"]
    bob, carol, dave = shown
    assert (bob["subscription"], bob.getAttribute("ask"), bob.getAttribute("name")) == ("none", "subscribe", None)
    assert (carol["subscription"], carol["name"], [str(g) for g in carol.elements()]) == ("both", "Carol", ["Team"])
    assert dave.getAttribute("ask") is None  # Pending In is never shown as 'ask'


def test_push_goes_to_one_resource_from_the_bare_jid():
    """A roster push is an iq set to the resource's full JID, from the user's bare JID, with one item (2.1.6)."""
    to = parse_jid(ALICE)
    push = roster_push(to, RosterItem(parse_jid(f"bob@{DOMAIN}"), "Bob", (), "to"))
    assert (push["type"], push["to"], push["from"]) == ("set", ALICE, f"alice@{DOMAIN}")
    assert push["id"]
    [item] = push.firstChildElement().elements()
    assert (item["jid"], item["subscription"], item["name"]) == (f"bob@{DOMAIN}", "to", "Bob")
    assert roster_push(to, RosterItem(parse_jid(f"bob@{DOMAIN}")))["id"] != push["id"]


def test_removal_push_says_remove_and_nothing_else():
    """The push of a removed item carries only its JID and subscription='remove' (2.5.2)."""
    push = roster_push(parse_jid(ALICE), RosterItem(parse_jid(f"bob@{DOMAIN}"), "Bob", ("Team",), "both"), removed=True)
    [item] = push.firstChildElement().elements()
    assert dict(item.attributes) == {"jid": f"bob@{DOMAIN}", "subscription": "remove"}
    assert list(item.elements()) == []
