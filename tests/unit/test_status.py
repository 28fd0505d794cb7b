"""Status checks on fake clients: what makes a part unhealthy, and what only warns."""

from __future__ import annotations

from appliance.lib.status import StatusReport, check_disk, check_opensearch


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
