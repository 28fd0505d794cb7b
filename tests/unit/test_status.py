"""Status checks on fake clients: what makes a part unhealthy, and what only warns."""

from __future__ import annotations

from appliance.lib.status import StatusReport, check_disk, check_opensearch, check_spool


class FakeOpenSearch:
    def __init__(self, health, nodes):
        self._health, self._nodes = health, nodes
        self.cluster = self
        self.cat = self

    def health(self, request_timeout):
        if isinstance(self._health, Exception):
            raise self._health
        return self._health

    def nodes(self, request_timeout, format, h):
        return self._nodes


GREEN = {"status": "green", "number_of_nodes": 5, "number_of_data_nodes": 2, "active_shards": 4, "unassigned_shards": 0}
NODES = [
    {"name": "cm-1", "node.roles": "m", "heap.percent": "30", "cluster_manager": "*"},
    {"name": "data-1", "node.roles": "di", "heap.percent": "50", "cluster_manager": "-"},
]


def test_green_cluster_with_an_elected_manager_is_healthy():
    """Green health with an elected cluster manager is healthy and names that manager."""
    section = check_opensearch(FakeOpenSearch(GREEN, NODES))
    assert section.healthy
    assert section.details["elected_cluster_manager"] == "cm-1"


def test_yellow_cluster_is_unhealthy_with_the_unassigned_count():
    """Yellow health is a problem that says how many shards are unassigned."""
    section = check_opensearch(FakeOpenSearch({**GREEN, "status": "yellow", "unassigned_shards": 2}, NODES))
    assert not section.healthy
    assert section.problems == ["cluster health is yellow (2 unassigned shards)"]


def test_high_heap_warns_without_failing():
    """A heap above 75% is a warning naming the node, not a failure."""
    nodes = [dict(NODES[0]), {**NODES[1], "heap.percent": "91"}]
    section = check_opensearch(FakeOpenSearch(GREEN, nodes))
    assert section.healthy
    assert section.warnings == ["node data-1 heap at 91% (above 75%)"]


def test_unreachable_cluster_is_a_problem_not_an_exception():
    """A cluster that does not answer makes the section unhealthy and says so."""
    section = check_opensearch(FakeOpenSearch(ConnectionError("refused"), []))
    assert not section.healthy
    assert "does not answer" in section.problems[0]


def test_missing_data_directory_is_named(tmp_path):
    """A data directory that does not exist is a problem naming it; an existing one reports its size."""
    (tmp_path / "redis").mkdir()
    (tmp_path / "redis" / "dump.rdb").write_bytes(b"x" * 1000)
    section = check_disk({"redis": str(tmp_path / "redis"), "mariadb": str(tmp_path / "mariadb")})
    assert not section.healthy
    assert section.problems == [f"data directory {tmp_path / 'mariadb'} (mariadb) is missing"]
    assert section.details["directories"][0]["bytes"] == 1000


def test_report_is_healthy_only_when_every_section_is():
    """One unhealthy section makes the whole report unhealthy."""
    good = check_opensearch(FakeOpenSearch(GREEN, NODES))
    bad = check_opensearch(FakeOpenSearch(ConnectionError("x"), []))
    assert StatusReport([good]).healthy
    assert not StatusReport([good, bad]).healthy


# The spool and the indexer draining it.
def _spool_with_backlog(tmp_path, stamp: str, status: dict | None):
    """A spool dir with one record stamped ``stamp`` waiting in xmpp-0, and the indexer's status file."""
    import json

    from hipchat_server.storage.spool import encode_frame

    spool_dir = tmp_path / "spool"
    (spool_dir / "xmpp-0").mkdir(parents=True)
    (spool_dir / "xmpp-0" / "000000000001.seg").write_bytes(encode_frame({"id": "01J", "timestamp": stamp}))
    if status is not None:
        (spool_dir / "indexer-status.json").write_text(json.dumps(status))
    return spool_dir


def _archive(spool_dir, **overrides):
    from hipchat_server.config import ArchiveConfig

    return ArchiveConfig(spool_dir=str(spool_dir), **{"spool_min_free_mb": 1, **overrides})


SPOOL_NOW = 1795684530.0  # 2026-11-26T09:15:30Z


def test_an_indexer_keeping_up_is_quiet(tmp_path):
    """A message spooled a second ago, the indexer successful a second ago: backlog shown, no warning."""
    status = {"started": "2026-11-26T09:00:00.000Z", "last_success": "2026-11-26T09:15:29.000Z"}
    spool_dir = _spool_with_backlog(tmp_path, "2026-11-26T09:15:29.500Z", status)
    section = check_spool(_archive(spool_dir), now=SPOOL_NOW)
    assert section.healthy and section.warnings == []
    assert section.details["backlog_bytes"] > 0
    assert section.details["oldest_unindexed_age_seconds"] == 0.5


def test_a_stalled_indexer_warns_with_its_last_error(tmp_path):
    """No success for over 60 s while messages wait is a warning naming the indexer's last error."""
    status = {
        "started": "2026-11-26T09:00:00.000Z",
        "last_success": "2026-11-26T09:13:00.000Z",
        "last_error": "bulk request of 3 records failed: ConnectionError",
        "last_error_at": "2026-11-26T09:15:29.000Z",
    }
    spool_dir = _spool_with_backlog(tmp_path, "2026-11-26T09:14:00.000Z", status)
    section = check_spool(_archive(spool_dir), now=SPOOL_NOW)
    assert section.healthy
    [warning] = section.warnings
    assert warning.startswith("the indexer has not indexed anything for 150 s while 0.0 MiB wait")
    assert "last error: bulk request of 3 records failed" in warning


def test_a_message_waiting_over_30_s_warns_that_indexing_is_behind(tmp_path):
    """The indexer succeeds, but the oldest waiting message is 45 s old: indexing is behind."""
    status = {"started": "2026-11-26T09:00:00.000Z", "last_success": "2026-11-26T09:15:25.000Z"}
    spool_dir = _spool_with_backlog(tmp_path, "2026-11-26T09:14:45.000Z", status)
    section = check_spool(_archive(spool_dir), now=SPOOL_NOW)
    assert section.warnings == ["indexing is behind: the oldest message not yet indexed is 45 s old"]


def test_a_message_that_just_arrived_after_a_quiet_hour_does_not_warn(tmp_path):
    """An idle indexer's old last success is no stall when the only waiting message is a moment old."""
    status = {"started": "2026-11-26T08:00:00.000Z", "last_success": "2026-11-26T08:10:00.000Z"}
    spool_dir = _spool_with_backlog(tmp_path, "2026-11-26T09:15:29.800Z", status)
    assert check_spool(_archive(spool_dir), now=SPOOL_NOW).warnings == []


def test_a_backlog_above_the_warning_size_warns(tmp_path):
    """More spooled than spool_warn_bytes is a warning even while the indexer keeps succeeding."""
    status = {"started": "2026-11-26T09:00:00.000Z", "last_success": "2026-11-26T09:15:29.000Z"}
    spool_dir = _spool_with_backlog(tmp_path, "2026-11-26T09:15:29.500Z", status)
    section = check_spool(_archive(spool_dir, spool_warn_bytes=10), now=SPOOL_NOW)
    assert section.warnings[0].endswith("of messages wait to be indexed (warning above 0 MiB)")


def test_indexed_positions_from_the_status_file_are_not_backlog(tmp_path):
    """Bytes before the position the indexer saved are indexed: no backlog, nothing waiting."""
    spool_dir = _spool_with_backlog(tmp_path, "2026-11-26T09:00:00.000Z", None)
    size = (spool_dir / "xmpp-0" / "000000000001.seg").stat().st_size
    import json

    (spool_dir / "indexer-status.json").write_text(
        json.dumps({"last_success": "2026-11-26T09:00:01.000Z", "directories": {"xmpp-0": {"segment": 1, "offset": size}}})
    )
    section = check_spool(_archive(spool_dir), now=SPOOL_NOW)
    assert section.details["backlog_bytes"] == 0 and section.details["oldest_unindexed"] is None
    assert section.warnings == []


def test_low_disk_under_the_spool_warns_then_fails(tmp_path, monkeypatch):
    """Below twice spool_min_free_mb free is a warning; below it (messages refused) a problem."""
    import shutil
    from collections import namedtuple

    spool_dir = _spool_with_backlog(tmp_path, "2026-11-26T09:15:29.500Z", {"last_success": "2026-11-26T09:15:29.000Z"})
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 << 30, 0, 1500 << 20))
    section = check_spool(_archive(spool_dir, spool_min_free_mb=1000), now=SPOOL_NOW)
    assert section.healthy and section.warnings == ["only 1500 MiB free on the spool's filesystem; new messages are refused below 1000 MiB"]
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 << 30, 0, 500 << 20))
    section = check_spool(_archive(spool_dir, spool_min_free_mb=1000), now=SPOOL_NOW)
    assert not section.healthy
    assert section.problems == ["only 500 MiB free on the spool's filesystem: new messages are refused below 1000 MiB"]


def test_a_missing_spool_directory_is_a_problem(tmp_path):
    """Without the spool directory no message can be stored."""
    section = check_spool(_archive(tmp_path / "nope"))
    assert not section.healthy and "is missing" in section.problems[0]


def test_the_indexing_line_is_rendered(tmp_path):
    """The status screen has a Message indexing line with the backlog per directory and the oldest message's age."""
    from rich.console import Console

    from appliance.lib.status_view import render_spool

    spool_dir = _spool_with_backlog(tmp_path, "2026-11-26T09:15:20.000Z", {"last_success": "2026-11-26T09:15:29.000Z"})
    console = Console(record=True, width=300)
    render_spool(console, check_spool(_archive(spool_dir), now=SPOOL_NOW))
    text = console.export_text()
    assert "Message indexing: backlog" in text and "(xmpp-0 " in text and "oldest waiting 10 s" in text
