"""OpenSearch as installed by the `opensearch` role: dedicated cluster-manager nodes and data nodes, one JVM each.

The tests talk to the real cluster over HTTP (stdlib urllib only) and find
the JVMs through supervisord (`supervisorctl pid opensearch:opensearch-<name>`).
Which node is the elected cluster manager is the cluster's answer, never an
assumption. Every disruptive test waits until supervisord has brought the
killed JVM back and the cluster is green again, so later tests see a whole
cluster.

Environment overrides (for running against another installation):
HIPCHAT_OPENSEARCH_URL (a data node's HTTP URL).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest

from tests.conftest import program_pid, supervisorctl, wait_for

OPENSEARCH_URL = os.environ.get("HIPCHAT_OPENSEARCH_URL", "http://127.0.0.1:9200").rstrip("/")

# The role's defaults (roles/opensearch/defaults/main.yml).
SUPERVISOR_GROUP = "opensearch"
MESSAGES_TEMPLATE = "messages"
SNAPSHOT_REPOSITORY = "hipchat-backups"

# The product promise: a dead cluster manager is replaced within this.
ELECTION_DEADLINE_SECONDS = 30
# supervisord restarts a killed JVM at once; the node then needs ~15-30 s to
# start, join and recover its shards.
REJOIN_DEADLINE_SECONDS = 180

TEST_INDEX = "hipchat-test-opensearch"
TEST_DOCUMENTS = 40


# --- helpers -----------------------------------------------------------------


class ApiError(Exception):
    """An HTTP error answer from OpenSearch."""

    def __init__(self, status: int, body):
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


def api(method: str, path: str, body=None, base: str = OPENSEARCH_URL, timeout: float = 30):
    """Call the OpenSearch REST API; returns the decoded JSON answer, raises ApiError on an HTTP error."""
    data = None
    headers = {}
    if body is not None:
        if isinstance(body, (dict, list)):
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        else:
            data = body.encode()
            headers["Content-Type"] = "application/x-ndjson"
    request = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read().decode()
    except urllib.error.HTTPError as e:
        text = e.read().decode()
        try:
            raise ApiError(e.code, json.loads(text)) from None
        except json.JSONDecodeError:
            raise ApiError(e.code, text) from None
    return json.loads(text) if text else None


def program_name(node_name: str) -> str:
    """The supervisor program (``group:program``) that runs OpenSearch node ``node_name``."""
    return f"{SUPERVISOR_GROUP}:opensearch-{node_name}"


def node_pid(node_name: str) -> int:
    """The PID supervisor reports for node ``node_name``'s JVM, 0 when not running."""
    return program_pid(program_name(node_name))


def supervised_node_names() -> set[str]:
    """The node names of the programs in supervisor's `opensearch` group."""
    out = supervisorctl("status", f"{SUPERVISOR_GROUP}:").stdout
    prefix = f"{SUPERVISOR_GROUP}:opensearch-"
    return {line.split()[0][len(prefix) :] for line in out.splitlines() if line.startswith(prefix)}


def nodes() -> dict[str, dict]:
    """Every node of the cluster by name: its roles and HTTP base URL."""
    answer = api("GET", "/_nodes/http")
    return {
        node["name"]: {
            "roles": sorted(node["roles"]),
            "url": "http://" + node["http"]["publish_address"],
        }
        for node in answer["nodes"].values()
    }


def data_node_names(all_nodes: dict[str, dict]) -> set[str]:
    return {name for name, node in all_nodes.items() if "data" in node["roles"]}


def cluster_manager_node_names(all_nodes: dict[str, dict]) -> set[str]:
    return {name for name, node in all_nodes.items() if "cluster_manager" in node["roles"]}


def elected_cluster_manager(base: str = OPENSEARCH_URL) -> str:
    """The name of the elected cluster manager as node ``base`` knows it; '' while there is none."""
    answer = api("GET", "/_cat/cluster_manager?format=json&local=true", base=base, timeout=5)
    name = answer[0].get("node") if answer else None
    return "" if name in (None, "", "-") else name


def serving_node_name() -> str:
    """The name of the node behind OPENSEARCH_URL."""
    return api("GET", "/")["name"]


def health(base: str = OPENSEARCH_URL) -> dict:
    return api("GET", "/_cluster/health", base=base, timeout=10)


def wait_for_whole_green_cluster(node_count: int, base: str = OPENSEARCH_URL) -> None:
    """Wait until ``node_count`` nodes are in the cluster and every shard copy is assigned."""

    def whole_and_green():
        answer = api("GET", f"/_cluster/health?wait_for_status=green&wait_for_nodes={node_count}&timeout=5s", base=base)
        return answer["status"] == "green" and answer["number_of_nodes"] == node_count

    wait_for(whole_and_green, REJOIN_DEADLINE_SECONDS, interval=1, what=f"a green cluster of {node_count} nodes")


def count(index: str, base: str = OPENSEARCH_URL) -> int:
    return api("GET", f"/{index}/_count", base=base)["count"]


def kill_node(node_name: str) -> int:
    """SIGKILL node ``node_name``'s JVM (as a crash would); returns the PID killed."""
    pid = node_pid(node_name)
    assert pid, f"supervisor reports no running JVM for {program_name(node_name)}"
    os.kill(pid, signal.SIGKILL)
    return pid


def jvm_start_millis(node_name: str) -> int:
    """When node ``node_name``'s JVM started (epoch milliseconds), as the cluster reports it; 0 when not in the cluster."""
    answer = api("GET", f"/_nodes/{node_name}/jvm", timeout=10)
    return max((node["jvm"]["start_time_in_millis"] for node in answer["nodes"].values()), default=0)


def wait_for_rejoin(node_name: str, old_pid: int, killed_at: float) -> None:
    """Wait until supervisor runs node ``node_name`` under a new PID and that new JVM is back in the cluster."""
    wait_for(
        lambda: node_pid(node_name) not in (0, old_pid),
        REJOIN_DEADLINE_SECONDS,
        what=f"supervisor to restart {program_name(node_name)}",
    )
    wait_for(
        lambda: jvm_start_millis(node_name) > killed_at * 1000,
        REJOIN_DEADLINE_SECONDS,
        what=f"the restarted {node_name} to join the cluster",
    )


# --- fixtures ----------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster_nodes():
    """The cluster's nodes, once the appliance's cluster is reachable and green."""
    expected = supervised_node_names()
    assert expected, f"supervisor has no program in the {SUPERVISOR_GROUP!r} group"
    wait_for_whole_green_cluster(len(expected))
    return nodes()


@pytest.fixture(scope="module")
def test_index(cluster_nodes):
    """An index of TEST_DOCUMENTS documents with 2 shards and 1 replica, deleted afterwards."""
    try:
        api("DELETE", f"/{TEST_INDEX}")
    except ApiError as e:
        if e.status != 404:
            raise
    api(
        "PUT",
        f"/{TEST_INDEX}",
        {
            "settings": {"index": {"number_of_shards": 2, "number_of_replicas": 1}},
            "mappings": {"properties": {"body": {"type": "text"}, "n": {"type": "integer"}}},
        },
    )
    lines = []
    for n in range(TEST_DOCUMENTS):
        lines.append(json.dumps({"index": {"_id": f"doc-{n}"}}))
        lines.append(json.dumps({"body": f"message number {n}", "n": n}))
    answer = api("POST", f"/{TEST_INDEX}/_bulk?refresh=true", "\n".join(lines) + "\n")
    assert not answer["errors"]
    wait_for_whole_green_cluster(len(cluster_nodes))
    yield TEST_INDEX
    wait_for_whole_green_cluster(len(cluster_nodes))
    api("DELETE", f"/{TEST_INDEX}")


# --- read-only checks --------------------------------------------------------


def test_every_supervised_node_is_in_the_cluster(cluster_nodes):
    """Each program of supervisor's `opensearch` group is a node of the one cluster, and no other node is."""
    assert set(cluster_nodes) == supervised_node_names()
    assert api("GET", "/")["cluster_name"] == "hipchat"


def test_nodes_have_dedicated_roles(cluster_nodes):
    """Cluster-manager nodes are dedicated (an odd number, at least 3, for a quorum); the rest are data nodes.

    The single-host default is 3 cluster-manager nodes and 2 data nodes.
    """
    managers = cluster_manager_node_names(cluster_nodes)
    data = data_node_names(cluster_nodes)
    for name in managers:
        assert cluster_nodes[name]["roles"] == ["cluster_manager"], name
    assert not managers & data
    assert managers | data == set(cluster_nodes)
    assert len(managers) >= 3 and len(managers) % 2 == 1
    assert len(data) >= 2
    assert elected_cluster_manager() in managers


def test_cluster_manager_nodes_hold_no_shards(cluster_nodes, test_index):
    """Every shard copy is started on a data node; the cluster-manager nodes hold none, and each data node holds some."""
    shards = api("GET", "/_cat/shards?format=json&h=index,shard,prirep,state,node")
    assert shards
    holders = {shard["node"] for shard in shards}
    assert not holders & cluster_manager_node_names(cluster_nodes)
    assert all(shard["state"] == "STARTED" for shard in shards), shards
    test_holders = {shard["node"] for shard in shards if shard["index"] == test_index}
    assert test_holders == data_node_names(cluster_nodes)


def test_message_indices_take_the_template(cluster_nodes):
    """A new `messages-*` index gets the template's shards, replicas and chat mapping (english body, keyword room).

    The body's light English stemming finds every form of a word from any
    other: "deploy" finds "deployments" (the Porter stemmer of the stock
    english analyzer makes "deploi" of one and "deploy" of the other).
    """
    template = api("GET", f"/_index_template/{MESSAGES_TEMPLATE}")["index_templates"][0]["index_template"]
    assert template["index_patterns"] == ["messages-*"]
    index = f"messages-test-{uuid.uuid4().hex[:8]}"
    api("PUT", f"/{index}")
    try:
        settings = api("GET", f"/{index}/_settings")[index]["settings"]["index"]
        expected = template["template"]["settings"]["index"]
        assert settings["number_of_shards"] == expected["number_of_shards"]
        assert settings["number_of_replicas"] == expected["number_of_replicas"]
        properties = api("GET", f"/{index}/_mapping")[index]["mappings"]["properties"]
        assert properties["room"]["type"] == "keyword"
        assert properties["timestamp"]["type"] == "date"
        assert properties["body"]["analyzer"] == "message_english"
        api(
            "PUT",
            f"/{index}/_doc/1?refresh=true",
            {"room": "ops", "body": "Deploying the servers", "timestamp": "2026-01-02T03:04:05Z"},
        )
        api("PUT", f"/{index}/_doc/2?refresh=true", {"room": "ops", "body": "two deployments today", "timestamp": "2026-01-02T03:04:06Z"})
        for word, expected_hits in (("server", 1), ("deploy", 2), ("deployed", 2), ("deployment", 2)):
            hits = api("POST", f"/{index}/_search", {"query": {"match": {"body": word}}})["hits"]["total"]["value"]
            assert hits == expected_hits, word
    finally:
        api("DELETE", f"/{index}")


def test_only_message_indices_are_created_on_write(cluster_nodes):
    """Writing to a missing index that is not a message index is refused instead of creating it."""
    with pytest.raises(ApiError) as refused:
        api("PUT", f"/not-a-message-index-{uuid.uuid4().hex[:8]}/_doc/1", {"a": 1})
    assert refused.value.status == 404


def test_snapshot_repository_takes_a_snapshot(cluster_nodes, test_index):
    """The filesystem repository `hipchat-backups` is reachable from every node and a snapshot of an index succeeds."""
    verified = api("POST", f"/_snapshot/{SNAPSHOT_REPOSITORY}/_verify")
    verified_names = {node["name"] for node in verified["nodes"].values()}
    assert verified_names == set(cluster_nodes)
    snapshot = f"test-{uuid.uuid4().hex[:8]}"
    answer = api(
        "PUT",
        f"/_snapshot/{SNAPSHOT_REPOSITORY}/{snapshot}?wait_for_completion=true",
        {"indices": test_index, "include_global_state": False},
        timeout=120,
    )
    try:
        assert answer["snapshot"]["state"] == "SUCCESS"
        assert answer["snapshot"]["shards"]["failed"] == 0
    finally:
        api("DELETE", f"/_snapshot/{SNAPSHOT_REPOSITORY}/{snapshot}", timeout=120)


# --- failures ----------------------------------------------------------------


@pytest.mark.disruptive
def test_killed_cluster_manager_is_replaced(cluster_nodes, test_index):
    """SIGKILL of the elected cluster manager's JVM: another is elected within 30 s, no document is lost,
    and supervisor brings the killed node back into a green cluster."""
    elected = elected_cluster_manager()
    assert elected in cluster_manager_node_names(cluster_nodes)
    killed_at = time.time()
    killed_pid = kill_node(elected)
    started = time.monotonic()

    def another_elected() -> str:
        name = elected_cluster_manager()
        return name if name != elected else ""

    new = wait_for(
        another_elected,
        ELECTION_DEADLINE_SECONDS,
        interval=0.2,
        what=f"a cluster manager other than {elected} to be elected",
    )
    elapsed = time.monotonic() - started
    assert new in cluster_manager_node_names(cluster_nodes)
    assert elapsed < ELECTION_DEADLINE_SECONDS, f"{new} was elected {elapsed:.1f} s after {elected} was killed"
    assert count(test_index) == TEST_DOCUMENTS

    wait_for_rejoin(elected, killed_pid, killed_at)
    wait_for_whole_green_cluster(len(cluster_nodes))
    assert count(test_index) == TEST_DOCUMENTS


@pytest.mark.disruptive
def test_killed_data_node_loses_no_reads_or_writes(cluster_nodes, test_index):
    """SIGKILL of a data node's JVM: every document can still be read and new ones written (replicas take over);
    supervisor brings the node back and the cluster turns green with every document."""
    serving = serving_node_name()
    victim = sorted(data_node_names(cluster_nodes) - {serving})[0]
    killed_at = time.time()
    killed_pid = kill_node(victim)

    wait_for(
        lambda: victim not in nodes(),
        ELECTION_DEADLINE_SECONDS,
        what=f"the cluster to drop {victim}",
    )
    assert count(test_index) == TEST_DOCUMENTS
    assert api("GET", f"/{test_index}/_doc/doc-7")["_source"]["n"] == 7
    hits = api("POST", f"/{test_index}/_search", {"query": {"match": {"body": "number"}}, "size": 0})
    assert hits["hits"]["total"]["value"] == TEST_DOCUMENTS
    written = api(
        "PUT",
        f"/{test_index}/_doc/written-while-down?refresh=true",
        {"body": "written while a data node was down", "n": -1},
    )
    assert written["result"] == "created"
    assert count(test_index) == TEST_DOCUMENTS + 1

    wait_for_rejoin(victim, killed_pid, killed_at)
    wait_for_whole_green_cluster(len(cluster_nodes))
    assert count(test_index) == TEST_DOCUMENTS + 1
    victim_url = cluster_nodes[victim]["url"]
    assert api("GET", f"/{test_index}/_doc/written-while-down?preference=_local", base=victim_url)["found"]
    api("DELETE", f"/{test_index}/_doc/written-while-down?refresh=true")


class ClusterWatch:
    """Samples the cluster from a background thread while something changes it: how many nodes it has, and
    whether a write (to ``index``, through whichever data node answers) is acknowledged."""

    def __init__(self, data_urls: list[str], index: str, interval: float = 0.25):
        self.data_urls, self.index, self.interval = data_urls, index, interval
        self.node_counts: list[int] = []
        self.acknowledged: list[str] = []
        self.unserved = 0  # rounds in which no data node answered
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cluster-watch", daemon=True)

    def __enter__(self) -> "ClusterWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        n = 0
        while not self._stop.wait(self.interval):
            n += 1
            doc = f"rolling-{uuid.uuid4().hex[:8]}-{n}"
            for base in self.data_urls:
                try:
                    self.node_counts.append(api("GET", "/_cluster/health", base=base, timeout=2)["number_of_nodes"])
                    api("PUT", f"/{self.index}/_doc/{doc}", {"body": "written during a rolling restart", "n": n}, base=base, timeout=10)
                    self.acknowledged.append(doc)
                    break
                except (OSError, ApiError):
                    continue  # that node is restarting: ask the other
            else:
                self.unserved += 1


def data_heaps_respelled(nodes_: list[dict]) -> list[dict]:
    """The profile's nodes with each data node's heap written another way (1g -> 1024m): the same JVM, a changed file."""

    def respelled(heap: str) -> str:
        size, unit = int(heap[:-1]), heap[-1]
        if unit == "g":
            return f"{size * 1024}m"
        assert unit == "m" and size % 1024 == 0, f"cannot respell the heap {heap}"
        return f"{size // 1024}g"

    return [dict(node, heap=respelled(node["heap"])) if "data" in node["roles"] else node for node in nodes_]


@pytest.mark.disruptive
def test_a_changed_node_configuration_restarts_those_nodes_one_at_a_time_while_the_cluster_serves(cluster_nodes, test_index):
    """What an upgrade's installer does when a node's configuration changed: the role restarts only the changed
    nodes, one at a time, the next only once the cluster is green again. The cluster never loses both data
    nodes at once, and answers reads and writes throughout; the unchanged nodes keep running."""
    import fcntl
    import re

    import yaml

    from tests.conftest import REPO_DIR, run_installer

    with open(os.path.join(REPO_DIR, "installer", "profiles", "single-host.yml")) as f:
        profile_nodes = yaml.safe_load(f)["opensearch_nodes"]
    assert {n["name"] for n in profile_nodes} == set(cluster_nodes), "this test changes the single-host profile's nodes"
    data = sorted(data_node_names(cluster_nodes))
    pids = {name: node_pid(name) for name in cluster_nodes}
    data_urls = [cluster_nodes[name]["url"] for name in data]
    with open("/tmp/hipchat-deploy.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with ClusterWatch(data_urls, test_index) as watch:
                changed = run_installer("--tags", "opensearch", "-e", json.dumps({"opensearch_nodes": data_heaps_respelled(profile_nodes)}))
        finally:
            restored = run_installer("--tags", "opensearch")  # the profile's own spelling again (another rolling restart)
    assert changed.returncode == 0, changed.stdout[-3000:] + changed.stderr[-2000:]
    assert restored.returncode == 0, restored.stdout[-3000:] + restored.stderr[-2000:]

    # The restart runs in the role's handler, so its steps show as RUNNING HANDLER in Ansible's output.
    tasks = re.findall(r"^(?:TASK|RUNNING HANDLER) \[opensearch : (.+?)\] \*", changed.stdout, re.MULTILINE)
    steps = [t for t in tasks if t.startswith(("Restart the OpenSearch node", "Wait until the cluster is green again"))]
    assert steps == [
        step for name in data for step in (f"Restart the OpenSearch node {name}.", f"Wait until the cluster is green again after restarting {name}.")
    ], steps
    for name in cluster_nodes:
        now = node_pid(name)
        if name in data:
            assert now not in (0, pids[name]), f"{name} was not restarted"
        else:
            assert now == pids[name], f"{name}'s configuration did not change, yet it was restarted"

    print(f"{len(watch.node_counts)} samples, fewest nodes {min(watch.node_counts)}, {len(watch.acknowledged)} writes acknowledged, {watch.unserved} rounds unserved")
    assert watch.node_counts and min(watch.node_counts) >= len(cluster_nodes) - 1, "two nodes were down at once"
    assert len(set(watch.node_counts)) > 1, "no restart was seen while sampling"
    assert watch.unserved == 0, f"in {watch.unserved} rounds no data node answered"
    wait_for_whole_green_cluster(len(cluster_nodes))
    found = api("POST", f"/{test_index}/_mget", {"ids": watch.acknowledged})["docs"]
    lost = [doc["_id"] for doc in found if not doc.get("found")]
    assert not lost, f"{len(lost)} acknowledged writes are gone, e.g. {lost[:3]}"
    api("POST", f"/{test_index}/_delete_by_query?refresh=true", {"query": {"ids": {"values": watch.acknowledged}}})
