"""Prometheus ``/metrics`` of every chat process and of the exporter, scraped from the installed appliance.

Each figure is checked to move with what the test does (a login, a message,
an API request), not only to be present.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import urllib.error
import urllib.request

import pytest

from tests.conftest import wait_for
from tests.e2e.xmpp_client import login, run, send_durably

HTTPS_METRICS = "https://127.0.0.1/metrics"


def scrape(url: str) -> str:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with urllib.request.urlopen(url, timeout=10, context=context if url.startswith("https") else None) as response:
        assert response.status == 200
        assert response.headers["content-type"].startswith("text/plain; version=")  # Prometheus text format
        return response.read().decode()


def value(text: str, name: str, labels: str = "") -> float | None:
    """The sample ``name{labels}`` (labels as printed, e.g. ``area="api",method="GET",status="4xx"``), None when absent."""
    pattern = "^" + re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else r"") + r" (\S+)$"
    match = re.search(pattern, text, re.M)
    return float(match.group(1)) if match else None


def total(texts, name: str, labels: str = "") -> float:
    return sum(value(t, name, labels) or 0.0 for t in texts)


@pytest.fixture(scope="module")
def ports(config):
    m = config.metrics
    return {
        "xmpp": [f"http://127.0.0.1:{m.xmpp_base_port + n}/metrics" for n in range(config.xmpp.frontend_processes)],
        "indexer": f"http://127.0.0.1:{m.indexer_port}/metrics",
        "worker": f"http://127.0.0.1:{m.worker_base_port}/metrics",
        "exporter": f"http://127.0.0.1:{m.exporter_port}/metrics",
    }


def test_https_metrics_count_api_requests_and_their_latency():
    """An API request shows in the HTTPS process's request counter and latency histogram."""
    before = scrape(HTTPS_METRICS)
    try:
        urllib.request.urlopen(
            urllib.request.Request("https://127.0.0.1/v2/room"),
            timeout=10,
            context=ssl._create_unverified_context(),
        )
    except urllib.error.HTTPError as e:
        assert e.code == 401  # no credentials: still an API request answered
    after = scrape(HTTPS_METRICS)
    labels = 'area="api",method="GET",status="4xx"'
    assert (value(after, "hipchat_http_requests_total", labels) or 0) >= (value(before, "hipchat_http_requests_total", labels) or 0) + 1
    count = 'area="api"'
    assert value(after, "hipchat_http_request_seconds_count", count) > (value(before, "hipchat_http_request_seconds_count", count) or 0)


def test_xmpp_front_ends_count_connections_and_messages(ports, endpoint, alice, bob):
    """A login raises the connections gauge of the front ends; a message raises their message counter."""

    def figures(name, labels=""):
        return total([scrape(url) for url in ports["xmpp"]], name, labels)

    messages = figures("hipchat_xmpp_stanzas_received_total", 'stanza="message"')

    async def scenario():
        sender, ok = await login(endpoint, alice, plugins=("xep_0198",))
        assert ok
        try:
            # Other tests log in and out meanwhile: the one sure thing is that ours is counted.
            during = await asyncio.to_thread(figures, "hipchat_xmpp_connections")
            await send_durably(sender, f"{bob}@{endpoint.domain}", "counted by the metrics")
            return during
        finally:
            await sender.close()

    during = run(scenario())
    assert during >= 1
    assert figures("hipchat_xmpp_stanzas_received_total", 'stanza="message"') >= messages + 1


def test_indexer_reports_spool_depth_lag_and_indexed_messages(ports):
    """The indexer's endpoint has the spool backlog, the indexing lag and a count of indexed messages."""
    text = scrape(ports["indexer"])
    for name in ("hipchat_spool_backlog_bytes", "hipchat_indexing_oldest_unindexed_seconds", "hipchat_indexed_messages_total"):
        assert value(text, name) is not None, f"{name} missing"
    assert value(text, "hipchat_indexing_lag_seconds", 'quantile="0.99"') is not None


def test_worker_reports_job_queue_depth(ports):
    """A worker's endpoint has the job queue depth per kind, read from Redis at the scrape."""
    text = scrape(ports["worker"])
    assert value(text, "hipchat_jobs_queue_up") == 1.0
    assert value(text, "hipchat_jobs_waiting", 'kind="webhook"') is not None
    assert value(text, "hipchat_jobs_dead") is not None


def test_exporter_reports_opensearch_heap_per_node_and_redis(ports, chat_server):
    """The exporter has every OpenSearch node's heap and the Redis primary's figures, matching the services."""
    def answered():
        text = scrape(ports["exporter"])
        return text if value(text, "hipchat_opensearch_up") == 1.0 else None

    text = wait_for(answered, 30, what="the exporter to reach OpenSearch")
    nodes = {n["name"] for n in chat_server.get_opensearch_client().nodes.info()["nodes"].values()}
    for node in nodes:
        percent = value(text, "hipchat_opensearch_heap_used_percent", f'node="{node}"')
        assert percent is not None and 0 < percent <= 100, f"no heap figure for {node}"
    assert value(text, "hipchat_redis_up") == 1.0
    replicas = chat_server.get_redis_primary().info("replication")["connected_slaves"]
    assert value(text, "hipchat_redis_connected_replicas") == replicas
    assert value(text, "hipchat_redis_used_memory_bytes") > 0


def test_metrics_ports_listen_on_loopback_only(ports):
    """No metrics port answers on another address of this host: they bind 127.0.0.1."""
    import subprocess

    listening = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True, check=True).stdout
    for url in [*ports["xmpp"], ports["indexer"], ports["worker"], ports["exporter"]]:
        port = url.rsplit(":", 1)[1].split("/")[0]
        binds = [line.split()[3] for line in listening.splitlines() if line.split()[3].endswith(f":{port}")]
        assert binds == [f"127.0.0.1:{port}"], f"port {port} binds {binds}"


def test_workers_count_jobs_completed_and_failed_by_kind(config, endpoint, new_user):
    """A webhook delivery that succeeds raises ``hipchat_jobs_completed{kind="webhook"}`` and one refused (HTTP 400)
    raises ``hipchat_jobs_failed{kind="webhook",next="dead"}``, summed over the worker processes."""
    from tests.e2e.test_api_rooms import Api
    from tests.e2e.test_rooms import join, member
    from tests.e2e.test_webhooks import Receiver, room_with_webhook, say

    workers = [f"http://127.0.0.1:{config.metrics.worker_base_port + n}/metrics" for n in range(2)]
    completed, dead = "hipchat_jobs_completed_total", "hipchat_jobs_failed_total"

    def figures():
        texts = [scrape(url) for url in workers]
        return total(texts, completed, 'kind="webhook"'), total(texts, dead, 'kind="webhook",next="dead"')

    owner = new_user()
    api = Api(config, owner)
    good, refusing = Receiver(default=(204, b"")), Receiver(default=(400, b"no"))
    room_id = None
    try:
        room_id, room, _ = room_with_webhook(config, owner, {"url": good.url, "event": "room_message"})
        api.ok("POST", f"room/{room_id}/webhook", {"url": refusing.url, "event": "room_message"}, status=201)
        before = figures()

        async def scenario():
            client = await member(endpoint, owner)
            try:
                await join(client, room, "owner")
                await say(client, room, "counted by the workers")
                await asyncio.sleep(0.5)
            finally:
                await client.close()

        run(scenario())
        good.wait_for_requests(1, 20)
        refusing.wait_for_requests(1, 20)
        wait_for(lambda: figures()[0] >= before[0] + 1 and figures()[1] >= before[1] + 1, 10, what="the job counters to move")
    finally:
        if room_id is not None:
            api.ok("DELETE", f"room/{room_id}", status=204)  # and its webhooks, whose receivers are gone
        good.close()
        refusing.close()
