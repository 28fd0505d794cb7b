"""Search over every message a user may see: Lucene query syntax, highlights, facets, newest or most relevant first.

A query is Lucene's syntax (``deploy AND from:alice``, ``"exact phrase"``,
``deplo*``, ``-lunch``) over the message body, with shortcuts:
``from:alice`` (a sender: the account, or a room nickname), ``room:eng`` and
``in:eng`` (a room), ``with:bob`` (one's one-to-one conversation with bob).
Any other ``word:`` is searched as text, so a colon in a sentence never
turns into a field query. Within limits: at most `MAX_QUERY_LENGTH`
characters and `MAX_WILDCARDS` wildcards, no word starting with one, no
regular expressions (a ``/`` is just a character); anything else is a
`SearchError` saying what to change.

What a user may see (public rooms they are not an outcast of, private rooms
they are a member of, their own one-to-one messages) is a filter *inside*
the query, so hits, the total, every facet and every highlight are computed
only over it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from twisted.internet import defer
from twisted.logger import Logger

from hipchat_server.storage.message_search import (
    SearchRequest,
    SearchUnavailable,
    month_buckets,
    search_body,
    sender_buckets,
    visibility_filter,
    visibility_filter_excluding,
)

MAX_QUERY_LENGTH = 500
MAX_WILDCARDS = 3
MAX_RESULTS = 100
DEFAULT_RESULTS = 25
# Deeper than this, page with a narrower query: from+size paging costs every shard the whole prefix.
MAX_START_INDEX = 1000
# Lucene's automaton limit for wildcards and fuzzy terms (its default is 10,000): a pathological pattern fails fast.
MAX_DETERMINIZED_STATES = 1000
FUZZY_MAX_EXPANSIONS = 50
SORTS = ("newest", "relevance")

# A quoted phrase (kept as it is) or a run of anything else.
_SEGMENTS = re.compile(r'"(?:\\.|[^"\\])*"?|[^"]+')
# A field prefix: a word and a colon, not escaped, at a word start.
_FIELD = re.compile(r"(?<![\w\\.@-])([A-Za-z_][\w.]*):")
_SHORTCUT_VALUE = re.compile(r"""([^\s()"\\]+)""")
_WILDCARD_TERM = re.compile(r"(?<![\w\\])[*?]")


class SearchError(ValueError):
    """A search that cannot run as asked; the message tells the user what to change."""


class SearchUnavailableError(Exception):
    """The search cluster did not answer."""


@dataclass(frozen=True)
class SearchQuery:
    """What a user asked: the query text, the order, and the page (``start_index``, ``max_results``)."""

    text: str
    sort: str = "newest"
    start_index: int = 0
    max_results: int = DEFAULT_RESULTS

    def __post_init__(self):
        if not self.text or not self.text.strip():
            raise SearchError("q: say what to search for")
        if len(self.text) > MAX_QUERY_LENGTH:
            raise SearchError(f"q: at most {MAX_QUERY_LENGTH} characters (this one has {len(self.text)})")
        if self.sort not in SORTS:
            raise SearchError(f"sort: one of {', '.join(SORTS)}")
        if not 0 <= self.start_index <= MAX_START_INDEX:
            raise SearchError(f"start-index: from 0 to {MAX_START_INDEX}; narrow the query to go further back")
        if not 1 <= self.max_results <= MAX_RESULTS:
            raise SearchError(f"max-results: from 1 to {MAX_RESULTS}")


@dataclass
class SearchResults:
    """One page of hits (records with a ``highlight``), the total, and the facets (lists of (key, count))."""

    total: int
    items: list[dict]
    rooms: list[tuple[str, int]] = field(default_factory=list)
    senders: list[tuple[str, int]] = field(default_factory=list)
    months: list[tuple[str, int]] = field(default_factory=list)


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class QueryRewriter:
    """Turns a user's query into the text OpenSearch's query_string gets, shortcuts expanded and limits checked."""

    def __init__(self, domain: str, rooms_service: str, masked_rooms=()):
        self.domain = domain
        self.rooms_service = rooms_service
        # Rooms where the reader may not learn which account is behind a nickname (whois: moderators).
        self.masked_rooms = sorted(masked_rooms)

    def _account(self, value: str) -> str:
        return value if "@" in value else f"{value}@{self.domain}"

    def _shortcut(self, name: str, value: str) -> str | None:
        name = name.lower()
        if name == "from":
            account = f"sender:{_quote(self._account(value))}"
            if self.masked_rooms:  # an account's messages, except where that would unmask a nickname
                account = f"({account} AND NOT room:({' OR '.join(_quote(room) for room in self.masked_rooms)}))"
            return f"({account} OR sender_name.keyword:{_quote(value)})"
        if name in ("room", "in"):
            room = value if "@" in value else f"{value}@{self.rooms_service}"
            return f"room:{_quote(room)}"
        if name == "with":
            return f"participants:{_quote(self._account(value))}"
        return None

    def _plain(self, text: str) -> str:
        """Text outside quotes: shortcuts expanded, other fields escaped, slashes literal, wildcards counted."""
        out, position = [], 0
        for match in _FIELD.finditer(text):
            out.append(text[position : match.start()])
            value = _SHORTCUT_VALUE.match(text, match.end())
            expanded = self._shortcut(match.group(1), value.group(1)) if value else None
            if expanded is None:
                out.append(match.group(1) + "\\:")
                position = match.end()
            else:
                out.append(expanded)
                position = value.end()
        out.append(text[position:])
        return "".join(out).replace("/", "\\/")

    def rewrite(self, query: str) -> str:
        parts, wildcards = [], 0
        for segment in _SEGMENTS.findall(query):
            if segment.startswith('"'):
                parts.append(segment if segment.endswith('"') and len(segment) > 1 else segment + '"')
                continue
            if _WILDCARD_TERM.search(segment):
                raise SearchError("q: a word may not start with * or ?; put at least one letter first")
            wildcards += segment.count("*") + segment.count("?")
            parts.append(self._plain(segment))
        if wildcards > MAX_WILDCARDS:
            raise SearchError(f"q: at most {MAX_WILDCARDS} wildcards (* or ?) per search")
        return "".join(parts)

    def clause(self, query: str) -> dict:
        """The query_string clause of ``query`` (SearchError when it breaks a limit)."""
        return {
            "query_string": {
                "query": self.rewrite(query),
                "default_field": "body",
                "default_operator": "AND",
                # Phrases match the unstemmed words: "deploying now" is not "deploy now".
                "quote_field_suffix": ".standard",
                "allow_leading_wildcard": False,
                "analyze_wildcard": False,
                "max_determinized_states": MAX_DETERMINIZED_STATES,
                "fuzzy_max_expansions": FUZZY_MAX_EXPANSIONS,
                "lenient": True,
            }
        }


def _buckets(buckets: list[dict]) -> list[tuple[str, int]]:
    return [(bucket["key"], bucket["doc_count"]) for bucket in buckets]


# Rooms found in the index but not in MariaDB (destroyed) that a process remembers, so it stops re-running searches
# that met them; beyond this many it simply keeps re-running them, exactly.
MAX_GONE_ROOMS = 10_000


class Search:
    """Runs searches for users over `storage.message_search.MessageSearchStore` and their room permissions
    (``rooms``, a `storage.room_access.RoomAccessStore`); ``run_search`` and ``run_database`` run the blocking calls.

    The visibility filter names whichever side is shorter: the rooms the reader may
    read, or those they may not (`visibility_filter_excluding`, cheaper for the usual
    reader of most rooms). The second is exact only if it names every unreadable room
    *in the index*, and a destroyed room's messages stay there while MariaDB forgets
    the room; so such a search lists every room it found (``every_room``) and, if any
    is not one the reader may read, its answer is dropped unseen and the search runs
    again with the readable rooms. Those rooms are remembered (``gone_rooms``) and
    named in the next searches. Permissions are read from MariaDB on every search:
    a room made private, or a member removed, counts from the next search.
    """

    log = Logger()

    def __init__(self, store, rooms, *, run_search, run_database, domain: str, rooms_service: str):
        self.store, self.rooms = store, rooms
        self.run_search, self.run_database = run_search, run_database
        self.domain, self.rooms_service = domain, rooms_service
        self.gone_rooms: set[str] = set()

    @defer.inlineCallbacks
    def search(self, reader: str, query: SearchQuery):
        """`SearchResults` of ``query`` for ``reader`` (a bare JID); SearchError for a query OpenSearch cannot take."""
        QueryRewriter(self.domain, self.rooms_service).clause(query.text)  # a malformed query fails before any I/O
        access = yield self.run_database(self.rooms.rooms_by_access, reader.partition("@")[0])
        readable = access.readable
        masked = [room for room, room_access in readable.items() if not room_access.real_jids]
        request = SearchRequest(
            query=QueryRewriter(self.domain, self.rooms_service, masked).clause(query.text),
            visibility=visibility_filter(reader, readable),
            masked_rooms=tuple(masked),
            newest_first=query.sort == "newest",
            offset=query.start_index,
            size=query.max_results,
        )
        unreadable = (access.unreadable | self.gone_rooms) - readable.keys()
        response = None
        if len(unreadable) < len(readable):
            excluding = replace(
                request, visibility=visibility_filter_excluding(reader, unreadable), every_room=True
            )
            response = yield self._run(excluding)
            strangers = self._unreadable_hits(response, readable)
            if strangers is None or strangers:
                self.log.info(
                    "search met rooms it did not know of ({rooms}); asked again with the readable rooms",
                    rooms=", ".join(sorted(strangers or ["more rooms than it can check"])),
                )
                self._remember_gone(strangers or ())
                response = None
        if response is None:
            response = yield self._run(request)
        items = []
        for hit in response["hits"]["hits"]:
            record = dict(hit["_source"])
            highlights = hit.get("highlight", {})
            fragments = highlights.get("body") or highlights.get("body.standard") or []
            record["highlight"] = fragments[0] if fragments else None
            record["real_jids"] = readable[record["room"]].real_jids if record.get("room") in readable else True
            items.append(record)
        aggregations = response.get("aggregations", {})
        total = response["hits"]["total"]
        return SearchResults(
            total=total["value"] if isinstance(total, dict) else int(total),
            items=items,
            rooms=_buckets(aggregations.get("rooms", {}).get("buckets", [])[: request.facet_size]),
            senders=_buckets(sender_buckets(aggregations)),
            months=month_buckets(aggregations),
        )

    @defer.inlineCallbacks
    def _run(self, request: SearchRequest):
        try:
            response = yield self.run_search(self.store.search, self.store.prefix, search_body(request))
        except SearchUnavailable as e:
            self.log.warn("search failed: {error}", error=e)
            raise SearchUnavailableError(str(e)) from e
        except ValueError as e:  # OpenSearch could not parse it: say so, in its words
            raise SearchError(f"q: {e}") from e
        return response

    @staticmethod
    def _unreadable_hits(response: dict, readable) -> set[str] | None:
        """The rooms with hits that ``readable`` lacks; None when the answer does not list every room with hits."""
        rooms = response.get("aggregations", {}).get("rooms")
        if rooms is None or rooms.get("sum_other_doc_count", 0) or rooms.get("doc_count_error_upper_bound", 0):
            return None
        return {bucket["key"] for bucket in rooms.get("buckets", []) if bucket["key"] not in readable}

    def _remember_gone(self, rooms) -> None:
        for room in rooms:
            if len(self.gone_rooms) >= MAX_GONE_ROOMS:
                return
            self.gone_rooms.add(room)


def search_for(chat_server, history=None) -> Search:
    """The `Search` over ``chat_server``'s history stores (``history``: a `history.History` already made, else a new one).

    The REST API's ``/v2/search`` and the search page both search through this.
    """
    from hipchat_server.history import history_for

    config = chat_server.get_config()
    history = history or history_for(chat_server)
    return Search(
        history.store,
        history.rooms,
        run_search=history.run_search,
        run_database=history.run_database,
        domain=config.server.domain,
        rooms_service=f"{config.rooms.service}.{config.server.domain}",
    )
