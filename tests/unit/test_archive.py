"""The durable message path's front half: records, ids, the spool before Redis, the disk guard."""

from __future__ import annotations

from twisted.internet import defer, task
from twisted.words.xish import domish

from hipchat_server.archive import MessageArchive, MessageIds, index_name, is_archived, timestamp_of
from hipchat_server.storage.recent import RecentMessages, keys_of
from hipchat_server.storage.spool import SpoolError
from hipchat_server.xmpp.stanzas import stanza_from_xml


class FakeSpool:
    """Appends wait until the test commits them, like the group-committing writer thread."""

    directory = "/nonexistent"

    def __init__(self):
        self.pending: list[tuple[dict, defer.Deferred]] = []
        self.committed: list[dict] = []

    def append(self, record, encoded=None):
        d = defer.Deferred()
        self.pending.append((record, d))
        return d

    def commit(self):
        pending, self.pending = self.pending, []
        for record, d in pending:
            self.committed.append(record)
            d.callback(None)


class RecordingPipe:
    """Records list pushes; keeps plain keys in a dict so origin-id lookups see earlier sets."""

    def __init__(self):
        self.commands = []
        self.values: dict[str, str] = {}
        self.results: list = []

    def lpush(self, key, value):
        self.commands.append(("lpush", key))
        self.results.append(1)

    def ltrim(self, key, start, stop):
        self.commands.append(("ltrim", key, start, stop))
        self.results.append(True)

    def set(self, key, value, ex=None):
        self.values[key] = value
        self.results.append(True)

    def get(self, key):
        self.results.append(self.values.get(key))


class FakeWriter:
    """Runs submitted pipeline work at once, or fails it when Redis is 'down'."""

    def __init__(self):
        self.pipe = RecordingPipe()
        self.down = False

    def submit(self, apply):
        if self.down:
            return defer.fail(ConnectionError("Redis is down"))
        self.pipe.results = []
        apply(self.pipe)
        return defer.succeed(self.pipe.results)


class FakeRecent:
    def push_commands(self, pipe, record, data=None):
        RecentMessages.push_commands(self, pipe, record, data)

    first_copy_commands = staticmethod(RecentMessages.first_copy_commands)
    size = 75


def chat_message(body="hello", extra=""):
    return stanza_from_xml(
        f"<message xmlns='jabber:client' from='alice@d/phone' to='bob@d' type='chat' id='m1'>"
        f"<body>{body}</body>{extra}</message>"
    )


def make_archive(**kwargs):
    spool, writer = FakeSpool(), FakeWriter()
    return MessageArchive(spool, FakeRecent(), writer, **kwargs), spool, writer


def test_ids_increase_within_one_millisecond_and_carry_its_time():
    """Two messages of the same millisecond get increasing ids, and the id's time is the timestamp's."""
    ids = MessageIds(now_ms=lambda: 1_764_148_521_123)
    first, ms1 = ids.next()
    second, ms2 = ids.next()
    assert first < second and len(first) == 26
    assert ms1 == ms2 == 1_764_148_521_123
    assert timestamp_of(ms1) == "2025-11-26T09:15:21.123Z"


def test_ids_keep_increasing_when_the_clock_goes_back():
    """A clock stepped backwards must not produce an id that sorts before earlier messages."""
    now = [2_000_000]
    ids = MessageIds(now_ms=lambda: now[0])
    first, _ = ids.next()
    now[0] = 1_000_000
    assert ids.next()[0] > first


def test_a_one_to_one_record_names_its_conversation_and_stamps_a_stanza_id():
    """The record has id, month index, conversation, participants; the stanza gains our stanza-id, not a forged one."""
    archive, _, _ = make_archive()
    forged = "<stanza-id xmlns='urn:xmpp:sid:0' id='forged' by='bob@d'/><origin-id xmlns='urn:xmpp:sid:0' id='o-1'/>"
    message = chat_message(extra=forged)
    record = archive.new_record(message, type="chat", sender="alice@d", body="hello", recipient="bob@d")
    assert record["conversation"] == "alice@d|bob@d" and record["participants"] == ["alice@d", "bob@d"]
    assert record["room"] is None and record["recipient"] == "bob@d" and record["origin_id"] == "o-1"
    assert index_name("messages", record) == f"messages-{record['timestamp'][:4]}.{record['timestamp'][5:7]}"
    stanza_ids = [c for c in message.elements() if c.name == "stanza-id"]
    assert [(s["id"], s["by"]) for s in stanza_ids] == [(record["id"], "bob@d")]
    assert "forged" not in record["xml"] and record["id"] in record["xml"]


def test_a_room_record_has_no_conversation_and_is_stamped_by_the_room():
    archive, _, _ = make_archive()
    message = stanza_from_xml("<message xmlns='jabber:client' from='eng@conference.d/alice' type='groupchat'><body>hi</body></message>")
    record = archive.new_record(
        message, type="groupchat", sender="alice@d", body="hi", room="eng@conference.d", sender_name="alice"
    )
    assert record["room"] == "eng@conference.d" and record["conversation"] is None and record["participants"] == []
    assert keys_of(record) == ["archive:recent:room:eng@conference.d"]
    assert "by='eng@conference.d'" in record["xml"] or 'by="eng@conference.d"' in record["xml"]


def test_store_fires_only_after_the_spool_commit_and_pushes_in_that_order():
    """Nothing reaches Redis (nor the caller) before the fsync; then the record is pushed to each list."""
    archive, spool, writer = make_archive()
    record = archive.new_record(chat_message(), type="chat", sender="alice@d", body="hello", recipient="bob@d")
    stored = []
    archive.store(record).addCallback(stored.append)
    assert stored == [] and writer.pipe.commands == []
    spool.commit()
    assert stored == [record] and spool.committed == [record]
    assert [c[1] for c in writer.pipe.commands if c[0] == "lpush"] == [
        "archive:recent:conversation:alice@d|bob@d",
        "archive:recent:user:alice@d",
        "archive:recent:user:bob@d",
    ]


def test_store_succeeds_when_redis_is_down_after_the_fsync():
    """The spool has the message: a Redis failure is logged, not turned into an error for the sender."""
    archive, spool, writer = make_archive()
    writer.down = True
    record = archive.new_record(chat_message(), type="chat", sender="alice@d", body="hello", recipient="bob@d")
    stored = []
    archive.store(record).addCallback(stored.append)
    spool.commit()
    assert stored == [record]


def test_store_fails_when_the_spool_fails():
    archive, spool, _ = make_archive()
    record = archive.new_record(chat_message(), type="chat", sender="alice@d", body="hello", recipient="bob@d")
    failures = []
    d = archive.store(record)
    d.addErrback(failures.append)
    _, pending = spool.pending[0]
    pending.errback(SpoolError("disk error"))
    assert failures and failures[0].check(SpoolError)


def test_the_disk_guard_refuses_messages_when_the_disk_is_nearly_full(tmp_path, monkeypatch):
    """Below the free-space floor store fails at once (nothing is spooled); it is checked at most once a second."""
    clock = task.Clock()
    archive, spool, _ = make_archive(min_free_bytes=10 * 1024 * 1024, clock=clock)
    spool.directory = str(tmp_path)
    free = [5 * 1024 * 1024]

    class Stat:
        f_frsize = 1

        @property
        def f_bavail(self):
            return free[0]

    monkeypatch.setattr("hipchat_server.archive.os.statvfs", lambda path: Stat())
    record = archive.new_record(chat_message(), type="chat", sender="alice@d", body="hello", recipient="bob@d")
    failures = []
    archive.store(record).addErrback(failures.append)
    assert failures and failures[0].check(SpoolError) and spool.pending == []
    free[0] = 50 * 1024 * 1024
    archive.store(record).addErrback(failures.append)
    assert len(failures) == 2  # still the cached answer
    clock.advance(1.0)
    archive.store(record)
    assert len(spool.pending) == 1


def test_only_messages_people_write_are_archived():
    assert is_archived(chat_message())
    assert not is_archived(stanza_from_xml("<message xmlns='jabber:client' type='chat'><active xmlns='http://jabber.org/protocol/chatstates'/></message>"))
    assert not is_archived(stanza_from_xml("<message xmlns='jabber:client' type='error'><body>x</body></message>"))
    assert not is_archived(stanza_from_xml("<message xmlns='jabber:client' type='headline'><body>x</body></message>"))
    assert isinstance(chat_message(), domish.Element)


def test_a_resend_with_the_same_origin_id_is_not_archived_twice():
    """After a lost connection a client resends with the same origin-id: same id back, marked duplicate, not spooled."""
    archive, spool, _ = make_archive()
    origin = "<origin-id xmlns='urn:xmpp:sid:0' id='o-42'/>"
    first = archive.new_record(chat_message(extra=origin), type="chat", sender="alice@d", body="hello", recipient="bob@d")
    stored = []
    archive.store(first).addCallback(stored.append)
    spool.commit()
    again = archive.new_record(chat_message(extra=origin), type="chat", sender="alice@d", body="hello", recipient="bob@d")
    archive.store(again).addCallback(stored.append)
    assert spool.pending == [] and len(spool.committed) == 1
    assert stored[1]["duplicate"] and stored[1]["id"] == first["id"]
    # Another sender may use the same origin-id: that is a different message.
    other = archive.new_record(chat_message(extra=origin), type="chat", sender="carol@d", body="hi", recipient="bob@d")
    archive.store(other)
    assert len(spool.pending) == 1


def test_the_id_attribute_alone_never_marks_a_resend():
    """Clients reuse id attributes across sessions (Pidgin counts from 1): only an origin-id identifies a resend."""
    archive, spool, _ = make_archive()
    for _ in range(2):
        record = archive.new_record(chat_message(), type="chat", sender="alice@d", body="hello", recipient="bob@d")
        assert record["origin_id"] is None
        archive.store(record)
        spool.commit()
    assert len(spool.committed) == 2


def test_a_resend_is_recognised_even_when_redis_lost_the_origin_key():
    """Redis failed over between the first copy and the resend (the key is gone): this front end still knows it."""
    archive, spool, writer = make_archive()
    origin = "<origin-id xmlns='urn:xmpp:sid:0' id='o-7'/>"
    first = archive.new_record(chat_message(extra=origin), type="chat", sender="alice@d", body="hello", recipient="bob@d")
    archive.store(first)
    spool.commit()
    writer.pipe.values.clear()  # the new primary never got the key
    stored = []
    again = archive.new_record(chat_message(extra=origin), type="chat", sender="alice@d", body="hello", recipient="bob@d")
    archive.store(again).addCallback(stored.append)
    assert stored[0]["duplicate"] and stored[0]["id"] == first["id"] and spool.pending == []
