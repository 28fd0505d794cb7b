"""The durable message path: every archived message is on disk before anyone sees it.

A message a person sends (to a room or to another person) becomes a record
(see `new_record`): a time-ordered id (a ULID: the OpenSearch document id,
the XEP-0359 stanza-id and the MAM result id), the server's timestamp, who,
where, the text, and the stanza as recipients get it. `MessageArchive.store`
appends the record to this process's spool and waits for the group-committed
fsync, then pushes it onto the Redis lists of recent messages (history on
join, the newest page of history, and the messages the indexer has not made
searchable yet). Only then is the message delivered, reflected to its room
and acknowledged to its sender. The indexer process (indexing.py) moves the
spool into the monthly OpenSearch indices later; until it has, the recent
lists answer for it.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import OrderedDict
from datetime import datetime, timezone

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.words.xish import domish
from ulid import ULID

from hipchat_server.storage.spool import SpoolError
from hipchat_server.xmpp.xml_parser import CLIENT_NS

SID_NS = "urn:xmpp:sid:0"
# Free space is checked at most this often (seconds): statvfs on every message would cost more than the fsync.
DISK_CHECK_INTERVAL = 1.0
# Origin-ids of the newest messages stored by this process, kept in memory as well as in Redis.
LOCAL_ORIGINS = 20_000
ARCHIVED_TYPES = frozenset({"groupchat", "chat", "normal"})


def index_name(prefix: str, record: dict) -> str:
    """The monthly index a record belongs in: ``<prefix>-YYYY.MM`` of its server timestamp."""
    timestamp = record["timestamp"]
    return f"{prefix}-{timestamp[:4]}.{timestamp[5:7]}"


def timestamp_of(milliseconds: int) -> str:
    """ISO 8601 UTC with milliseconds, the record's ``timestamp`` format."""
    moment = datetime.fromtimestamp(milliseconds / 1000, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{milliseconds % 1000:03d}Z"


def conversation_of(a: str, b: str) -> tuple[str, list[str]]:
    """The conversation key and sorted participants of a one-to-one conversation between bare JIDs.

    Notes to oneself are a conversation too, with one participant.
    """
    return "|".join(sorted((a, b))), sorted({a, b})


def is_archived(message: domish.Element) -> bool:
    """Messages people write are archived: a body, a normal/chat/groupchat type (not errors or headlines)."""
    if message.getAttribute("type", "normal") not in ARCHIVED_TYPES:
        return False
    return any(child.name == "body" for child in message.elements())


def body_of(message: domish.Element) -> str:
    for child in message.elements():
        if child.name == "body" and child.uri in (CLIENT_NS, None, ""):
            return str(child)
    return ""


class MessageIds:
    """Time-ordered ids: ULIDs that also increase within one millisecond of one process.

    A room's messages are ordered by id, so two messages of the same
    millisecond must not come out in random order.
    """

    def __init__(self, now_ms=None):
        self._now_ms = now_ms or (lambda: time.time_ns() // 1_000_000)
        self._last_ms = -1
        self._last_random = 0

    def next(self) -> tuple[str, int]:
        """A new id and its millisecond timestamp."""
        ms = self._now_ms()
        if ms <= self._last_ms:
            ms = self._last_ms  # the clock went back or stood still: keep counting up in the same millisecond
            randomness = self._last_random + 1
        else:
            # Not a secret (reading a message needs permission, not its id); getrandbits is far cheaper.
            randomness = random.getrandbits(79)  # 80 bits less one: headroom to count up
        self._last_ms, self._last_random = ms, randomness
        return str(ULID.from_bytes(ms.to_bytes(6, "big") + randomness.to_bytes(10, "big"))), ms


class MessageArchive:
    """Makes records of messages and stores them durably (spool), then in the recent lists (Redis).

    ``spool`` is this process's `storage.spool.Spool` (open); ``recent`` a
    `storage.recent.RecentMessages`; ``redis_writer`` the process's
    `storage.publisher.OrderedPublisher`, so the pushes happen in the order
    the messages were stored; ``min_free_bytes`` the disk guard.
    """

    log = Logger()

    def __init__(self, spool, recent, redis_writer, *, min_free_bytes: int = 0, clock=None, ids: MessageIds | None = None):
        self.spool = spool
        self.recent = recent
        self.redis_writer = redis_writer
        self.min_free_bytes = min_free_bytes
        self.ids = ids or MessageIds()
        self._monotonic = clock.seconds if clock is not None else time.monotonic
        self._disk_checked_at = float("-inf")
        self._disk_full = False
        self.stored = 0  # records made durable since start (for the activity report)
        self.duplicates = 0  # resends recognised by their origin-id and not stored again
        self._origins: OrderedDict[tuple[str, str], str] = OrderedDict()  # newest origin-ids stored here

    def new_record(
        self,
        element: domish.Element,
        *,
        type: str,
        sender: str,
        body: str,
        room: str | None = None,
        recipient: str | None = None,
        sender_name: str | None = None,
    ) -> dict:
        """A record of ``element`` (addressed as its recipients get it), which gains a stanza-id.

        Stanza-ids a client put in (claiming to be from this archive) are removed
        first, as XEP-0359 requires.
        """
        message_id, ms = self.ids.next()
        by = room or recipient
        origin_id = None
        for child in list(element.elements()):
            if child.uri == SID_NS and child.name == "stanza-id":
                element.children.remove(child)
            elif child.uri == SID_NS and child.name == "origin-id":
                origin_id = child.getAttribute("id")
        stanza_id = element.addElement((SID_NS, "stanza-id"))
        stanza_id["id"], stanza_id["by"] = message_id, by
        conversation, participants = (None, [])
        if room is None and recipient is not None:
            conversation, participants = conversation_of(sender, recipient)
        return {
            "id": message_id,
            "timestamp": timestamp_of(ms),
            "type": type,
            "room": room,
            "conversation": conversation,
            "participants": participants,
            "sender": sender,
            "sender_name": sender_name or sender.split("@", 1)[0],
            "recipient": recipient if room is None else None,
            "body": body,
            # Only a real origin-id: clients such as Pidgin reuse their id attributes across sessions.
            "origin_id": origin_id,
            "xml": element.toXml(defaultUri=CLIENT_NS),
        }

    def store(self, record: dict) -> defer.Deferred:
        """Fires with ``record`` once it is fsynced and in the recent lists; fails with SpoolError if not durable.

        A resend (same sender and origin-id as a message archived in the last
        hour) is not stored again: the Deferred fires with a copy of the record
        marked ``duplicate`` and carrying the first copy's id, and the caller
        must not deliver it again. A Redis failure after the fsync is logged,
        not raised: the message is durable, and the indexer makes it
        searchable all the same.
        """
        if self._below_disk_guard():
            return defer.fail(
                SpoolError(f"less than {self.min_free_bytes // (1024 * 1024)} MiB free for the spool; refusing messages")
            )
        if not record.get("origin_id"):
            return self._append(record)
        first_id = self._origins.get((record["sender"], record["origin_id"]))
        if first_id is not None:  # resent to this front end: known here even if Redis lost it
            return defer.succeed(self._duplicate(record, first_id))
        d = self.redis_writer.submit(lambda pipe: self.recent.first_copy_commands(pipe, record))
        d.addCallbacks(self._append_unless_resent, self._first_copy_unknown, callbackArgs=(record,), errbackArgs=(record,))
        return d

    def _append_unless_resent(self, results: list, record: dict) -> defer.Deferred:
        first_copy = results[0] if results else None
        if first_copy is not None:
            # A client resending what it sent before a lost connection (XEP-0198 without resumption):
            # the first copy is durable already; this one must not appear twice in history.
            first_id = first_copy.decode() if isinstance(first_copy, bytes) else first_copy
            return defer.succeed(self._duplicate(record, first_id))
        return self._append(record)

    def _duplicate(self, record: dict, first_id: str) -> dict:
        self.duplicates += 1
        return dict(record, id=first_id, duplicate=True)

    def _first_copy_unknown(self, failure: Failure, record: dict) -> defer.Deferred:
        self.log.warn("could not check {id} for a resend ({error}); storing it", id=record["id"], error=failure.getErrorMessage())
        return self._append(record)

    def _append(self, record: dict) -> defer.Deferred:
        try:
            data = record_json(record)  # made once: the spool frame and the recent lists hold the same JSON
        except (TypeError, ValueError) as e:
            return defer.fail(SpoolError(f"the message cannot be archived: {e}"))
        d = self.spool.append(record, data)
        d.addCallback(self._spooled, record, data)
        return d

    def _spooled(self, _, record: dict, data: str) -> defer.Deferred:
        self.stored += 1
        if record.get("origin_id"):
            # Also remembered here: should Redis fail to take the origin key (failing over), a resend
            # to this front end is still recognised.
            self._origins[(record["sender"], record["origin_id"])] = record["id"]
            if len(self._origins) > LOCAL_ORIGINS:
                self._origins.popitem(last=False)
        pushed = self.redis_writer.submit(lambda pipe: self.recent.push_commands(pipe, record, data))
        pushed.addErrback(self._recent_push_failed, record)
        return pushed.addCallback(lambda _: record)

    def _recent_push_failed(self, failure: Failure, record: dict) -> None:
        self.log.warn(
            "message {id} is durable but not in Redis's recent lists ({error}); history shows it once indexed",
            id=record["id"],
            error=failure.getErrorMessage(),
        )

    def _below_disk_guard(self) -> bool:
        if not self.min_free_bytes:
            return False
        now = self._monotonic()
        if now - self._disk_checked_at >= DISK_CHECK_INTERVAL:
            self._disk_checked_at = now
            try:
                stat = os.statvfs(self.spool.directory)
                self._disk_full = stat.f_bavail * stat.f_frsize < self.min_free_bytes
            except OSError:
                self._disk_full = False  # the append will tell what is wrong with the directory
            if self._disk_full:
                self.log.error("the spool's disk is nearly full: messages are refused until space is freed")
        return self._disk_full


def record_json(record: dict) -> str:
    """The record as the compact JSON the recent lists hold."""
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False)
