"""Presence stanzas and the subscription state machine (RFC 6121 sections 3 and 4, Appendix A).

Protocol only: which kind a presence stanza is, its priority, and, as pure
functions, what a subscription stanza does to the roster item it concerns.
The domain service (`hipchat_server.presence`) stores the states and routes.

An item's state is the subscription (``none``, ``to``, ``from``, ``both``)
plus two pending flags: ``ask_out`` (the owner asked the contact, "Pending
Out") and ``ask_in`` (the contact asked the owner, "Pending In"). Appendix A
names the nine states that can occur ("None + Pending Out+In", ...).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from twisted.words.xish import domish

from hipchat_server.xmpp.errors import copy_element
from hipchat_server.xmpp.xml_parser import CLIENT_NS

SUBSCRIPTION_KINDS = frozenset({"subscribe", "subscribed", "unsubscribe", "unsubscribed"})
#: Every presence kind; "available" is a presence without a type.
PRESENCE_KINDS = frozenset({"available", "unavailable", "probe", "error"}) | SUBSCRIPTION_KINDS
SUBSCRIPTIONS = ("none", "to", "from", "both")

#: RFC 6121 4.7.2.3: a priority is an integer from -128 to 127; no priority means 0.
MIN_PRIORITY, MAX_PRIORITY = -128, 127
_INTEGER = re.compile(r"[+-]?[0-9]{1,4}")

class PresenceError(Exception):
    """The presence stanza is refused with the stanza error ``condition``."""

    def __init__(self, condition: str, text: str):
        super().__init__(f"{condition}: {text}")
        self.condition = condition
        self.text = text


def presence_kind(presence: domish.Element) -> str:
    """The kind of ``presence``: its type, or ``available`` when it has none.

    Raises PresenceError (``bad-request``) for a type RFC 6121 does not
    define, and for an available presence whose priority is invalid.
    """
    kind = presence.getAttribute("type") or "available"
    if kind not in PRESENCE_KINDS or kind == "available" and presence.hasAttribute("type"):
        raise PresenceError("bad-request", f"unknown presence type {kind[:40]!r}")
    if kind == "available":
        priority(presence)
    return kind


def priority(presence: domish.Element) -> int:
    """The ``<priority/>`` of ``presence`` (0 when absent); PresenceError ``bad-request`` when invalid."""
    found = [c for c in presence.elements() if c.name == "priority" and c.uri == presence.uri]
    if not found:
        return 0
    if len(found) > 1:
        raise PresenceError("bad-request", "a presence has at most one priority")
    text = str(found[0]).strip()
    if not _INTEGER.fullmatch(text) or not MIN_PRIORITY <= int(text) <= MAX_PRIORITY:
        raise PresenceError("bad-request", f"the priority must be an integer from {MIN_PRIORITY} to {MAX_PRIORITY}")
    return int(text)


def presence_element(kind: str, frm: str, to: str | None = None) -> domish.Element:
    """A bare ``<presence/>`` of ``kind`` (no type attribute for ``available``)."""
    element = domish.Element((CLIENT_NS, "presence"))
    element["from"] = frm
    if to is not None:
        element["to"] = to
    if kind != "available":
        element["type"] = kind
    return element


def copy_stanza(stanza: domish.Element, **attributes: str | None) -> domish.Element:
    """A deep copy of ``stanza`` with ``attributes`` set (None removes one)."""

    copied = copy_element(stanza)
    for name, value in attributes.items():
        if value is None:
            copied.attributes.pop(name, None)
        else:
            copied[name] = value
    return copied


@dataclass(frozen=True)
class SubscriptionState:
    """The subscription state of one roster item, as RFC 6121 Appendix A counts them."""

    subscription: str = "none"
    ask_out: bool = False  # "Pending Out": the owner asked the contact for its presence
    ask_in: bool = False  # "Pending In": the contact asked the owner for the owner's presence

    def __post_init__(self):
        if self.subscription not in SUBSCRIPTIONS:
            raise ValueError(f"unknown subscription {self.subscription!r}")
        if self.ask_out and self.has_to:
            raise ValueError("a pending outbound request with a subscription to the contact")
        if self.ask_in and self.has_from:
            raise ValueError("a pending inbound request with a subscription from the contact")

    @property
    def has_to(self) -> bool:
        """The owner receives the contact's presence."""
        return self.subscription in ("to", "both")

    @property
    def has_from(self) -> bool:
        """The contact receives the owner's presence."""
        return self.subscription in ("from", "both")

    @property
    def label(self) -> str:
        """The state's name in Appendix A, e.g. ``None + Pending Out+In``."""
        pending = "+".join(p for p, on in (("Out", self.ask_out), ("In", self.ask_in)) if on)
        name = self.subscription.capitalize()
        return f"{name} + Pending {pending}" if pending else name

    @classmethod
    def from_label(cls, label: str) -> "SubscriptionState":
        """The state Appendix A calls ``label``."""
        name, _, pending = label.partition(" + Pending ")
        flags = set(pending.split("+")) if pending else set()
        return cls(name.lower(), "Out" in flags, "In" in flags)

    def with_to(self, on: bool) -> "SubscriptionState":
        subscription = {(False, False): "none", (True, False): "to", (False, True): "from", (True, True): "both"}
        return replace(self, subscription=subscription[(on, self.has_from)], ask_out=False if on else self.ask_out)

    def with_from(self, on: bool) -> "SubscriptionState":
        subscription = {(False, False): "none", (True, False): "to", (False, True): "from", (True, True): "both"}
        return replace(self, subscription=subscription[(self.has_to, on)], ask_in=False if on else self.ask_in)


@dataclass(frozen=True)
class Transition:
    """What one subscription stanza does to an item.

    ``route``: for an outbound stanza, whether it goes on to the contact;
    for an inbound one, whether it is delivered to the owner's resources.
    ``push``: whether the roster as clients see it changed (a roster push).
    ``auto_reply``: the kind of presence the owner's server answers with itself.
    """

    state: SubscriptionState
    route: bool
    push: bool
    auto_reply: str | None = None


def _transition(old: SubscriptionState, new: SubscriptionState, route: bool, auto_reply: str | None = None) -> Transition:
    visible = (new.subscription, new.ask_out) != (old.subscription, old.ask_out)
    return Transition(new, route, visible, auto_reply)


def outbound(kind: str, state: SubscriptionState) -> Transition:
    """A subscription stanza the owner sends about the contact (RFC 6121 A.2)."""
    if kind == "subscribe":  # A.2.1: always routed; pending unless already subscribed
        return _transition(state, state if state.has_to else replace(state, ask_out=True), True)
    if kind == "unsubscribe":  # A.2.2: always routed; no more subscription to the contact
        return _transition(state, replace(state.with_to(False), ask_out=False), True)
    if kind == "subscribed":  # A.2.3: approves a pending request (pre-approval is not supported)
        if not state.ask_in:
            return _transition(state, state, False)
        return _transition(state, state.with_from(True), True)
    if kind == "unsubscribed":  # A.2.4: cancels or denies the contact's subscription
        if not (state.has_from or state.ask_in):
            return _transition(state, state, False)
        return _transition(state, replace(state.with_from(False), ask_in=False), True)
    raise ValueError(f"{kind!r} is not a subscription kind")


def inbound(kind: str, state: SubscriptionState) -> Transition:
    """A subscription stanza the contact sent to the owner (RFC 6121 A.3)."""
    if kind == "subscribe":  # A.3.1
        if state.has_from:
            return _transition(state, state, False, auto_reply="subscribed")
        if state.ask_in:
            return _transition(state, state, False)
        return _transition(state, replace(state, ask_in=True), True)
    if kind == "unsubscribe":  # A.3.2: the contact no longer wants the owner's presence
        if not (state.has_from or state.ask_in):
            return _transition(state, state, False)
        return _transition(state, replace(state.with_from(False), ask_in=False), True)
    if kind == "subscribed":  # A.3.3: the contact approved the owner's request
        if not state.ask_out:
            return _transition(state, state, False)
        return _transition(state, state.with_to(True), True)
    if kind == "unsubscribed":  # A.3.4: the contact denied or cancelled the owner's subscription
        if not (state.has_to or state.ask_out):
            return _transition(state, state, False)
        return _transition(state, replace(state.with_to(False), ask_out=False), True)
    raise ValueError(f"{kind!r} is not a subscription kind")
