"""Failed logins per client address: after too many in a window, that address is refused for a while.

In memory and per process, like Prosody's and ejabberd's defaults; a client
spread over several front ends gets the limit on each. The clock is
injectable (``twisted.internet.task.Clock`` in tests).
"""

from __future__ import annotations

from collections import deque


class AuthFailureLimiter:
    """At most ``max_failures`` failed authentications per address in any ``window`` seconds.

    An address that reached the limit is blocked until its oldest failure in
    the window is ``window`` seconds old. At most ``max_addresses`` addresses
    are remembered (the ones idle the longest are forgotten first), so a flood
    from many addresses cannot exhaust memory.
    """

    def __init__(self, max_failures: int = 5, window: float = 60.0, clock=None, max_addresses: int = 100_000):
        if clock is None:
            from twisted.internet import reactor as clock
        self.max_failures, self.window, self.clock = max_failures, window, clock
        self.max_addresses = max_addresses
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, address: str) -> deque[float] | None:
        stamps = self._failures.get(address)
        if stamps is None:
            return None
        horizon = self.clock.seconds() - self.window
        while stamps and stamps[0] <= horizon:
            stamps.popleft()
        if not stamps:
            del self._failures[address]
            return None
        return stamps

    def blocked(self, address: str) -> bool:
        """True when ``address`` has used up its failures in the current window."""
        stamps = self._recent(address)
        return stamps is not None and len(stamps) >= self.max_failures

    def record_failure(self, address: str) -> bool:
        """Count one failed authentication from ``address``; True when that blocks it."""
        stamps = self._recent(address)
        if stamps is None:
            if len(self._failures) >= self.max_addresses:
                del self._failures[next(iter(self._failures))]
            stamps = self._failures[address] = deque()
        else:  # move to the end: the dict is kept in order of last failure
            self._failures[address] = self._failures.pop(address)
        stamps.append(self.clock.seconds())
        return len(stamps) >= self.max_failures
