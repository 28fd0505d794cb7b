"""Presence stanzas and the subscription state machine, checked against the tables of RFC 6121 Appendix A."""

from __future__ import annotations

import pytest
from twisted.words.xish import domish

from hipchat_server.xmpp.presence import (
    PresenceError,
    SubscriptionState,
    copy_stanza,
    inbound,
    outbound,
    presence_kind,
    priority,
)
from hipchat_server.xmpp.stanzas import stanza_from_xml, stanza_to_xml

STATES = [
    "None",
    "None + Pending Out",
    "None + Pending In",
    "None + Pending Out+In",
    "To",
    "To + Pending In",
    "From",
    "From + Pending Out",
    "Both",
]

# Appendix A.2 and A.3: for each existing state, whether the stanza is routed
# (outbound) or delivered (inbound), and the new state (None: no state change).
OUTBOUND = {
    "subscribe": {  # A.2.1
        "None": (True, "None + Pending Out"),
        "None + Pending Out": (True, None),
        "None + Pending In": (True, "None + Pending Out+In"),
        "None + Pending Out+In": (True, None),
        "To": (True, None),
        "To + Pending In": (True, None),
        "From": (True, "From + Pending Out"),
        "From + Pending Out": (True, None),
        "Both": (True, None),
    },
    "unsubscribe": {  # A.2.2
        "None": (True, None),
        "None + Pending Out": (True, "None"),
        "None + Pending In": (True, None),
        "None + Pending Out+In": (True, "None + Pending In"),
        "To": (True, "None"),
        "To + Pending In": (True, "None + Pending In"),
        "From": (True, None),
        "From + Pending Out": (True, "From"),
        "Both": (True, "From"),
    },
    "subscribed": {  # A.2.3
        "None": (False, None),
        "None + Pending Out": (False, None),
        "None + Pending In": (True, "From"),
        "None + Pending Out+In": (True, "From + Pending Out"),
        "To": (False, None),
        "To + Pending In": (True, "Both"),
        "From": (False, None),
        "From + Pending Out": (False, None),
        "Both": (False, None),
    },
    "unsubscribed": {  # A.2.4
        "None": (False, None),
        "None + Pending Out": (False, None),
        "None + Pending In": (True, "None"),
        "None + Pending Out+In": (True, "None + Pending Out"),
        "To": (False, None),
        "To + Pending In": (True, "To"),
        "From": (True, "None"),
        "From + Pending Out": (True, "None + Pending Out"),
        "Both": (True, "To"),
    },
}

INBOUND = {
    "subscribe": {  # A.3.1
        "None": (True, "None + Pending In"),
        "None + Pending Out": (True, "None + Pending Out+In"),
        "None + Pending In": (False, None),
        "None + Pending Out+In": (False, None),
        "To": (True, "To + Pending In"),
        "To + Pending In": (False, None),
        "From": (False, None),
        "From + Pending Out": (False, None),
        "Both": (False, None),
    },
    "unsubscribe": {  # A.3.2
        "None": (False, None),
        "None + Pending Out": (False, None),
        "None + Pending In": (True, "None"),
        "None + Pending Out+In": (True, "None + Pending Out"),
        "To": (False, None),
        "To + Pending In": (True, "To"),
        "From": (True, "None"),
        "From + Pending Out": (True, "None + Pending Out"),
        "Both": (True, "To"),
    },
    "subscribed": {  # A.3.3
        "None": (False, None),
        "None + Pending Out": (True, "To"),
        "None + Pending In": (False, None),
        "None + Pending Out+In": (True, "To + Pending In"),
        "To": (False, None),
        "To + Pending In": (False, None),
        "From": (False, None),
        "From + Pending Out": (True, "Both"),
        "Both": (False, None),
    },
    "unsubscribed": {  # A.3.4
        "None": (False, None),
        "None + Pending Out": (True, "None"),
        "None + Pending In": (False, None),
        "None + Pending Out+In": (True, "None + Pending In"),
        "To": (True, "None"),
        "To + Pending In": (True, "None + Pending In"),
        "From": (False, None),
        "From + Pending Out": (True, "From"),
        "Both": (True, "From"),
    },
}


def cases(table):
    return [(kind, label, *row[label]) for kind, row in table.items() for label in STATES]


@pytest.mark.parametrize("kind, label, route, new_label", cases(OUTBOUND))
def test_outbound_subscription_stanzas_follow_appendix_a2(kind, label, route, new_label):
    """Each outbound subscription stanza routes or not and moves the item as RFC 6121 A.2 tabulates."""
    transition = outbound(kind, SubscriptionState.from_label(label))
    assert transition.route is route
    assert transition.state.label == (new_label or label)
    assert transition.auto_reply is None


@pytest.mark.parametrize("kind, label, deliver, new_label", cases(INBOUND))
def test_inbound_subscription_stanzas_follow_appendix_a3(kind, label, deliver, new_label):
    """Each inbound subscription stanza is delivered or not and moves the item as RFC 6121 A.3 tabulates."""
    transition = inbound(kind, SubscriptionState.from_label(label))
    assert transition.route is deliver
    assert transition.state.label == (new_label or label)


@pytest.mark.parametrize("label", ["From", "From + Pending Out", "Both"])
def test_subscribe_from_an_already_subscribed_contact_is_approved_by_the_server(label):
    """An inbound subscribe from a contact that already has a subscription is answered 'subscribed' (A.3.1)."""
    assert inbound("subscribe", SubscriptionState.from_label(label)).auto_reply == "subscribed"


def test_a_push_follows_only_changes_the_roster_shows():
    """Pending In is not shown in the roster: a change of it alone pushes nothing; subscription and ask do."""
    assert not inbound("subscribe", SubscriptionState()).push
    assert outbound("subscribe", SubscriptionState()).push
    assert inbound("subscribed", SubscriptionState.from_label("None + Pending Out")).push
    assert not outbound("subscribe", SubscriptionState.from_label("Both")).push
    assert outbound("subscribed", SubscriptionState.from_label("None + Pending In")).push


@pytest.mark.parametrize("label", STATES)
def test_labels_round_trip(label):
    """Every Appendix A state name maps to one state and back."""
    assert SubscriptionState.from_label(label).label == label


def test_impossible_states_are_refused():
    """A request pending towards a subscription that already exists is not a state."""
    with pytest.raises(ValueError):
        SubscriptionState("to", ask_out=True)
    with pytest.raises(ValueError):
        SubscriptionState("both", ask_in=True)
    with pytest.raises(ValueError):
        SubscriptionState("sideways")


def presence(kind=None, prio=None, *priorities):
    element = domish.Element(("jabber:client", "presence"))
    if kind is not None:
        element["type"] = kind
    for value in ((prio,) if prio is not None else ()) + priorities:
        element.addElement("priority", content=value)
    return element


@pytest.mark.parametrize(
    "kind", ["unavailable", "subscribe", "subscribed", "unsubscribe", "unsubscribed", "probe", "error"]
)
def test_presence_kinds_are_their_type(kind):
    """A presence's kind is its type attribute."""
    assert presence_kind(presence(kind)) == kind


def test_presence_without_type_is_available():
    """No type means available (RFC 6121 4.7.1)."""
    assert presence_kind(presence()) == "available"


@pytest.mark.parametrize("kind", ["available", "invisible", ""])
def test_unknown_presence_type_is_bad_request(kind):
    """A type RFC 6121 does not define (even 'available' spelled out) is refused with bad-request."""
    with pytest.raises(PresenceError) as raised:
        presence_kind(presence(kind))
    assert raised.value.condition == "bad-request"


@pytest.mark.parametrize("text, value", [("0", 0), ("-128", -128), ("127", 127), (" 5 ", 5), ("+3", 3)])
def test_priority_within_bounds(text, value):
    """A priority is an integer from -128 to 127 (RFC 6121 4.7.2.3)."""
    assert priority(presence(None, text)) == value


def test_missing_priority_is_zero():
    """Without a priority element the priority is 0."""
    assert priority(presence()) == 0


@pytest.mark.parametrize("text", ["128", "-129", "1.5", "high", "", "99999999999"])
def test_invalid_priority_is_bad_request(text):
    """A priority out of range or not an integer makes an available presence bad-request."""
    with pytest.raises(PresenceError) as raised:
        presence_kind(presence(None, text))
    assert raised.value.condition == "bad-request"


def test_two_priorities_are_bad_request():
    """A presence carries at most one priority."""
    with pytest.raises(PresenceError):
        priority(presence(None, "1", "2"))


def test_stanza_survives_storage_as_xml():
    """A presence kept as text parses back to the same stanza, status text and escapes included."""
    element = presence(None, "5")
    element["from"] = "alice@chat.example.com/laptop"
    element.addElement("status", content="in a <meeting> & busy")
    element.addElement(("urn:xmpp:custom", "x"))["a"] = "b"
    back = stanza_from_xml(stanza_to_xml(element))
    assert (back.uri, back.name, back["from"]) == ("jabber:client", "presence", "alice@chat.example.com/laptop")
    assert stanza_to_xml(back) == stanza_to_xml(element)


def test_copy_sets_and_removes_attributes_without_touching_the_original():
    """copy_stanza changes only the copy."""
    element = presence("subscribe")
    element["to"] = "bob@chat.example.com/phone"
    element.addElement("status", content="please")
    copied = copy_stanza(element, to="bob@chat.example.com", id=None)
    copied.addElement("extra")
    assert copied["to"] == "bob@chat.example.com"
    assert element["to"] == "bob@chat.example.com/phone"
    assert [c.name for c in element.elements()] == ["status"]
