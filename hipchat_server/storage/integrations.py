"""Queries of the console's integrations page: every room's webhooks, and the recent webhook deliveries kept in Redis.

Blocking: call it from a thread.
"""

from __future__ import annotations

import json

from sqlalchemy import select
from sqlalchemy.engine import Engine

from hipchat_server.storage.database import run_in_transaction
from hipchat_server.storage.schema import rooms, webhooks

#: Redis list of the latest webhook deliveries (newest first), each a JSON object.
DELIVERIES_KEY = "webhooks:deliveries"
DELIVERIES_KEPT = 200


class IntegrationsStore:
    def __init__(self, engine: Engine, redis_primary=None):
        self.engine, self.redis_primary = engine, redis_primary

    def all_webhooks(self) -> list[dict]:
        """Every webhook with its room's id and name, by room then id (the secret is never read)."""
        query = (
            select(webhooks.c.id, webhooks.c.room_id, webhooks.c.name, webhooks.c.url, webhooks.c.event, webhooks.c.pattern,
                   webhooks.c.created_at, rooms.c.name.label("room_name"))
            .select_from(webhooks.join(rooms, rooms.c.id == webhooks.c.room_id))
            .order_by(rooms.c.name, webhooks.c.id)
        )
        return run_in_transaction(self.engine, "list_all_webhooks", lambda c: [dict(r) for r in c.execute(query).mappings()])

    def recent_deliveries(self, count: int = 50) -> list[dict]:
        raw = self.redis_primary().lrange(DELIVERIES_KEY, 0, count - 1)
        out = []
        for item in raw:
            try:
                out.append(json.loads(item))
            except ValueError:
                continue
        return out


def note_delivery(redis, entry: dict) -> None:
    """Keep one delivery's outcome (webhook id, room, url, status, error, at) at the head of the recent list."""
    pipe = redis.pipeline(transaction=False)
    pipe.lpush(DELIVERIES_KEY, json.dumps(entry, sort_keys=True))
    pipe.ltrim(DELIVERIES_KEY, 0, DELIVERIES_KEPT - 1)
    pipe.execute()
