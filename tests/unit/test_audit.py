"""The audit log (`audit.record`, `audit.entries`) on SQLite with the real schema: entries written and filtered."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine

from hipchat_server import audit
from hipchat_server.storage.audit_log import AuditLogStore


@pytest.fixture
def store():
    engine = create_engine("sqlite://", future=True)
    with engine.begin() as connection:  # SQLite numbers only an INTEGER primary key itself (the real one is BIGINT)
        connection.exec_driver_sql(
            "CREATE TABLE audit_log (id INTEGER PRIMARY KEY, at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,"
            " actor VARCHAR(100) NOT NULL, action VARCHAR(64) NOT NULL, target VARCHAR(255) NOT NULL DEFAULT '', details TEXT)"
        )
    store = AuditLogStore(engine)
    audit.install(store)
    yield store
    audit.install(None)


def test_record_and_filter(store):
    """Entries come back newest first; actor, action and target (substring) filter; details are JSON."""
    audit.record("root", "user.create", "alice", {"email": "alice@example.com"})
    audit.record("root", "user.deactivate", "alice")
    audit.record("admin2", "room.create", "ops-room", "text details")
    entries, total = audit.entries()
    assert total == 3 and [e.action for e in entries] == ["room.create", "user.deactivate", "user.create"]
    assert entries[2].details == '{"email": "alice@example.com"}'
    assert [e.action for e in audit.entries(actor="root")[0]] == ["user.deactivate", "user.create"]
    assert audit.entries(action="room.create")[0][0].target == "ops-room"
    assert audit.entries(target="lic")[1] == 2
    assert audit.entries(target="%")[1] == 0  # a LIKE wildcard is a literal character here
    page, total = audit.entries(start=1, limit=1)
    assert total == 3 and page[0].action == "user.deactivate"
    assert audit.actions() == ["room.create", "user.create", "user.deactivate"]
