"""Fakes of history's stores, for the history, MAM and search unit tests.

`FakeOpenSearch` is an in-memory stand-in for the OpenSearch client.

It evaluates the part of the query DSL that `storage.message_search` builds
(bool, term, terms, range, ids, match, query_string on words, sort,
search_after, size, aggregations by terms and month), so the tests check
what the bodies *select*, not only what they look like. Every request is kept
in ``requests`` so a test can also look at the bodies themselves.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

from twisted.internet import defer, task

from hipchat_server.archive import MessageIds, conversation_of, index_name, timestamp_of
from hipchat_server.history import History
from hipchat_server.storage.message_search import MessageSearchStore, message_id_milliseconds
from hipchat_server.storage.room_access import RoomAccess

D = "chat.example.com"
ALICE, BOB, CAROL = f"alice@{D}", f"bob@{D}", f"carol@{D}"
ENG, SECRET = f"eng@conference.{D}", f"secret@conference.{D}"
START_MS = 1_764_000_000_000  # 2025-11-24


class FakeNotFound(Exception):
    status_code = 404


def _ms(record: dict) -> int:
    return message_id_milliseconds(record["id"])


def _field(record: dict, name: str):
    if name == "timestamp":
        return _ms(record)
    if name == "_id":
        return record["id"]
    if name.endswith(".keyword"):
        name = name[: -len(".keyword")]
    return record.get(name)


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", (text or "").lower())


def _compare(value, bound, op: str) -> bool:
    if value is None:
        return False
    return {"gt": value > bound, "gte": value >= bound, "lt": value < bound, "lte": value <= bound}[op]


def matches(record: dict, query: dict) -> bool:
    """Whether ``record`` is selected by ``query`` (the DSL subset our bodies use)."""
    ((kind, spec),) = query.items()
    if kind == "match_all":
        return True
    if kind == "bool":
        if not all(matches(record, q) for q in spec.get("filter", []) + spec.get("must", [])):
            return False
        if any(matches(record, q) for q in spec.get("must_not", [])):
            return False
        should = spec.get("should", [])
        if should:
            wanted = spec.get("minimum_should_match", 1)
            return sum(matches(record, q) for q in should) >= wanted
        return True
    if kind == "term":
        ((name, value),) = spec.items()
        value = value["value"] if isinstance(value, dict) else value
        found = _field(record, name)
        return value in found if isinstance(found, list) else found == value
    if kind == "terms":
        ((name, values),) = spec.items()
        found = _field(record, name)
        found = found if isinstance(found, list) else [found]
        return any(v in values for v in found)
    if kind == "ids":
        return record["id"] in spec["values"]
    if kind == "range":
        ((name, bounds),) = spec.items()
        value = _field(record, name)
        return all(_compare(value, bound, op) for op, bound in bounds.items() if op in ("gt", "gte", "lt", "lte"))
    if kind == "match":
        ((name, spec),) = spec.items()
        wanted = _words(spec["query"] if isinstance(spec, dict) else spec)
        have = set(_words(_field(record, name)))
        return all(w in have for w in wanted)
    if kind == "query_string":
        # Words only (enough for the permission tests): every bare word must be in the body.
        text = re.sub(r"\w+:\S+", " ", spec["query"])
        have = set(_words(record.get("body")))
        return all(w in have for w in _words(text) if w not in ("and", "or", "not"))
    raise AssertionError(f"the fake does not know the query {kind!r}")


def _sort_key(sort: list, record: dict):
    return [
        (_field(record, name) if name != "_score" else 0)
        for clause in sort
        for name in (clause if isinstance(clause, dict) else {clause: {}})
    ]


class FakeIndices:
    def __init__(self, client):
        self.client = client


class FakeOpenSearch:
    """Documents by index; ``down`` makes every call fail as a connection error would."""

    def __init__(self):
        self.indices_docs: dict[str, dict[str, dict]] = {}
        self.requests: list[tuple[str, str, dict]] = []
        self.down = False

    def index(self, index: str, record: dict) -> None:
        self.indices_docs.setdefault(index, {})[record["id"]] = record

    def _docs(self, indices: str) -> list[dict]:
        found = []
        for name in indices.split(","):
            if name in self.indices_docs:
                found.extend(self.indices_docs[name].values())
            elif "-" not in name:  # the alias: every month
                for docs in self.indices_docs.values():
                    found.extend(docs.values())
        return found

    def _search(self, indices: str, body: dict) -> dict:
        self.requests.append(("search", indices, body))
        docs = [d for d in self._docs(indices) if matches(d, body.get("query", {"match_all": {}}))]
        sort = body.get("sort", [])
        descending = bool(sort) and any(
            (clause.get(name, {}) or {}).get("order") == "desc"
            for clause in sort
            if isinstance(clause, dict)
            for name in clause
        )
        docs.sort(key=lambda d: _sort_key(sort, d), reverse=descending)
        if "search_after" in body:
            after = body["search_after"]
            docs = [d for d in docs if (_sort_key(sort, d) < after if descending else _sort_key(sort, d) > after)]
        start = body.get("from", 0)
        page = docs[start : start + body.get("size", 10)]
        hits = []
        for d in page:
            hit = {"_id": d["id"], "_index": "x", "sort": _sort_key(sort, d)}
            if body.get("_source", True) is not False:
                hit["_source"] = (
                    {k: v for k, v in d.items() if k != "xml"} if isinstance(body.get("_source"), dict) else d
                )
            if "highlight" in body:
                hit["highlight"] = {"body": [d.get("body", "")]}
            hits.append(hit)
        response = {"hits": {"total": {"value": len(docs), "relation": "eq"}, "hits": hits}}
        if "aggs" in body:
            response["aggregations"] = self._aggregations(body["aggs"], docs)
        return response

    def _aggregations(self, aggs: dict, docs: list[dict]) -> dict:
        out = {}
        for name, spec in aggs.items():
            counts: dict = {}
            if "terms" in spec:
                for d in docs:
                    value = _field(d, spec["terms"]["field"])
                    if value is not None:
                        counts[value] = counts.get(value, 0) + 1
                buckets = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: spec["terms"].get("size", 10)]
                out[name] = {"buckets": [{"key": k, "doc_count": n} for k, n in buckets]}
            elif "filter" in spec:
                inside = [d for d in docs if matches(d, spec["filter"])]
                out[name] = {"doc_count": len(inside), **self._aggregations(spec.get("aggs", {}), inside)}
            elif "date_histogram" in spec:
                for d in docs:
                    moment = datetime.fromtimestamp(_ms(d) / 1000, tz=timezone.utc)
                    counts[moment.strftime("%Y-%m")] = counts.get(moment.strftime("%Y-%m"), 0) + 1
                out[name] = {"buckets": [{"key_as_string": k, "doc_count": n} for k, n in sorted(counts.items())]}
        return out

    # The client's API, as opensearch-py spells it.
    def msearch(self, body: list[dict]) -> dict:
        if self.down:
            raise ConnectionError("OpenSearch is down")
        responses = []
        for header, query in zip(body[0::2], body[1::2]):
            responses.append(self._search(header["index"], query))
        return {"responses": responses}

    def search(self, index: str, body: dict, **params) -> dict:
        if self.down:
            raise ConnectionError("OpenSearch is down")
        return self._search(index, body)

    def get(self, index: str, id: str, **params) -> dict:
        if self.down:
            raise ConnectionError("OpenSearch is down")
        self.requests.append(("get", index, {"id": id}))
        doc = self.indices_docs.get(index, {}).get(id)
        return {"found": True, "_source": doc} if doc else {"found": False}

    def bodies(self) -> list[dict]:
        return [body for kind, _, body in self.requests if kind == "search"]


class FakeRecent:
    """RecentMessages over dicts: lists newest first, trimmed to ``size``."""

    def __init__(self, size=75):
        self.size = size
        self.lists: dict[str, list[dict]] = {}
        self.down = False

    def push(self, record):
        keys = [f"room:{record['room']}"] if record["room"] else [f"conversation:{record['conversation']}"]
        keys += [f"user:{bare}" for bare in record["participants"]]
        for key in keys:
            self.lists[key] = ([record] + self.lists.get(key, []))[: self.size]

    def _read(self, key, limit):
        if self.down:
            raise ConnectionError("Redis is down")
        return self.lists.get(key, [])[:limit]

    def room(self, room, limit):
        return self._read(f"room:{room}", limit)

    def conversation(self, a, b, limit):
        return self._read(f"conversation:{'|'.join(sorted((a, b)))}", limit)

    def user(self, bare, limit):
        return self._read(f"user:{bare}", limit)


class FakeRooms:
    """Room permissions by (username, room): public rooms readable unless outcast, private for members."""

    def __init__(self):
        self.rooms = {ENG: ("public", {"mallory": "outcast"}), SECRET: ("private", {"alice": "member"})}

    def access(self, username, room):
        if room not in self.rooms:
            return None
        privacy, affiliations = self.rooms[room]
        affiliation = affiliations.get(username)
        readable = affiliation in ("owner", "admin", "member") if privacy == "private" else affiliation != "outcast"
        return RoomAccess(readable, readable)


class Corpus:
    """Messages made the way the archive makes them; some are indexed, all are pushed to Redis."""

    def __init__(self, client: FakeOpenSearch, recent: FakeRecent):
        self.client, self.recent = client, recent
        self.now = START_MS
        self.ids = MessageIds(now_ms=lambda: self.now)

    def add(self, *, room=None, sender=ALICE, recipient=None, body="hello", indexed=True, same_ms=False):
        if not same_ms:
            self.now += 1000
        message_id, ms = self.ids.next()
        conversation, participants = conversation_of(sender, recipient) if recipient else (None, [])
        record = {
            "id": message_id,
            "timestamp": timestamp_of(ms),
            "type": "groupchat" if room else "chat",
            "room": room,
            "conversation": conversation,
            "participants": participants,
            "sender": sender,
            "sender_name": sender.split("@")[0],
            "recipient": recipient,
            "body": body,
            "origin_id": None,
            "xml": f"<message type='chat'><body>{body}</body></message>",
        }
        self.recent.push(record)
        if indexed:
            self.client.index(index_name("messages", record), record)
        return record


def synchronous(f, *args) -> defer.Deferred:
    """A ``run_*`` for synchronous fakes: call at once, return a fired Deferred."""
    return defer.maybeDeferred(f, *args)


def make_history(client: FakeOpenSearch, recent: FakeRecent, clock=None, rooms=None) -> History:
    """A History over the fakes; "now" is a day after the corpus starts (so month indices are bounded)."""
    store = MessageSearchStore(client, "messages", now_ms=lambda: START_MS + 86_400_000)
    return History(
        store,
        recent,
        rooms or FakeRooms(),
        run_search=synchronous,
        run_redis=synchronous,
        run_database=synchronous,
        clock=clock or task.Clock(),
    )
