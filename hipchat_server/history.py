"""History: who may read which archive, and where each page of it comes from (Redis or OpenSearch).

Two kinds of archive (XEP-0313): a user's own, their one-to-one messages
(only they may read it), and a room's, which a user may read when the room
is public and they are not an outcast, or private and they are a member
(`storage.room_access`).

A message is pushed onto its Redis recent lists (the newest 75 of each room,
conversation and user) before anyone sees it, and reaches OpenSearch a
second or two later. So a page is answered:

- from Redis alone when the recent list can decide it: the newest page, or a
  catch-up after a message the list still holds (fast: no OpenSearch at all);
- otherwise from OpenSearch merged with the recent list (deduplicated by
  id), so a message still on its way to the index is already in history.

Pages are in id order (ULIDs: time order). ``before`` pages backwards from
the newest, ``after`` forwards; either way the page itself is oldest first.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet import defer, reactor
from twisted.logger import Logger

from hipchat_server.history_counts import ArchiveCounts, split_at_boundary
from hipchat_server.storage.message_search import (
    MessageFilter,
    SearchUnavailable,
    count_body,
    edge_body,
    hits_ids,
    hits_sources,
    is_message_id,
    message_id_milliseconds,
    page_body,
    present_ids_body,
    total_of,
)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 250
# The oldest few records of a full recent list may be missing a neighbour: two front ends push
# concurrently, and trimming the list cuts by arrival, not by id. Trust the list from here on.
WINDOW_MARGIN = 5


class HistoryError(Exception):
    """A query that is refused; ``condition`` is the XMPP stanza error (forbidden, item-not-found, ...)."""

    def __init__(self, condition: str, text: str):
        super().__init__(text)
        self.condition = condition
        self.text = text


@dataclass(frozen=True)
class Archive:
    """One archive: a user's (``jid`` is their bare JID) or a room's (``room`` True, ``jid`` the room's).

    ``real_jids``: whether the reader may learn which account sent a room message.
    """

    jid: str
    room: bool = False
    real_jids: bool = True


@dataclass(frozen=True)
class Paging:
    """RSM (XEP-0059): ``after`` an id, or ``before`` an id ('' for the last page), at most ``max`` records."""

    after: str | None = None
    before: str | None = None
    max: int = DEFAULT_PAGE_SIZE

    @property
    def backwards(self) -> bool:
        return self.before is not None

    @property
    def reference(self) -> str | None:
        """The id this page starts from, if any."""
        return self.after or self.before or None

    def in_range(self, message_id: str) -> bool:
        if self.after is not None and message_id <= self.after:
            return False
        return not self.before or message_id < self.before


@dataclass
class Page:
    """A page of records, oldest first; ``complete`` when nothing further lies in its direction."""

    records: list[dict]
    complete: bool
    count: int | None = None
    source: str = "opensearch"  # or "recent": answered from Redis alone

    @property
    def first(self) -> str | None:
        return self.records[0]["id"] if self.records else None

    @property
    def last(self) -> str | None:
        return self.records[-1]["id"] if self.records else None


def _take(records: list[dict], paging: Paging) -> tuple[list[dict], bool]:
    """The page of ``records`` (oldest first, all in range) nearest the paging reference, and whether it is complete."""
    if paging.backwards:
        return records[-paging.max :] if paging.max else [], len(records) <= paging.max
    return records[: paging.max], len(records) <= paging.max


class RecentWindow:
    """The newest records of one archive as Redis holds them, oldest first, and from where they are complete.

    Every message of the list's archive with an id at or after ``complete_from``
    is in ``records`` (pushed before anyone saw it, trimmed only from the old end).
    """

    def __init__(self, records_newest_first: list[dict], capacity: int):
        by_id = {record["id"]: record for record in records_newest_first}
        self.records = sorted(by_id.values(), key=lambda record: record["id"])
        self.ids = set(by_id)
        self.full = len(records_newest_first) >= capacity  # trimmed: older messages exist outside it
        margin = WINDOW_MARGIN if self.full else 0
        self.complete_from = self.records[margin]["id"] if len(self.records) > margin else None

    def newest_id(self) -> str | None:
        return self.records[-1]["id"] if self.records else None

    def trusted(self) -> list[dict]:
        if self.complete_from is None:
            return []
        return [record for record in self.records if record["id"] >= self.complete_from]

    def covers_from(self, criteria: MessageFilter, paging: Paging) -> bool:
        """Whether nothing older than the window can be selected (its lower bound lies inside the window)."""
        if self.complete_from is None:
            return False
        if criteria.ids:
            return all(message_id in self.ids for message_id in criteria.ids)
        for exclusive in (paging.after, criteria.after_id):
            if exclusive is not None and exclusive >= self.complete_from:
                return True
        start_ms = criteria.start_ms
        return start_ms is not None and start_ms > message_id_milliseconds(self.complete_from)

    def page(self, criteria: MessageFilter, paging: Paging) -> Page | None:
        """The page from these records alone, or None when OpenSearch must be asked."""
        if not criteria.testable or paging.max == 0 or self.complete_from is None:
            return None
        reference = paging.reference
        if reference is not None and reference not in self.ids:
            return None  # OpenSearch says whether it exists at all
        if any(bound is not None and bound not in self.ids for bound in (criteria.after_id, criteria.before_id)):
            return None
        selected = [r for r in self.trusted() if criteria.matches(r)]
        candidates = [r for r in selected if paging.in_range(r["id"])]
        if self.covers_from(criteria, paging):
            # Nothing selected lies before the window: the page, and the count, are exact.
            records, complete = _take(candidates, paging)
            count = len(selected) if self.covers_from(criteria, Paging()) else None
            return Page(records, complete, count, source="recent")
        if paging.backwards and len(candidates) > paging.max:
            # The page lies inside the window, with more before it; how many more, Redis cannot say.
            records, complete = _take(candidates, paging)
            return Page(records, complete, source="recent")
        return None


class History:
    """Answers history queries over OpenSearch (``store``, a `storage.message_search.MessageSearchStore`),
    the Redis recent lists (``recent``, a `storage.recent.RecentMessages`) and room permissions
    (``rooms``, a `storage.room_access.RoomAccessStore`).

    Each store is blocking and is called through its runner: ``run_search``,
    ``run_redis``, ``run_database`` (each ``f, *args -> Deferred``).
    """

    log = Logger()

    def __init__(self, store, recent, rooms, *, run_search, run_redis, run_database, clock=None, recent_size: int = 75):
        self.store, self.recent, self.rooms = store, recent, rooms
        self.run_search, self.run_redis, self.run_database = run_search, run_redis, run_database
        self.clock = clock or reactor
        self.recent_size = recent_size
        self.counts = ArchiveCounts(store, run_search, self.clock)

    # Who may read what.
    def user_archive(self, requester: str, owner: str | None = None) -> Archive:
        """The archive of ``owner`` (default: the requester's own), readable only by its owner."""
        if owner is not None and owner != requester:
            raise HistoryError("forbidden", "only your own archive")
        return Archive(requester)

    @defer.inlineCallbacks
    def room_archive(self, requester: str, room_jid: str):
        """The archive of a room, when ``requester`` (a bare JID) may read it; HistoryError otherwise."""
        username = requester.partition("@")[0]
        access = yield self.run_database(self.rooms.access, username, room_jid)
        if access is None:
            raise HistoryError("item-not-found", "no such room")
        if not access.readable:
            raise HistoryError("forbidden", "this room's history is for its members")
        return Archive(room_jid, room=True, real_jids=access.real_jids)

    def criteria(
        self,
        archive: Archive,
        *,
        with_bare: str | None = None,
        with_resource: str | None = None,
        start_ms: int | None = None,
        end_ms: int | None = None,
        after_id: str | None = None,
        before_id: str | None = None,
        ids: tuple[str, ...] = (),
        fulltext: str | None = None,
    ) -> MessageFilter:
        """The filter of a query on ``archive``; HistoryError for a malformed id or a ``with`` not allowed.

        In a user's archive ``with`` names the other side of a conversation
        (their own JID: notes to self). In a room's it names an occupant
        (``room@service/nick``) or, where the reader may see real JIDs, an account.
        """
        for message_id in (after_id, before_id, *ids):
            if message_id is not None and not is_message_id(message_id):
                raise HistoryError("item-not-found", f"no message {message_id!r} in this archive")
        values = dict(start_ms=start_ms, end_ms=end_ms, after_id=after_id, before_id=before_id, ids=tuple(ids))
        values["fulltext"] = fulltext.strip() if fulltext and fulltext.strip() else None
        if not archive.room:
            conversation = "|".join(sorted((archive.jid, with_bare))) if with_bare else None
            return MessageFilter(participant=archive.jid, conversation=conversation, **values)
        if with_bare is None:
            return MessageFilter(room=archive.jid, **values)
        if with_bare == archive.jid:
            if not with_resource:
                return MessageFilter(room=archive.jid, **values)
            return MessageFilter(room=archive.jid, sender_name=with_resource, **values)
        if not archive.real_jids:
            raise HistoryError("forbidden", "this room does not show who its occupants are")
        return MessageFilter(room=archive.jid, sender=with_bare, **values)

    # Pages.
    @defer.inlineCallbacks
    def query(self, criteria: MessageFilter, paging: Paging):
        """The page of ``criteria`` that ``paging`` asks for (a `Page`); HistoryError when refused."""
        if paging.after is not None and paging.before is not None:
            raise HistoryError("bad-request", "page either after or before an id, not both")
        reference = paging.reference
        if reference is not None and not is_message_id(reference):
            raise HistoryError("item-not-found", f"no message {reference!r} in this archive")
        window = yield self._window(criteria)
        page = window.page(criteria, paging)
        if page is not None:
            if page.count is None:
                page.count = yield self.counts.count(criteria, window)
            return page
        try:
            return (yield self._query_opensearch(criteria, paging, window))
        except SearchUnavailable as e:
            self.log.warn("history query failed: {error}", error=e)
            raise HistoryError("internal-server-error", "history is not available right now; try again shortly") from e

    @defer.inlineCallbacks
    def _window(self, criteria: MessageFilter):
        if not criteria.testable:
            return RecentWindow([], self.recent_size)
        try:
            records = yield self.run_redis(self._recent_records, criteria)
        except Exception as e:  # Redis failing over: OpenSearch answers alone, a second or two behind
            self.log.warn("recent messages unavailable for history ({error})", error=e)
            records = []
        return RecentWindow(records, self.recent_size)

    def _recent_records(self, criteria: MessageFilter) -> list[dict]:
        """The recent list that holds ``criteria``'s archive (or conversation). Blocking."""
        if criteria.room is not None:
            return self.recent.room(criteria.room, self.recent_size)
        if criteria.conversation is not None:
            a, _, b = criteria.conversation.partition("|")
            return self.recent.conversation(a, b, self.recent_size)
        return self.recent.user(criteria.participant, self.recent_size)

    @defer.inlineCallbacks
    def _query_opensearch(self, criteria: MessageFilter, paging: Paging, window: RecentWindow):
        low, high = criteria.month_bounds()
        reference = paging.reference
        page_low, page_high = low, high
        if reference is not None:
            ms = message_id_milliseconds(reference)
            if paging.backwards:
                page_high = ms if page_high is None else min(page_high, ms)
            else:
                page_low = ms if page_low is None else max(page_low, ms)
        searches = [
            (
                self.store.indices(page_low, page_high),
                page_body(criteria, size=paging.max + 1, newest_first=paging.backwards, search_after=reference),
            ),
        ]
        counted, listed = split_at_boundary(criteria, window)  # OpenSearch counts the older part, Redis the rest
        searches.append((self.store.indices(*counted.month_bounds()), count_body(counted)))
        recent = [r for r in window.records if criteria.matches(r)] if criteria.testable else []
        references = sorted(
            {i for i in (reference, criteria.after_id, criteria.before_id, *criteria.ids) if i} - window.ids
        )
        if references:
            searches.append((self.store.prefix, present_ids_body(criteria, references)))
        responses = yield self.run_search(self.store.multi_search, searches)
        if references:
            missing = set(references) - hits_ids(responses[-1])
            if missing:
                raise HistoryError("item-not-found", f"no message {min(missing)!r} in this archive")
        merged = {r["id"]: r for r in hits_sources(responses[0])}
        merged.update((r["id"], r) for r in recent if paging.in_range(r["id"]))
        ordered = [merged[i] for i in sorted(merged)]
        if paging.backwards:
            ordered = ordered[-(paging.max + 1) :]
        else:
            ordered = ordered[: paging.max + 1]
        records, complete = _take(ordered, paging)
        return Page(records, complete, total_of(responses[1]) + listed)

    # The archive's first and last message (XEP-0313 metadata).
    @defer.inlineCallbacks
    def edges(self, criteria: MessageFilter):
        """The oldest and newest record ``criteria`` selects: a pair, each None when the archive is empty."""
        window = yield self._window(criteria)
        searches = [
            (self.store.prefix, edge_body(criteria, newest=False)),
            (self.store.prefix, edge_body(criteria, newest=True)),
        ]
        try:
            oldest, newest = yield self.run_search(self.store.multi_search, searches)
        except SearchUnavailable as e:
            raise HistoryError("internal-server-error", "history is not available right now; try again shortly") from e
        candidates = hits_sources(oldest) + hits_sources(newest) + [r for r in window.records if criteria.matches(r)]
        if not candidates:
            return None, None
        candidates.sort(key=lambda record: record["id"])
        return candidates[0], candidates[-1]

    # One message by id (permalinks).
    @defer.inlineCallbacks
    def message(self, reader: str, message_id: str):
        """The record ``message_id`` when ``reader`` (a bare JID) may read it, else None (absent or not theirs).

        ``(record, real_jids)``: whether the reader may see which account sent it.
        """
        if not is_message_id(message_id):
            return None
        try:
            record = yield self.run_search(self.store.get, message_id)
        except SearchUnavailable as e:
            raise HistoryError("internal-server-error", "history is not available right now; try again shortly") from e
        if record is None:
            # Not indexed yet: one's own one-to-one messages are in one's recent list.
            try:
                recent = yield self.run_redis(self.recent.user, reader, self.recent_size)
            except Exception:
                recent = []
            record = next((r for r in recent if r["id"] == message_id), None)
        if record is None:
            return None
        if record.get("room"):
            access = yield self.run_database(self.rooms.access, reader.partition("@")[0], record["room"])
            if access is None or not access.readable:
                return None
            return record, access.real_jids
        if reader not in (record.get("participants") or ()):
            return None
        return record, True


# Threads for OpenSearch calls in a front end: their own pool, so a slow search never delays Redis or MariaDB work.
SEARCH_THREADS = 4


def history_for(chat_server, *, run_redis=None, run_database=None) -> History:
    """The History of a process: its OpenSearch client, recent lists and room permissions.

    OpenSearch calls run in a pool of their own, started with the reactor;
    Redis and MariaDB calls in ``run_redis``/``run_database`` (the reactor's
    pool by default).
    """
    from twisted.internet import threads
    from twisted.python.threadpool import ThreadPool

    from hipchat_server.storage.message_search import MessageSearchStore
    from hipchat_server.storage.room_access import RoomAccessStore

    config = chat_server.get_config()
    pool = ThreadPool(minthreads=1, maxthreads=SEARCH_THREADS, name="opensearch")
    reactor.callWhenRunning(pool.start)
    reactor.addSystemEventTrigger("after", "shutdown", pool.stop)
    store = MessageSearchStore(chat_server.get_opensearch_client(), config.archive.index_prefix)
    rooms = RoomAccessStore(chat_server.get_database_engine(), f"{config.rooms.service}.{config.server.domain}")
    return History(
        store,
        chat_server.get_recent_messages(),
        rooms,
        run_search=lambda f, *args: threads.deferToThreadPool(reactor, pool, f, *args),
        run_redis=run_redis or threads.deferToThread,
        run_database=run_database or threads.deferToThread,
        recent_size=config.archive.recent_messages,
    )
