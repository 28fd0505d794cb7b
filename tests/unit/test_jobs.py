"""The job queue (hipchat_server/jobs.py) against a private redis-server (tests/unit/conftest.py), with a fake clock."""

from __future__ import annotations

import time

import pytest
import redis

from hipchat_server import jobs
from hipchat_server.jobs import JobQueue, retry_delay


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def queue(redis_server, clock):
    redis_server.flushall()
    return JobQueue(lambda: redis_server, clock=clock, claim_idle_seconds=0.05)


def test_retry_delay_doubles_from_one_second():
    """Backoff: 1 s after the first failure, then 2, 4, 8 ..."""
    assert [retry_delay(n) for n in (1, 2, 3, 4, 10)] == [1, 2, 4, 8, 512]


def test_a_job_is_read_once_and_gone_when_done(queue):
    """An enqueued job reaches one consumer with its payload; done() removes it from the stream."""
    queue.enqueue("webhook", {"n": 1, "text": "héllo"})
    [job] = queue.read("worker-a", block_ms=10)
    assert job.kind == "webhook" and job.payload == {"n": 1, "text": "héllo"} and job.attempt == 0
    assert queue.read("worker-b", block_ms=10) == []
    assert queue.counts().waiting["webhook"] == 1  # in progress still counts as waiting
    queue.done(job)
    assert queue.counts().waiting["webhook"] == 0


def test_a_job_held_by_a_dead_worker_is_claimed_by_another(queue):
    """A job read but never finished (its worker was killed) is taken over after the idle time, delivery counted."""
    queue.enqueue("push", {"user": "alice"})
    [held] = queue.read("worker-dead", block_ms=10)
    assert queue.claim_stale("worker-alive") == []  # not idle long enough yet
    time.sleep(0.1)
    [claimed] = queue.claim_stale("worker-alive")
    assert claimed.entry_id == held.entry_id and claimed.payload == {"user": "alice"}
    assert claimed.deliveries == 2
    queue.done(claimed)
    time.sleep(0.1)
    assert queue.claim_stale("worker-other") == []


def test_a_failed_job_comes_back_after_its_backoff(queue, clock):
    """A failure schedules the job again: not before its delay, then with its attempt count and last error."""
    queue.enqueue("webhook", {"n": 2})
    [job] = queue.read("w", block_ms=10)
    assert queue.failed(job, "HTTP 500") == "retry"
    assert queue.counts().retrying == 1 and queue.counts().waiting["webhook"] == 0
    clock.now += 0.5
    assert queue.promote_due() == 0
    clock.now += 0.6
    assert queue.promote_due() == 1
    [again] = queue.read("w", block_ms=10)
    assert again.payload == {"n": 2} and again.attempt == 1 and again.last_error == "HTTP 500"
    assert again.first_at == job.first_at
    assert queue.failed(again, "HTTP 502") == "retry"
    clock.now += 1.9
    assert queue.promote_due() == 0  # the second retry waits 2 s
    clock.now += 0.2
    assert queue.promote_due() == 1


def test_a_job_goes_to_the_dead_letters_after_its_last_attempt(queue, clock):
    """After max_attempts failures the job is a dead letter with its last error, and can be retried by an operator."""
    queue.max_attempts = 3
    queue.enqueue("webhook", {"n": 3})
    outcomes = []
    for _ in range(3):
        [job] = queue.read("w", block_ms=10)
        outcomes.append(queue.failed(job, f"HTTP 503 at {job.attempt}"))
        clock.now += 10
        queue.promote_due()
    assert outcomes == ["retry", "retry", "dead"]
    counts = queue.counts()
    assert counts.dead == 1 and counts.retrying == 0 and counts.waiting["webhook"] == 0
    assert counts.newest_dead["kind"] == "webhook" and counts.newest_dead["error"] == "HTTP 503 at 2"
    assert counts.newest_dead["attempts"] == 3 and counts.newest_dead["payload"] == {"n": 3}
    assert queue.retry_dead() == 1
    [job] = queue.read("w", block_ms=10)
    assert job.payload == {"n": 3} and job.attempt == 0
    assert queue.counts().dead == 0


def test_a_permanent_failure_is_a_dead_letter_at_once(queue):
    """PermanentJobError-style failures skip the retries."""
    queue.enqueue("mention_mail", {"to": "x"})
    [job] = queue.read("w", block_ms=10)
    assert queue.failed(job, "HTTP 400", permanent=True) == "dead"
    assert queue.counts().dead == 1
    assert queue.drop_dead() == 1 and queue.counts().dead == 0


def test_a_job_older_than_the_age_limit_is_not_retried(queue, clock):
    """Jobs give up after 24 h however few attempts they had."""
    queue.enqueue("push", {})
    [job] = queue.read("w", block_ms=10)
    clock.now += jobs.MAX_AGE_SECONDS + 1
    assert queue.failed(job, "gateway down") == "dead"


def test_enqueue_command_queues_on_a_pipeline(queue, redis_server):
    """The chat processes enqueue through a pipeline (their ordered Redis writer)."""
    pipe = redis_server.pipeline(transaction=False)
    jobs.enqueue_command(pipe, "webhook", {"via": "pipeline"})
    pipe.execute()
    [job] = queue.read("w", block_ms=10)
    assert job.payload == {"via": "pipeline"}


def test_reading_recreates_a_lost_group(queue, redis_server):
    """If Redis lost the streams (a restart without persistence), workers make the group again instead of failing."""
    queue.ensure_groups()
    redis_server.delete(jobs.stream_of("webhook"))
    assert queue.read("w", block_ms=10) == []
    queue.enqueue("webhook", {"n": 4})
    [job] = queue.read("w", block_ms=10)
    assert job.payload == {"n": 4}


def test_status_shows_waiting_jobs_and_warns_about_dead_letters(queue, redis_server):
    """The "Background jobs" section: waiting per kind, retrying, dead letters as a warning naming the newest's error."""
    from appliance.lib.status import check_jobs

    queue.enqueue("webhook", {"n": 1})
    queue.enqueue("push", {"n": 2})
    [job, *_] = queue.read("w", count=1, block_ms=10)
    queue.failed(job, "HTTP 410 from the receiver", permanent=True)
    section = check_jobs(lambda: redis_server)
    assert section.healthy
    assert section.details["dead"] == 1 and sum(section.details["waiting"].values()) == 1
    [warning] = section.warnings
    assert "1 dead letter" in warning and "HTTP 410 from the receiver" in warning and "hipchat-appliance jobs dead" in warning


def test_status_names_an_unreachable_job_queue(tmp_path):
    from appliance.lib.status import check_jobs

    section = check_jobs(lambda: redis.Redis(unix_socket_path=str(tmp_path / "none.sock")))
    assert not section.healthy and "job queue" in section.problems[0]
