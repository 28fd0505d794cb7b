"""Where each bound XMPP session lives, kept in Redis so every front end can reach every user.

``xmpp:sessions:<bare jid>`` is a hash of resource -> front-end id;
``xmpp:frontend:<id>:sessions`` lists a front end's own entries so it can
clear them when it restarts after a crash; ``xmpp:carbons:<bare jid>`` is the
set of resources that enabled Message Carbons (XEP-0280). Stanzas for a
session on another front end are published on that front end's channel
``xmpp:deliver:<id>``.

`lookup` reads a user's sessions, carbons and available presence (the hash
`storage.presence` keeps) in one round trip: routing a message needs all three.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

SESSIONS_KEY = "xmpp:sessions:{bare}"
FRONTEND_KEY = "xmpp:frontend:{frontend}:sessions"
CARBONS_KEY = "xmpp:carbons:{bare}"
PRESENCE_KEY = "xmpp:presence:{bare}"  # written by storage.presence: resource -> {"priority", "xml"}
DELIVERY_CHANNEL = "xmpp:deliver:{frontend}"


@dataclass
class UserSessions:
    """One user's bound sessions as a router needs them."""

    frontends: dict[str, str] = field(default_factory=dict)  # resource -> front end holding it
    carbons: set[str] = field(default_factory=set)  # resources with carbons enabled
    priorities: dict[str, int] = field(default_factory=dict)  # available resources -> presence priority

    def available(self) -> list[str]:
        """Resources that sent available presence with a non-negative priority (RFC 6121 8.5.2.1), bound now."""
        return sorted(r for r, p in self.priorities.items() if p >= 0 and r in self.frontends)


def _decode(value) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _user_sessions(frontends: dict, carbons: set, presence: dict) -> UserSessions:
    priorities = {}
    for resource, value in presence.items():
        try:
            priorities[_decode(resource)] = int(json.loads(value).get("priority", 0))
        except (ValueError, TypeError, AttributeError):
            continue  # a malformed entry is treated as not available
    return UserSessions(
        frontends={_decode(k): _decode(v) for k, v in frontends.items()},
        carbons={_decode(r) for r in carbons},
        priorities=priorities,
    )


class SessionDirectory:
    """The cluster-wide session directory. Every method blocks: call it off the reactor thread."""

    def __init__(self, redis_primary, frontend_id: str):
        self.redis = redis_primary
        self.frontend_id = frontend_id

    @property
    def channel(self) -> str:
        return DELIVERY_CHANNEL.format(frontend=self.frontend_id)

    @staticmethod
    def channel_of(frontend_id: str) -> str:
        """The channel front end ``frontend_id`` listens on."""
        return DELIVERY_CHANNEL.format(frontend=frontend_id)

    def add(self, bare: str, resource: str) -> None:
        pipe = self.redis.pipeline()
        pipe.hset(SESSIONS_KEY.format(bare=bare), resource, self.frontend_id)
        # Carbons stay as they are: a session resumed here (XEP-0198) keeps them; an ended one cleared them.
        pipe.sadd(FRONTEND_KEY.format(frontend=self.frontend_id), f"{bare}/{resource}")
        pipe.execute()

    def remove(self, bare: str, resource: str) -> None:
        key = SESSIONS_KEY.format(bare=bare)
        # Only our own entry: the same resource may have re-bound on another front end.
        if _decode(self.redis.hget(key, resource)) == self.frontend_id:
            self._forget_session(bare, resource)
        self.redis.srem(FRONTEND_KEY.format(frontend=self.frontend_id), f"{bare}/{resource}")

    def running_frontends(self) -> list[str]:
        """The other front ends running now: those listening on their delivery channel."""
        prefix = DELIVERY_CHANNEL.format(frontend="")
        channels = (_decode(c) for c in self.redis.pubsub_channels(DELIVERY_CHANNEL.format(frontend="*")))
        return sorted(c[len(prefix) :] for c in channels if c.startswith(prefix) and c != self.channel)

    def resources(self, bare: str) -> dict[str, str]:
        """Each bound resource of ``bare`` and the front end holding it."""
        entries = self.redis.hgetall(SESSIONS_KEY.format(bare=bare))
        return {_decode(k): _decode(v) for k, v in entries.items()}

    def lookup(self, bare: str) -> UserSessions:
        """``bare``'s sessions, carbons and available priorities, read in one round trip."""
        return self.lookup_many([bare])[0]

    def lookup_many(self, bares: list[str]) -> list[UserSessions]:
        """`lookup` for several users in one round trip (a message needs its recipient and its sender)."""
        pipe = self.redis.pipeline(transaction=False)
        self.lookup_commands(pipe, bares)
        return self.lookups_from(pipe.execute())

    @staticmethod
    def lookup_commands(pipe, bares: list[str]) -> None:
        """Queue the reads of `lookup_many` on a pipeline (the process's ordered Redis writer batches them)."""
        for bare in bares:
            pipe.hgetall(SESSIONS_KEY.format(bare=bare))
            pipe.smembers(CARBONS_KEY.format(bare=bare))
            pipe.hgetall(PRESENCE_KEY.format(bare=bare))

    @staticmethod
    def lookups_from(replies: list) -> list[UserSessions]:
        """The `UserSessions` of each user `lookup_commands` asked for, from the pipeline's replies."""
        return [_user_sessions(*replies[i : i + 3]) for i in range(0, len(replies), 3)]

    def set_carbons(self, bare: str, resource: str, enabled: bool) -> None:
        key = CARBONS_KEY.format(bare=bare)
        if enabled:
            self.redis.sadd(key, resource)
        else:
            self.redis.srem(key, resource)

    def clear_frontend(self) -> int:
        """Forget every entry this front end left behind (after a crash); return how many."""
        own = FRONTEND_KEY.format(frontend=self.frontend_id)
        cleared = 0
        for entry in self.redis.smembers(own):
            bare, _, resource = _decode(entry).partition("/")
            key = SESSIONS_KEY.format(bare=bare)
            if _decode(self.redis.hget(key, resource)) == self.frontend_id:
                self._forget_session(bare, resource)
                cleared += 1
        self.redis.delete(own)
        return cleared

    def _forget_session(self, bare: str, resource: str) -> None:
        """Remove a session's entry, carbons flag and available presence in one round trip."""
        pipe = self.redis.pipeline()
        pipe.hdel(SESSIONS_KEY.format(bare=bare), resource)
        pipe.srem(CARBONS_KEY.format(bare=bare), resource)
        pipe.hdel(PRESENCE_KEY.format(bare=bare), resource)
        pipe.execute()

    def publish(self, frontend_id: str, payload: str) -> int:
        """Send ``payload`` to front end ``frontend_id``; return how many subscribers got it."""
        return self.redis.publish(DELIVERY_CHANNEL.format(frontend=frontend_id), payload)
