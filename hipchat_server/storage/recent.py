"""The newest messages of each room and conversation, in Redis: opening a room never touches OpenSearch.

``archive:recent:room:<room jid>``, ``archive:recent:conversation:<a>|<b>``
and ``archive:recent:user:<bare jid>`` are lists of record JSON, newest
first, trimmed to ``size`` (75 by default, HipChat's figure). A record is
pushed right after its spool fsync and before anyone sees the message, so
these lists also hold every message the indexer has not made searchable
yet: history merges them with OpenSearch (read-your-writes).

If Redis loses a list (a failover to a replica that was behind, a restart
without persistence), `restore_room` refills it from OpenSearch.
"""

from __future__ import annotations

import functools
import json

from hipchat_server.archive import record_json

ROOM_KEY = "archive:recent:room:{room}"
CONVERSATION_KEY = "archive:recent:conversation:{conversation}"
USER_KEY = "archive:recent:user:{bare}"
# The id a sender's message with this origin-id got, so a resend is recognised (XEP-0359 origin-id).
ORIGIN_KEY = "archive:origin:{sender}:{origin_id}"
# Clients resend right after they reconnect (within XEP-0198's resumption window of 5 minutes, or
# at their next login); an hour covers that and costs ~100 bytes per message for an hour, not a day.
ORIGIN_SECONDS = 3600

# Fills a list only while it does not exist, so a refill never lands on top of newer pushes.
_RESTORE_IF_EMPTY = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('RPUSH', KEYS[1], unpack(ARGV))
return #ARGV
"""


def keys_of(record: dict) -> list[str]:
    """The recent lists a record belongs on: its room's, or its conversation's and each participant's."""
    if record.get("room"):
        return [ROOM_KEY.format(room=record["room"])]
    keys = []
    if record.get("conversation"):
        keys.append(CONVERSATION_KEY.format(conversation=record["conversation"]))
    keys.extend(USER_KEY.format(bare=bare) for bare in record.get("participants") or [])
    return keys


@functools.lru_cache(maxsize=10_000)
def _parsed_record(item) -> dict:
    # A list entry never changes, and every join of a busy room reads the same 75 again: parsing them
    # was an eighth of a front end's time during a burst of joins.
    return json.loads(item)


class RecentMessages:
    """Blocking reads and writes of the recent lists; run them off the reactor thread."""

    def __init__(self, redis, size: int = 75):
        self.redis = redis
        self.size = size
        self._restore = None

    def push_commands(self, pipe, record: dict, data: str | None = None) -> None:
        """Queue the pushes of ``record`` (``data``: its JSON, if made already) on a pipeline (the archive's ordered writer runs it)."""
        data = data if data is not None else record_json(record)
        for key in keys_of(record):
            pipe.lpush(key, data)
            pipe.ltrim(key, 0, self.size - 1)
        if record.get("origin_id"):
            pipe.set(ORIGIN_KEY.format(sender=record["sender"], origin_id=record["origin_id"]), record["id"], ex=ORIGIN_SECONDS)

    @staticmethod
    def first_copy_commands(pipe, record: dict) -> None:
        """Queue the lookup of the id an earlier copy of ``record`` (same sender and origin-id) was archived under."""
        pipe.get(ORIGIN_KEY.format(sender=record["sender"], origin_id=record["origin_id"]))

    def push(self, record: dict) -> None:
        pipe = self.redis.pipeline(transaction=False)
        self.push_commands(pipe, record)
        pipe.execute()

    def room(self, room: str, limit: int) -> list[dict]:
        """Up to ``limit`` newest records of a room, newest first."""
        return self._read(ROOM_KEY.format(room=room), limit)

    def room_command(self, pipe, room: str, limit: int) -> None:
        """Queue the read of `room` on a pipeline; `records_from` parses its reply."""
        pipe.lrange(ROOM_KEY.format(room=room), 0, max(0, min(limit, self.size)) - 1)

    @staticmethod
    def records_from(raw: list) -> list[dict]:
        """The records of an LRANGE reply (each a copy: callers may change them)."""
        return [dict(_parsed_record(item)) for item in raw]

    def conversation(self, a: str, b: str, limit: int) -> list[dict]:
        """Up to ``limit`` newest records between two bare JIDs, newest first."""
        return self._read(CONVERSATION_KEY.format(conversation="|".join(sorted((a, b)))), limit)

    def user(self, bare: str, limit: int) -> list[dict]:
        """Up to ``limit`` newest one-to-one records a user sent or received, newest first."""
        return self._read(USER_KEY.format(bare=bare), limit)

    def exists_room(self, room: str) -> bool:
        return bool(self.redis.exists(ROOM_KEY.format(room=room)))

    def restore_room(self, room: str, records_newest_first: list[dict]) -> int:
        """Refill a room's lost list (only while it does not exist); returns how many records went in."""
        if not records_newest_first:
            return 0
        if self._restore is None:
            self._restore = self.redis.register_script(_RESTORE_IF_EMPTY)
        values = [record_json(r) for r in records_newest_first[: self.size]]
        return int(self._restore(keys=[ROOM_KEY.format(room=room)], args=values))

    def _read(self, key: str, limit: int) -> list[dict]:
        if limit <= 0:
            return []
        return self.records_from(self.redis.lrange(key, 0, min(limit, self.size) - 1))
