"""Where each bound XMPP session lives, kept in Redis so every front end can reach every user.

``xmpp:sessions:<bare jid>`` is a hash of resource -> front-end id;
``xmpp:frontend:<id>:sessions`` lists a front end's own entries so it can
clear them when it restarts after a crash. Stanzas for a session on another
front end are published on that front end's channel ``xmpp:deliver:<id>``.
"""

from __future__ import annotations

SESSIONS_KEY = "xmpp:sessions:{bare}"
FRONTEND_KEY = "xmpp:frontend:{frontend}:sessions"
DELIVERY_CHANNEL = "xmpp:deliver:{frontend}"


class SessionDirectory:
    """The cluster-wide session directory. Every method blocks: call it off the reactor thread."""

    def __init__(self, redis_primary, frontend_id: str):
        self.redis = redis_primary
        self.frontend_id = frontend_id

    @property
    def channel(self) -> str:
        return DELIVERY_CHANNEL.format(frontend=self.frontend_id)

    def add(self, bare: str, resource: str) -> None:
        pipe = self.redis.pipeline()
        pipe.hset(SESSIONS_KEY.format(bare=bare), resource, self.frontend_id)
        pipe.sadd(FRONTEND_KEY.format(frontend=self.frontend_id), f"{bare}/{resource}")
        pipe.execute()

    def remove(self, bare: str, resource: str) -> None:
        key = SESSIONS_KEY.format(bare=bare)
        # Only our own entry: the same resource may have re-bound on another front end.
        if self._decode(self.redis.hget(key, resource)) == self.frontend_id:
            self.redis.hdel(key, resource)
        self.redis.srem(FRONTEND_KEY.format(frontend=self.frontend_id), f"{bare}/{resource}")

    def resources(self, bare: str) -> dict[str, str]:
        """Each bound resource of ``bare`` and the front end holding it."""
        entries = self.redis.hgetall(SESSIONS_KEY.format(bare=bare))
        return {self._decode(k): self._decode(v) for k, v in entries.items()}

    def clear_frontend(self) -> int:
        """Forget every entry this front end left behind (after a crash); return how many."""
        own = FRONTEND_KEY.format(frontend=self.frontend_id)
        cleared = 0
        for entry in self.redis.smembers(own):
            bare, _, resource = self._decode(entry).partition("/")
            key = SESSIONS_KEY.format(bare=bare)
            if self._decode(self.redis.hget(key, resource)) == self.frontend_id:
                self.redis.hdel(key, resource)
                cleared += 1
        self.redis.delete(own)
        return cleared

    def publish(self, frontend_id: str, payload: str) -> int:
        """Send ``payload`` to front end ``frontend_id``; return how many subscribers got it."""
        return self.redis.publish(DELIVERY_CHANNEL.format(frontend=frontend_id), payload)

    @staticmethod
    def _decode(value) -> str | None:
        return value.decode() if isinstance(value, bytes) else value
