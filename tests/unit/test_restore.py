"""Restore's checks that refuse before any change, and the job streams' load (against a throwaway redis-server)."""

from __future__ import annotations

import os

import pytest
from alembic.script import ScriptDirectory

from appliance.backup.redis_jobs import dump_jobs, entry_count
from appliance.backup.redis_jobs_restore import JobsDumpRefused, load_jobs
from appliance.backup.restore import Comparison, check_extracted, refusals, schema_relation
from hipchat_server.jobs import JobQueue
from hipchat_server.storage.migrations import MIGRATIONS_DIR, head_revision


def manifest(**changes) -> dict:
    base = {"format": 1, "schema_revision": head_revision(), "opensearch_version": "2.19.1", "appliance_version": "1.0"}
    return {**base, **changes}


def test_schema_revisions_are_ordered_by_alembics_graph_not_by_their_names():
    """The head is "same", every ancestor "older", a revision the code does not know "newer"."""
    script = ScriptDirectory(MIGRATIONS_DIR)
    revisions = [r.revision for r in script.walk_revisions()]  # head first
    assert schema_relation(revisions[0]) == "same"
    assert all(schema_relation(r) == "older" for r in revisions[1:])
    # Sorts before the head as a string, but no migration of this code has it.
    assert schema_relation("0000_from_the_future") == "newer"
    assert schema_relation("zzzz") == "newer"


def test_an_archive_of_a_newer_schema_or_another_opensearch_major_is_refused():
    """Each reason is named; an archive of this code's schema and major is accepted."""
    assert refusals(manifest(), "2.19.3") == []
    [newer] = refusals(manifest(schema_revision="9999_later"), "2.19.1")
    assert "newer than this appliance's code" in newer and "9999_later" in newer
    [major] = refusals(manifest(opensearch_version="3.0.0"), "2.19.1")
    assert "same major version" in major
    assert len(refusals(manifest(format=2, opensearch_version=None), "2.19.1")) == 2


def test_members_missing_after_extraction_are_named(tmp_path):
    (tmp_path / "mariadb").mkdir()
    (tmp_path / "mariadb" / "hipchat.sql.gz").write_bytes(b"x")
    files = {"mariadb/hipchat.sql.gz": {}, "spool/xmpp-0/000000000001.seg": {}}
    assert check_extracted({"files": files}, str(tmp_path)) == ["spool/xmpp-0/000000000001.seg"]


def test_a_comparison_is_exact_unless_said_otherwise():
    assert Comparison("users", 3, 3).ok and not Comparison("users", 3, 4).ok
    assert Comparison("messages", 3, 4, exact=False).ok and not Comparison("messages", 3, 2, exact=False).ok


def test_job_streams_round_trip_and_a_pending_job_is_handed_out_again(redis_server):
    """dump -> flush -> load gives the same entries and retries; a job a worker held at the backup is retried."""
    redis_server.flushall()
    queue = JobQueue(lambda: redis_server, claim_idle_seconds=3600)
    queue.ensure_groups()
    for n in range(3):
        queue.enqueue("webhook", {"n": n})
    held = queue.read("worker-a", count=1, block_ms=10)  # claimed, not finished: pending at the backup
    assert [j.payload["n"] for j in held] == [0]
    redis_server.zadd("jobs:delayed", {"webhook\n1-1\n{}": 123.0})
    dump = dump_jobs(redis_server)
    expected = entry_count(dump)

    redis_server.flushall()
    redis_server.set("jobs:leftover", "x")  # a restore replaces every jobs: key
    assert load_jobs(redis_server, dump) == expected == 4
    assert not redis_server.exists("jobs:leftover")
    assert redis_server.zrange("jobs:delayed", 0, -1, withscores=True) == [(b"webhook\n1-1\n{}", 123.0)]
    again = JobQueue(lambda: redis_server, claim_idle_seconds=3600).read("worker-b", count=10, block_ms=10)
    assert sorted(j.payload["n"] for j in again) == [0, 1, 2]
    # New entries get ids after the restored ones.
    new_id = queue.enqueue("webhook", {"n": 3})
    assert new_id > max(j.entry_id for j in again)


def test_a_dump_of_another_format_is_refused(redis_server):
    with pytest.raises(JobsDumpRefused):
        load_jobs(redis_server, {"format": 2, "streams": {}})


class FakeReader:
    """An opened archive: its manifest, what verify finds, and extract writing every listed member."""

    def __init__(self, manifest: dict, problems=()):
        self.manifest = manifest
        self.problems = list(problems)
        self.extracted = False

    def verify(self, progress=None):
        return self.problems

    def extract(self, dest, progress=None):
        self.extracted = True
        for member in self.manifest.get("files", {}):
            path = os.path.join(dest, *member.split("/"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            open(path, "wb").close()


class FakeServer:
    def __init__(self, snapshots_dir: str):
        from types import SimpleNamespace

        self.config = SimpleNamespace(
            appliance=SimpleNamespace(data_dirs={"opensearch-snapshots": snapshots_dir}),
            archive=SimpleNamespace(index_prefix="messages", spool_dir=snapshots_dir),
        )

    def get_config(self):
        return self.config

    def get_opensearch_client(self):
        return None


@pytest.fixture
def guarded(monkeypatch, tmp_path):
    """restore_archive on fakes where stopping the chat processes fails the test: nothing may change."""
    from appliance.backup import opensearch_restore, restore

    monkeypatch.setattr(opensearch_restore, "cluster_version", lambda client: "2.19.1")
    monkeypatch.setattr(restore, "appliance_data", lambda server: {"users": 5, "rooms": 2, "messages": 100})

    def must_not_stop(config):
        raise AssertionError("the chat processes were stopped")

    monkeypatch.setattr(restore, "stop_chat_core", must_not_stop)
    return restore, FakeServer(str(tmp_path))


def test_an_appliance_holding_data_is_not_replaced_without_confirmation(guarded, tmp_path):
    """No confirm callback, or one that says no: refused after verification, before anything stops; the staging is removed."""
    restore, server = guarded
    files = {"mariadb/hipchat.sql.gz": {"bytes": 0}}
    for confirm in (None, lambda holding: False):
        reader = FakeReader(manifest(files=files))
        with pytest.raises(restore.RestoreRefused, match="5 users, 2 rooms, 100 messages"):
            restore.restore_archive(server, reader, "a.tar", confirm=confirm)
        assert reader.extracted
    assert os.listdir(tmp_path) == []


def test_a_damaged_or_newer_archive_is_refused_before_the_question(guarded, tmp_path):
    """Verification problems and a newer schema refuse without asking and without extracting."""
    restore, server = guarded
    asked = []
    damaged = FakeReader(manifest(files={}), problems=["redis/jobs.json: SHA-256 differs from the manifest"])
    with pytest.raises(restore.RestoreRefused, match="damaged"):
        restore.restore_archive(server, damaged, "a.tar", confirm=asked.append)
    newer = FakeReader(manifest(schema_revision="9999_later"))
    with pytest.raises(restore.RestoreRefused, match="newer"):
        restore.restore_archive(server, newer, "b.tar", confirm=asked.append)
    assert asked == [] and not damaged.extracted and not newer.extracted
    assert os.listdir(tmp_path) == []


def test_clearing_the_spool_keeps_the_process_directories_and_removes_the_rest(tmp_path):
    """Process directories stay (emptied, with their owner); an import's or an earlier restore's goes; positions go."""
    from appliance.backup.restore import clear_spool

    for name in ("xmpp-0", "web", "import-20260101T000000-1", "restored-x-xmpp-0"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "000000000001.seg").write_bytes(b"frames")
    (tmp_path / "indexer-status.json").write_text("{}")
    assert clear_spool(str(tmp_path), {"xmpp-0", "web", "indexer"}) == 2
    assert sorted(os.listdir(tmp_path)) == ["web", "xmpp-0"]
    assert os.listdir(tmp_path / "web") == [] and os.listdir(tmp_path / "xmpp-0") == []
