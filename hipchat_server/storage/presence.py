"""The current presence of every user, in Redis, so any front end can answer probes and broadcast.

``xmpp:presence:<bare jid>`` is a hash of resource -> JSON
``{"priority": int, "xml": "<presence .../>"}`` holding the last available
presence of each *available* resource; a resource that goes unavailable is
removed. ``xmpp:roster-interest:<bare jid>`` is the set of resources that
asked for the roster and so get roster pushes (RFC 6121 2.1.6).
``xmpp:last-active:<bare jid>`` holds the time (epoch ms) of the user's last
presence change or session end, for the REST API's ``last_active``.
The router ends each session through the presence service, which removes the
session's entries (`remove_resource`).
"""

from __future__ import annotations

import json
import time
from typing import Iterable

PRESENCE_KEY = "xmpp:presence:{bare}"
ROSTER_INTEREST_KEY = "xmpp:roster-interest:{bare}"
LAST_ACTIVE_KEY = "xmpp:last-active:{bare}"


def _now_ms() -> int:
    return int(time.time() * 1000)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _entries(raw: dict) -> dict[str, tuple[int, str]]:
    entries = {}
    for resource, value in raw.items():
        item = json.loads(value)
        entries[_text(resource)] = (int(item["priority"]), item["xml"])
    return entries


class PresenceStore:
    """Available resources and roster interest per user. Every method blocks: call it off the reactor thread."""

    def __init__(self, redis_primary):
        self.redis = redis_primary

    def set_available(self, bare: str, resource: str, priority: int, xml: str) -> None:
        """Record ``xml``, the available presence of ``bare/resource`` with ``priority``."""
        value = json.dumps({"priority": priority, "xml": xml})
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(PRESENCE_KEY.format(bare=bare), resource, value)
        pipe.set(LAST_ACTIVE_KEY.format(bare=bare), _now_ms())
        pipe.execute()

    def set_unavailable(self, bare: str, resource: str) -> None:
        """``bare/resource`` is no longer available."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hdel(PRESENCE_KEY.format(bare=bare), resource)
        pipe.set(LAST_ACTIVE_KEY.format(bare=bare), _now_ms())
        pipe.execute()

    def available(self, bare: str) -> dict[str, tuple[int, str]]:
        """Each available resource of ``bare`` with its (priority, presence XML)."""
        return _entries(self.redis.hgetall(PRESENCE_KEY.format(bare=bare)))

    def available_and_last_active(self, bare: str) -> tuple[dict[str, tuple[int, str]], int | None]:
        """`available` of ``bare`` and the time (epoch ms) of its last presence change, None when never seen."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(PRESENCE_KEY.format(bare=bare))
        pipe.get(LAST_ACTIVE_KEY.format(bare=bare))
        raw, last_active = pipe.execute()
        return _entries(raw), int(last_active) if last_active is not None else None

    def available_many(self, bares: Iterable[str]) -> dict[str, dict[str, tuple[int, str]]]:
        """`available` of several users in one round trip; users with no available resource are left out."""
        bares = list(dict.fromkeys(bares))
        if not bares:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for bare in bares:
            pipe.hgetall(PRESENCE_KEY.format(bare=bare))
        found = {}
        for bare, raw in zip(bares, pipe.execute()):
            if raw:
                found[bare] = _entries(raw)
        return found

    def set_roster_interest(self, bare: str, resource: str) -> None:
        """``bare/resource`` asked for its roster: it gets roster pushes from now on."""
        self.redis.sadd(ROSTER_INTEREST_KEY.format(bare=bare), resource)

    def roster_interested(self, bare: str) -> set[str]:
        """The resources of ``bare`` that get roster pushes."""
        return {_text(r) for r in self.redis.smembers(ROSTER_INTEREST_KEY.format(bare=bare))}

    def remove_resource(self, bare: str, resource: str) -> None:
        """Forget everything about ``bare/resource`` (its session ended)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hdel(PRESENCE_KEY.format(bare=bare), resource)
        pipe.srem(ROSTER_INTEREST_KEY.format(bare=bare), resource)
        pipe.set(LAST_ACTIVE_KEY.format(bare=bare), _now_ms())
        pipe.execute()
