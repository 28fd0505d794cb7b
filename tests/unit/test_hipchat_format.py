"""HipChat's export format: timestamps, ids, names, JSON arrays, and messages to records and back."""

from __future__ import annotations

import json
import threading
import time

import pytest
from ulid import ULID

from appliance.backup.hipchat_export import GroupExport, _JsonArrays, hipchat_timestamp
from appliance.backup.hipchat_import import GroupImport, ImportResult, MessageArchive, _GivenIds, message_id_for, parse_hipchat_timestamp, username_for

ROOM = "ops@conference.example.org"
ALICE = {"id": 7, "username": "alice", "name": "Alice A", "mention_name": "AliceA"}
BOB = {"id": 8, "username": "bob", "name": "Bob B", "mention_name": "BobB"}


def test_hipchat_timestamps_round_trip_to_the_millisecond():
    """A record's timestamp becomes HipChat's '...Z <microseconds>' and parses back to the same millisecond."""
    assert hipchat_timestamp("2025-03-04T10:00:00.123Z") == "2025-03-04T10:00:00Z 123000"
    assert hipchat_timestamp("2025-03-04T10:00:00Z") == "2025-03-04T10:00:00Z 000000"
    ms = parse_hipchat_timestamp("2025-03-04T10:00:00Z 123999")
    assert ms % 1000 == 123 and ms // 1000 == 1741082400


def test_plain_iso_timestamps_with_offsets_are_read_as_utc():
    """An ISO 8601 time with an offset (HipChat's 'created') is converted to UTC."""
    assert parse_hipchat_timestamp("2025-03-04T11:00:00+01:00") == parse_hipchat_timestamp("2025-03-04T10:00:00Z 000000")
    assert parse_hipchat_timestamp("2025-03-04T10:00:00.5") == 1741082400500  # no offset: UTC
    assert parse_hipchat_timestamp("2025-03-04 10:00:00") == 1741082400000  # a space instead of the T


@pytest.mark.parametrize("text", ["", "yesterday", "2025-03-04T10:00:00Z abc", "2025-03-04T10:00:00Z 12x", None])
def test_unreadable_timestamps_raise(text):
    """A timestamp that is not HipChat's or ISO 8601 is an error, never a guess."""
    with pytest.raises((ValueError, TypeError)):
        parse_hipchat_timestamp(text)


def test_message_ids_are_derived_stably_and_carry_the_original_time():
    """The same export id always gives the same ULID, whose time is the message's; another id gives another ULID."""
    ms = parse_hipchat_timestamp("2025-06-01T00:00:00Z 000000")
    first = message_id_for("4de8344e-6e00-1281-9a0c-1b763eb17c27", ms)
    assert first == message_id_for("4de8344e-6e00-1281-9a0c-1b763eb17c27", ms)
    assert first != message_id_for("4de8344e-6e00-1281-9a0c-1b763eb17c28", ms)
    assert ULID.from_str(first).milliseconds == ms


def test_an_appliance_id_of_the_same_millisecond_is_kept():
    """An export of this appliance carries its own ULIDs: importing it back keeps them (no second copy)."""
    own = ULID()
    assert message_id_for(str(own), own.milliseconds) == str(own)
    assert message_id_for(str(own), own.milliseconds + 1) != str(own)


def test_usernames_come_from_mention_names():
    """A mention name becomes a lower-case XMPP-safe username; without one, the e-mail's local part."""
    assert username_for("JohnSmith", "j@example.com") == "johnsmith"
    assert username_for("Zoë O'Brien", "z@example.com") == "zoobrien"
    assert username_for("", "first.last@example.com") == "first.last"


def test_json_arrays_are_valid_whatever_was_written(tmp_path):
    """Files left empty, written once, and written over several flushes (months) are each one JSON array."""
    arrays = _JsonArrays()
    paths = [str(tmp_path / name / "history.json") for name in ("empty", "one", "many")]
    for path in paths:
        arrays.start(path)
    arrays.add(paths[1], {"n": 1})
    for n in range(5):
        arrays.add(paths[2], {"n": n})
        arrays.flush()
    arrays.finish()
    assert [len(json.load(open(p))) for p in paths] == [0, 1, 5]


@pytest.fixture
def importer():
    """A GroupImport with its message conversion only (no stores)."""
    imp = GroupImport.__new__(GroupImport)
    imp.result, imp._seen, imp._ids = ImportResult(), set(), _GivenIds()
    imp._archive = MessageArchive(None, None, None, ids=imp._ids)
    imp.domain, imp.prefix = "example.org", "messages"
    imp.user_by_id = {7: ALICE, 8: BOB}
    imp.room_by_id = {201: ROOM}
    return imp


def _message(**fields):
    base = {"id": "m-1", "sender": {"id": 7, "name": "Alice A", "mention_name": "AliceA"}, "message": "hello", "timestamp": "2025-03-04T10:00:00Z 123456"}
    base.update(fields)
    return base


def test_a_room_message_becomes_a_groupchat_record_at_its_original_time(importer):
    """UserMessage -> a groupchat record of the room, sent by the user's JID, at the original time, keeping the HipChat id and microseconds."""
    record = importer._record({"UserMessage": _message()}, "room", 201)
    assert record["type"] == "groupchat" and record["room"] == ROOM and record["sender"] == "alice@example.org"
    assert record["timestamp"] == "2025-03-04T10:00:00.123Z" and record["body"] == "hello"
    assert record["hipchat_id"] == "m-1" and record["hipchat_timestamp"] == "2025-03-04T10:00:00Z 123456"
    assert record["id"] == message_id_for("m-1", parse_hipchat_timestamp("2025-03-04T10:00:00Z 123456"))
    assert f'id="{record["id"]}"' in record["xml"] or f"id='{record['id']}'" in record["xml"]  # the stanza-id clients see


def test_a_one_to_one_message_in_both_histories_is_taken_once(importer):
    """PrivateUserMessage appears in the sender's and the receiver's file: the second copy is skipped, not refused."""
    item = {"PrivateUserMessage": _message(receiver={"id": 8, "name": "Bob B", "mention_name": "BobB"})}
    record = importer._record(item, "user", "7")
    assert record["type"] == "chat" and record["recipient"] == "bob@example.org" and record["participants"] == ["alice@example.org", "bob@example.org"]
    assert importer._record(item, "user", "8") is None
    assert importer.result.messages.refused == 0


def test_a_notification_keeps_label_colour_and_format(importer):
    """NotificationMessage -> a record from the room with HipChat's notification fields; HTML is sanitised and kept."""
    item = {"NotificationMessage": _message(sender="Jenkins", message="Build <b>ok</b><script>x</script>", color="green", message_format="html")}
    record = importer._record(item, "room", 201)
    assert record["sender"] == ROOM and record["sender_name"] == "Jenkins"
    assert record["notification"] == {"color": "green", "message_format": "html", "notify": False, "from": "Jenkins"}
    assert "<b>ok</b>" in record["html"] and "script" not in record["html"] and record["body"].startswith("Build ok")


@pytest.mark.parametrize(
    "item, reason",
    [
        ({"UserMessage": _message(sender={"id": 99, "name": "Gone"})}, "sender not imported"),
        ({"UserMessage": _message(timestamp="soon")}, "timestamp unreadable"),
        ({"UserMessage": _message(message="x" * 10_001)}, "longer than"),
        ({"UserMessage": _message(message="  ")}, "empty message"),
        ({"TopicRoomMessage": {"id": "t"}}, "not imported"),
        ({"Whatever": {}}, "unknown entry"),
    ],
)
def test_messages_that_cannot_be_imported_are_refused_with_a_reason(importer, item, reason):
    """Each refusal is counted with a reason the summary prints."""
    assert importer._record(item, "room", 201) is None
    assert importer.result.messages.refused == 1
    assert any(reason in text for text in importer.result.messages.reasons)


def test_records_export_back_to_the_messages_they_came_from(importer):
    """Import then export of a room message, a notification and a one-to-one message gives the same id, sender, text and timestamp."""
    exporter = GroupExport.__new__(GroupExport)
    by_jid = {"alice@example.org": ALICE, "bob@example.org": BOB}
    by_mention = {"alicea": ALICE, "bobb": BOB}
    message = _message(id="m-2")
    item = exporter._room_item(importer._record({"UserMessage": message}, "room", 201), by_jid, by_mention)["UserMessage"]
    assert (item["id"], item["sender"], item["message"], item["timestamp"]) == (message["id"], message["sender"], message["message"], message["timestamp"])
    notification = _message(id="m-3", sender="CI", message="done", message_format="text", color="red")
    item = exporter._room_item(importer._record({"NotificationMessage": notification}, "room", 201), by_jid, by_mention)["NotificationMessage"]
    assert (item["id"], item["sender"], item["message"], item["color"], item["message_format"]) == ("m-3", "CI", "done", "red", "text")
    private = _message(id="m-4", receiver={"id": 8, "name": "Bob B", "mention_name": "BobB"})
    item = exporter._private_item(importer._record({"PrivateUserMessage": private}, "user", "7"), ALICE, BOB)
    assert (item["id"], item["sender"], item["receiver"], item["timestamp"]) == ("m-4", private["sender"], private["receiver"], private["timestamp"])


@pytest.mark.parametrize("chunk", [1, 7, 1 << 20])
def test_history_files_are_read_item_by_item_across_chunks(tmp_path, chunk):
    """A history array is read one item at a time whatever the chunk size: the same items as json.load, in order."""
    from appliance.backup.hipchat_import import iter_json_array

    items = [{"UserMessage": _message(id=f"m-{n}", message="ä, ] [ {\"x\"} " * n)} for n in range(20)]
    path = tmp_path / "history.json"
    path.write_text(" \n" + json.dumps(items, indent=1) + "\n")
    assert list(iter_json_array(str(path), chunk)) == items
    path.write_text("[]")
    assert list(iter_json_array(str(path), chunk)) == []


@pytest.mark.parametrize("text", ['{"a": 1}', '[{"a": 1} {"b": 2}]', '[{"a": 1},', '[{"a": '])
def test_a_damaged_history_file_is_refused(tmp_path, text):
    """Not an array, a missing comma, or a file cut short: ImportRefused naming the file, never a silent partial read."""
    from appliance.backup.hipchat_import import ImportRefused, iter_json_array

    path = tmp_path / "history.json"
    path.write_text(text)
    with pytest.raises(ImportRefused, match="history.json"):
        list(iter_json_array(str(path), 4))


class _Archive:
    def __init__(self, spool_dir):
        self.spool_dir, self.spool_min_free_mb, self.spool_warn_bytes = spool_dir, 0, 1000


class _Config:
    def __init__(self, spool_dir):
        self.archive = _Archive(spool_dir)


class _Writer:
    def __init__(self, directory):
        self.directory = directory


def _status(spool_dir, name, backlog):
    (spool_dir / "indexer-status.json").write_text(json.dumps({"directories": {name: {"backlog_bytes": backlog, "segment": 1, "offset": 0}}}))


def test_spooling_waits_while_the_indexer_is_far_behind_the_import(tmp_path, monkeypatch):
    """Over half the spool warning level behind, the import waits until the indexer's status shows it caught up."""
    import appliance.backup.hipchat_import as hipchat_import

    monkeypatch.setattr(hipchat_import, "DRAIN_POLL_SECONDS", 0.01)
    (tmp_path / "import-x").mkdir()
    imp = GroupImport.__new__(GroupImport)
    imp.config = _Config(str(tmp_path))
    _status(tmp_path, "import-x", 900)
    caught_up = threading.Timer(0.2, _status, (tmp_path, "import-x", 400))
    caught_up.start()
    started = time.monotonic()
    imp._make_room(_Writer(str(tmp_path / "import-x")))
    assert time.monotonic() - started >= 0.15


def test_an_indexer_that_takes_nothing_ends_the_import_with_a_reason(tmp_path, monkeypatch):
    """No progress for STALLED_SECONDS: ImportRefused telling the operator to check status and run the import again."""
    import appliance.backup.hipchat_import as hipchat_import

    monkeypatch.setattr(hipchat_import, "DRAIN_POLL_SECONDS", 0.01)
    monkeypatch.setattr(hipchat_import, "STALLED_SECONDS", 0.1)
    (tmp_path / "import-x").mkdir()
    imp = GroupImport.__new__(GroupImport)
    imp.config = _Config(str(tmp_path))
    _status(tmp_path, "import-x", 900)
    with pytest.raises(hipchat_import.ImportRefused, match="run the same import again"):
        imp._make_room(_Writer(str(tmp_path / "import-x")))
