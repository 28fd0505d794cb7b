"""The indexer process: moves every chat process's spool into OpenSearch (hipchat_server/indexing.py).

Plain threads and the blocking opensearch-py client, no reactor: one thread
drains the spools, one keeps the month indices (next month created ahead of
time, expired months deleted, finished months merged into one segment per
shard, at start and then hourly). SIGTERM lets the
bulk request in flight finish and its positions be saved before the process
exits; kill -9 loses nothing either, since the spool is only cut behind what
OpenSearch acknowledged, and what is sent again keeps its document id. So a
request still hanging `STOP_GRACE_SECONDS` after SIGTERM (a cluster that is
stopping too, retried node after node) is not waited for: the process exits,
well within supervisor's stopwaitsecs, and a restart sends it again.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from datetime import datetime, timezone

from hipchat_server import metrics
from hipchat_server.app.process import drop_privileges, start_process
from hipchat_server.indexing import SpoolIndexer
from hipchat_server.storage.message_index import BULK_TIMEOUT_SECONDS, MessageIndex
from hipchat_server.storage.opensearch import create_opensearch_client

log = logging.getLogger("hipchat.indexer")

MONTHS_INTERVAL_SECONDS = 3600.0
MONTHS_RETRY_SECONDS = 60.0  # the cluster was down at the last attempt
STOP_GRACE_SECONDS = 15.0


def stop_on_signal(indexer: SpoolIndexer, grace: float = STOP_GRACE_SECONDS, exit=os._exit) -> None:
    """SIGTERM/SIGINT: ``indexer`` finishes its request in flight; if that is not done within ``grace``, exit anyway."""
    indexer.stop()

    def too_slow() -> None:
        log.warning("a request to OpenSearch still hangs %.0f s after the stop signal; exiting without it (a restart sends it again)", grace)
        exit(0)

    timer = threading.Timer(grace, too_slow)
    timer.daemon = True  # a prompt stop exits before it fires
    timer.start()


def keep_months(index: MessageIndex, retention_months: int, stopping: threading.Event) -> None:
    """Run `MessageIndex.maintain_months` and `compact_finished_months` now and then hourly (a minute after a failure) until ``stopping``."""
    while not stopping.is_set():
        try:
            now = datetime.now(timezone.utc)
            index.maintain_months(now, retention_months)
            index.compact_finished_months(now)
            wait = MONTHS_INTERVAL_SECONDS
        except Exception as e:
            log.warning("cannot create, expire or merge the month indices (%s: %s); trying again in %.0f s", type(e).__name__, e, MONTHS_RETRY_SECONDS)
            wait = MONTHS_RETRY_SECONDS
        stopping.wait(wait)


def main(argv: list[str] | None = None) -> int:
    config = start_process("hipchat-indexer", "HipChat Server indexer (spool to OpenSearch)", argv)
    if config is None:
        return 2
    drop_privileges(config.server.user)  # a no-op under supervisor's `user =`
    archive = config.archive
    if not os.path.isdir(archive.spool_dir):
        print(f"hipchat-indexer: the spool directory {archive.spool_dir} does not exist; re-run the installer", file=sys.stderr)
        return 1
    # The client logs every request (INFO), and every failed one with a traceback (WARNING): several
    # lines a second under load or during an outage. The indexer logs what an operator needs itself.
    logging.getLogger("opensearch").setLevel(logging.ERROR)
    # A bulk request may retry on the other data node; the client's timeout is per attempt.
    index = MessageIndex(create_opensearch_client(config.opensearch, BULK_TIMEOUT_SECONDS), archive.index_prefix)
    # The month thread has its own client: a client's connection pool keeps one connection per node.
    months = MessageIndex(create_opensearch_client(config.opensearch), archive.index_prefix)
    indexer = SpoolIndexer(archive.spool_dir, index)
    metrics.register(metrics.IndexingCollector(archive))
    metrics.serve(config.metrics.indexer_port)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop_on_signal(indexer))
    threading.Thread(
        target=keep_months, args=(months, archive.retention_months, indexer.stopping), name="month-indices", daemon=True
    ).start()
    if archive.retention_months:
        log.info("keeping the current month and the %d before it", archive.retention_months)
    indexer.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
