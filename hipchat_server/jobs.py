"""The background job queue: Redis streams read by the worker processes through a consumer group.

A job is one entry of the stream ``jobs:<kind>`` (fields ``payload`` as JSON,
``attempt``, ``first_at``). Workers read with XREADGROUP in the group
``workers``; an entry stays in the group's pending list until the worker that
read it acknowledges it (XACK, then XDEL: the stream holds only what is still
to do), so a job is never lost when a worker dies mid-job: once it has been
idle longer than ``claim_idle_seconds`` another worker claims it (XAUTOCLAIM)
and runs it again. Jobs may therefore run twice (at least once, never zero
times); handlers are written for that.

A job that fails is scheduled again after 1 s, 2 s, 4 s, ... (the sorted set
``jobs:delayed``, moved back into its stream when due) until it has been tried
``max_attempts`` times or is older than ``max_age_seconds``; then, or at once
for a `PermanentJobError`, it goes to the dead-letter stream ``jobs:dead``
with its last error, where `hipchat-appliance status` shows it and an
operator can retry or drop it (`hipchat-appliance jobs`).

Every call blocks (redis-py): workers call it from their threads; the chat
processes enqueue through their ordered Redis writer (`enqueue_command`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

STREAM_PREFIX = "jobs:"
DEAD_STREAM = "jobs:dead"
DELAYED_KEY = "jobs:delayed"
GROUP = "workers"
KINDS = ("webhook", "mention_mail", "push")
STREAM_MAXLEN = 100_000  # approximate (MAXLEN ~): a runaway producer cannot fill Redis's memory
DEAD_MAXLEN = 10_000
MAX_ATTEMPTS = 10
MAX_AGE_SECONDS = 24 * 3600
RETRY_BASE_SECONDS = 1.0
CLAIM_IDLE_SECONDS = 60.0
# Due retries are moved back into their streams in batches of at most this many.
PROMOTE_BATCH = 100

# Moves due retries (score <= now) from the delayed set into their streams, atomically:
# a member is "<kind>\n<failed entry id>\n<fields as JSON>"; the entry is added before the member is removed.
PROMOTE_SCRIPT = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  local first = string.find(member, '\\n', 1, true)
  local second = string.find(member, '\\n', first + 1, true)
  local kind = string.sub(member, 1, first - 1)
  local fields = cjson.decode(string.sub(member, second + 1))
  redis.call('XADD', ARGV[3] .. kind, 'MAXLEN', '~', ARGV[4], '*',
    'payload', fields['payload'], 'attempt', fields['attempt'], 'first_at', fields['first_at'],
    'last_error', fields['last_error'])
  redis.call('ZREM', KEYS[1], member)
end
return #due
"""


class PermanentJobError(Exception):
    """A failure that trying again cannot mend (a receiver refusing the request): the job goes to the dead letters now."""


@dataclass
class Job:
    """One job as a worker holds it; ``attempt`` counts earlier tries (0 the first time)."""

    kind: str
    entry_id: str
    payload: dict
    attempt: int = 0
    first_at: float = 0.0
    last_error: str = ""
    deliveries: int = 1  # how often the group handed this entry out (more than once: a worker died holding it)

    @property
    def stream(self) -> str:
        return stream_of(self.kind)


@dataclass
class QueueCounts:
    """What `status` shows: entries waiting (or in progress) per kind, retries scheduled, dead letters."""

    waiting: dict[str, int] = field(default_factory=dict)
    retrying: int = 0
    dead: int = 0
    newest_dead: dict | None = None


def stream_of(kind: str) -> str:
    return f"{STREAM_PREFIX}{kind}"


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def retry_delay(attempt: int, base: float = RETRY_BASE_SECONDS) -> float:
    """Seconds to wait after the ``attempt``-th try failed (1-based): 1 s, 2 s, 4 s, ... doubling."""
    return base * 2 ** (attempt - 1)


def job_fields(payload: dict, *, attempt: int = 0, first_at: float, last_error: str = "") -> dict:
    return {
        "payload": json.dumps(payload, separators=(",", ":"), ensure_ascii=False),
        "attempt": str(attempt),
        "first_at": repr(first_at),
        "last_error": last_error,
    }


def enqueue_command(pipe, kind: str, payload: dict, now: float | None = None) -> None:
    """Queue the XADD of a new ``kind`` job on ``pipe`` (a pipeline of the ordered Redis writer)."""
    fields = job_fields(payload, first_at=time.time() if now is None else now)
    pipe.xadd(stream_of(kind), fields, maxlen=STREAM_MAXLEN, approximate=True)


class JobQueue:
    """The queue over a redis-py client from ``redis_factory()`` (the current primary); see the module docstring."""

    def __init__(
        self,
        redis_factory,
        *,
        kinds=KINDS,
        max_attempts: int = MAX_ATTEMPTS,
        max_age_seconds: float = MAX_AGE_SECONDS,
        retry_base_seconds: float = RETRY_BASE_SECONDS,
        claim_idle_seconds: float = CLAIM_IDLE_SECONDS,
        clock=time.time,
    ):
        self.redis_factory = redis_factory
        self.kinds = tuple(kinds)
        self.max_attempts = max_attempts
        self.max_age_seconds = max_age_seconds
        self.retry_base_seconds = retry_base_seconds
        self.claim_idle_seconds = claim_idle_seconds
        self.clock = clock
        self._groups_ready = False

    @property
    def redis(self):
        return self.redis_factory()

    # Producers.
    def enqueue(self, kind: str, payload: dict) -> str:
        """Add a ``kind`` job; return its entry id."""
        return _text(self.redis.xadd(stream_of(kind), job_fields(payload, first_at=self.clock()), maxlen=STREAM_MAXLEN, approximate=True))

    # Consumers.
    def ensure_groups(self) -> None:
        """Create the consumer group on every stream (and the stream) unless it exists; from the start of the stream."""
        redis = self.redis
        for kind in self.kinds:
            try:
                redis.xgroup_create(stream_of(kind), GROUP, id="0", mkstream=True)
            except Exception as e:  # BUSYGROUP: another worker made it first
                if "BUSYGROUP" not in str(e):
                    raise
        self._groups_ready = True

    def read(self, consumer: str, count: int = 1, block_ms: int = 1000) -> list[Job]:
        """New jobs of any kind for ``consumer``, waiting up to ``block_ms`` for one."""
        if not self._groups_ready:
            self.ensure_groups()
        try:
            replies = self.redis.xreadgroup(GROUP, consumer, {stream_of(k): ">" for k in self.kinds}, count=count, block=block_ms)
        except Exception as e:
            if "NOGROUP" in str(e):  # the stream was deleted (Redis lost its data): make the groups again
                self._groups_ready = False
                return []
            raise
        jobs = []
        for stream, entries in replies or []:
            kind = _text(stream)[len(STREAM_PREFIX) :]
            for entry_id, fields in entries:
                if fields:
                    jobs.append(self._job(kind, entry_id, fields))
        return jobs

    def claim_stale(self, consumer: str, count: int = 10) -> list[Job]:
        """Take over jobs another worker read but has not finished for ``claim_idle_seconds`` (it died, most likely)."""
        if not self._groups_ready:
            self.ensure_groups()
        redis = self.redis
        idle_ms = int(self.claim_idle_seconds * 1000)
        jobs = []
        for kind in self.kinds:
            reply = redis.xautoclaim(stream_of(kind), GROUP, consumer, idle_ms, start_id="0-0", count=count)
            entries, deleted = reply[1], (reply[2] if len(reply) > 2 else [])
            for entry_id, fields in entries:
                if not fields:
                    continue  # deleted meanwhile (XAUTOCLAIM reports those apart in Redis 7)
                job = self._job(kind, entry_id, fields)
                pending = redis.xpending_range(stream_of(kind), GROUP, min=entry_id, max=entry_id, count=1)
                job.deliveries = int(pending[0]["times_delivered"]) if pending else 2
                jobs.append(job)
            if deleted:
                # Entries deleted while pending: nothing left to run; forget them.
                redis.xack(stream_of(kind), GROUP, *deleted)
        return jobs

    def done(self, job: Job) -> None:
        """The job succeeded: acknowledge it and delete its entry."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.xack(job.stream, GROUP, job.entry_id)
        pipe.xdel(job.stream, job.entry_id)
        pipe.execute()

    def failed(self, job: Job, error: str, *, permanent: bool = False) -> str:
        """The job failed: schedule it again with backoff, or move it to the dead letters; return "retry" or "dead"."""
        now = self.clock()
        attempt = job.attempt + 1
        give_up = permanent or attempt >= self.max_attempts or now - (job.first_at or now) >= self.max_age_seconds
        pipe = self.redis.pipeline(transaction=True)  # the new copy and the ack happen together or not at all
        if give_up:
            pipe.xadd(DEAD_STREAM, dead_fields(job, attempt, error, now), maxlen=DEAD_MAXLEN, approximate=True)
        else:
            fields = job_fields(job.payload, attempt=attempt, first_at=job.first_at or now, last_error=error)
            member = f"{job.kind}\n{job.entry_id}\n{json.dumps(fields, sort_keys=True)}"
            pipe.zadd(DELAYED_KEY, {member: now + retry_delay(attempt, self.retry_base_seconds)})
        pipe.xack(job.stream, GROUP, job.entry_id)
        pipe.xdel(job.stream, job.entry_id)
        pipe.execute()
        return "dead" if give_up else "retry"

    def promote_due(self) -> int:
        """Move retries whose time has come back into their streams; return how many."""
        return int(self.redis.eval(PROMOTE_SCRIPT, 1, DELAYED_KEY, repr(self.clock()), PROMOTE_BATCH, STREAM_PREFIX, STREAM_MAXLEN))

    def forget_idle_consumers(self, idle_seconds: float = 3600.0) -> int:
        """Remove consumers (workers that were restarted) holding nothing and idle this long; return how many."""
        redis, removed = self.redis, 0
        for kind in self.kinds:
            try:
                consumers = redis.xinfo_consumers(stream_of(kind), GROUP)
            except Exception:
                continue
            for info in consumers:
                if int(info["pending"]) == 0 and int(info["idle"]) > idle_seconds * 1000:
                    redis.xgroup_delconsumer(stream_of(kind), GROUP, info["name"])
                    removed += 1
        return removed

    # Operators.
    def counts(self) -> QueueCounts:
        redis = self.redis
        pipe = redis.pipeline(transaction=False)
        for kind in self.kinds:
            pipe.xlen(stream_of(kind))
        pipe.zcard(DELAYED_KEY)
        pipe.xlen(DEAD_STREAM)
        pipe.xrevrange(DEAD_STREAM, count=1)
        replies = pipe.execute()
        n = len(self.kinds)
        newest = replies[n + 2]
        return QueueCounts(
            waiting=dict(zip(self.kinds, (int(r) for r in replies[:n]))),
            retrying=int(replies[n]),
            dead=int(replies[n + 1]),
            newest_dead=dead_letter(*newest[0]) if newest else None,
        )

    def dead_letters(self, count: int = 100) -> list[dict]:
        """The newest dead letters first."""
        return [dead_letter(entry_id, fields) for entry_id, fields in self.redis.xrevrange(DEAD_STREAM, count=count)]

    def retry_dead(self, entry_ids: list[str] | None = None) -> int:
        """Put dead letters (all, or those named) back into their streams as new jobs; return how many."""
        letters = self.dead_letters(DEAD_MAXLEN)
        if entry_ids is not None:
            letters = [d for d in letters if d["id"] in set(entry_ids)]
        redis = self.redis
        for letter in reversed(letters):  # oldest first
            pipe = redis.pipeline(transaction=True)
            pipe.xadd(stream_of(letter["kind"]), job_fields(letter["payload"], first_at=self.clock()), maxlen=STREAM_MAXLEN, approximate=True)
            pipe.xdel(DEAD_STREAM, letter["id"])
            pipe.execute()
        return len(letters)

    def drop_dead(self, entry_ids: list[str] | None = None) -> int:
        """Delete dead letters (all, or those named); return how many."""
        if entry_ids is None:
            entry_ids = [d["id"] for d in self.dead_letters(DEAD_MAXLEN)]
        return int(self.redis.xdel(DEAD_STREAM, *entry_ids)) if entry_ids else 0

    @staticmethod
    def _job(kind: str, entry_id, fields: dict) -> Job:
        fields = {_text(k): _text(v) for k, v in fields.items()}
        return Job(
            kind=kind,
            entry_id=_text(entry_id),
            payload=json.loads(fields.get("payload") or "{}"),
            attempt=int(fields.get("attempt") or 0),
            first_at=float(fields.get("first_at") or 0.0),
            last_error=fields.get("last_error", ""),
        )


def dead_fields(job: Job, attempts: int, error: str, now: float) -> dict:
    return {
        "kind": job.kind,
        "payload": json.dumps(job.payload, separators=(",", ":"), ensure_ascii=False),
        "attempts": str(attempts),
        "error": error[:1000],
        "failed_at": repr(now),
        "first_at": repr(job.first_at),
    }


def dead_letter(entry_id, fields: dict) -> dict:
    fields = {_text(k): _text(v) for k, v in fields.items()}
    return {
        "id": _text(entry_id),
        "kind": fields.get("kind", "?"),
        "payload": json.loads(fields.get("payload") or "{}"),
        "attempts": int(fields.get("attempts") or 0),
        "error": fields.get("error", ""),
        "failed_at": float(fields.get("failed_at") or 0.0),
    }
