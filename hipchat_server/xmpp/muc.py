"""Multi-User Chat (XEP-0045): the stanzas of group rooms, parsed and built. Protocol only.

The domain logic (who may do what, where occupants are) is `hipchat_server.rooms`;
the room configuration and room info forms are in `muc_forms`. Stanzas a room
sends to many occupants are built once without a ``to``; `with_to` addresses
the serialised text per recipient, which costs a string copy instead of a
serialisation per occupant.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from typing import Iterable

from twisted.words.xish import domish

from hipchat_server.xmpp.delay import DELAY_NS
from hipchat_server.xmpp.xml_parser import CLIENT_NS

MUC_NS = "http://jabber.org/protocol/muc"
MUC_USER_NS = "http://jabber.org/protocol/muc#user"
MUC_ADMIN_NS = "http://jabber.org/protocol/muc#admin"
MUC_OWNER_NS = "http://jabber.org/protocol/muc#owner"
MAM_NS = "urn:xmpp:mam:2"
SID_NS = "urn:xmpp:sid:0"

# Status codes (XEP-0045 section 15.6.2).
NON_ANONYMOUS = "100"
CONFIG_CHANGED = "104"
SELF = "110"
NOW_NON_ANONYMOUS = "172"
NOW_SEMI_ANONYMOUS = "173"
CREATED = "201"
BANNED = "301"
NICK_CHANGED = "303"
KICKED = "307"
AFFILIATION_REMOVED = "321"
MEMBERS_ONLY_NOW = "322"
SHUTDOWN = "332"

AFFILIATIONS = ("owner", "admin", "member", "none", "outcast")
ROLES = ("moderator", "participant", "visitor", "none")
#: Higher ranks may act on lower ones (XEP-0045 5.2).
AFFILIATION_RANK = {"owner": 4, "admin": 3, "member": 2, "none": 1, "outcast": 0}
ROLE_RANK = {"moderator": 3, "participant": 2, "visitor": 1, "none": 0}

_TAG_NAME = re.compile(r"<[A-Za-z][^\s/>]*")


class MucError(Exception):
    """A request is refused with the stanza error ``condition`` and an explanation."""

    def __init__(self, condition: str, text: str | None = None):
        super().__init__(f"{condition}: {text}" if text else condition)
        self.condition = condition
        self.text = text


def role_of(affiliation: str, moderated: bool) -> str:
    """The role an occupant gets on entering (XEP-0045 5.1.2): moderators are admins and owners."""
    if affiliation in ("owner", "admin"):
        return "moderator"
    if moderated and affiliation == "none":
        return "visitor"
    return "participant"


# History on join (XEP-0045 7.2.13).
@dataclass(frozen=True)
class HistoryRequest:
    """What a joining client asked of the room's history; None means no limit of that kind."""

    maxstanzas: int | None = None
    maxchars: int | None = None
    seconds: int | None = None
    since: datetime.datetime | None = None


def _non_negative(value: str | None) -> int | None:
    if value is None:
        return None
    value = value.strip()
    if not value.isdigit():
        raise MucError("bad-request", "history limits are non-negative integers")
    return int(value)


def parse_timestamp(text: str) -> datetime.datetime:
    """An XEP-0082 date-time (``2026-11-26T09:15:21.123Z``, an offset, or none meaning UTC) as an aware datetime."""
    text = text.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise MucError("bad-request", "a date-time is written like 2026-11-26T09:15:21Z") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.timezone.utc)


def join_request(presence: domish.Element) -> HistoryRequest | None:
    """The history request of a join (``<x xmlns='.../muc'/>``), or None when the presence carries none."""
    x = next(presence.elements(MUC_NS, "x"), None)
    if x is None:
        return None
    history = next(x.elements(MUC_NS, "history"), None)
    if history is None:
        return HistoryRequest()
    since = history.getAttribute("since")
    return HistoryRequest(
        maxstanzas=_non_negative(history.getAttribute("maxstanzas")),
        maxchars=_non_negative(history.getAttribute("maxchars")),
        seconds=_non_negative(history.getAttribute("seconds")),
        since=parse_timestamp(since) if since else None,
    )


def select_history(records_newest_first: list[dict], request: HistoryRequest, limit: int, now: datetime.datetime) -> list[dict]:
    """The records a joining occupant gets, oldest first: at most ``limit`` and within every limit it asked for.

    ``maxchars`` counts the characters of each message as sent (XEP-0045 7.2.13).
    """
    if request.maxstanzas is not None:
        limit = min(limit, request.maxstanzas)
    oldest = request.since
    if request.seconds is not None:
        cutoff = now - datetime.timedelta(seconds=request.seconds)
        oldest = max(oldest, cutoff) if oldest else cutoff
    chosen, chars = [], 0
    for record in records_newest_first[: max(limit, 0)]:
        if oldest is not None and parse_timestamp(record["timestamp"]) < oldest:
            break
        chars += len(record["xml"])
        if request.maxchars is not None and chars > request.maxchars:
            break
        chosen.append(record)
    chosen.reverse()
    return chosen


# Addressing serialised stanzas.
def with_to(xml: str, to: str) -> str:
    """A serialised stanza (no ``to`` yet) addressed to ``to``: the attribute goes right after the element name."""
    match = _TAG_NAME.match(xml)
    if match is None:
        raise ValueError("not a serialised element")
    end = match.end()
    return f"{xml[:end]} to='{domish.escapeToXml(to, 1)}'{xml[end:]}"


def delayed(xml: str, stamp: str, by: str) -> str:
    """A serialised ``<message/>`` with a XEP-0203 ``<delay/>`` (``stamp`` already in XEP-0082 form) appended."""
    delay = f"<delay xmlns='{DELAY_NS}' stamp='{domish.escapeToXml(stamp, 1)}' from='{domish.escapeToXml(by, 1)}'/>"
    if xml.endswith("</message>"):
        return xml[: -len("</message>")] + delay + "</message>"
    if xml.endswith("/>"):
        return xml[:-2] + ">" + delay + "</message>"
    raise ValueError("not a serialised message")


def serialise(stanza: domish.Element) -> str:
    """A stanza as text in the client namespace (no namespace declared for jabber:client)."""
    return stanza.toXml(defaultUri=CLIENT_NS)


# Presence.
def presence_payload(presence: domish.Element) -> str:
    """What an occupant's presence carries for the others (show, status, caps...), serialised; the MUC ``<x/>`` left out."""
    parts = []
    for child in presence.elements():
        if child.uri in (MUC_NS, MUC_USER_NS) or child.name == "error":
            continue
        parts.append(child.toXml(defaultUri=CLIENT_NS))
    return "".join(parts)


def muc_user_x(
    *,
    affiliation: str | None = None,
    role: str | None = None,
    jid: str | None = None,
    nick: str | None = None,
    codes: Iterable[str] = (),
    reason: str | None = None,
    actor: str | None = None,
) -> domish.Element:
    """``<x xmlns='.../muc#user'><item .../><status code/>...</x>``; no item when neither affiliation nor role is given."""
    x = domish.Element((MUC_USER_NS, "x"))
    if affiliation is not None or role is not None:
        item = x.addElement("item")
        for name, value in (("affiliation", affiliation), ("role", role), ("jid", jid), ("nick", nick)):
            if value is not None:
                item[name] = value
        if actor is not None:
            item.addElement("actor")["nick"] = actor
        if reason:
            item.addElement("reason", content=reason)
    for code in codes:
        x.addElement("status")["code"] = code
    return x


def occupant_presence(
    frm: str,
    *,
    affiliation: str,
    role: str,
    jid: str | None = None,
    nick: str | None = None,
    codes: Iterable[str] = (),
    unavailable: bool = False,
    payload: str = "",
    reason: str | None = None,
    actor: str | None = None,
    destroy: domish.Element | None = None,
) -> domish.Element:
    """The presence of occupant ``frm`` (room@service/nick) as the room sends it, without a ``to``."""
    presence = domish.Element((CLIENT_NS, "presence"))
    presence["from"] = frm
    if unavailable:
        presence["type"] = "unavailable"
    elif payload:
        presence.addRawXml(payload)
    x = muc_user_x(affiliation=affiliation, role=role, jid=jid, nick=nick, codes=codes, reason=reason, actor=actor)
    if destroy is not None:
        x.addChild(destroy)
    presence.addChild(x)
    return presence


def destroy_element(reason: str | None = None, alternate: str | None = None) -> domish.Element:
    """``<destroy/>`` as the room tells occupants it is gone (XEP-0045 10.9)."""
    destroy = domish.Element((MUC_USER_NS, "destroy"))
    if alternate:
        destroy["jid"] = alternate
    if reason:
        destroy.addElement("reason", content=reason)
    return destroy


# Messages.
def subject_of(message: domish.Element) -> str | None:
    """The ``<subject/>`` text of a message, or None when it has none."""
    subject = next((c for c in message.elements() if c.name == "subject" and c.uri == CLIENT_NS), None)
    return None if subject is None else str(subject)


def has_body(message: domish.Element) -> bool:
    return any(child.name == "body" and child.uri == CLIENT_NS for child in message.elements())


def subject_message(frm: str, subject: str) -> domish.Element:
    """The groupchat message carrying the room's subject (XEP-0045 8.1); an empty subject is sent empty."""
    message = domish.Element((CLIENT_NS, "message"))
    message["from"], message["type"] = frm, "groupchat"
    message.addElement("subject", content=subject)
    return message


def status_message(room: str, codes: Iterable[str]) -> domish.Element:
    """A groupchat message from the room announcing ``codes`` (a configuration change, 104)."""
    message = domish.Element((CLIENT_NS, "message"))
    message["from"], message["type"] = room, "groupchat"
    message.addChild(muc_user_x(codes=codes))
    return message


def reflected(message: domish.Element, frm: str) -> domish.Element:
    """The groupchat message a room sends its occupants for ``message``: from the sender's occupant JID, no ``to``.

    Stanza-ids are left to the archive (it removes any a client forged).
    """
    copy = domish.Element((CLIENT_NS, "message"))
    copy["from"], copy["type"] = frm, "groupchat"
    if message.getAttribute("id"):
        copy["id"] = message["id"]
    for child in message.elements():
        copy.addChild(child)
    return copy


def private_message(message: domish.Element, frm: str) -> domish.Element:
    """A private message between occupants as the recipient gets it (XEP-0045 7.5), marked with an empty muc#user ``<x/>``."""
    copy = domish.Element((CLIENT_NS, "message"))
    copy["from"] = frm
    copy["type"] = message.getAttribute("type", "chat")
    if message.getAttribute("id"):
        copy["id"] = message["id"]
    for child in message.elements():
        if child.uri != MUC_USER_NS:
            copy.addChild(child)
    copy.addElement((MUC_USER_NS, "x"))
    return copy


@dataclass(frozen=True)
class Invitation:
    """A mediated invitation (``invite``) or its refusal (``decline``), XEP-0045 7.8.2 and 7.8.2.1."""

    kind: str  # "invite" or "decline"
    to: str
    reason: str | None = None


def invitations(message: domish.Element) -> list[Invitation]:
    """The invites and declines in a message's muc#user ``<x/>``; MucError when one has no ``to``."""
    found = []
    for x in message.elements(MUC_USER_NS, "x"):
        for child in x.elements():
            if child.uri != MUC_USER_NS or child.name not in ("invite", "decline"):
                continue
            to = child.getAttribute("to")
            if not to:
                raise MucError("bad-request", f"an <{child.name}/> needs a 'to' address")
            reason = next(child.elements(MUC_USER_NS, "reason"), None)
            found.append(Invitation(child.name, to, str(reason) if reason is not None else None))
    return found


def invitation_message(room: str, to: str, invitation: Invitation, frm: str) -> domish.Element:
    """The message the room sends for an invitation: to the invitee (invite) or back to the inviter (decline)."""
    message = domish.Element((CLIENT_NS, "message"))
    message["from"], message["to"] = room, to
    x = message.addElement((MUC_USER_NS, "x"))
    child = x.addElement(invitation.kind)
    child["from"] = frm
    if invitation.reason:
        child.addElement("reason", content=invitation.reason)
    return message


# muc#admin items (XEP-0045 sections 8 and 9).
@dataclass(frozen=True)
class AdminItem:
    """One ``<item/>`` of a muc#admin query: who (nick or jid) and what (role or affiliation)."""

    nick: str | None = None
    jid: str | None = None
    role: str | None = None
    affiliation: str | None = None
    reason: str | None = None


def admin_items(query: domish.Element) -> list[AdminItem]:
    """The items of a muc#admin query; MucError ``bad-request`` for an item that names no one or nothing valid."""
    items = []
    for item in query.elements(MUC_ADMIN_NS, "item"):
        role, affiliation = item.getAttribute("role"), item.getAttribute("affiliation")
        if role is not None and role not in ROLES:
            raise MucError("bad-request", f"unknown role {role[:40]!r}")
        if affiliation is not None and affiliation not in AFFILIATIONS:
            raise MucError("bad-request", f"unknown affiliation {affiliation[:40]!r}")
        if role is None and affiliation is None:
            raise MucError("bad-request", "an item changes or asks for a role or an affiliation")
        reason = next(item.elements(MUC_ADMIN_NS, "reason"), None)
        items.append(
            AdminItem(item.getAttribute("nick"), item.getAttribute("jid"), role, affiliation, str(reason) if reason is not None else None)
        )
    if not items:
        raise MucError("bad-request", "a muc#admin query holds at least one item")
    return items


def admin_list(items: Iterable[AdminItem]) -> domish.Element:
    """A muc#admin ``<query/>`` listing ``items`` (the answer to an affiliation or role list request)."""
    query = domish.Element((MUC_ADMIN_NS, "query"))
    for entry in items:
        item = query.addElement("item")
        for name in ("affiliation", "role", "jid", "nick"):
            value = getattr(entry, name)
            if value is not None:
                item[name] = value
    return query


def destroy_request(query: domish.Element) -> domish.Element | None:
    """The ``<destroy/>`` of a muc#owner query, or None."""
    return next(query.elements(MUC_OWNER_NS, "destroy"), None)


def destroy_reason(destroy: domish.Element) -> tuple[str | None, str | None]:
    """(reason, alternate room) of an owner's ``<destroy/>``."""
    reason = next(destroy.elements(MUC_OWNER_NS, "reason"), None)
    return (str(reason) if reason is not None else None), destroy.getAttribute("jid")
