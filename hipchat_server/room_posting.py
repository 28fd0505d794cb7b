"""Posting into a room from any process (the HTTPS process, the workers): API messages and notifications.

`RoomPoster` does what a room does with an occupant's message, without an
occupant: it builds the groupchat stanza (from ``room@service/<name>``),
makes an archive record of it and stores it (`archive.MessageArchive.store`:
spool fsync, then the room's recent list in Redis), and only then reads the
room's occupants and publishes one ``muc_deliver`` item per front end that
holds some of them (the `rooms_fanout` wire format), so the message reaches
every occupant on every front end. The occupants are read through the same
ordered Redis writer after the push onto the recent list, so someone joining
meanwhile gets the message either as history or live, never neither.

A notification (HipChat's ``room/<id>/notification``) is a groupchat message
whose ``<body>`` is plain text (HTML tags dropped) so every XMPP client shows
it, plus HipChat's ``<x xmlns='http://hipchat.com/protocol/muc#room'>``
with its type, color, format and notify flag; HTML is sanitised first
(`html_sanitizing`). Its record carries ``notification`` (color,
message_format, notify, from) and, for HTML, ``html``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

from twisted.internet import defer
from twisted.logger import Logger
from twisted.words.xish import domish

from hipchat_server.html_sanitizing import plain_text, sanitize
from hipchat_server.rooms_fanout import MUC_DELIVER, by_frontend, muc_deliver_item
from hipchat_server.storage.sessions import SessionDirectory
from hipchat_server.xmpp.xml_parser import CLIENT_NS

HIPCHAT_ROOM_NS = "http://hipchat.com/protocol/muc#room"
COLORS = ("yellow", "green", "red", "purple", "gray", "random")
FORMATS = ("html", "text")
MAX_MESSAGE_LENGTH = 10_000  # HipChat's limit for messages and notifications
MAX_LABEL_LENGTH = 64  # HipChat's limit for a notification's "from"
DEFAULT_LABEL = "API"


class PostingError(ValueError):
    """A message or notification that cannot be posted as asked; the text says which value is wrong."""


@dataclass(frozen=True)
class Notification:
    """A HipChat room notification: ``message`` (HTML or text per ``message_format``), shown with ``label`` as its sender."""

    message: str
    message_format: str = "html"
    color: str = "yellow"
    notify: bool = False
    label: str = DEFAULT_LABEL

    def checked(self) -> "Notification":
        """This notification, or PostingError naming the value that HipChat would refuse."""
        check_message(self.message)
        if self.message_format not in FORMATS:
            raise PostingError(f"message_format: expected one of {', '.join(FORMATS)}, found {self.message_format!r}")
        if self.color not in COLORS:
            raise PostingError(f"color: expected one of {', '.join(COLORS)}, found {self.color!r}")
        if not self.label.strip() or len(self.label) > MAX_LABEL_LENGTH:
            raise PostingError(f"from: expected 1 to {MAX_LABEL_LENGTH} characters")
        return self


def check_message(message: str) -> str:
    if not isinstance(message, str) or not message.strip():
        raise PostingError("message: expected a non-empty string")
    if len(message) > MAX_MESSAGE_LENGTH:
        raise PostingError(f"message: at most {MAX_MESSAGE_LENGTH} characters")
    return message


def _groupchat(frm: str) -> domish.Element:
    message = domish.Element((CLIENT_NS, "message"))
    message["from"], message["type"] = frm, "groupchat"
    return message


def notification_stanza(frm: str, notification: Notification) -> tuple[domish.Element, str, str | None]:
    """The groupchat stanza of ``notification`` from ``frm`` (no ``to``), its plain-text body, and its sanitised HTML (None for text)."""
    html = sanitize(notification.message) if notification.message_format == "html" else None
    body = plain_text(html) if html is not None else notification.message
    stanza = _groupchat(frm)
    stanza.addElement("body", content=body or " ")
    x = stanza.addElement((HIPCHAT_ROOM_NS, "x"))
    x.addElement("type", content="system")
    x.addElement("color", content=notification.color)
    x.addElement("message_format", content=notification.message_format)
    x.addElement("notify", content="1" if notification.notify else "0")
    return stanza, body, html


class RoomPoster:
    """Posts into rooms; see the module docstring.

    ``archive`` is a `archive.MessageArchive`, ``occupants`` a
    `storage.rooms.OccupantStore`, ``writer`` the process's started
    `storage.publisher.OrderedPublisher`; ``emit(kind, room, payload)``
    (optional, must not block) announces ``room_message`` /
    ``room_notification`` events once the message is durable.
    """

    log = Logger()

    def __init__(self, archive, occupants, writer, *, emit: Callable[[str, str, dict], None] | None = None):
        self.archive = archive
        self.occupants = occupants
        self.writer = writer
        self.emit = emit
        self.posted = 0

    def post_message(self, room: str, sender: str, name: str, message: str, extra: dict | None = None) -> defer.Deferred:
        """Post ``message`` (text) into ``room`` (its JID) as ``sender`` (bare JID) named ``name``; fires with the record once durable.

        ``extra`` fields go into the record (a reply's ``parent_message_id``).
        """
        check_message(message)
        stanza = _groupchat(f"{room}/{name}")
        stanza.addElement("body", content=message)
        record = self.archive.new_record(stanza, type="groupchat", sender=sender, body=message, room=room, sender_name=name)
        record.update(extra or {})
        return self._post(room, record, "room_message")

    def post_notification(self, room: str, notification: Notification, sender: str | None = None) -> defer.Deferred:
        """Post ``notification`` into ``room``; ``sender`` is the calling user's bare JID (None for a room token: the room)."""
        notification = notification.checked()
        stanza, body, html = notification_stanza(f"{room}/{notification.label}", notification)
        record = self.archive.new_record(
            stanza, type="groupchat", sender=sender or room, body=body, room=room, sender_name=notification.label
        )
        record["notification"] = {
            "color": notification.color,
            "message_format": notification.message_format,
            "notify": notification.notify,
            "from": notification.label,
        }
        if html is not None:
            record["html"] = html
        return self._post(room, record, "room_notification")

    @defer.inlineCallbacks
    def _post(self, room: str, record: dict, event: str):
        stored = yield self.archive.store(record)  # durable (spool) and in the recent list before anyone sees it
        self.posted += 1
        try:
            yield self._fan_out(room, stored)
        except Exception as e:
            # Durable already: history and joiners have it. Only the live copies are lost (Redis failing over).
            self.log.warn("message {id} in {room} is archived but was not delivered live: {error}", id=stored["id"], room=room, error=e)
        self._emit(event, room, stored)
        return stored

    @defer.inlineCallbacks
    def _fan_out(self, room: str, record: dict):
        # Read after the push (same ordered writer): whoever joins from now on finds it in the recent list.
        occupants = yield self.read_occupants(room)
        yield self.deliver(room, occupants.values(), record["xml"], record["id"])

    def read_occupants(self, room: str) -> defer.Deferred:
        """The room's occupants by full JID (`OccupantStore.occupants`), read through the ordered writer."""
        d = self.writer.submit(lambda pipe: self.occupants.occupants_command(pipe, room))
        return d.addCallback(lambda replies: self.occupants.occupants_from(replies[0] or {}))

    def deliver(self, room: str, recipients, xml: str, message_id: str | None = None) -> defer.Deferred:
        """Send ``xml`` (a room stanza without ``to``) to ``recipients`` (occupants): one muc_deliver item per front end."""
        published = []
        for frontend, fulls in sorted(by_frontend(recipients).items()):
            item = dict(muc_deliver_item(room, xml, sorted(fulls), message_id), kind=MUC_DELIVER)
            d = self.writer.publish(SessionDirectory.channel_of(frontend), json.dumps(item))
            d.addCallback(self._published, room, frontend)
            published.append(d)
        return defer.gatherResults(published, consumeErrors=True)

    def _published(self, receivers: int, room: str, frontend: str) -> None:
        if not receivers:
            # That front end is gone; it takes its sessions out of their rooms when it starts again.
            self.log.info("front end {frontend} did not listen for {room}'s message", frontend=frontend, room=room)

    def _emit(self, kind: str, room: str, record: dict) -> None:
        if self.emit is None:
            return
        try:
            self.emit(kind, room, record)
        except Exception:
            self.log.failure("announcing {kind} in {room} failed", kind=kind, room=room)


def room_poster(chat_server) -> RoomPoster:
    """A RoomPoster over ``chat_server``'s archive (this process's spool), occupants and ordered Redis writer (started here if not yet)."""
    from hipchat_server.storage.rooms import OccupantStore

    writer = chat_server.get_redis_writer()
    writer.start()  # idempotent: a front end in the same process starts it too
    return RoomPoster(
        chat_server.get_message_archive(),
        OccupantStore(chat_server.get_redis_primary()),
        writer,
        emit=_event_emitter(chat_server),
    )


def _event_emitter(chat_server):
    """``events.emit`` bound to ``chat_server`` (webhooks and jobs); None while that module is not installed."""
    try:
        from hipchat_server import events
    except ImportError:
        return None
    return lambda kind, room, payload: events.emit(chat_server, kind, room, payload)
