"""Posting API messages and notifications into rooms: durable first, then one muc_deliver item per front end."""

from __future__ import annotations

import json

import pytest
from twisted.internet import defer

from hipchat_server.archive import MessageArchive
from hipchat_server.html_sanitizing import plain_text, sanitize
from hipchat_server.room_posting import HIPCHAT_ROOM_NS, Notification, PostingError, RoomPoster
from hipchat_server.storage.recent import RecentMessages
from hipchat_server.storage.rooms import Occupant, OccupantStore
from hipchat_server.storage.spool import SpoolError
from hipchat_server.xmpp.stanzas import stanza_from_xml

ROOM = "ops@conference.example.com"


class Spool:
    directory = "/nonexistent"

    def __init__(self, log):
        self.log, self.fail = log, False

    def append(self, record, encoded=None):
        if self.fail:
            return defer.fail(SpoolError("disk gone"))
        self.log.append(("spool", record["id"]))
        return defer.succeed(None)


class Pipe:
    def __init__(self, writer):
        self.writer, self.results = writer, []

    def lpush(self, key, value):
        self.writer.log.append(("lpush", key))
        self.results.append(1)

    def ltrim(self, key, start, stop):
        self.results.append(True)

    def hgetall(self, key):
        self.writer.log.append(("hgetall", key))
        if self.writer.occupants_down:
            raise ConnectionError("Redis failing over")
        self.results.append({o.full: o.to_json() for o in self.writer.occupants})


class Writer:
    """The ordered Redis writer: pipeline work runs at once; publishes are recorded with a receiver count."""

    def __init__(self, log, occupants):
        self.log, self.occupants = log, occupants
        self.occupants_down = False
        self.published: list[tuple[str, dict]] = []

    def submit(self, apply):
        pipe = Pipe(self)
        try:
            apply(pipe)
        except ConnectionError as e:
            return defer.fail(e)
        return defer.succeed(pipe.results)

    def publish(self, channel, payload):
        self.log.append(("publish", channel))
        self.published.append((channel, json.loads(payload)))
        return defer.succeed(1)


def occupant(full, frontend, nick="n"):
    return Occupant(full, nick, "participant", "member", frontend)


@pytest.fixture
def world():
    log: list = []
    occupants = [
        occupant("alice@example.com/laptop", "fe-1", "alice"),
        occupant("alice@example.com/phone", "fe-2", "alice"),
        occupant("bob@example.com/pc", "fe-1", "bob"),
    ]
    writer = Writer(log, occupants)
    spool = Spool(log)
    archive = MessageArchive(spool, RecentMessages(None), writer)
    events: list = []
    poster = RoomPoster(archive, OccupantStore(None), writer, emit=lambda kind, room, record: events.append((kind, room, record["id"])))
    return dict(log=log, writer=writer, spool=spool, poster=poster, events=events)


def result_of(d: defer.Deferred):
    results = []
    d.addBoth(results.append)
    assert results, "the Deferred did not fire"
    return results[0]


def test_a_notification_is_durable_before_any_front_end_gets_it_and_each_front_end_gets_one_item(world):
    """Spool, then the recent list, then the occupant read, then one muc_deliver per front end naming its sessions."""
    note = Notification("<b>Build</b> <a href='https://ci/1' onclick='x()'>#1</a> passed<script>alert(1)</script>", color="green", notify=True, label="CI")
    record = result_of(world["poster"].post_notification(ROOM, note, sender="alice@example.com"))
    steps = [step for step, _ in world["log"]]
    assert steps == ["spool", "lpush", "hgetall", "publish", "publish"]
    by_frontend = {channel.removeprefix("xmpp:deliver:"): item for channel, item in world["writer"].published}
    assert by_frontend["fe-1"]["to"] == ["alice@example.com/laptop", "bob@example.com/pc"]
    assert by_frontend["fe-2"]["to"] == ["alice@example.com/phone"]
    for item in by_frontend.values():
        assert item["kind"] == "muc_deliver" and item["room"] == ROOM and item["id"] == record["id"]
        assert item["xml"] == record["xml"]
    assert record["notification"] == {"color": "green", "message_format": "html", "notify": True, "from": "CI"}
    assert "script" not in record["html"] and "onclick" not in record["html"] and "<b>Build</b>" in record["html"]
    assert record["body"] == "Build #1 passed" and record["sender"] == "alice@example.com" and record["sender_name"] == "CI"
    assert world["events"] == [("room_notification", ROOM, record["id"])]


def test_the_notification_stanza_has_a_plain_body_and_hipchats_extension():
    """Every XMPP client shows the <body>; HipChat clients read color, format and notify from the muc#room <x/>."""
    from hipchat_server.room_posting import notification_stanza

    stanza, body, html = notification_stanza(f"{ROOM}/Jenkins", Notification("a &amp; <i>b</i><br>c", color="red"))
    parsed = stanza_from_xml(stanza.toXml(defaultUri="jabber:client"))
    assert parsed["from"] == f"{ROOM}/Jenkins" and parsed["type"] == "groupchat"
    assert str(next(c for c in parsed.elements() if c.name == "body")) == "a & b\nc" == body
    x = next(parsed.elements(HIPCHAT_ROOM_NS, "x"))
    assert {c.name: str(c) for c in x.elements()} == {"type": "system", "color": "red", "message_format": "html", "notify": "0"}
    assert html == "a &amp; <i>b</i><br>c"


def test_a_text_notification_is_not_sanitised_or_parsed():
    from hipchat_server.room_posting import notification_stanza

    _, body, html = notification_stanza(f"{ROOM}/x", Notification("1 < 2 <b>literally</b>", message_format="text"))
    assert body == "1 < 2 <b>literally</b>" and html is None


def test_a_message_comes_from_the_senders_name_and_account(world):
    record = result_of(world["poster"].post_message(ROOM, "bob@example.com", "Bob Builder", "hello"))
    assert record["sender"] == "bob@example.com" and record["sender_name"] == "Bob Builder" and record["room"] == ROOM
    assert stanza_from_xml(record["xml"])["from"] == f"{ROOM}/Bob Builder"
    assert "notification" not in record
    assert world["events"] == [("room_message", ROOM, record["id"])]


def test_nothing_is_delivered_when_the_spool_fails(world):
    world["spool"].fail = True
    outcome = result_of(world["poster"].post_message(ROOM, "bob@example.com", "bob", "hello"))
    assert outcome.check(SpoolError)
    outcome.trap(SpoolError)
    assert world["writer"].published == [] and world["events"] == []


def test_a_durable_message_still_counts_when_the_occupants_cannot_be_read(world):
    """Redis failing over after the fsync loses only the live copies: the post succeeds (history has it)."""
    world["writer"].occupants_down = True
    record = result_of(world["poster"].post_message(ROOM, "bob@example.com", "bob", "hello"))
    assert record["id"] and world["writer"].published == []
    assert [kind for kind, *_ in world["events"]] == ["room_message"]


@pytest.mark.parametrize(
    "notification, words",
    [
        (Notification(""), "message"),
        (Notification("x" * 10_001), "at most"),
        (Notification("x", color="pink"), "color"),
        (Notification("x", message_format="markdown"), "message_format"),
        (Notification("x", label=""), "from"),
    ],
)
def test_a_notification_hipchat_would_refuse_is_refused_before_anything_is_stored(world, notification, words):
    with pytest.raises(PostingError, match=words):
        world["poster"].post_notification(ROOM, notification)
    assert world["log"] == []


def test_a_failing_event_emitter_does_not_fail_the_post(world):
    def broken(*args):
        raise RuntimeError("queue down")

    world["poster"].emit = broken
    record = result_of(world["poster"].post_message(ROOM, "bob@example.com", "bob", "hello"))
    assert record["id"]


def test_sanitising_keeps_hipchats_tags_and_drops_the_rest():
    cleaned = sanitize(
        "<p><strong>x</strong><em>y</em><code>z</code></p><table><tr><td colspan='2'>c</td></tr></table>"
        "<iframe src='https://evil'></iframe><img src='javascript:alert(1)'><a href='mailto:a@b'>m</a><div style='x'>d</div>"
    )
    assert cleaned == (
        "<p><strong>x</strong><em>y</em><code>z</code></p><table><tbody><tr><td colspan=\"2\">c</td></tr></tbody></table>"
        '<img><a href="mailto:a@b" rel="noopener noreferrer">m</a>d'
    )
    assert plain_text("<ul><li>one</li><li>two</li></ul>") == "- one\n- two"
