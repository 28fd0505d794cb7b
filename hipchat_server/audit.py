"""The audit log: who changed what, when; every console change (and its CLI twin) goes through `record`.

``details`` is a mapping (stored as JSON) or text; never a password or a
token (callers pass what changed, not secrets). Blocking: call from a thread.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

_store = None


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    action: str
    target: str
    details: str | None


def install(store) -> None:
    """Use ``store`` (a `storage.audit_log.AuditLogStore`) for `record` and `entries`."""
    global _store
    _store = store


def for_server(chat_server):
    """Install the store over ``chat_server``'s database (once per process) and answer it."""
    if _store is None:
        from hipchat_server.storage.audit_log import AuditLogStore

        install(AuditLogStore(chat_server.get_database_engine()))
    return _store


def record(actor: str, action: str, target: str = "", details=None) -> int:
    """Write one entry (``action`` like ``user.deactivate``, ``target`` what it acted on); answers its id."""
    if _store is None:
        raise RuntimeError("audit.for_server(chat_server) was not called in this process")
    if details is not None and not isinstance(details, str):
        details = json.dumps(details, sort_keys=True, default=str)
    return _store.add(actor[:100], action[:64], str(target)[:255], details)


def entries(*, actor=None, action=None, target=None, since=None, until=None, start=0, limit=50):
    """Entries matching the filters, newest first, and how many match in all."""
    rows, total = _store.page(actor=actor, action=action, target=target, since=since, until=until, start=start, limit=limit)
    return [AuditEntry(**r) for r in rows], total


def actions() -> list[str]:
    return _store.actions()
