"""Rosters (RFC 6121 section 2): roster items, roster get and set, results and pushes.

Protocol only. A roster item is the owner's view of one contact: a name,
groups, and the subscription state of `hipchat_server.xmpp.presence`. The
storage keeps one row per (owner, contact) and also rows the owner never
added: a contact's subscription request to someone who has no item for that
contact is kept as a row in state "None + Pending In" with no name and no
groups, so that it is shown again at the owner's next login. Such a row is
not an item of the roster the owner sees (`RosterItem.on_roster`).

Roster versioning (2.6) is not offered: a get always returns the whole roster.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from twisted.words.xish import domish

from hipchat_server.xmpp.jid import JID, InvalidJID, parse_jid
from hipchat_server.xmpp.presence import SubscriptionState
from hipchat_server.xmpp.stanzas import iq_result
from hipchat_server.xmpp.xml_parser import CLIENT_NS

ROSTER_NS = "jabber:iq:roster"

# Server-configured limits (RFC 6121 2.3.3): beyond them a roster set is not-acceptable.
MAX_NAME_LENGTH = 255  # roster_items.name
MAX_JID_LENGTH = 512  # roster_items.contact_jid
MAX_GROUP_LENGTH = 255
MAX_GROUPS = 64


class RosterError(Exception):
    """A roster request refused with the stanza error ``condition``."""

    def __init__(self, condition: str, text: str):
        super().__init__(f"{condition}: {text}")
        self.condition = condition
        self.text = text


@dataclass(frozen=True)
class RosterItem:
    """One row of a user's roster: the contact's bare JID, its name and groups, the subscription state."""

    jid: JID
    name: str | None = None
    groups: tuple[str, ...] = ()
    subscription: str = "none"
    ask_out: bool = False
    ask_in: bool = False
    ask_in_stanza: str | None = None  # the contact's pending subscribe, as XML

    @property
    def state(self) -> SubscriptionState:
        return SubscriptionState(self.subscription, self.ask_out, self.ask_in)

    def with_state(self, state: SubscriptionState, ask_in_stanza: str | None = None) -> "RosterItem":
        """This item in ``state``; the pending request's stanza is kept while ``ask_in`` stays on."""
        stanza = (ask_in_stanza or self.ask_in_stanza) if state.ask_in else None
        return RosterItem(self.jid, self.name, self.groups, state.subscription, state.ask_out, state.ask_in, stanza)

    @property
    def on_roster(self) -> bool:
        """False for a row that only holds a contact's pending request (see the module docstring)."""
        only_pending_in = self.subscription == "none" and not self.ask_out and self.ask_in
        return not (only_pending_in and self.name is None and not self.groups)

    @property
    def is_empty(self) -> bool:
        """A row with nothing worth keeping: no subscription, no request, not on the roster."""
        return self.state == SubscriptionState() and self.name is None and not self.groups


@dataclass(frozen=True)
class RosterSet:
    """A client's roster set: add or update the item ``jid``, or remove it."""

    jid: JID
    name: str | None
    groups: tuple[str, ...]
    remove: bool


def roster_query(iq: domish.Element) -> domish.Element | None:
    """The ``{jabber:iq:roster}query`` child of ``iq``, if it has one."""
    return next((c for c in iq.elements() if (c.uri, c.name) == (ROSTER_NS, "query")), None)


def parse_roster_set(iq: domish.Element) -> RosterSet:
    """Read and check a roster set (RFC 6121 2.3 to 2.5); RosterError says what is wrong.

    Exactly one ``<item/>`` with a ``jid`` (``bad-request``); no duplicate
    groups (``bad-request``); a name or group too long, an empty group, or too
    many groups (``not-acceptable``). A ``subscription`` other than ``remove``
    and any ``ask`` are ignored (2.1.2.5, 2.1.2.2).
    """
    query = roster_query(iq)
    if query is None:
        raise RosterError("bad-request", "no roster query")
    items = [c for c in query.elements() if c.name == "item" and c.uri == ROSTER_NS]
    if len(items) != 1:
        raise RosterError("bad-request", "a roster set has exactly one item")
    item = items[0]
    text = item.getAttribute("jid")
    if not text:
        raise RosterError("bad-request", "the item has no jid")
    if len(text) > MAX_JID_LENGTH:
        raise RosterError("not-acceptable", f"the jid is longer than {MAX_JID_LENGTH} characters")
    try:
        jid = parse_jid(text)
    except InvalidJID as e:
        raise RosterError("jid-malformed", e.reason) from None
    name = item.getAttribute("name")
    if name is not None and len(name) > MAX_NAME_LENGTH:
        raise RosterError("not-acceptable", f"the name is longer than {MAX_NAME_LENGTH} characters")
    groups: list[str] = []
    for group in item.elements():
        if group.name != "group" or group.uri != ROSTER_NS:
            continue
        value = str(group)
        if not value:
            raise RosterError("not-acceptable", "a group name is empty")
        if len(value) > MAX_GROUP_LENGTH:
            raise RosterError("not-acceptable", f"a group name is longer than {MAX_GROUP_LENGTH} characters")
        if value in groups:
            raise RosterError("bad-request", f"the group {value[:40]!r} is given twice")
        groups.append(value)
    if len(groups) > MAX_GROUPS:
        raise RosterError("not-acceptable", f"an item is in at most {MAX_GROUPS} groups")
    remove = item.getAttribute("subscription") == "remove"
    return RosterSet(jid, name or None, tuple(groups), remove)


def item_element(item: RosterItem, removed: bool = False) -> domish.Element:
    """``<item/>`` as results and pushes show it (2.1.2); ``subscription='remove'`` when ``removed``."""
    element = domish.Element((ROSTER_NS, "item"))
    element["jid"] = item.jid.full()
    if removed:
        element["subscription"] = "remove"
        return element
    element["subscription"] = item.subscription
    if item.ask_out:
        element["ask"] = "subscribe"
    if item.name:
        element["name"] = item.name
    for group in item.groups:
        element.addElement("group", content=group)
    return element


def roster_result(iq: domish.Element, items: list[RosterItem]) -> domish.Element:
    """The result of a roster get (2.1.3): every item on the roster, sorted by JID."""
    query = domish.Element((ROSTER_NS, "query"))
    for item in sorted(items, key=lambda i: i.jid.full()):
        if item.on_roster:
            query.addChild(item_element(item))
    return iq_result(iq, query)


def roster_push(to: JID, item: RosterItem, removed: bool = False) -> domish.Element:
    """A roster push (2.1.6) of ``item`` to the resource ``to``, from the user's bare JID."""
    iq = domish.Element((CLIENT_NS, "iq"))
    iq["type"], iq["id"] = "set", f"push-{secrets.token_hex(6)}"
    iq["to"], iq["from"] = to.full(), to.bare().full()
    iq.addElement((ROSTER_NS, "query")).addChild(item_element(item, removed))
    return iq
