"""Reading messages back out of OpenSearch: the query bodies of history (MAM) and search, and the store that runs them.

Messages live in monthly indices ``<prefix>-YYYY.MM`` under the alias
``<prefix>`` (see `archive.index_name`). Every body built here carries the
reader's restriction inside its ``bool`` filter (an archive's room or
participant, or the visibility filter of a search), so hits, totals,
aggregations and highlights are all computed over what the reader may see
and nothing else.

Order is the message id: a ULID, whose first ten characters are its
millisecond timestamp, so ``(timestamp, id)`` sorts exactly like ``id``.
Sorting on the date first lets Lucene skip whole blocks of documents (a
numeric sort), and ``search_after`` on that pair pages through any depth at
the cost of one page.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

SORT_OLDEST_FIRST = [{"timestamp": {"order": "asc"}}, {"id": {"order": "asc"}}]
SORT_NEWEST_FIRST = [{"timestamp": {"order": "desc"}}, {"id": {"order": "desc"}}]
# Index options of every read: a month with no index yet is simply empty.
MISSING_INDICES_ARE_EMPTY = {"ignore_unavailable": True, "allow_no_indices": True}
# Beyond this many months a query names the alias instead of each monthly index.
MAX_NAMED_MONTHS = 24

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CROCKFORD_VALUES = {c: i for i, c in enumerate(_CROCKFORD)}
_ULID_TIME_CHARS = 10  # the first 48 bits: milliseconds since the epoch


class InvalidMessageId(ValueError):
    """A string that is not a message id (a 26-character ULID)."""


def message_id_milliseconds(message_id: str) -> int:
    """The millisecond timestamp a message id (ULID) carries; InvalidMessageId when it is not one."""
    if not isinstance(message_id, str) or len(message_id) != 26 or message_id[0] > "7":
        raise InvalidMessageId(f"{message_id!r} is not a message id")
    value = 0
    for char in message_id[:_ULID_TIME_CHARS]:
        digit = _CROCKFORD_VALUES.get(char)
        if digit is None:
            raise InvalidMessageId(f"{message_id!r} is not a message id")
        value = value * 32 + digit
    if any(char not in _CROCKFORD_VALUES for char in message_id[_ULID_TIME_CHARS:]):
        raise InvalidMessageId(f"{message_id!r} is not a message id")
    return value


def is_message_id(value: str) -> bool:
    try:
        message_id_milliseconds(value)
    except InvalidMessageId:
        return False
    return True


def _millisecond_bounds(message_id: str) -> tuple[str, str]:
    """The smallest and largest ids of the millisecond ``message_id`` belongs to."""
    prefix = message_id[:_ULID_TIME_CHARS]
    return prefix + "0" * 16, prefix + "Z" * 16


def _epoch_range(**bounds: int) -> dict:
    return {"range": {"timestamp": dict(bounds, format="epoch_millis")}}


def after_id_clause(message_id: str) -> dict:
    """Messages strictly after ``message_id``: later milliseconds by the date, the same millisecond by id.

    A range over every id would make Lucene walk every term after it; this
    one walks the ids of a single millisecond.
    """
    _, last_of_ms = _millisecond_bounds(message_id)
    later = _epoch_range(gt=message_id_milliseconds(message_id))
    same_ms = {"range": {"id": {"gt": message_id, "lte": last_of_ms}}}
    return {"bool": {"should": [later, same_ms], "minimum_should_match": 1}}


def before_id_clause(message_id: str) -> dict:
    """Messages strictly before ``message_id`` (see `after_id_clause`)."""
    first_of_ms, _ = _millisecond_bounds(message_id)
    earlier = _epoch_range(lt=message_id_milliseconds(message_id))
    same_ms = {"range": {"id": {"gte": first_of_ms, "lt": message_id}}}
    return {"bool": {"should": [earlier, same_ms], "minimum_should_match": 1}}


@dataclass(frozen=True)
class MessageFilter:
    """Which messages a history query selects, as OpenSearch clauses and as a test on a record.

    Exactly one of ``room`` (a room's archive) and ``participant`` (a user's
    one-to-one archive) is set: it is the reader's restriction and is in every
    query. The rest narrow it: ``conversation`` (``a|b``), ``sender`` (a bare
    JID), ``sender_name`` (a room nickname), ``start_ms``/``end_ms``
    (inclusive), ``after_id``/``before_id`` (exclusive), ``ids`` and
    ``fulltext`` (words of the body; only OpenSearch can test it).
    """

    room: str | None = None
    participant: str | None = None
    conversation: str | None = None
    sender: str | None = None
    sender_name: str | None = None
    start_ms: int | None = None
    end_ms: int | None = None
    after_id: str | None = None
    before_id: str | None = None
    ids: tuple[str, ...] = ()
    fulltext: str | None = None

    def __post_init__(self):
        if (self.room is None) == (self.participant is None):
            raise ValueError("a message filter restricts to one room or one participant")

    def archive_clauses(self) -> list[dict]:
        """The reader's restriction alone: the whole archive."""
        if self.room is not None:
            return [{"term": {"room": self.room}}]
        return [{"term": {"participants": self.participant}}]

    def clauses(self) -> list[dict]:
        """Every criterion as ``bool`` filter clauses (the fulltext match included)."""
        clauses = self.archive_clauses()
        for name, value in (("conversation", self.conversation), ("sender", self.sender)):
            if value is not None:
                clauses.append({"term": {name: value}})
        if self.sender_name is not None:
            clauses.append({"term": {"sender_name.keyword": self.sender_name}})
        if self.start_ms is not None or self.end_ms is not None:
            bounds = {"gte": self.start_ms, "lte": self.end_ms}
            clauses.append(_epoch_range(**{k: v for k, v in bounds.items() if v is not None}))
        if self.after_id is not None:
            clauses.append(after_id_clause(self.after_id))
        if self.before_id is not None:
            clauses.append(before_id_clause(self.before_id))
        if self.ids:
            clauses.append({"ids": {"values": list(self.ids)}})
        if self.fulltext:
            clauses.append({"match": {"body": {"query": self.fulltext, "operator": "and"}}})
        return clauses

    @property
    def testable(self) -> bool:
        """Whether `matches` decides exactly (a fulltext match needs OpenSearch's analyzers)."""
        return not self.fulltext

    def matches(self, record: dict) -> bool:
        """Whether ``record`` is selected, fulltext aside (records from Redis are tested with this)."""
        if self.room is not None and record.get("room") != self.room:
            return False
        if self.participant is not None and self.participant not in (record.get("participants") or ()):
            return False
        for name in ("conversation", "sender", "sender_name"):
            wanted = getattr(self, name)
            if wanted is not None and record.get(name) != wanted:
                return False
        message_id = record["id"]
        if self.start_ms is not None or self.end_ms is not None:
            ms = message_id_milliseconds(message_id)
            if (self.start_ms is not None and ms < self.start_ms) or (self.end_ms is not None and ms > self.end_ms):
                return False
        if self.after_id is not None and message_id <= self.after_id:
            return False
        if self.before_id is not None and message_id >= self.before_id:
            return False
        return not self.ids or message_id in self.ids

    def month_bounds(self) -> tuple[int | None, int | None]:
        """The earliest and latest millisecond a selected message can have (None: unbounded)."""
        lows = [self.start_ms] if self.start_ms is not None else []
        highs = [self.end_ms] if self.end_ms is not None else []
        if self.after_id is not None:
            lows.append(message_id_milliseconds(self.after_id))
        if self.before_id is not None:
            highs.append(message_id_milliseconds(self.before_id))
        if self.ids:
            stamps = [message_id_milliseconds(i) for i in self.ids]
            lows.append(min(stamps))
            highs.append(max(stamps))
        return (max(lows) if lows else None), (min(highs) if highs else None)


def page_body(criteria: MessageFilter, *, size: int, newest_first: bool, search_after: str | None = None) -> dict:
    """One page of ``criteria`` in id order, starting after (or, newest first, before) ``search_after``."""
    clauses = criteria.clauses()
    body: dict = {
        "size": size,
        "sort": SORT_NEWEST_FIRST if newest_first else SORT_OLDEST_FIRST,
        "track_total_hits": False,
    }
    if search_after is not None:
        ms = message_id_milliseconds(search_after)
        body["search_after"] = [ms, search_after]
        # The same bound as a date range too: it lets every shard skip the months and blocks before it.
        clauses.append(_epoch_range(**{"lte" if newest_first else "gte": ms}))
    body["query"] = {"bool": {"filter": clauses}}
    return body


def count_body(criteria: MessageFilter) -> dict:
    """How many messages ``criteria`` selects (exact: filters only, so Lucene mostly counts without visiting)."""
    return {"size": 0, "track_total_hits": True, "query": {"bool": {"filter": criteria.clauses()}}}


def present_ids_body(criteria: MessageFilter, ids: list[str]) -> dict:
    """Which of ``ids`` are indexed within the reader's archive (nothing of the documents but their ids)."""
    clauses = criteria.archive_clauses() + [{"ids": {"values": list(ids)}}]
    return {"size": len(ids), "_source": False, "track_total_hits": False, "query": {"bool": {"filter": clauses}}}


def edge_body(criteria: MessageFilter, *, newest: bool) -> dict:
    """The oldest (or newest) message ``criteria`` selects."""
    return page_body(criteria, size=1, newest_first=newest)


def visibility_filter(reader: str, readable_rooms) -> dict:
    """What ``reader`` (a bare JID) may see: the rooms they may read, and their own one-to-one messages.

    Always inside a search's query, never a post-filter, so counts, facets and
    highlights never include anything else.
    """
    should: list[dict] = [{"term": {"participants": reader}}]
    rooms = sorted(readable_rooms)
    if rooms:
        should.append({"terms": {"room": rooms}})
    return {"bool": {"should": should, "minimum_should_match": 1}}


def visibility_filter_excluding(reader: str, unreadable_rooms) -> dict:
    """What ``reader`` may see, said the other way round: their own one-to-one messages, and every room's
    messages except those of ``unreadable_rooms``.

    Cheaper than `visibility_filter` when the reader may read most rooms (at 10M
    messages a shard's query phase spends about a third less), but only exact when
    ``unreadable_rooms`` holds every room of the index the reader may not read, and
    a destroyed room's messages stay in the index: a search with it must ask for
    every room bucket (``SearchRequest.every_room``) and check them (see `search.Search`).
    """
    rooms: dict = {"bool": {"filter": [{"exists": {"field": "room"}}]}}
    if unreadable_rooms:
        rooms["bool"]["must_not"] = [{"terms": {"room": sorted(unreadable_rooms)}}]
    return {"bool": {"should": [{"term": {"participants": reader}}, rooms], "minimum_should_match": 1}}


@dataclass(frozen=True)
class SearchRequest:
    """A search's page, order and facets; ``query`` is an OpenSearch query clause (built by `search.py`)."""

    query: dict
    visibility: dict
    newest_first: bool = True
    offset: int = 0
    size: int = 25
    facet_size: int = 10
    highlight: bool = True
    filters: list[dict] = field(default_factory=list)
    masked_rooms: tuple[str, ...] = ()  # readable rooms whose senders' accounts the reader may not see
    every_room: bool = False  # the rooms facet lists every room with hits (up to MAX_ROOM_BUCKETS), counts exact


# With ``every_room``, at most this many room buckets: a search whose hits span more cannot be checked.
MAX_ROOM_BUCKETS = 2000
# The months facet counts hits per monthly index (a record's index is the month of its timestamp, see
# `archive.index_name`): one bucket per index, this many at most (a century of months).
MAX_MONTH_BUCKETS = 1200
_MONTH_OF_INDEX = re.compile(r"-(\d{4})\.(\d{2})(?!\d)")


def search_body(request: SearchRequest) -> dict:
    """The body of a search: the visibility filter inside the query, highlights on the body, facets.

    Costs measured at 10M messages (bench/history_search.py breakdown): the
    highlighter is given the user's query alone (``highlight_query``), not
    the visibility filter's hundreds of room terms, which it would otherwise
    extract and match against every returned body; the months facet counts
    hits per monthly index (``_index``), the same figure as a date histogram
    by month at a fraction of the per-document cost; the senders facet is
    wrapped in a filter only when some readable room hides its accounts.
    """
    senders: dict = {"terms": {"field": "sender", "size": request.facet_size}}
    if request.masked_rooms:  # accounts, counted outside the rooms that hide who is behind a nickname
        senders = {
            "filter": {"bool": {"must_not": [{"terms": {"room": list(request.masked_rooms)}}]}},
            "aggs": {"accounts": senders},
        }
    rooms: dict = {"field": "room", "size": request.facet_size}
    if request.every_room:  # each shard sends every room it has: no bucket is missing or undercounted
        rooms = {"field": "room", "size": MAX_ROOM_BUCKETS, "shard_size": MAX_ROOM_BUCKETS}
    body: dict = {
        "from": request.offset,
        "size": request.size,
        "track_total_hits": True,
        "query": {"bool": {"must": [request.query], "filter": [request.visibility, *request.filters]}},
        "_source": {"excludes": ["xml"]},
        "aggs": {
            "rooms": {"terms": rooms},
            "senders": senders,
            "months": {"terms": {"field": "_index", "size": MAX_MONTH_BUCKETS}},
        },
    }
    if request.newest_first:
        body["sort"] = SORT_NEWEST_FIRST
    else:
        body["sort"] = ["_score", *SORT_NEWEST_FIRST]
    if request.highlight:
        body["highlight"] = {
            "encoder": "html",  # the body is user text: escape it, then mark the hits
            "pre_tags": ["<em>"],
            "post_tags": ["</em>"],
            "require_field_match": False,
            # Only the words asked for: the hits are already limited to what the reader may see.
            "highlight_query": request.query,
            "fields": {"body": {"number_of_fragments": 0}, "body.standard": {"number_of_fragments": 0}},
        }
    return body


def sender_buckets(aggregations: dict) -> list[dict]:
    """The senders facet's buckets, whichever shape `search_body` gave it."""
    senders = aggregations.get("senders", {})
    return senders.get("accounts", senders).get("buckets", [])


def month_buckets(aggregations: dict) -> list[tuple[str, int]]:
    """The months facet as ``("YYYY-MM", count)``, oldest first, from the hits per monthly index.

    Indices of one month (a month reindexed under a new name) add up; an
    index whose name carries no month keeps its name.
    """
    counts: dict[str, int] = {}
    for bucket in aggregations.get("months", {}).get("buckets", []):
        name = bucket["key"]
        found = _MONTH_OF_INDEX.search(name)
        month = f"{found.group(1)}-{found.group(2)}" if found else name
        counts[month] = counts.get(month, 0) + bucket["doc_count"]
    return sorted(counts.items())


def _month_of(ms: int) -> tuple[int, int]:
    moment = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    return moment.year, moment.month


def month_indices(prefix: str, low_ms: int | None, high_ms: int | None, now_ms: int | None = None) -> str:
    """The indices a query bounded by ``low_ms``..``high_ms`` must read: each month's, or the alias.

    Unbounded below, or spanning more than `MAX_NAMED_MONTHS`, it is the
    alias ``prefix`` (every month). Unbounded above, it runs to next month,
    in case a clock is a little ahead.
    """
    if low_ms is None:
        return prefix
    if now_ms is None:
        now_ms = int(time.time() * 1000)
    if high_ms is None:
        year, month = _month_of(now_ms)
        high = (year + (month // 12), month % 12 + 1)
    else:
        high = _month_of(high_ms)
    year, month = _month_of(low_ms)
    names = []
    while (year, month) <= high:
        names.append(f"{prefix}-{year:04d}.{month:02d}")
        if len(names) > MAX_NAMED_MONTHS:
            return prefix
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return ",".join(names) if names else prefix


class SearchUnavailable(Exception):
    """OpenSearch did not answer a query (down, timing out, or refusing it)."""


class MessageSearchStore:
    """Runs history and search bodies against OpenSearch. Blocking: call it from a thread.

    ``client`` is an ``opensearchpy.OpenSearch``; ``prefix`` the indices'
    prefix and alias (``config.archive.index_prefix``).
    """

    def __init__(self, client, prefix: str = "messages", *, now_ms=None):
        self.client = client
        self.prefix = prefix
        self._now_ms = now_ms

    def indices(self, low_ms: int | None, high_ms: int | None) -> str:
        return month_indices(self.prefix, low_ms, high_ms, self._now_ms() if self._now_ms else None)

    def index_of(self, message_id: str) -> str:
        """The monthly index of a message, from the time its id carries (as `archive.index_name` names it)."""
        year, month = _month_of(message_id_milliseconds(message_id))
        return f"{self.prefix}-{year:04d}.{month:02d}"

    def multi_search(self, searches: list[tuple[str, dict]]) -> list[dict]:
        """Run ``(indices, body)`` searches in one round trip; their responses in order.

        Raises SearchUnavailable when OpenSearch cannot answer, or refuses any one of them.
        """
        lines: list[dict] = []
        for indices, body in searches:
            lines.append({"index": indices, **MISSING_INDICES_ARE_EMPTY})
            lines.append(body)
        try:
            answer = self.client.msearch(body=lines)
        except Exception as e:  # connection refused, timeouts, 5xx: all mean "not now"
            raise SearchUnavailable(f"OpenSearch did not answer: {e}") from e
        responses = answer.get("responses", [])
        for response in responses:
            if "error" in response:
                raise SearchUnavailable(f"OpenSearch refused a query: {_reason(response['error'])}")
        return responses

    def search(self, indices: str, body: dict) -> dict:
        """Run one search body (the HTTP search's); SearchUnavailable, or ValueError for a query OpenSearch cannot parse."""
        try:
            return self.client.search(index=indices, body=body, **MISSING_INDICES_ARE_EMPTY)
        except Exception as e:
            status = getattr(e, "status_code", None)
            if status == 400:
                raise ValueError(_reason(getattr(e, "info", None)) or str(e)) from e
            raise SearchUnavailable(f"OpenSearch did not answer: {e}") from e

    def get(self, message_id: str) -> dict | None:
        """The record with this id, read from its month's index (then from every month); None when absent."""
        try:
            found = self.client.get(index=self.index_of(message_id), id=message_id, ignore=404)
            if found.get("found"):
                return found["_source"]
            # Not where its id says: a record whose month was reindexed elsewhere, say. Ask every month.
            answer = self.client.search(
                index=self.prefix,
                body={"size": 1, "query": {"ids": {"values": [message_id]}}},
                **MISSING_INDICES_ARE_EMPTY,
            )
        except Exception as e:
            raise SearchUnavailable(f"OpenSearch did not answer: {e}") from e
        hits = answer["hits"]["hits"]
        return hits[0]["_source"] if hits else None


def _reason(error) -> str:
    """The most specific reason OpenSearch gives in an error body."""
    if not isinstance(error, dict):
        return str(error)
    inner = error.get("error", error)
    if isinstance(inner, dict):
        causes = inner.get("root_cause") or []
        if causes and isinstance(causes[0], dict) and causes[0].get("reason"):
            return causes[0]["reason"]
        caused_by = inner.get("caused_by")
        if isinstance(caused_by, dict) and caused_by.get("reason"):
            return caused_by["reason"]
        return str(inner.get("reason", inner))
    return str(inner)


def hits_sources(response: dict) -> list[dict]:
    return [hit["_source"] for hit in response["hits"]["hits"]]


def hits_ids(response: dict) -> set[str]:
    return {hit["_id"] for hit in response["hits"]["hits"]}


def total_of(response: dict) -> int:
    total = response["hits"]["total"]
    return total["value"] if isinstance(total, dict) else int(total)
