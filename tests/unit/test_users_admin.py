"""Administering users and groups (`users_admin.UsersAdmin`) on SQLite with the real schema.

The CSV preview reports every problem per row and writes nothing; the import
creates only the error-free rows; deactivating ends the user's sessions and
is audited; one cannot deactivate oneself; a deactivation is delivered to
the front end holding each XMPP stream.
"""

from __future__ import annotations

import json

import pytest
from sqlalchemy import create_engine

from hipchat_server import audit, users_admin
from hipchat_server.storage.groups import GroupStore
from hipchat_server.storage.schema import group_members, groups, metadata, user_credentials, users
from hipchat_server.storage.users import UserStore
from hipchat_server.storage.users_admin import UserSearchStore


class Audit:
    def __init__(self):
        self.entries = []

    def add(self, actor, action, target, details):
        self.entries.append((actor, action, target))
        return len(self.entries)


class Closer:
    web_sessions = None

    def __init__(self):
        self.closed = []

    def close(self, username, reason):
        self.closed.append(username)
        return {"web_sessions": 1, "xmpp_streams": 2}


@pytest.fixture
def admin():
    engine = create_engine("sqlite://", future=True)
    metadata.create_all(engine, tables=[users, user_credentials, groups, group_members])
    log = Audit()
    audit.install(log)
    closer = Closer()
    domain = users_admin.UsersAdmin(UserStore(engine), UserSearchStore(engine), GroupStore(engine), closer)
    domain.create("root", "alice", "Alice", "alice@example.com", "alice-password")
    domain.create_group("root", "ops")
    domain.log, domain.closer_seen = log, closer
    yield domain
    audit.install(None)


def test_search_and_paging(admin):
    """Search matches username, name or e-mail; paging answers the total."""
    for i in range(3):
        admin.create("root", f"user{i}", f"User {i}", f"u{i}@example.org", "a-long-password")
    rows, total = admin.search("example.org", start=1, limit=1)
    assert total == 3 and [r["username"] for r in rows] == ["user1"]
    assert admin.search("Alice")[1] == 1


def test_create_generates_a_password_when_none_is_given(admin):
    """An empty password is generated (shown once) and works; the creation is audited."""
    user, password = admin.create("root", "bob", "Bob", "bob@example.com")
    assert len(password) >= 12
    from hipchat_server.users import verify_password

    assert verify_password(admin.users, "bob", password)
    assert ("root", "user.create", "bob") in admin.log.entries


def test_csv_preview_reports_each_rows_problems_and_writes_nothing(admin):
    """Bad values, duplicates in the file, taken usernames or e-mails and unknown groups are errors of their row."""
    text = (
        "username,name,email,password,groups,admin\n"
        "carol,Carol,carol@example.com,,ops,no\n"
        "Bad Name,X,x@example.com,,,\n"
        "alice,Alice Again,alice2@example.com,,,\n"
        "dave,Dave,alice@example.com,short,,\n"
        "carol,Carol Two,carol2@example.com,,nogroup,\n"
    )
    rows = admin.preview_import(text)
    assert [r.line for r in rows] == [2, 3, 4, 5, 6]
    assert rows[0].errors == [] and rows[0].groups == ["ops"]
    assert any("username" in e for e in rows[1].errors)
    assert any("taken" in e for e in rows[2].errors)
    assert any("already used" in e for e in rows[3].errors) and any("password" in e for e in rows[3].errors)
    assert any("twice" in e for e in rows[4].errors) and any("no group 'nogroup'" in e for e in rows[4].errors)
    assert admin.users.get_by_username("carol") is None


def test_csv_import_creates_the_good_rows_only(admin):
    """The import creates error-free rows (in their groups), skips the others, and says so per row."""
    rows = admin.run_import("root", "username,name,email,groups\ncarol,Carol,carol@example.com,ops\nalice,A,a@x.com,\n")
    assert [r.outcome for r in rows][0] == "created" and rows[1].outcome.startswith("skipped")
    assert rows[0].generated_password
    carol = admin.get("carol")
    assert [g["name"] for g in carol["groups"]] == ["ops"]


def test_csv_without_the_required_columns_is_refused(admin):
    with pytest.raises(users_admin.AdminError, match="missing: email"):
        admin.preview_import("username,name\na,b\n")


def test_deactivate_ends_sessions_and_is_audited(admin):
    """Deactivating stops logins, ends the sessions (through the closer) and is audited; not one's own account."""
    ended = admin.deactivate("root", "alice")
    assert ended == {"web_sessions": 1, "xmpp_streams": 2, "changed": True}
    assert admin.closer_seen.closed == ["alice"]
    assert not admin.get("alice")["is_active"]
    assert ("root", "user.deactivate", "alice") in admin.log.entries
    with pytest.raises(users_admin.AdminError):
        admin.deactivate("alice", "alice")


def test_session_closer_publishes_to_each_front_end(redis_server):
    """Each bound resource gets an end_session item on the channel of the front end holding it; browser sessions end too."""
    redis_server.flushall()
    redis_server.hset("xmpp:sessions:alice@example.com", mapping={"phone": "xmpp-0", "laptop": "web"})
    pubsub = redis_server.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("xmpp:deliver:xmpp-0", "xmpp:deliver:web")

    class WebSessions:
        def end_user(self, username):
            return 3

    ended = users_admin.SessionCloser(lambda: redis_server, WebSessions(), "example.com").close("alice", "deactivated")
    assert ended == {"web_sessions": 3, "xmpp_streams": 2}
    items = []
    for _ in range(20):
        message = pubsub.get_message(timeout=0.2)
        if message:
            items.append((message["channel"].decode(), json.loads(message["data"])))
        if len(items) == 2:
            break
    assert sorted((c, i["to"], i["kind"]) for c, i in items) == [
        ("xmpp:deliver:web", "alice@example.com/laptop", "end_session"),
        ("xmpp:deliver:xmpp-0", "alice@example.com/phone", "end_session"),
    ]


def test_end_session_handler_closes_that_stream_with_not_authorized():
    """The front end's handler sends <not-authorized/> to the named stream; an unknown one is ignored."""
    from hipchat_server.xmpp.jid import parse_jid

    class Connection:
        errors = []

        def send_stream_error(self, condition, text=None):
            self.errors.append((condition, text))

    connection = Connection()
    table = {parse_jid("alice@example.com/phone"): connection}
    handler = users_admin.end_session_handler(type("Sessions", (), {"get": lambda self, jid: table.get(jid)})())
    handler({"to": "alice@example.com/phone", "reason": "this account was deactivated"})
    handler({"to": "bob@example.com/x"})
    assert connection.errors == [("not-authorized", "this account was deactivated")]
