"""Request counting in fixed windows, shared by every process through Redis (the API's rate limit and flood control).

A window of ``seconds`` starts at a multiple of ``seconds`` since the epoch;
its count lives in ``<prefix>:<key>:<window number>`` (INCR and EXPIRE in one
pipeline), so every HTTPS process and host sees the same count and old
windows expire by themselves.

When Redis cannot be reached the limit is not enforced (the API stays up):
the answer says "not counted", with the whole limit remaining, and the
failure is logged at most once a minute. After a failure Redis is left alone
for `RETRY_SECONDS`, so a down Redis does not add its timeouts to every request.

Blocking: call `WindowCounter.hit` from a thread.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

log = logging.getLogger("hipchat.rate_limits")

#: Seconds Redis is not asked again after it failed.
RETRY_SECONDS = 5.0
#: At most one "not enforced" log line per this many seconds.
LOG_EVERY_SECONDS = 60.0


@dataclass(frozen=True)
class LimitState:
    """One request's place in its window: ``reset`` is the window's end (epoch seconds)."""

    limit: int
    remaining: int
    reset: int
    exceeded: bool = False
    counted: bool = True


class WindowCounter:
    """Counts hits per key in fixed windows. ``redis_factory()`` returns a redis-py client (the primary)."""

    def __init__(self, redis_factory, prefix: str, *, clock=time.time):
        self.redis_factory, self.prefix, self.clock = redis_factory, prefix, clock
        self._lock = threading.Lock()
        self._skip_until = 0.0
        self._last_log = float("-inf")

    def hit(self, key: str, limit: int, seconds: int) -> LimitState:
        """Count one request of ``key``; ``exceeded`` when it is past ``limit`` in this window."""
        now = self.clock()
        window = int(now // seconds)
        reset = (window + 1) * seconds
        if now < self._skip_until:
            return LimitState(limit, limit, reset, counted=False)
        try:
            pipe = self.redis_factory().pipeline(transaction=False)
            name = f"{self.prefix}:{key}:{window}"
            pipe.incr(name)
            pipe.expire(name, seconds + 1)
            count = int(pipe.execute()[0])
        except Exception as e:  # any Redis failure: serve without the limit rather than fail the API
            self._failed(now, e)
            return LimitState(limit, limit, reset, counted=False)
        return LimitState(limit, max(0, limit - count), reset, exceeded=count > limit)

    def _failed(self, now: float, error: Exception) -> None:
        with self._lock:
            self._skip_until = now + RETRY_SECONDS
            if now - self._last_log < LOG_EVERY_SECONDS:
                return
            self._last_log = now
        log.warning("%s limits not enforced: Redis unavailable (%s)", self.prefix, error)


class Limit:
    """A named limit: ``limit`` hits per ``seconds`` per key, counted by ``counter``."""

    def __init__(self, counter: WindowCounter, limit: int, seconds: int):
        self.counter, self.limit, self.seconds = counter, limit, seconds

    def hit(self, key: str) -> LimitState:
        return self.counter.hit(key, self.limit, self.seconds)

    def unlimited_state(self) -> LimitState:
        """What the headers say when nothing was counted (the current window, the whole limit left)."""
        now = self.counter.clock()
        return LimitState(self.limit, self.limit, (int(now // self.seconds) + 1) * self.seconds, counted=False)
