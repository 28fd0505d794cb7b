"""Webhooks, room events, commit hooks, mention mail, push and the job runner, with fakes for MariaDB and Redis."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime
from types import SimpleNamespace

import jwt
import pytest
from twisted.internet import defer

from hipchat_server import commit_hooks, events, webhooks
from hipchat_server.app.worker import JobRunner
from hipchat_server.jobs import Job, PermanentJobError
from hipchat_server.mail import MentionMail, mention_email
from hipchat_server.push import PushGateway
from hipchat_server.storage.webhooks import Person, RoomRef, WebhookRow

PUBLIC_URL = "https://chat.example.com"
ROOM = RoomRef(7, "Ops Room", "ops")
ALICE = Person(1, "alice", "Alice Doe", "alice", "alice@example.com")
BOB = Person(2, "bob", "Bob Roe", "bobby", "bob@example.com")


def webhook_row(id=1, event="room_message", pattern=None, secret=None, url="http://127.0.0.1:9/hook", name="bot"):
    return WebhookRow(id, ROOM.id, name, url, event, pattern, secret, None, None, datetime(2026, 1, 1))


class FakeStore:
    """The WebhookStore reads events and mail use, counting room loads."""

    def __init__(self, rows=(), people=(ALICE, BOB), room=ROOM):
        self.rows, self.everyone, self.the_room = list(rows), list(people), room
        self.loads = 0

    def room_webhooks(self, *, room_id=None, node=None):
        self.loads += 1
        if self.the_room is None or (room_id not in (None, ROOM.id)) or (node not in (None, ROOM.jid_node)):
            return None, []
        return self.the_room, list(self.rows)

    def room(self, *, room_id=None, node=None):
        return self.the_room

    def people(self, *, usernames=(), mention_names=()):
        mention_names = {m.lower() for m in mention_names}
        return [p for p in self.everyone if p.username in usernames or p.mention_name.lower() in mention_names]

    def get(self, room_id, webhook_id):
        return next((r for r in self.rows if r.id == webhook_id and r.room_id == room_id), None)


def dispatcher(store, queued, now=None):
    clock = now or [0.0]
    return events.EventDispatcher(
        store,
        run_blocking=lambda f, *a: defer.maybeDeferred(f, *a),
        enqueue=lambda items: defer.succeed(queued.extend(items)),
        public_url=PUBLIC_URL,
        clock=lambda: clock[0],
    )


def record(body="hello", sender="alice@chat.example.com", **extra):
    return {"id": "01ABC", "timestamp": "2026-01-02T03:04:05.678Z", "sender": sender, "sender_name": "Alice", "body": body, **extra}


# Patterns.
def test_a_pattern_longer_than_512_characters_is_refused():
    """HipChat's limit: a pattern of 513 characters is refused with a message naming the field."""
    with pytest.raises(webhooks.WebhookError, match="pattern"):
        webhooks.check_pattern("a" * 513)


def test_an_invalid_pattern_is_refused():
    with pytest.raises(webhooks.WebhookError, match="not a valid regular expression"):
        webhooks.check_pattern("(unclosed")


def test_a_catastrophically_backtracking_pattern_is_refused_in_time():
    """(a+)+$ backtracks for ages on a long run of a's: the probe's time limit refuses it."""
    with pytest.raises(webhooks.WebhookError, match="too slow"):
        webhooks.check_pattern("(a+)+$")


def test_an_ordinary_pattern_is_accepted_and_matches_by_search():
    assert webhooks.check_pattern(r"^/weather\b") == r"^/weather\b"
    hook = webhooks.Webhook.of(webhook_row(pattern=r"^/weather\b"))
    assert hook.matches("/weather Sydney") and not hook.matches("the /weather")


def test_new_webhook_fields_are_checked():
    """A pattern only on room_message webhooks; JWT needs a long enough secret; the URL must be http(s)."""
    ok = webhooks.check_new_webhook({"url": "https://bot.example.com/h", "event": "room_enter"})
    assert ok["event"] == "room_enter" and ok["secret"] is None
    with pytest.raises(webhooks.WebhookError, match="pattern"):
        webhooks.check_new_webhook({"url": "https://b.example.com", "event": "room_enter", "pattern": "x"})
    with pytest.raises(webhooks.WebhookError, match="secret"):
        webhooks.check_new_webhook({"url": "https://b.example.com", "event": "room_message", "authentication": "jwt", "secret": "short"})
    with pytest.raises(webhooks.WebhookError, match="url"):
        webhooks.check_new_webhook({"url": "ftp://b.example.com", "event": "room_message"})
    with pytest.raises(webhooks.WebhookError, match="event"):
        webhooks.check_new_webhook({"url": "https://b.example.com", "event": "room_party"})


# Delivery.
def test_delivery_signs_the_body_with_a_jwt_the_receiver_can_verify():
    """With a secret the POST carries Authorization: JWT, HS256 over the webhook's secret, naming the body's hash."""
    sent = {}

    def post(url, body, headers):
        sent.update(url=url, body=body, headers=headers)
        return 200, b""

    row = webhook_row(secret="s3cret-s3cret-s3cret-s3cret-s3cr")
    webhooks.deliver(row, {"event": "room_message", "item": {}}, PUBLIC_URL, post)
    scheme, token = sent["headers"]["Authorization"].split(" ", 1)
    claims = jwt.decode(token, "s3cret-s3cret-s3cret-s3cret-s3cr", algorithms=["HS256"])
    assert scheme == "JWT" and claims["iss"] == PUBLIC_URL and claims["sub"] == "1"
    assert claims["body_sha256"] == hashlib.sha256(sent["body"]).hexdigest()
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, "another-secret-entirely-another-one", algorithms=["HS256"])


def test_delivery_without_a_secret_sends_no_authorization():
    sent = {}
    webhooks.deliver(webhook_row(), {}, PUBLIC_URL, lambda url, body, headers: (sent.update(headers=headers), (204, b""))[1])
    assert sent["headers"] == {}


@pytest.mark.parametrize("status,error", [(500, RuntimeError), (503, RuntimeError), (429, RuntimeError), (400, PermanentJobError), (404, PermanentJobError)])
def test_server_errors_are_retried_and_refusals_are_not(status, error):
    with pytest.raises(error):
        webhooks.deliver(webhook_row(), {}, PUBLIC_URL, lambda *a: (status, b""))


def test_a_reply_in_notification_format_becomes_a_notification():
    reply = json.dumps({"message": "It is <b>sunny</b>", "color": "green", "notify": True, "message_format": "html"}).encode()
    notification = webhooks.reply_notification(reply, "bot")
    assert notification.message == "It is <b>sunny</b>" and notification.color == "green" and notification.notify
    assert notification.label == "bot"
    assert webhooks.reply_notification(json.dumps({"message": "x", "from": "Weather"}).encode(), "bot").label == "Weather"
    assert webhooks.reply_notification(b"", "bot") is None
    assert webhooks.reply_notification(b"not json", "bot") is None
    assert webhooks.reply_notification(b'{"ok": true}', "bot") is None


def test_webhook_delivery_posts_the_reply_into_the_room():
    row = webhook_row()
    posted = []
    delivery = webhooks.WebhookDelivery(
        FakeStore([row]), lambda room, n: posted.append((room, n.message)), issuer=PUBLIC_URL, rooms_domain="conference.example.com",
        post=lambda *a: (200, b'{"message": "pong"}'),
    )
    delivery(Job("webhook", "1-0", {"webhook_id": 1, "room_id": ROOM.id, "room": "ops", "body": {}}))
    assert posted == [("ops@conference.example.com", "pong")]


def test_a_deleted_webhook_is_not_delivered():
    calls = []
    delivery = webhooks.WebhookDelivery(FakeStore([]), None, issuer=PUBLIC_URL, rooms_domain="c", post=lambda *a: calls.append(a))
    delivery(Job("webhook", "1-0", {"webhook_id": 1, "room_id": ROOM.id, "room": "ops", "body": {}}))
    assert calls == []


def test_the_webhooks_flag_is_asked_for_each_webhooks_creator():
    """In chosen-groups mode a webhook is called when the flag is on for the user who created it; no creator: everyone's value."""
    on_for = {"alice"}
    rows = [
        WebhookRow(1, ROOM.id, "a", "http://127.0.0.1:9/a", "room_message", None, None, None, 1, None, "alice"),
        WebhookRow(2, ROOM.id, "b", "http://127.0.0.1:9/b", "room_message", None, None, None, 2, None, "bob"),
        WebhookRow(3, ROOM.id, "c", "http://127.0.0.1:9/c", "room_message", None, None, None, None, None, None),
    ]
    asked, called = [], []

    def enabled(creator):
        asked.append(creator)
        return creator in on_for

    delivery = webhooks.WebhookDelivery(
        FakeStore(rows), None, issuer=PUBLIC_URL, rooms_domain="c", enabled=enabled, post=lambda url, *a: called.append(url) or (204, b"")
    )
    for row in rows:
        delivery(Job("webhook", "1-0", {"webhook_id": row.id, "room_id": ROOM.id, "room": "ops", "body": {}}))
    assert asked == ["alice", "bob", None]
    assert called == ["http://127.0.0.1:9/a"]


# Events.
def test_room_message_webhooks_fire_only_when_their_pattern_finds_the_text():
    queued = []
    store = FakeStore([webhook_row(1, pattern="^/weather"), webhook_row(2), webhook_row(3, event="room_enter")])
    d = dispatcher(store, queued).emit("room_message", "ops@conference.example.com", record("/weather in Oslo"))
    assert d.called
    assert [payload["webhook_id"] for kind, payload in queued] == [1, 2]
    queued.clear()
    dispatcher(store, queued).emit("room_message", "ops@conference.example.com", record("no command"))
    assert [payload["webhook_id"] for kind, payload in queued] == [2]


def test_room_message_payload_has_hipchats_shape():
    queued = []
    dispatcher(FakeStore([webhook_row()]), queued).emit("room_message", "ops", record("hi @bobby and @all"))
    [(kind, job)] = [q for q in queued if q[0] == "webhook"]
    body = job["body"]
    assert body["event"] == "room_message" and body["webhook_id"] == 1 and "oauth_client_id" in body
    message = body["item"]["message"]
    assert message["message"] == "hi @bobby and @all" and message["type"] == "message" and message["id"] == "01ABC"
    assert message["date"] == "2026-01-02T03:04:05.678+00:00"
    assert message["from"] == {"id": 1, "mention_name": "alice", "name": "Alice Doe", "links": {"self": f"{PUBLIC_URL}/v2/user/1"}}
    assert [m["mention_name"] for m in message["mentions"]] == ["bobby"]
    assert body["item"]["room"]["id"] == 7 and body["item"]["room"]["links"]["self"] == f"{PUBLIC_URL}/v2/room/7"


def test_a_mention_queues_one_mention_mail_job_even_without_webhooks():
    queued = []
    dispatcher(FakeStore([]), queued).emit("room_message", "ops@conference.example.com", record("ping @bobby @bobby @here"))
    assert queued == [("mention_mail", {**events.mention_job("ops@conference.example.com", record("ping @bobby @bobby @here"))})]
    assert queued[0][1]["mentions"] == ["bobby"]


def test_notification_enter_and_topic_payloads():
    queued = []
    store = FakeStore([webhook_row(1, event="room_notification"), webhook_row(2, event="room_enter"), webhook_row(3, event="room_topic_change")])
    events_ = dispatcher(store, queued)
    notification = record("plain", sender="ops@conference.example.com", html="<b>plain</b>",
                          notification={"color": "red", "message_format": "html", "notify": True, "from": "CI"})
    events_.emit("room_notification", "ops@conference.example.com", notification)
    events_.emit("room_enter", "ops@conference.example.com", {"sender": "bob@chat.example.com", "nick": "Bob"})
    events_.emit("room_topic_change", 7, {"sender": "alice@chat.example.com", "topic": "Deploy day"})
    items = {job["body"]["event"]: job["body"]["item"] for _, job in queued}
    assert items["room_notification"]["message"]["from"] == "CI" and items["room_notification"]["message"]["color"] == "red"
    assert items["room_notification"]["message"]["message"] == "<b>plain</b>"
    assert items["room_enter"]["sender"]["mention_name"] == "bobby"
    assert items["room_topic_change"]["topic"] == "Deploy day" and items["room_topic_change"]["sender"]["id"] == 1


def test_a_rooms_webhooks_are_read_once_per_cache_period():
    """Events of a room within CACHE_SECONDS cost no MariaDB read; after it, one."""
    queued, now = [], [100.0]
    store = FakeStore([])
    events_ = dispatcher(store, queued, now)
    for _ in range(5):
        events_.emit("room_enter", "ops@conference.example.com", {"sender": "bob@chat.example.com"})
    assert store.loads == 1
    now[0] += events.CACHE_SECONDS + 0.1
    events_.emit("room_enter", "ops@conference.example.com", {})
    assert store.loads == 2
    events_.forget(ROOM.id)  # a webhook created through the API in this process
    events_.emit("room_enter", "ops@conference.example.com", {})
    assert store.loads == 3


def test_emit_without_a_chat_server_and_bad_rooms_never_raise():
    assert events.emit(None, "room_message", "x", {}).called
    assert events.room_key("ops@conference.example.com") == ("node", "ops") and events.room_key("17") == ("id", 17)


def test_mention_names():
    assert events.mention_names("@alice, hi @bob.smith. mail a@b.com @all @here @alice") == ["alice", "bob.smith"]


# Commit hooks.
GITHUB_PUSH = {
    "ref": "refs/heads/main",
    "compare": "https://github.com/acme/app/compare/a...b",
    "repository": {"full_name": "acme/app", "html_url": "https://github.com/acme/app"},
    "pusher": {"name": "octocat"},
    "commits": [
        {"id": "0123456789abcdef", "url": "https://github.com/acme/app/commit/0123456789abcdef", "message": "Fix <the> bug\n\nlong text", "author": {"name": "Octo Cat"}},
        {"id": "fedcba9876543210", "url": "https://github.com/acme/app/commit/fedcba9876543210", "message": "Second", "author": {"name": "Mona"}},
    ],
}
BITBUCKET_PUSH = {
    "actor": {"display_name": "Bit Bucket"},
    "repository": {"full_name": "acme/lib", "links": {"html": {"href": "https://bitbucket.org/acme/lib"}}},
    "push": {"changes": [{"new": {"type": "branch", "name": "develop"}, "truncated": False, "commits": [
        {"hash": "abcdef1234567890", "message": "Add feature", "links": {"html": {"href": "https://bitbucket.org/acme/lib/commits/abcdef1234567890"}},
         "author": {"raw": "Bit Bucket <bb@example.com>"}}]}]},
}


def test_a_github_push_becomes_a_notification_with_commit_links():
    body = json.dumps(GITHUB_PUSH).encode()
    notification = commit_hooks.notification_for({"x-github-event": "push"}, body, None)
    assert notification.label == "GitHub" and notification.message_format == "html"
    html = notification.message
    assert "<b>octocat</b> pushed 2 commits to <b>main</b>" in html
    assert '<a href="https://github.com/acme/app/commit/0123456789abcdef">0123456</a> Fix &lt;the&gt; bug (Octo Cat)' in html
    assert '<a href="https://github.com/acme/app">acme/app</a>' in html and "long text" not in html


def test_a_bitbucket_push_becomes_a_notification_with_commit_links():
    notification = commit_hooks.notification_for({"x-event-key": "repo:push"}, json.dumps(BITBUCKET_PUSH).encode(), None)
    assert notification.label == "Bitbucket"
    assert "<b>Bit Bucket</b> pushed 1 commit to <b>develop</b>" in notification.message
    assert '<a href="https://bitbucket.org/acme/lib/commits/abcdef1234567890">abcdef1</a> Add feature (Bit Bucket)' in notification.message


def test_github_signature_is_checked_when_the_hook_has_a_secret():
    body = json.dumps(GITHUB_PUSH).encode()
    good = "sha256=" + hmac.new(b"hook-secret", body, hashlib.sha256).hexdigest()
    assert commit_hooks.notification_for({"x-github-event": "push", "x-hub-signature-256": good}, body, "hook-secret")
    with pytest.raises(commit_hooks.SignatureMismatch):
        commit_hooks.notification_for({"x-github-event": "push", "x-hub-signature-256": "sha256=00"}, body, "hook-secret")
    with pytest.raises(commit_hooks.SignatureMismatch):
        commit_hooks.notification_for({"x-github-event": "push"}, body, "hook-secret")


def test_pings_and_unknown_services_post_nothing_or_are_refused():
    assert commit_hooks.notification_for({"x-github-event": "ping"}, b'{"zen": "x"}', None) is None
    with pytest.raises(commit_hooks.CommitHookError):
        commit_hooks.notification_for({}, b"{}", None)
    with pytest.raises(commit_hooks.CommitHookError):
        commit_hooks.notification_for({"x-github-event": "push"}, b"[1]", None)


def test_a_long_push_lists_ten_commits_and_links_the_rest():
    payload = dict(GITHUB_PUSH, commits=[dict(GITHUB_PUSH["commits"][0], id=f"{n:016x}") for n in range(14)])
    html = commit_hooks.notification_for({"x-github-event": "push"}, json.dumps(payload).encode(), None).message
    assert html.count("<br>") == 11 and "and 4 more" in html


# Mention mail and push.
class FakeQueue:
    def __init__(self):
        self.jobs = []

    def enqueue(self, kind, payload):
        self.jobs.append((kind, payload))


def mention_mail(sessions, push_url="", sent=None):
    queue = FakeQueue()
    handler = MentionMail(
        FakeStore(),
        SimpleNamespace(resources=lambda bare: sessions.get(bare, {})),
        queue,
        mail=SimpleNamespace(smtp_host="127.0.0.1", smtp_port=25, from_address="", mention_mail=True),
        push=SimpleNamespace(gateway_url=push_url, gateway_token=""),
        domain="chat.example.com",
        public_url=PUBLIC_URL,
        send=lambda message, host, port: sent.append((message, host, port)) if sent is not None else None,
    )
    return handler, queue


def test_only_offline_mentioned_people_other_than_the_sender_get_mail():
    handler, queue = mention_mail({"alice@chat.example.com": {"phone": "xmpp-0"}}, push_url="https://push.example.com")
    payload = events.mention_job("ops@conference.example.com", record("@alice @bobby look", sender="carol@chat.example.com"))
    handler(Job("mention_mail", "1-0", payload))
    assert [(kind, p["to"]) for kind, p in queue.jobs] == [("mention_mail", "bob@example.com"), ("push", "bob@example.com")]
    handler, queue = mention_mail({})
    handler(Job("mention_mail", "1-0", events.mention_job("ops", record("@alice @bobby", sender="bob@chat.example.com"))))
    assert [p["to"] for _, p in queue.jobs] == ["alice@example.com"]  # not bob himself; no push without a gateway


def test_a_recipient_job_sends_one_mail_through_the_relay():
    sent = []
    handler, _ = mention_mail({}, sent=sent)
    handler(Job("mention_mail", "1-0", {"to": "bob@example.com", "to_name": "Bob Roe", "room_id": 7, "room_name": "Ops Room",
                                         "sender_name": "Alice", "body": "@bobby look", "timestamp": "2026-01-02T03:04:05Z"}))
    [(message, host, port)] = sent
    assert (host, port) == ("127.0.0.1", 25)
    assert message["To"] == "Bob Roe <bob@example.com>" and message["Subject"] == "Alice mentioned you in Ops Room"
    assert message["From"] == "HipChat <noreply@chat.example.com>"
    assert "@bobby look" in message.get_content() and f"{PUBLIC_URL}/v2/room/7" in message.get_content()


def test_mention_email_cuts_long_messages():
    message = mention_email(to_address="b@x", to_name="B", from_address="n@x", sender_name="A", room_name="R", room_url="u",
                            body="x" * 5000, timestamp=None)
    assert len(message.get_content()) < 2300


def test_push_posts_to_the_gateway_with_its_token():
    sent = []
    gateway = PushGateway(SimpleNamespace(gateway_url="https://push.example.com/n", gateway_token="tok"),
                          post=lambda url, body, headers: (sent.append((url, json.loads(body), headers)), (202, b""))[1])
    gateway(Job("push", "1-0", {"username": "bob", "sender_name": "Alice", "room_name": "Ops", "body": "@bobby hi"}))
    [(url, document, headers)] = sent
    assert url == "https://push.example.com/n" and headers == {"Authorization": "Bearer tok"}
    assert document["user"] == "bob" and document["title"] == "Alice mentioned you in Ops"
    with pytest.raises(PermanentJobError):
        PushGateway(SimpleNamespace(gateway_url="https://p", gateway_token=""), post=lambda *a: (401, b""))(Job("push", "1", {}))


# The runner.
class RecordingQueue:
    max_attempts = 3

    def __init__(self):
        self.settled = []

    def done(self, job):
        self.settled.append(("done", job.entry_id))

    def failed(self, job, error, permanent=False):
        self.settled.append(("dead" if permanent else "retry", job.entry_id, error))
        return "dead" if permanent else "retry"


def test_the_runner_settles_each_outcome():
    """Success acks; an exception retries; PermanentJobError and repeatedly killed jobs go to the dead letters."""
    queue = RecordingQueue()

    def handler(job):
        if job.payload.get("fail") == "temporary":
            raise RuntimeError("boom")
        if job.payload.get("fail") == "permanent":
            raise PermanentJobError("refused")

    runner = JobRunner(queue, {"webhook": handler}, consumer="test")
    assert runner.run(Job("webhook", "1", {})) == "done"
    assert runner.run(Job("webhook", "2", {"fail": "temporary"})) == "retry"
    assert runner.run(Job("webhook", "3", {"fail": "permanent"})) == "dead"
    assert runner.run(Job("webhook", "4", {}, deliveries=4)) == "dead"
    assert runner.run(Job("nothing", "5", {})) == "dead"
    assert queue.settled[1] == ("retry", "2", "RuntimeError: boom")
    assert queue.settled[3][2].startswith("a worker stopped while running it 3 times")


def test_the_store_reads_each_webhooks_creator_as_a_username():
    """`WebhookStore.get` answers the creator's username (what the flag is asked about); None without a creator."""
    from sqlalchemy import create_engine

    from hipchat_server.storage.schema import metadata, rooms, users
    from hipchat_server.storage.schema import webhooks as webhooks_table
    from hipchat_server.storage.webhooks import WebhookStore

    engine = create_engine("sqlite://", future=True)
    metadata.create_all(engine, tables=[users, rooms, webhooks_table])
    with engine.begin() as connection:
        connection.execute(users.insert().values(id=1, name="Alice", mention_name="alice", email="alice@example.com", username="alice"))
        connection.execute(rooms.insert().values(id=ROOM.id, name=ROOM.name, jid_node=ROOM.jid_node))
    store = WebhookStore(engine)
    mine = store.insert(room_id=ROOM.id, name="a", url="http://127.0.0.1:9/a", event="room_message", pattern=None, secret=None,
                        oauth_client_id=None, created_by=1)
    nobodys = store.insert(room_id=ROOM.id, name="b", url="http://127.0.0.1:9/b", event="room_message", pattern=None, secret=None,
                           oauth_client_id="client", created_by=None)
    assert store.get(ROOM.id, mine).creator == "alice"
    assert store.get(ROOM.id, nobodys).creator is None
    assert store.get(ROOM.id + 1, mine) is None


def test_the_runner_counts_each_job_by_kind_and_outcome():
    """``hipchat_jobs_completed`` and ``hipchat_jobs_failed`` (retry, dead) move per kind, from 0 for every handled kind."""
    from prometheus_client import REGISTRY

    def sample(name, **labels):
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = {
        "done": sample("hipchat_jobs_completed_total", kind="push"),
        "retry": sample("hipchat_jobs_failed_total", kind="push", next="retry"),
        "dead": sample("hipchat_jobs_failed_total", kind="push", next="dead"),
    }

    def handler(job):
        if job.payload.get("fail"):
            raise (PermanentJobError if job.payload["fail"] == "permanent" else RuntimeError)("no")

    runner = JobRunner(RecordingQueue(), {"push": handler, "mention_mail": handler}, consumer="test")
    assert REGISTRY.get_sample_value("hipchat_jobs_completed_total", {"kind": "mention_mail"}) is not None  # shown before any job ran
    for payload in ({}, {}, {"fail": "temporary"}, {"fail": "permanent"}):
        runner.run(Job("push", "1", payload))
    assert sample("hipchat_jobs_completed_total", kind="push") == before["done"] + 2
    assert sample("hipchat_jobs_failed_total", kind="push", next="retry") == before["retry"] + 1
    assert sample("hipchat_jobs_failed_total", kind="push", next="dead") == before["dead"] + 1
