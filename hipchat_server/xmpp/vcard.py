"""vcard-temp (XEP-0054): each user's vCard, kept by the server and readable by every local user.

- a get with no ``to``, or to one's own bare JID, returns one's own vCard; a
  get to another local user's bare JID returns theirs (the server answers: the
  iq never reaches the user's clients). A user with no vCard set gets an
  empty ``<vCard/>`` (XEP-0054 section 3.1) holding only FN and NICKNAME from
  the users table, so every client shows the HipChat name; an unknown user
  is ``item-not-found``;
- a get to the server's domain returns the server's own small vCard;
- a set replaces one's own whole vCard (there are no partial updates); to any
  other address it is ``forbidden``. The vCard is stored as we serialise the
  parsed element, never as the bytes received, and at most `MAX_VCARD_BYTES`
  of it (``not-acceptable`` beyond: a photo is what makes a vCard big).
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.logger import Logger
from twisted.words.xish import domish

from hipchat_server.xmpp.errors import stanza_error_reply
from hipchat_server.xmpp.jid import JID
from hipchat_server.xmpp.stanzas import iq_result

VCARD_NS = "vcard-temp"
#: Largest stored vCard, in UTF-8 bytes once serialised. A 96x96 avatar (what
#: XEP-0153 clients publish) is 10-30 KiB in base64; every reader of a vCard
#: downloads all of it, so a roster of a few hundred people must stay cheap.
MAX_VCARD_BYTES = 64 * 1024
SERVER_NAME = "HipChat Server"


class VCardError(Exception):
    """A stored vCard that does not parse back (the row was changed outside the server)."""


def vcard_element() -> domish.Element:
    """An empty ``<vCard xmlns='vcard-temp'/>``."""
    return domish.Element((VCARD_NS, "vCard"))


def default_vcard(name: str | None, nickname: str | None) -> domish.Element:
    """The vCard of a user who set none: FN and NICKNAME only, each when known."""
    vcard = vcard_element()
    if name:
        vcard.addElement("FN", content=name)
    if nickname:
        vcard.addElement("NICKNAME", content=nickname)
    return vcard


def serialise_vcard(vcard: domish.Element) -> str:
    """The XML text stored for a ``<vCard/>`` received in a stanza, namespaces declared where used."""
    return vcard.toXml()


def parse_vcard(xml: str) -> domish.Element:
    """A stored vCard back into an element; VCardError when it is not one."""
    parsed: list[domish.Element] = []
    stream = domish.elementStream()
    stream.DocumentStartEvent = lambda root: None
    stream.ElementEvent = parsed.append
    stream.DocumentEndEvent = lambda: None
    try:
        stream.parse(b"<vcards>" + xml.encode("utf-8") + b"</vcards>")
    except Exception as e:  # expat's errors, and domish's own on unbalanced input
        raise VCardError(f"a stored vCard does not parse: {e}") from None
    if len(parsed) != 1 or (parsed[0].uri, parsed[0].name) != (VCARD_NS, "vCard"):
        raise VCardError("a stored vCard is not one <vCard xmlns='vcard-temp'/>")
    return parsed[0]


class VCardService:
    """Answers vcard-temp iqs for the router, over a `storage.vcards.VCardStore`.

    ``run_blocking(f, *args)`` runs a blocking store call and returns a
    Deferred (the router's ``run_blocking``).
    """

    log = Logger()

    def __init__(self, store, run_blocking, max_vcard_bytes: int = MAX_VCARD_BYTES):
        self.store = store
        self.run_blocking = run_blocking
        self.max_vcard_bytes = max_vcard_bytes

    def register(self, router) -> None:
        """Have ``router`` hand this service every iq get/set carrying a ``<vCard xmlns='vcard-temp'/>``."""
        router.register_iq_handler(VCARD_NS, "vCard", self.iq)

    def iq(self, connection, iq: domish.Element, target: JID | None) -> defer.Deferred:
        """Answer one vcard-temp get or set with exactly one result or error; never fails."""
        d = defer.maybeDeferred(self._answer, connection, iq, target)
        d.addErrback(self._failed, connection, iq)
        return d

    def _answer(self, connection, iq: domish.Element, target: JID | None):
        own = connection.jid.bare()
        subject = own if target is None else target
        if iq.getAttribute("type") == "set":
            if subject != own:
                connection.deliver(stanza_error_reply(iq, "forbidden", text="you may only set your own vCard"))
                return None
            return self._set(connection, iq, own)
        if subject.localpart is None:
            connection.deliver(iq_result(iq, default_vcard(SERVER_NAME, None)))
            return None
        return self._get(connection, iq, subject)

    @defer.inlineCallbacks
    def _get(self, connection, iq: domish.Element, subject: JID):
        record = yield self.run_blocking(self.store.get_by_username, subject.localpart)
        if record is None:
            connection.deliver(stanza_error_reply(iq, "item-not-found"))
            return
        if record.vcard is None:
            vcard = default_vcard(record.name, record.mention_name)
        else:
            vcard = parse_vcard(record.vcard)
        connection.deliver(iq_result(iq, vcard))

    @defer.inlineCallbacks
    def _set(self, connection, iq: domish.Element, own: JID):
        xml = serialise_vcard(iq.firstChildElement())
        size = len(xml.encode("utf-8"))
        if size > self.max_vcard_bytes:
            text = f"a vCard may be at most {self.max_vcard_bytes} bytes; this one is {size} (a smaller photo?)"
            connection.deliver(stanza_error_reply(iq, "not-acceptable", text=text))
            return
        stored = yield self.run_blocking(self.store.set_by_username, own.localpart, xml)
        if not stored:  # the account was deleted while its session lasted
            connection.deliver(stanza_error_reply(iq, "item-not-found"))
            return
        connection.deliver(iq_result(iq))

    def _failed(self, failure, connection, iq: domish.Element) -> None:
        self.log.failure(
            "answering a vCard {kind} from {jid} failed", failure, kind=iq.getAttribute("type"), jid=connection.jid
        )
        connection.deliver(stanza_error_reply(iq, "internal-server-error"))
