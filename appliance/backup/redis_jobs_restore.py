"""Loading a backup's job streams back into Redis (the dump `appliance.backup.redis_jobs` writes).

The streams ``jobs:<kind>``, the dead letters and the retry set ``jobs:delayed``
replace whatever Redis holds under those keys. An entry keeps its id. A
stream holds only jobs still to do (a worker acknowledges, then deletes), so
a consumer group that had jobs pending (claimed by a worker, not finished) at
the backup gets its last-delivered id reset to the start: the workers are
handed every remaining entry again, and a job a worker held is retried, not
lost. Jobs run at least once; their handlers are written for that.
"""

from __future__ import annotations

from hipchat_server.jobs import DELAYED_KEY, STREAM_PREFIX

FORMAT = 1


class JobsDumpRefused(Exception):
    """The dump is not one this version can load."""


def load_jobs(redis, dump: dict) -> int:
    """Replace the job streams and the retry set by ``dump``'s; returns the jobs loaded (entries plus delayed retries)."""
    if dump.get("format") != FORMAT:
        raise JobsDumpRefused(f"the job streams' dump has format {dump.get('format')!r}, not {FORMAT}")
    existing = [key for key in redis.scan_iter(match=f"{STREAM_PREFIX}*", count=1000)]
    if existing:
        redis.delete(*existing)  # jobs:delayed matches the prefix too
    loaded = 0
    for key, stream in sorted((dump.get("streams") or {}).items()):
        if not key.startswith(STREAM_PREFIX):
            continue  # not a job stream: never write outside the jobs: keys
        pipe = redis.pipeline(transaction=True)
        for entry_id, fields in stream.get("entries") or []:
            pipe.xadd(key, fields, id=entry_id)
        for group in stream.get("groups") or []:
            start = "0-0" if group.get("pending") else group.get("last_delivered_id", "0-0")
            pipe.xgroup_create(key, group["name"], id=start, mkstream=True)
        if not stream.get("entries") and not stream.get("groups"):
            # An empty stream still existed (its groups gone): keep it, so ids keep growing.
            pipe.xgroup_create(key, "restore", id="0-0", mkstream=True)
            pipe.xgroup_destroy(key, "restore")
        last = stream.get("last_generated_id")
        if last and last != "0-0":
            pipe.execute_command("XSETID", key, last)
        pipe.execute()
        loaded += len(stream.get("entries") or [])
    delayed = dump.get("delayed") or []
    if delayed:
        redis.zadd(DELAYED_KEY, {member: float(score) for member, score in delayed})
    return loaded + len(delayed)
