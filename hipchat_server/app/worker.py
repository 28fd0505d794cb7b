"""The worker process: runs background jobs (webhooks, mention e-mail, push) from the Redis job queue.

Supervisor runs two of these (``worker-0``, ``worker-1``). Each runs
``jobs.worker_threads`` threads that read jobs from the consumer group
(blocking redis-py calls); one of them also moves due retries back into their
streams and claims the jobs that a killed worker left behind (`jobs`). The
reactor runs on the main thread for what needs it: posting a webhook's reply
into its room (`room_posting.RoomPoster`: spool, recent list, fan-out).

Each process is its own consumer (``host:worker-N:pid``): a restarted worker
does not pick up what its killed predecessor held; whichever worker claims it
after ``jobs.claim_idle_seconds`` does. SIGTERM lets the jobs in hand finish
(a webhook waits at most 10 s) before the process exits.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time

from twisted.internet import reactor, threads

from hipchat_server import metrics
from hipchat_server import feature_flags
from hipchat_server.app.process import drop_privileges, start_process
from hipchat_server.jobs import JobQueue, PermanentJobError
from hipchat_server.server import ChatServer, process_name
from hipchat_server.storage.integrations import note_delivery

log = logging.getLogger("hipchat.worker")

PROMOTE_INTERVAL_SECONDS = 0.5
CLAIM_INTERVAL_SECONDS = 5.0
CONSUMERS_INTERVAL_SECONDS = 600.0
REDIS_RETRY_SECONDS = 1.0
STOP_WAIT_SECONDS = 25.0
READ_BLOCK_MS = 1000  # below the Redis client's 2 s socket timeout


def consumer_name() -> str:
    return f"{socket.gethostname()}:{process_name()}:{os.getpid()}"


class JobRunner:
    """Threads that take jobs and run ``handlers[kind](job)``: done, retried with backoff, or dead-lettered."""

    def __init__(self, queue: JobQueue, handlers: dict, *, consumer: str, threads: int = 4, clock=time.monotonic):
        self.queue = queue
        self.handlers = handlers
        self.consumer = consumer
        self.thread_count = threads
        self.clock = clock
        self.stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._next_promote = self._next_claim = self._next_consumers = 0.0
        self.done = self.retried = self.dead = 0
        metrics.job_kinds(handlers)

    def start(self) -> None:
        for n in range(self.thread_count):
            thread = threading.Thread(target=self._loop, args=(n == 0,), name=f"jobs-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("%s runs %s jobs in %d threads", self.consumer, ", ".join(sorted(self.handlers)), self.thread_count)

    def stop(self):
        """Stop taking jobs; the Deferred fires when the jobs in hand are finished (or the wait is over)."""
        self.stopping.set()
        return threads.deferToThread(lambda: [t.join(STOP_WAIT_SECONDS) for t in self._threads])

    def _loop(self, keeper: bool) -> None:
        while not self.stopping.is_set():
            try:
                jobs = self._upkeep() if keeper else []
                if not jobs:
                    jobs = self.queue.read(self.consumer, count=1, block_ms=READ_BLOCK_MS)
                for job in jobs:
                    self.run(job)
            except Exception as e:  # Redis failing over or restarting: the jobs in hand stay pending and are claimed again
                log.warning("the job queue is not answering (%s: %s); trying again", type(e).__name__, e)
                self.stopping.wait(REDIS_RETRY_SECONDS)

    def _upkeep(self) -> list:
        """Promote due retries; now and then claim stale jobs (returned to run) and forget departed consumers."""
        now = self.clock()
        if now >= self._next_promote:
            self._next_promote = now + PROMOTE_INTERVAL_SECONDS
            self.queue.promote_due()
        if now >= self._next_consumers:
            self._next_consumers = now + CONSUMERS_INTERVAL_SECONDS
            self.queue.forget_idle_consumers()
        if now >= self._next_claim:
            self._next_claim = now + CLAIM_INTERVAL_SECONDS
            claimed = self.queue.claim_stale(self.consumer)
            if claimed:
                log.warning("took over %d jobs a stopped worker left unfinished", len(claimed))
            return claimed
        return []

    def run(self, job) -> str:
        """Run one job and settle it in the queue; return "done", "retry" or "dead"."""
        handler = self.handlers.get(job.kind)
        started = time.monotonic()
        error = ""
        if handler is None:
            error = f"no handler for jobs of kind {job.kind!r}"
            outcome = self.queue.failed(job, error, permanent=True)
        elif job.deliveries > self.queue.max_attempts:
            # Killed its worker every time (out of memory, a crash): do not let it take down the next one.
            error = f"a worker stopped while running it {job.deliveries - 1} times"
            outcome = self.queue.failed(job, error, permanent=True)
        else:
            try:
                handler(job)
            except PermanentJobError as e:
                error = str(e)
                outcome = self.queue.failed(job, error, permanent=True)
            except Exception as e:
                error = f"{type(e).__name__}: {e}"
                outcome = self.queue.failed(job, error)
            else:
                self.queue.done(job)
                outcome = "done"
        elapsed = time.monotonic() - started
        metrics.count_job(job.kind, outcome)
        if outcome == "done":
            self.done += 1
            log.info("%s job %s done in %.2f s", job.kind, job.entry_id, elapsed)
        elif outcome == "retry":
            self.retried += 1
            log.warning("%s job %s failed (attempt %d), will retry: %s", job.kind, job.entry_id, job.attempt + 1, error)
        else:
            self.dead += 1
            log.error("%s job %s moved to the dead letters after %d attempts: %s", job.kind, job.entry_id, job.attempt + 1, error)
        return outcome


def build_runner(chat_server: ChatServer) -> JobRunner:
    """The runner over ``chat_server``: the queue and a handler per job kind."""
    from hipchat_server.mail import MentionMail
    from hipchat_server.push import PushGateway
    from hipchat_server.room_posting import RoomPoster
    from hipchat_server.storage.rooms import OccupantStore
    from hipchat_server.storage.sessions import SessionDirectory
    from hipchat_server.storage.webhooks import WebhookStore
    from hipchat_server.webhooks import WebhookDelivery

    config = chat_server.get_config()
    jobs_config = config.jobs
    queue = JobQueue(
        chat_server.get_redis_primary,
        max_attempts=jobs_config.max_attempts,
        retry_base_seconds=jobs_config.retry_base_seconds,
        claim_idle_seconds=jobs_config.claim_idle_seconds,
    )
    store = WebhookStore(chat_server.get_database_engine())
    public_url = config.server.public_url.rstrip("/")
    poster: list[RoomPoster] = []

    def reply_poster() -> RoomPoster:
        # Built on the reactor thread (the spool registers shutdown triggers). Replies announce no events:
        # a bot answering room_notification webhooks with notifications would otherwise talk to itself forever.
        if not poster:
            writer = chat_server.get_redis_writer()
            writer.start()
            poster.append(RoomPoster(chat_server.get_message_archive(), OccupantStore(chat_server.get_redis_primary()), writer))
        return poster[0]

    def post_reply(room: str, notification) -> None:
        threads.blockingCallFromThread(reactor, lambda: reply_poster().post_notification(room, notification))

    handlers = {
        "webhook": WebhookDelivery(
            store, post_reply, issuer=public_url, rooms_domain=f"{config.rooms.service}.{config.server.domain}",
            # The console's feature flag, for the groups of the webhook's creator (no creator: everyone's
            # value), and the console's list of recent deliveries.
            enabled=lambda creator: feature_flags.for_server(chat_server).enabled(feature_flags.WEBHOOKS, creator),
            note=lambda entry: note_delivery(chat_server.get_redis_primary(), entry),
        ),
        "mention_mail": MentionMail(
            store,
            SessionDirectory(chat_server.get_redis_primary(), consumer_name()),
            queue,
            mail=config.mail,
            push=config.push,
            domain=config.server.domain,
            public_url=public_url,
        ),
        "push": PushGateway(config.push),
    }
    return JobRunner(queue, handlers, consumer=consumer_name(), threads=jobs_config.worker_threads)


def main(argv: list[str] | None = None) -> int:
    config = start_process("hipchat-worker", "HipChat Server background job worker (webhooks, mention e-mail, push)", argv)
    if config is None:
        return 2
    drop_privileges(config.server.user)  # a no-op under supervisor's `user =`
    chat_server = ChatServer(config)
    runner = build_runner(chat_server)
    metrics.register(metrics.JobQueueCollector(chat_server.get_redis_primary))
    metrics.serve(config.metrics.worker_base_port + metrics.process_number())
    reactor.callWhenRunning(runner.start)
    reactor.addSystemEventTrigger("before", "shutdown", runner.stop)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
