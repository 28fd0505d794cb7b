"""Writing to Redis from one thread: in the order asked, many commands per round trip.

Routing publishes a stanza for every message to a session on another front
end, and the archive pushes every message onto its recent lists. From a
thread pool, two writes of one sender can overtake each other (and a message
2 arrive, or be listed, before message 1); one thread keeps the order, and
pipelining what queued up while the last round trip ran keeps it fast.
"""

from __future__ import annotations

import queue
import threading
import time

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

MAX_BATCH = 500
RETRY_SECONDS = 0.2


class OrderedPublisher:
    """Ordered Redis writes; each call returns a Deferred fired on the reactor thread.

    ``publish(channel, payload)`` fires with the receiver count;
    ``submit(apply)`` runs ``apply(pipeline)`` (which queues commands on the
    pipeline) and fires with the list of those commands' results.
    """

    log = Logger()

    def __init__(self, redis_primary_factory, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self.redis_primary_factory = redis_primary_factory
        self.reactor = reactor
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._stopping = False
        self._started = False

    def start(self) -> None:
        """Start the writer thread; calling it again does nothing (a front end and a RoomPoster may share a process)."""
        if self._started:
            return
        self._started = True
        threading.Thread(target=self._run, name="redis-publisher", daemon=True).start()
        self.reactor.addSystemEventTrigger("after", "shutdown", self._stop)

    def publish(self, channel: str, payload: str) -> defer.Deferred:
        d = defer.Deferred()
        self._queue.put((lambda pipe: pipe.publish(channel, payload), d))
        return d.addCallback(lambda results: results[0])

    def submit(self, apply) -> defer.Deferred:
        d = defer.Deferred()
        self._queue.put((apply, d))
        return d

    def _stop(self) -> None:
        self._stopping = True
        self._queue.put(None)

    def _run(self) -> None:
        redis = None
        while not self._stopping:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._stopping = True
                    break
                batch.append(item)
            try:
                redis = redis or self.redis_primary_factory()
                pipe = redis.pipeline(transaction=False)
                counts = []
                for apply, _ in batch:
                    before = len(pipe.command_stack)
                    apply(pipe)
                    counts.append(len(pipe.command_stack) - before)
                results = pipe.execute()
            except Exception as e:  # Redis restarting or failing over: these fail, later ones retry
                self.reactor.callFromThread(self._fail, batch, Failure(e))
                redis = None
                time.sleep(RETRY_SECONDS)
                continue
            self.reactor.callFromThread(self._settle, batch, counts, results)

    @staticmethod
    def _settle(batch, counts, results) -> None:
        offset = 0
        for (_, d), count in zip(batch, counts):
            d.callback(results[offset : offset + count])
            offset += count

    @staticmethod
    def _fail(batch, failure: Failure) -> None:
        for _, d in batch:
            d.errback(failure)
