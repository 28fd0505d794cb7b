"""How many messages an archive holds, for the newest page that history answers from Redis alone.

XEP-0059 lets that count be approximate, and waiting for OpenSearch would
cost the page most of its speed. So the count is kept in two parts: what
OpenSearch counts *before* a boundary id inside the recent list (messages
that old are indexed), and what the recent list holds from the boundary on,
counted afresh on every page. The OpenSearch part is cached; it is asked
again when it is older than `COUNT_TTL`, in the background, or when the
boundary has left the recent list.

A boundary younger than `SETTLE_SECONDS` may still have older messages on
their way to the index (a burst, or a shard not refreshed yet): such a count
is kept only for `UNSETTLED_COUNT_TTL`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from twisted.internet import defer
from twisted.logger import Logger

from hipchat_server.storage.message_search import (
    MessageFilter,
    SearchUnavailable,
    count_body,
    message_id_milliseconds,
    total_of,
)

COUNT_TTL = 30.0
UNSETTLED_COUNT_TTL = 2.0
# The indexer makes a message searchable within 1-2 s; older than this, it is taken as indexed.
SETTLE_SECONDS = 10.0
# With nothing cached, a page waits this long (seconds) for OpenSearch's count, then goes without one.
COLD_COUNT_WAIT = 0.05
MAX_CACHED_COUNTS = 10_000


@dataclass
class _Counted:
    before: int  # OpenSearch's count of the archive's messages before `boundary`
    boundary: str  # an id of the recent list
    at: float
    ttl: float
    refreshing: bool = False


def cacheable(criteria: MessageFilter) -> MessageFilter | None:
    """``criteria`` when it is a whole archive or conversation (the counts kept are a bounded set), else None."""
    plain = replace(criteria, start_ms=None, end_ms=None, after_id=None, before_id=None, ids=(), fulltext=None)
    return plain if plain == criteria else None


def split_at_boundary(criteria: MessageFilter, window) -> tuple[MessageFilter, int]:
    """A count of ``criteria`` in two parts: the filter OpenSearch counts (messages before the recent list's
    boundary, long indexed and stable) and how many the recent list holds from the boundary on.

    Counting OpenSearch's newest documents instead would race the index's
    refreshes and the indexer (one front end's spool may be behind another's).
    """
    boundary = window.complete_from if criteria.testable else None
    if boundary is None:
        return criteria, 0
    before = boundary if criteria.before_id is None else min(boundary, criteria.before_id)
    listed = sum(1 for r in window.records if r["id"] >= boundary and criteria.matches(r))
    return replace(criteria, before_id=before), listed


class ArchiveCounts:
    """Counts of whole archives over ``store`` (a `storage.message_search.MessageSearchStore`) and a recent window.

    A window is a `history.RecentWindow`: records oldest first, their ids, and
    ``complete_from``, the id from which it holds every message.
    """

    log = Logger()

    def __init__(self, store, run_search, clock):
        self.store, self.run_search, self.clock = store, run_search, clock
        self._counts: dict[MessageFilter, _Counted] = {}

    def count(self, criteria: MessageFilter, window) -> defer.Deferred:
        """Fires with how many messages ``criteria`` selects (approximately), or None when that is not at hand soon."""
        key = cacheable(criteria)
        if key is None or window.complete_from is None:
            return defer.succeed(None)  # a filtered page: counting it would cost a query of its own
        counted = self._counts.get(key)
        if counted is not None and counted.boundary in window.ids:
            if self.clock.seconds() - counted.at > counted.ttl and not counted.refreshing:
                counted.refreshing = True
                self._refresh(key, window).addErrback(lambda _: setattr(counted, "refreshing", False))
            listed = sum(1 for r in window.records if r["id"] >= counted.boundary and key.matches(r))
            return defer.succeed(counted.before + listed)
        fresh = self._refresh(key, window)
        fresh.addErrback(lambda _: None)
        waited = defer.Deferred()
        timer = self.clock.callLater(COLD_COUNT_WAIT, lambda: waited.called or waited.callback(None))

        def arrived(count):
            if timer.active():
                timer.cancel()
            if not waited.called:
                waited.callback(count)

        fresh.addCallback(arrived)
        return waited

    @defer.inlineCallbacks
    def _refresh(self, key: MessageFilter, window):
        boundary = window.complete_from
        before_boundary, listed = split_at_boundary(key, window)
        high = message_id_milliseconds(boundary)
        try:
            [response] = yield self.run_search(
                self.store.multi_search, [(self.store.indices(None, high), count_body(before_boundary))]
            )
        except SearchUnavailable as e:
            self.log.info("counting an archive failed: {error}", error=e)
            raise
        now = self.clock.seconds()
        settled = now * 1000 - high > SETTLE_SECONDS * 1000
        if key not in self._counts and len(self._counts) >= MAX_CACHED_COUNTS:
            self._counts.pop(next(iter(self._counts)))
        self._counts[key] = _Counted(total_of(response), boundary, now, COUNT_TTL if settled else UNSETTLED_COUNT_TTL)
        return total_of(response) + listed
