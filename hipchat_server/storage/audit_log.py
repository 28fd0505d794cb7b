"""The audit log store: one ``audit_log`` row per administrative change, read back newest first with filters.

Blocking: call it from a thread.
"""

from __future__ import annotations

from sqlalchemy import func, insert, select
from sqlalchemy.engine import Engine

from hipchat_server.storage.database import run_in_transaction
from hipchat_server.storage.schema import audit_log


class AuditLogStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    def add(self, actor: str, action: str, target: str, details: str | None) -> int:
        def work(connection):
            return connection.execute(
                insert(audit_log).values(actor=actor, action=action, target=target, details=details)
            ).inserted_primary_key[0]

        return run_in_transaction(self.engine, "add_audit_entry", work)

    def page(self, *, actor=None, action=None, target=None, since=None, until=None, start=0, limit=50):
        """Entries matching every filter given (``target`` as a substring), newest first; and how many match."""
        conditions = []
        if actor:
            conditions.append(audit_log.c.actor == actor)
        if action:
            conditions.append(audit_log.c.action == action)
        if target:
            conditions.append(audit_log.c.target.contains(target, autoescape=True))
        if since is not None:
            conditions.append(audit_log.c.at >= since)
        if until is not None:
            conditions.append(audit_log.c.at < until)

        def work(connection):
            rows = connection.execute(
                select(audit_log).where(*conditions).order_by(audit_log.c.id.desc()).offset(start).limit(limit)
            ).mappings().all()
            total = connection.execute(select(func.count()).select_from(audit_log).where(*conditions)).scalar_one()
            return [dict(r) for r in rows], total

        return run_in_transaction(self.engine, "audit_log_page", work)

    def actions(self) -> list[str]:
        """Every action recorded so far (for the filter's choices)."""

        def work(connection):
            return list(connection.execute(select(audit_log.c.action).distinct().order_by(audit_log.c.action)).scalars())

        return run_in_transaction(self.engine, "audit_log_actions", work)
