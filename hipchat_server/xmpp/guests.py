"""A guest's stream (see `hipchat_server.guests`): logged in over the web client's WebSocket, kept to its one room.

`GuestCredentials` is the SASL credentials store of a WebSocket stream: the
users' (which refuse every guest), plus the guest accounts that
`guests.Guests.login` admits. Once a guest is bound, `GuestStream` stands
between its stream and the router:

- what the guest sends (`refusal`): presence to its room (join, leave,
  status) and its own availability; groupchat messages to its room; iqs to
  its room, to the server and to itself. Everything else (another room, the
  rooms directory, one-to-one messages, private messages to occupants,
  subscriptions, other people's vCards) is answered ``forbidden``. The roster
  is empty: a get answers no items, a set is refused.
- what reaches the guest (`may_receive`): only what comes from its room, the
  server or itself. A one-to-one message sent to a guest is dropped here.
- every `CHECK_SECONDS` it asks whether the guest may go on (guest access
  still on for the room and on the server); if not, the stream ends with
  ``<not-authorized/>``. When the stream ends, the guest account ends.
"""

from __future__ import annotations

from twisted.logger import Logger
from twisted.words.xish import domish

from hipchat_server.xmpp.errors import stanza_error_reply
from hipchat_server.xmpp.jid import JID, InvalidJID, parse_jid
from hipchat_server.xmpp.stanzas import iq_result, stanza_from_xml

ROSTER_NS = "jabber:iq:roster"
DISCO_INFO_NS = "http://jabber.org/protocol/disco#info"
#: Seconds between the checks that guest access is still on for a guest's room.
CHECK_SECONDS = 5.0
ENDED_TEXT = "guest access to this room was turned off"


def _jid(text: str | None) -> JID | None:
    """``text`` parsed; None when absent. Raises InvalidJID."""
    return parse_jid(text) if text else None


def refusal(element: domish.Element, own: JID, room: JID) -> str | None:
    """Why a guest bound as ``own`` may not send ``element`` (a text for the error); None when it may.

    ``room`` is the bare JID of the guest's room.
    """
    try:
        target = _jid(element.getAttribute("to"))
    except InvalidJID:
        return None  # the stream answers jid-malformed itself
    kind = element.getAttribute("type")
    in_room = target is not None and target.bare() == room
    if element.name == "presence":
        if in_room or (target is None and kind in (None, "unavailable")):
            return None
        return "a guest has no contacts: presence goes to its room only"
    if element.name == "message":
        if in_room and target.resourcepart is None and kind == "groupchat":
            return None
        return "a guest may only post in its room: no one-to-one or private messages"
    if element.name == "iq":
        if in_room and target.resourcepart is None:
            return None
        if target is None or target.bare() == own.bare() or target == parse_jid(own.domainpart):
            return None
        if target == parse_jid(room.domainpart):
            child = element.firstChildElement()
            if child is not None and child.uri == DISCO_INFO_NS:
                return None  # what the rooms service is; its list of rooms stays hidden
            return "a guest does not see the list of rooms"
        return "a guest reaches only its room"
    return None


def may_receive(stanza: domish.Element, own: JID, room: JID) -> bool:
    """Whether ``stanza`` may be written to the guest's stream: from its room (not a private message), the server or itself."""
    try:
        sender = _jid(stanza.getAttribute("from"))
    except InvalidJID:
        return False
    if sender is None or sender.bare() == own.bare() or sender == parse_jid(own.domainpart):
        return True
    if sender.bare() == room:
        return not (stanza.name == "message" and stanza.getAttribute("type") == "chat")
    return sender == parse_jid(room.domainpart) and stanza.name == "iq"


class GuestCredentials:
    """A WebSocket stream's SASL credentials: ``credentials``' users, and guests ``login(username)`` admits.

    One per stream: `admitted` is the guest that logged in (None for a user).
    Blocking, like the store it wraps.
    """

    def __init__(self, credentials, login):
        self.credentials, self.login = credentials, login
        self.admitted = None

    def get_scram_credentials(self, username: str, mechanism: str):
        return self.credentials.get_scram_credentials(username, mechanism)

    def check_password(self, username: str, password: str) -> bool:
        return self.credentials.check_password(username, password)

    def is_active(self, username: str) -> bool:
        if self.credentials.is_active(username):
            return True
        self.admitted = self.login(username)
        return self.admitted is not None


class GuestStream:
    """Keeps one bound guest stream to its room. ``connection`` is the `c2s.ClientConnection`;
    ``guest`` a `guests.Guest`; ``guests`` the `guests.Guests` (blocking, through ``run_blocking``)."""

    log = Logger()

    def __init__(self, connection, guest, guests, run_blocking, clock):
        self.connection, self.guest, self.guests = connection, guest, guests
        self.run_blocking, self.clock = run_blocking, clock
        self.room = parse_jid(guest.room.jid)
        self._check_call = None
        self._stopped = False

    def start(self) -> None:
        self._check_call = self.clock.callLater(CHECK_SECONDS, self._check)

    def refused(self, element: domish.Element) -> list[domish.Element] | None:
        """None: pass ``element`` on to the router. Otherwise it stops here, answered by the stanzas listed
        (the stream writes them as they are: they come from where the guest sent to, not from its room)."""
        own = self.connection.jid
        child = element.firstChildElement() if element.name == "iq" else None
        if child is not None and child.uri == ROSTER_NS and element.getAttribute("to") in (None, own.bare().full()):
            if element.getAttribute("type") == "get":
                return [iq_result(element, domish.Element((ROSTER_NS, "query")))]
            if element.getAttribute("type") == "set":
                return [stanza_error_reply(element, "forbidden", text="a guest has no roster")]
            return []
        reason = refusal(element, own, self.room)
        if reason is None:
            return None
        if element.getAttribute("type") != "error" and (element.name != "presence" or element.getAttribute("to")):
            # (a presence error goes back only for directed presence: a room join the client waits on)
            return [stanza_error_reply(element, "forbidden", text=reason)]
        return []

    def inbound(self, stanza: domish.Element | str) -> bool:
        """True: write ``stanza`` to the guest."""
        if isinstance(stanza, str):
            try:
                stanza = stanza_from_xml(stanza)
            except Exception:
                return False
        return may_receive(stanza, self.connection.jid, self.room)

    def _check(self) -> None:
        self._check_call = None
        d = self.run_blocking(self.guests.still_admitted, self.guest.username)

        def checked(admitted):
            if self._stopped:
                return
            if admitted:
                self._check_call = self.clock.callLater(CHECK_SECONDS, self._check)
            else:
                self.connection.send_stream_error("not-authorized", ENDED_TEXT)

        def failed(failure):
            # MariaDB unreachable for a moment: ask again next time rather than throw the guest out.
            self.log.failure("checking guest {user} failed", failure, user=self.guest.username)
            if not self._stopped:
                self._check_call = self.clock.callLater(CHECK_SECONDS, self._check)

        d.addCallbacks(checked, failed)

    def stop(self) -> None:
        """The stream ended: the guest account ends too."""
        if self._stopped:
            return
        self._stopped = True
        if self._check_call is not None and self._check_call.active():
            self._check_call.cancel()
        self._check_call = None
        d = self.run_blocking(self.guests.leave, self.guest.username)
        d.addErrback(lambda f: self.log.failure("ending guest {user} failed", f, user=self.guest.username))
