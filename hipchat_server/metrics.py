"""Prometheus metrics of the chat processes (prometheus-client), the dashboard's figures for the customer's monitoring.

Each process has its own registry (prometheus-client's default) and serves it
at ``/metrics``: the HTTPS process on its own port (127.0.0.1 or an admin's
API token, `MetricsResource`), every other process on 127.0.0.1 at the port
the ``metrics`` config section gives it (`serve`).

Counters are counted where things happen (stanzas from clients, API
requests); gauges that some other part already knows (connections, spool
backlog, indexing lag, job queue depth) are read when scraped, by collectors,
so a scrape costs the hot paths nothing.
"""

from __future__ import annotations

import logging
import os
import time

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, disable_created_metrics, exposition, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from twisted.internet import threads
from twisted.web import resource, server

log = logging.getLogger("hipchat.metrics")

# A "_created" series per counter says when the process started counting: noise for every scrape.
disable_created_metrics()

STANZAS_RECEIVED = Counter(
    "hipchat_xmpp_stanzas_received",
    "Stanzas received from clients on this front end, by kind (messages: rate of stanza='message').",
    ["stanza"],
)
#: One child per stanza kind, looked up once: a stanza's count is then a single increment.
STANZA_COUNTERS = {name: STANZAS_RECEIVED.labels(name) for name in ("message", "presence", "iq")}

API_REQUESTS = Counter(
    "hipchat_http_requests",
    "HTTPS requests answered, by area (api = REST API v2, web = pages, admin, websocket, health, metrics), method and status class.",
    ["area", "method", "status"],
)
API_LATENCY = Histogram(
    "hipchat_http_request_seconds",
    "Time from a request's arrival to its last byte, by area.",
    ["area"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)

#: First path segment -> area label; anything else is "web" (the web client and its files).
AREAS = {b"v2": "api", b"admin": "admin", b"xmpp-websocket": "websocket", b"health": "health", b"metrics": "metrics", b"search": "search"}
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


JOBS_COMPLETED = Counter("hipchat_jobs_completed", "Background jobs this worker finished, by kind (webhook, mention_mail, push).", ["kind"])
JOBS_FAILED = Counter(
    "hipchat_jobs_failed",
    "Background job attempts that failed on this worker, by kind and what came next: retry (tried again later) or dead (a dead letter).",
    ["kind", "next"],
)


def job_kinds(kinds) -> None:
    """Show the job counters of ``kinds`` from the start, at 0 (a counter that appears later hides its first rate)."""
    for kind in kinds:
        JOBS_COMPLETED.labels(kind)
        JOBS_FAILED.labels(kind, "retry")
        JOBS_FAILED.labels(kind, "dead")


def count_job(kind: str, outcome: str) -> None:
    """Count one job run: ``outcome`` is the runner's "done", "retry" or "dead"."""
    if outcome == "done":
        JOBS_COMPLETED.labels(kind).inc()
    else:
        JOBS_FAILED.labels(kind, outcome).inc()


def count_stanza(name: str) -> None:
    """Count one stanza a client sent (``message``, ``presence`` or ``iq``)."""
    counter = STANZA_COUNTERS.get(name)
    if counter is not None:
        counter.inc()


def area_of(path: bytes) -> str:
    segment = path.split(b"?", 1)[0].lstrip(b"/").split(b"/", 1)[0]
    return AREAS.get(segment, "web")


class MeasuredSite(server.Site):
    """A `twisted.web.server.Site` that counts every request and its duration (`API_REQUESTS`, `API_LATENCY`)."""

    def getResourceFor(self, request):
        request._metrics_started = time.monotonic()
        return super().getResourceFor(request)

    def log(self, request):
        super().log(request)
        started = getattr(request, "_metrics_started", None)
        if started is None:  # refused before a resource was looked up (a malformed request line)
            return
        area = area_of(request.uri or b"/")
        method = request.method.decode("ascii", "replace") if request.method else "?"
        status = f"{(request.code or 0) // 100}xx"
        API_REQUESTS.labels(area, method if method in METHODS else "other", status).inc()
        API_LATENCY.labels(area).observe(time.monotonic() - started)


# ---------------------------------------------------------------- collectors read at scrape time


class ConnectionsCollector:
    """``hipchat_xmpp_connections``: client streams this front end holds; logins since start."""

    def __init__(self, sessions, factories):
        self.sessions, self.factories = sessions, factories

    def describe(self):
        return []  # read nothing until the first scrape

    def collect(self):
        connections = GaugeMetricFamily("hipchat_xmpp_connections", "Client streams (bound sessions) this front end holds.")
        connections.add_metric([], len(self.sessions.connections()))
        yield connections
        logins = CounterMetricFamily("hipchat_xmpp_logins", "Successful logins on this front end since it started.")
        logins.add_metric([], sum(f.logins for f in self.factories))
        yield logins


class IndexingCollector:
    """The spool and the indexer, from the same source as ``hipchat-appliance status`` (the spool on disk, the indexer's status file)."""

    def __init__(self, archive_config):
        self.archive = archive_config

    def describe(self):
        return []  # read nothing until the first scrape

    def collect(self):
        from appliance.lib.status import check_spool
        from hipchat_server.indexing import read_status

        details = check_spool(self.archive).details
        status = read_status(self.archive.spool_dir) or {}
        depth = GaugeMetricFamily("hipchat_spool_backlog_bytes", "Bytes of messages in the spool not yet indexed (spool depth).")
        depth.add_metric([], details.get("backlog_bytes", 0))
        yield depth
        oldest = GaugeMetricFamily(
            "hipchat_indexing_oldest_unindexed_seconds", "Age of the oldest message not yet indexed; 0 when nothing waits."
        )
        oldest.add_metric([], details.get("oldest_unindexed_age_seconds") or 0.0)
        yield oldest
        minute = status.get("last_minute") or {}
        lag = GaugeMetricFamily(
            "hipchat_indexing_lag_seconds", "Indexing lag over the indexer's last minute (arrival to searchable), by quantile.", labels=["quantile"]
        )
        lag.add_metric(["0.5"], minute.get("lag_p50_ms", 0) / 1000)
        lag.add_metric(["0.99"], minute.get("lag_p99_ms", 0) / 1000)
        yield lag
        indexed = CounterMetricFamily("hipchat_indexed_messages", "Messages indexed since the indexer started (rate: messages per second).")
        indexed.add_metric([], status.get("indexed_total", 0))
        yield indexed
        free = GaugeMetricFamily("hipchat_spool_filesystem_free_bytes", "Free bytes on the spool's filesystem.")
        free.add_metric([], details.get("filesystem_free_bytes", 0))
        yield free


class JobQueueCollector:
    """The background job queue (Redis): jobs waiting per kind, retries scheduled, dead letters.

    The queue is shared: every worker reports the same figures (use ``max``, not ``sum``).
    """

    def __init__(self, redis_factory):
        self.redis_factory = redis_factory

    def describe(self):
        return []  # read nothing until the first scrape

    def collect(self):
        from hipchat_server.jobs import JobQueue

        up = GaugeMetricFamily("hipchat_jobs_queue_up", "1 when the job queue in Redis answered this scrape.")
        try:
            counts = JobQueue(self.redis_factory).counts()
        except Exception as e:  # Redis failing over: say so instead of failing the scrape
            log.warning("job queue figures unavailable: %s", e)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        waiting = GaugeMetricFamily("hipchat_jobs_waiting", "Jobs waiting or in progress, by kind (job queue depth).", labels=["kind"])
        for kind, n in sorted(counts.waiting.items()):
            waiting.add_metric([kind], n)
        yield waiting
        retrying = GaugeMetricFamily("hipchat_jobs_retrying", "Failed jobs scheduled to be tried again.")
        retrying.add_metric([], counts.retrying)
        yield retrying
        dead = GaugeMetricFamily("hipchat_jobs_dead", "Dead letters: jobs that failed every attempt.")
        dead.add_metric([], counts.dead)
        yield dead


def register(collector, registry: CollectorRegistry = REGISTRY) -> None:
    registry.register(collector)


def process_number(default: int = 0) -> int:
    """N of a numbered supervisor program (``xmpp-N``, ``worker-N``): its metrics port is base + N."""
    name = os.environ.get("SUPERVISOR_PROCESS_NAME", "")
    tail = name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else default


def serve(port: int, registry: CollectorRegistry = REGISTRY) -> bool:
    """Serve ``/metrics`` on 127.0.0.1:``port`` from a thread of prometheus-client's; False (logged) if the port is taken."""
    try:
        start_http_server(port, addr="127.0.0.1", registry=registry)
    except OSError as e:
        log.error("cannot serve metrics on 127.0.0.1:%d: %s", port, e)
        return False
    log.info("metrics on http://127.0.0.1:%d/metrics", port)
    return True


class MetricsResource(resource.Resource):
    """``/metrics`` on the HTTPS port: to 127.0.0.1, or anyone sending an admin's API token (``Authorization: Bearer``).

    ``admin_caller(authorization)`` (blocking, run in a thread) answers the
    `authentication.Caller` or raises; only a caller with ``is_admin`` passes.
    """

    isLeaf = True

    def __init__(self, admin_caller, registry: CollectorRegistry = REGISTRY, *, run_blocking=threads.deferToThread):
        super().__init__()
        self.admin_caller, self.registry, self.run_blocking = admin_caller, registry, run_blocking

    def render_GET(self, request):
        if request.getClientAddress().host in ("127.0.0.1", "::1"):
            return self._body(request)
        authorization = request.getHeader(b"authorization")
        if not authorization:
            return self._refuse(request, 401)
        d = self.run_blocking(self.admin_caller, authorization.decode("latin-1"))

        def checked(caller):
            if getattr(caller, "is_admin", False):
                body = self._body(request)
            else:
                body = self._refuse(request, 403)
            request.write(body)
            request.finish()

        def failed(_failure):
            request.write(self._refuse(request, 401))
            request.finish()

        d.addCallbacks(checked, failed)
        return server.NOT_DONE_YET

    def _body(self, request) -> bytes:
        request.setHeader(b"content-type", exposition.CONTENT_TYPE_LATEST.encode())
        request.setHeader(b"cache-control", b"no-store")
        return exposition.generate_latest(self.registry)

    @staticmethod
    def _refuse(request, code: int) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        if code == 401:
            request.setHeader(b"www-authenticate", b'Bearer realm="metrics"')
        return b"metrics: from 127.0.0.1, or with an administrator's API token\n"
