"""The Redis part of a backup: the background job streams, the only Redis data that cannot be rebuilt.

Presence, sessions, room occupants and the recent-message lists are rebuilt or expire on their
own; a job (a webhook to send, a mention mail) exists only in its stream ``jobs:<kind>``, the
retry set ``jobs:delayed`` and the dead letters ``jobs:dead``. The dump keeps every entry, each
consumer group's last delivered id and its pending entries (claimed but not done), so a job a
worker held at the cut-off is retried after a restore rather than lost.
"""

from __future__ import annotations

import json

from hipchat_server.jobs import DELAYED_KEY, STREAM_PREFIX

FORMAT = 1


def _text(value) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


def dump_jobs(redis) -> dict:
    """Every job stream with its entries and consumer groups, and the delayed (retry) set, as JSON-ready data.

    Everything is read in one MULTI/EXEC, so a job moved between streams meanwhile (a retry
    coming due, a job going to the dead letters) is seen exactly once.
    """
    keys = sorted(_text(k) for k in redis.scan_iter(match=f"{STREAM_PREFIX}*", count=1000, _type="stream"))
    pipe = redis.pipeline(transaction=True)
    for key in keys:
        pipe.xinfo_stream(key)
        pipe.xrange(key)
        pipe.xinfo_groups(key)
    pipe.zrange(DELAYED_KEY, 0, -1, withscores=True)
    results = pipe.execute()
    streams: dict[str, dict] = {}
    for n, key in enumerate(keys):
        info, entries, groups = results[3 * n : 3 * n + 3]
        streams[key] = {
            "last_generated_id": _text(info.get("last-generated-id", "0-0")),
            "entries": [[_text(i), {_text(f): _text(v) for f, v in fields.items()}] for i, fields in entries],
            "groups": [{"name": _text(g["name"]), "last_delivered_id": _text(g["last-delivered-id"])} for g in groups],
        }
    # Pending entries (claimed, not done) afterwards: a worker that finished one meanwhile simply did it.
    for key, stream in streams.items():
        for group in stream["groups"]:
            pending = redis.xpending_range(key, group["name"], min="-", max="+", count=1_000_000)
            group["pending"] = [
                {"id": _text(p["message_id"]), "consumer": _text(p["consumer"]), "deliveries": int(p["times_delivered"])} for p in pending
            ]
    delayed = [[_text(member), score] for member, score in results[-1]]
    return {"format": FORMAT, "streams": streams, "delayed": delayed}


def entry_count(dump: dict) -> int:
    """Jobs in a dump: stream entries plus delayed retries."""
    return sum(len(s["entries"]) for s in dump["streams"].values()) + len(dump["delayed"])


def encode(dump: dict) -> bytes:
    return json.dumps(dump, indent=1, sort_keys=True).encode()
