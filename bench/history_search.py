#!/usr/bin/env python3
"""History and search over the corpus (bench/corpus.py), measured against the installed appliance.

    PY=/opt/hipchat/venv/bin/python
    $PY bench/history_search.py join --count 300        # room history on join (75 messages + subject)
    $PY bench/history_search.py mam --count 300         # MAM last 50 of a room / a conversation (+ an older page)
    $PY bench/history_search.py search --count 600      # GET /v2/search: a query mix, facets, permissions
    $PY bench/history_search.py breakdown --count 100   # the server's search bodies straight to OpenSearch, and variants
    $PY bench/history_search.py size                    # index bytes per message (primaries, with replicas)
    $PY bench/history_search.py all                     # the four, one table

Scenarios, one request at a time (latency, not throughput), after ``--warmup`` requests that
are not counted:

- ``join``: a corpus user enters a public corpus room (XEP-0045, ``<history maxstanzas='75'/>``),
  a fresh nickname each time, and leaves again; the time from sending the join presence to the
  room's subject, which comes after the last history message. Also the time to the
  self-presence and how many history messages came (should be 75).
- ``mam``: XEP-0313 queries with ``<set><max>50</max><before/></set>``: the last 50 of a room
  (to the room's JID) and of a one-to-one conversation (to the user's own archive with the
  ``with`` field); time to the ``<fin/>`` iq result. Also an older page of each (``<before>``
  an id from mid-year), which the recent lists cannot answer.
- ``search``: ``GET /v2/search?q=...`` on the HTTPS port with Basic auth as a corpus user
  (``--user``), Lucene syntax: single words by frequency band, two words with AND, phrases,
  ``from:``, prefix wildcards; facets as the endpoint returns them; each request carries
  the permission filter of its user (public rooms, the private rooms they belong to, their own
  conversations). p50/p95/p99 per kind and overall, and the hit counts.
- ``breakdown``: the same query mix, each query's body built by the installed appliance's own
  code (rewriter, the user's rooms, the visibility filter the server would choose, facets,
  highlights, newest first) and sent straight to OpenSearch, then again with the filter naming
  the readable rooms (the server's other form), without facets, without highlights,
  without the exact total, with only the query and the permission filter, with only the
  query: OpenSearch's ``took`` of each, so the HTTP figure splits into OpenSearch and the rest.
- ``size``: ``_cat/indices/<prefix>-<year>.*?bytes=b``: docs, store size of the primaries and
  with replicas, bytes per message.

``--nudge`` makes the XMPP client write a whitespace keepalive as soon as the first stanza of
an answer arrives: a server that leaves Nagle's algorithm on holds each small write after the
first until the client ACKs, and Linux delays that ACK by up to 40 ms; the nudge carries it at
once. Compare with and without to see that cost.

``--json`` prints the figures as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import http.client
import json
import random
import ssl
import sys
import os
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import corpus  # noqa: E402
from xmpp_load.client import Client, Options, Tally  # noqa: E402
from xmpp_load.figures import fmt, percentiles  # noqa: E402
from xmpp_load.servers import _hipchat_settings  # noqa: E402
from xmpp_load.splitter import attributes, element_name, escape  # noqa: E402

MAM_NS = "urn:xmpp:mam:2"
RSM_NS = "http://jabber.org/protocol/rsm"
MUC_NS = "http://jabber.org/protocol/muc"


def _ms(ns: int) -> float:
    return ns / 1e6


def summary(values: list[float]) -> dict:
    p = percentiles(values, (50, 95, 99, 100))
    return {"n": len(values), "p50": p[50], "p95": p[95], "p99": p[99], "max": p[100]}


class Context:
    """The appliance (config, OpenSearch) and the corpus plan, shared by the scenarios."""

    def __init__(self, args):
        self.args = args
        self.server = corpus.load_appliance(args.config)
        config = self.server.get_config()
        self.config = config
        self.domain = config.server.domain
        self.prefix = config.archive.index_prefix
        self.plan = corpus.Plan(args.users, args.rooms, args.private, args.plan_seed, self.domain, config.rooms.service)
        self.opensearch = self.server.get_opensearch_client()
        self.settings = _hipchat_settings()

    def options(self) -> Options:
        s = self.settings
        return Options(host="127.0.0.1", port=s["port"], domain=self.domain, ca_file=s["ca_file"],
                       password=corpus.PASSWORD, stream_management=False, login_timeout=30)

    async def login(self, username: str, index: int) -> Client:
        options = self.options()
        client = Client(index, username, options, Tally())
        await client.login(options.ssl_context())
        return client

    def busiest_rooms(self, privacy: str = "public", limit: int = 20, min_messages: int = 75) -> list[str]:
        """Room JIDs of the corpus with the most messages (at least ``min_messages``)."""
        jids = [r["jid"] for r in self.plan.rooms if r["privacy"] == privacy]
        response = self.opensearch.search(index=self.corpus_indices(), body={
            "size": 0, "query": {"terms": {"room": jids}},
            "aggs": {"rooms": {"terms": {"field": "room", "size": limit, "min_doc_count": min_messages}}}})
        return [b["key"] for b in response["aggregations"]["rooms"]["buckets"]]

    def corpus_indices(self) -> str:
        return f"{self.prefix}-{self.args.year:04d}.*"

    def older_id(self, field: str, value: str) -> str | None:
        """The id of a message of ``field``=``value`` from the middle of the corpus year."""
        response = self.opensearch.search(index=self.corpus_indices(), body={
            "size": 1, "_source": False, "sort": [{"id": "desc"}],
            "query": {"bool": {"filter": [{"term": {field: value}},
                                          {"range": {"timestamp": {"lte": f"{self.args.year}-07-01T00:00:00Z"}}}]}}})
        hits = response["hits"]["hits"]
        return hits[0]["_id"] if hits else None


# ---------------------------------------------------------------------------------------------
# XMPP: history on join, MAM.

async def join_once(client: Client, room: str, nick: str, maxstanzas: int, timeout: float = 10.0,
                    nudge: bool = False) -> dict:
    """Enter ``room``; times (ns) to the self-presence and the subject, history messages counted; then leave.

    ``nudge``: write one whitespace keepalive as soon as the first stanza of the answer arrives
    (its TCP segment carries the ACK at once instead of after the 40 ms delayed-ACK timer, which
    a sender with Nagle's algorithm waits for before its next small write).
    """
    full = f"{room}/{nick}".encode()
    room_b = room.encode()
    seen = {"history": 0, "self_ns": None, "nudged": not nudge}

    def watch(element: bytes) -> bool:
        if not seen["nudged"]:
            seen["nudged"] = True
            client.transport.write(b" ")
        name = element_name(element)
        frm = attributes(element).get(b"from", b"")
        if name == b"presence" and frm == full:
            if attributes(element).get(b"type") == b"error":
                return True
            seen["self_ns"] = time.perf_counter_ns()
            return False
        if name == b"message" and (frm == room_b or frm.startswith(room_b + b"/")):
            if b"<subject" in element:
                return True
            if b"<delay" in element:
                seen["history"] += 1
        return False

    done = client.expect(watch)
    started = time.perf_counter_ns()
    client.send(f"<presence to='{escape(room)}/{escape(nick)}'><x xmlns='{MUC_NS}'>"
                f"<history maxstanzas='{maxstanzas}'/></x></presence>".encode())
    answer = await asyncio.wait_for(done, timeout)
    ended = time.perf_counter_ns()
    if attributes(answer).get(b"type") == b"error":
        raise RuntimeError(f"join refused: {answer[:300]!r}")
    left = client.expect(lambda e: element_name(e) == b"presence" and attributes(e).get(b"from") == full
                         and attributes(e).get(b"type") == b"unavailable")
    client.send(f"<presence to='{escape(room)}/{escape(nick)}' type='unavailable'/>".encode())
    await asyncio.wait_for(left, timeout)
    return {"subject_ms": _ms(ended - started),
            "self_presence_ms": _ms(seen["self_ns"] - started) if seen["self_ns"] else None,
            "history": seen["history"]}


async def mam_once(client: Client, qid: str, to: str | None, with_jid: str | None, before: str | None,
                   max_items: int, timeout: float = 10.0, nudge: bool = False) -> dict:
    """One MAM query; time (ms) to the iq result and the results counted (``nudge``: see `join_once`)."""
    marker = f"queryid='{qid}'".encode(), f'queryid="{qid}"'.encode()
    count = {"results": 0, "nudged": not nudge}

    def watch(element: bytes) -> bool:
        if not count["nudged"]:
            count["nudged"] = True
            client.transport.write(b" ")
        name = element_name(element)
        if name == b"message":
            if marker[0] in element or marker[1] in element:
                count["results"] += 1
            return False
        return name == b"iq" and attributes(element).get(b"id") == qid.encode()

    form = ""
    if with_jid:
        form = (f"<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>{MAM_NS}</value>"
                f"</field><field var='with'><value>{escape(with_jid)}</value></field></x>")
    before_el = f"<before>{before}</before>" if before else "<before/>"
    to_attr = f" to='{escape(to)}'" if to else ""
    done = client.expect(watch)
    started = time.perf_counter_ns()
    client.send(f"<iq type='set' id='{qid}'{to_attr}><query xmlns='{MAM_NS}' queryid='{qid}'>{form}"
                f"<set xmlns='{RSM_NS}'><max>{max_items}</max>{before_el}</set></query></iq>".encode())
    answer = await asyncio.wait_for(done, timeout)
    elapsed = _ms(time.perf_counter_ns() - started)
    if attributes(answer).get(b"type") != b"result":
        raise RuntimeError(f"MAM query refused: {answer[:300]!r}")
    return {"ms": elapsed, "results": count["results"]}


async def run_join(ctx: Context, count: int, warmup: int, maxstanzas: int) -> dict:
    rooms = ctx.busiest_rooms("public", limit=20, min_messages=maxstanzas)
    if not rooms:
        raise SystemExit("no public corpus room has enough messages: load the corpus first (bench/corpus.py)")
    client = await ctx.login(ctx.args.user, 900001)
    times, selfs, histories, failures = [], [], [], []
    try:
        for i in range(warmup + count):
            try:
                got = await join_once(client, rooms[i % len(rooms)], f"hs{i}-{random.randrange(1 << 30)}", maxstanzas,
                                      nudge=ctx.args.nudge)
            except Exception as e:  # noqa: BLE001 - counted
                failures.append(str(e)[:200])
                continue
            if i >= warmup:
                times.append(got["subject_ms"])
                if got["self_presence_ms"] is not None:
                    selfs.append(got["self_presence_ms"])
                histories.append(got["history"])
    finally:
        client.close()
    return {"join_to_subject_ms": summary(times), "join_to_self_presence_ms": summary(selfs),
            "history_messages_min": min(histories) if histories else None,
            "history_messages_max": max(histories) if histories else None,
            "rooms_used": len(rooms), "failures": len(failures), "failure_examples": failures[:2]}


async def run_mam(ctx: Context, count: int, warmup: int, max_items: int) -> dict:
    plan = ctx.plan
    user = ctx.args.user
    u = plan.users.index(user)
    me = plan.bare(u)
    rooms = ctx.busiest_rooms("public", limit=20, min_messages=max_items)
    peers = [plan.bare(b if a == u else a) for a, b in plan.pairs if u in (a, b)]
    client = await ctx.login(user, 900002)
    out: dict = {}
    try:
        cases = {
            "room_last": [(room, None, None) for room in rooms],
            "conversation_last": [(None, peer, None) for peer in peers[:50]],
            "room_older_page": [(room, None, ctx.older_id("room", room)) for room in rooms[:10]],
            "conversation_older_page": [(None, peer, ctx.older_id("conversation", "|".join(sorted((me, peer)))))
                                        for peer in peers[:10]],
        }
        for name, targets in cases.items():
            targets = [t for t in targets if not (name.endswith("older_page") and t[2] is None)]
            if not targets:
                out[name] = {"n": 0}
                continue
            times, results, failures = [], [], []
            for i in range(warmup + count):
                to, with_jid, before = targets[i % len(targets)]
                try:
                    got = await mam_once(client, f"q{name[:4]}{i}", to, with_jid, before, max_items, nudge=ctx.args.nudge)
                except Exception as e:  # noqa: BLE001 - counted
                    failures.append(str(e)[:200])
                    continue
                if i >= warmup:
                    times.append(got["ms"])
                    results.append(got["results"])
            out[name] = {**summary(times), "results_min": min(results) if results else None,
                         "results_max": max(results) if results else None, "targets": len(targets),
                         "failures": len(failures), "failure_examples": failures[:2]}
    finally:
        client.close()
    return out


# ---------------------------------------------------------------------------------------------
# Search over HTTPS.

def query_mix(count: int, seed: int, plan: corpus.Plan) -> list[tuple[str, str]]:
    """(kind, Lucene query) pairs: single words by frequency band, AND, phrases, from:, prefix wildcards."""
    rng = random.Random(seed)
    bands = corpus.frequency_bands()
    factory = corpus.MessageFactory(plan, seed + 17)
    kinds = [("word_high", 20), ("word_mid", 20), ("word_low", 10), ("and", 15), ("phrase", 15), ("from", 10),
             ("prefix", 10)]
    names, weights = zip(*kinds)
    out = []
    for _ in range(count):
        kind = rng.choices(names, weights)[0]
        if kind.startswith("word_"):
            q = rng.choice(bands[kind[5:]])
        elif kind == "and":
            q = f"{rng.choice(bands['high'] + bands['mid'])} AND {rng.choice(bands['mid'])}"
        elif kind == "phrase":
            words = [w for w in factory.body(None).lower().strip("?!.").split() if w.isalpha()]
            while len(words) < 2:
                words = [w for w in factory.body(None).lower().strip("?!.").split() if w.isalpha()]
            k = rng.randrange(len(words) - 1)
            q = f'"{words[k]} {words[k + 1]}"'
        elif kind == "from":
            sender = plan.users[min(len(plan.users) - 1, int(rng.paretovariate(1.2)) - 1)]
            q = f"from:{sender} AND {rng.choice(bands['high'])}"
        else:
            word = rng.choice([w for w in bands["mid"] if len(w) >= 5])
            q = f"{word[:rng.choice((3, 4))]}*"
        out.append((kind, q))
    return out


class SearchClient:
    """Keep-alive HTTPS requests to the appliance's search endpoint with Basic auth."""

    def __init__(self, host: str, port: int, ca_file: str, username: str, password: str, path: str):
        context = ssl.create_default_context(cafile=ca_file)
        self.connect = lambda: http.client.HTTPSConnection(host, port, context=context, timeout=30)
        self.connection = self.connect()
        self.path = path
        self.auth = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()

    def get(self, params: dict) -> tuple[int, dict | None, float]:
        """(status, body, ms) of one search; past the API's rate limit (429 with Retry-After: 500 requests
        per 5 minutes per user by default) it waits as told and asks again, the wait not counted."""
        while True:
            status, body, elapsed, retry_after = self._get(params)
            if status != 429 or retry_after is None:
                return status, body, elapsed
            self.waited_s += retry_after
            time.sleep(retry_after)

    waited_s = 0.0

    def _get(self, params: dict) -> tuple[int, dict | None, float, float | None]:
        url = self.path + "?" + urllib.parse.urlencode(params)
        for attempt in range(2):
            started = time.perf_counter_ns()
            try:
                self.connection.request("GET", url, headers={"Authorization": self.auth})
                response = self.connection.getresponse()
                data = response.read()
            except (http.client.HTTPException, OSError):
                self.connection.close()
                self.connection = self.connect()
                if attempt:
                    raise
                continue
            elapsed = _ms(time.perf_counter_ns() - started)
            try:
                body = json.loads(data) if data else None
            except ValueError:
                body = None
            retry_after = response.getheader("retry-after")
            return response.status, body, elapsed, float(retry_after) if retry_after else None
        raise RuntimeError("unreachable")


def _hits(body) -> int | None:
    """The total hit count of a search response, wherever the endpoint puts it."""
    if not isinstance(body, dict):
        return None
    for key in ("total", "count", "hits_total"):
        value = body.get(key)
        if isinstance(value, int):
            return value
        if isinstance(value, dict) and isinstance(value.get("value"), int):
            return value["value"]
    hits = body.get("hits")
    if isinstance(hits, dict):
        return _hits(hits)
    return None


def run_search(ctx: Context, count: int, warmup: int) -> dict:
    args = ctx.args
    host = urllib.parse.urlparse(ctx.config.server.public_url).hostname or "localhost"
    client = SearchClient(host, ctx.config.http.https_port, ctx.settings["ca_file"], args.user, corpus.PASSWORD, args.search_path)
    queries = query_mix(warmup + count, args.seed, ctx.plan)
    extra = dict(urllib.parse.parse_qsl(args.search_params))
    by_kind: dict[str, list[float]] = {}
    all_times: list[float] = []
    statuses: dict[int, int] = {}
    hits_by_kind: dict[str, list[int]] = {}
    examples: list = []
    for i, (kind, q) in enumerate(queries):
        status, body, elapsed = client.get({"q": q, **extra})
        statuses[status] = statuses.get(status, 0) + 1
        if status != 200:
            if len(examples) < 3:
                examples.append({"q": q, "status": status, "body": str(body)[:300]})
            continue
        if i < warmup:
            continue
        by_kind.setdefault(kind, []).append(elapsed)
        all_times.append(elapsed)
        n = _hits(body)
        if n is not None:
            hits_by_kind.setdefault(kind, []).append(n)
    out = {"all": summary(all_times), "statuses": statuses, "user": args.user, "errors": examples,
           "rate_limit_wait_s": client.waited_s}
    for kind, times in sorted(by_kind.items()):
        hits = sorted(hits_by_kind.get(kind, []))
        out[kind] = {**summary(times), "hits_median": hits[len(hits) // 2] if hits else None}
    return out


def run_breakdown(ctx: Context, count: int, warmup: int) -> dict:
    """Where a search's time goes: the server's own search body, sent straight to OpenSearch, then variants.

    Builds each query's body with the installed appliance's code (`hipchat_server.search`:
    the query rewriter, the user's readable rooms, the visibility filter, facets, highlights,
    newest first) and reports OpenSearch's ``took`` for it and for the same body without each
    costly part, so the HTTP figure can be split into OpenSearch and the web process.
    """
    from hipchat_server.search import QueryRewriter
    from hipchat_server.storage.message_search import (SearchRequest, search_body, visibility_filter,
                                                       visibility_filter_excluding)
    from hipchat_server.storage.room_access import RoomAccessStore

    args = ctx.args
    service = f"{ctx.config.rooms.service}.{ctx.domain}"
    access = RoomAccessStore(ctx.server.get_database_engine(), service).rooms_by_access(args.user)
    readable = access.readable
    masked = [room for room, room_access in readable.items() if not room_access.real_jids]
    reader = f"{args.user}@{ctx.domain}"
    # As the server chooses (search.Search): name the unreadable rooms when they are fewer.
    excluding = len(access.unreadable) < len(readable)
    readable_filter = visibility_filter(reader, readable)
    variants = {
        "server body": lambda b: b,
        "readable-rooms filter": lambda b: {**b, "query": {"bool": {**b["query"]["bool"],
                                                                    "filter": [readable_filter]}}},
        "no facets": lambda b: {k: v for k, v in b.items() if k != "aggs"},
        "no highlight": lambda b: {k: v for k, v in b.items() if k != "highlight"},
        "no exact total": lambda b: {**b, "track_total_hits": 1000},
        "query + permission only": lambda b: {"size": b["size"], "query": b["query"], "sort": b["sort"],
                                              "_source": b["_source"]},
        "query only (no permission)": lambda b: {"size": b["size"], "query": b["query"]["bool"]["must"][0],
                                                 "sort": b["sort"], "_source": b["_source"]},
    }
    took: dict[str, list[float]] = {name: [] for name in variants}
    round_trip: list[float] = []
    for i, (_kind, q) in enumerate(query_mix(warmup + count, args.seed, ctx.plan)):
        visibility = visibility_filter_excluding(reader, access.unreadable) if excluding else readable_filter
        request = SearchRequest(query=QueryRewriter(ctx.domain, service, masked).clause(q), visibility=visibility,
                                masked_rooms=tuple(masked), every_room=excluding)
        body = search_body(request)
        for name, change in variants.items():
            started = time.perf_counter_ns()
            response = ctx.opensearch.search(index=ctx.prefix, body=change(body), request_timeout=30)
            if i >= warmup:
                took[name].append(float(response["took"]))
                if name == "server body":
                    round_trip.append(_ms(time.perf_counter_ns() - started))
    out = {name: summary(values) for name, values in took.items()}
    out["server body, client round trip"] = summary(round_trip)
    out["readable_rooms"] = len(readable)
    out["unreadable_rooms"] = len(access.unreadable)
    shards = ctx.opensearch.search(index=ctx.prefix, body={"size": 0, "query": {"match_none": {}}})["_shards"]["total"]
    out["shards_per_search"] = shards
    return out


# ---------------------------------------------------------------------------------------------

def run_size(ctx: Context) -> dict:
    sizes = corpus.index_sizes(ctx.opensearch, ctx.prefix, ctx.args.year)
    segments = ctx.opensearch.indices.segments(index=ctx.corpus_indices())
    count = sum(len(shard["segments"]) for index in segments["indices"].values()
                for copies in index["shards"].values() for shard in copies)
    sizes["segments"] = count
    return sizes


def rows_of(result: dict) -> list[tuple[str, str, str]]:
    """(figure, value, target) rows for the table."""
    rows = []
    join = result.get("join")
    if join:
        j = join["join_to_subject_ms"]
        rows += [("join: history messages received (min-max)", f"{fmt(join['history_messages_min'])}-{fmt(join['history_messages_max'])}", "75"),
                 ("join -> subject p50 / p95 / p99 (ms)", f"{fmt(j['p50'])} / {fmt(j['p95'])} / {fmt(j['p99'])}", "p99 < 10"),
                 ("join -> self-presence p50 (ms)", fmt(join["join_to_self_presence_ms"]["p50"]), ""),
                 ("join failures", fmt(join["failures"]), "0")]
    mam = result.get("mam")
    if mam:
        for name, label in (("room_last", "MAM room last 50"), ("conversation_last", "MAM conversation last 50"),
                            ("room_older_page", "MAM room older page"), ("conversation_older_page", "MAM conversation older page")):
            m = mam.get(name) or {}
            if m.get("n"):
                target = "p50 < 10, p99 < 30" if name.endswith("_last") else ""
                rows.append((f"{label} p50 / p95 / p99 (ms) [results]",
                             f"{fmt(m['p50'])} / {fmt(m['p95'])} / {fmt(m['p99'])} [{m['results_min']}-{m['results_max']}]", target))
    breakdown = result.get("breakdown")
    if breakdown:
        rows.append((f"OpenSearch took, {breakdown['readable_rooms']} readable / {breakdown['unreadable_rooms']} unreadable rooms, "
                     f"{breakdown['shards_per_search']} shards:", "p50 / p95 (ms)", ""))
        for name, value in breakdown.items():
            if isinstance(value, dict) and value.get("n"):
                rows.append((f"  {name}", f"{fmt(value['p50'])} / {fmt(value['p95'])}", ""))
    search = result.get("search")
    if search:
        a = search["all"]
        rows.append((f"search as {search['user']} p50 / p95 / p99 (ms)", f"{fmt(a['p50'])} / {fmt(a['p95'])} / {fmt(a['p99'])}",
                     "p50 < 50, p95 < 150"))
        for kind in ("word_high", "word_mid", "word_low", "and", "phrase", "from", "prefix"):
            k = search.get(kind)
            if k:
                rows.append((f"  {kind} p50 / p95 (ms) [median hits]", f"{fmt(k['p50'])} / {fmt(k['p95'])} [{fmt(k['hits_median'])}]", ""))
        rows.append(("search HTTP statuses", json.dumps(search["statuses"]), "all 200"))
        if search.get("rate_limit_wait_s"):
            rows.append(("  waited for the API rate limit (s, not counted)", fmt(search["rate_limit_wait_s"]), ""))
    size = result.get("size")
    if size:
        rows += [("corpus documents", fmt(size["docs"]), ""),
                 ("store, primaries / with replicas (MiB)",
                  f"{fmt(size['primary_store_bytes'] / 2**20)} / {fmt(size['store_bytes'] / 2**20)}", ""),
                 ("bytes per message, primaries / with replicas",
                  f"{fmt(size['bytes_per_message_primary'])} / {fmt(size['bytes_per_message_total'])}", "reported"),
                 ("segments (all copies)", fmt(size["segments"]), "")]
    return rows


def print_rows(rows) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        for r in rows:
            print("  ".join(r))
        return
    table = Table(title="History and search over the corpus")
    for h in ("figure", "measured", "target"):
        table.add_column(h, justify="left" if h == "figure" else "right")
    for r in rows:
        table.add_row(*r)
    Console(width=160).print(table)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("scenario", choices=["join", "mam", "search", "breakdown", "size", "all"])
    parser.add_argument("--count", type=int, default=300, help="measured requests per case")
    parser.add_argument("--warmup", type=int, default=20, help="requests before measuring")
    parser.add_argument("--user", default=f"{corpus.USER_PREFIX}1", help="corpus user (bench-corpus-1 is in many private rooms)")
    parser.add_argument("--history", type=int, default=75, help="maxstanzas of the join")
    parser.add_argument("--max", type=int, default=50, help="MAM page size")
    parser.add_argument("--nudge", action="store_true",
                        help="join/mam: send a whitespace keepalive on the answer's first stanza (shows what Nagle's "
                             "algorithm on the server plus the client's delayed ACK cost)")
    parser.add_argument("--search-path", default="/v2/search")
    parser.add_argument("--search-params", default="", help="more query parameters, URL-encoded (e.g. 'facets=true')")
    parser.add_argument("--seed", type=int, default=7, help="fixes the query mix")
    parser.add_argument("--year", type=int, default=2025)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--rooms", type=int, default=300)
    parser.add_argument("--private", type=float, default=0.2)
    parser.add_argument("--plan-seed", type=int, default=1)
    parser.add_argument("--config")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    ctx = Context(args)
    result: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "user": args.user, "nudge": args.nudge}
    wanted = ["join", "mam", "search", "size"] if args.scenario == "all" else [args.scenario]
    if "size" in wanted:
        result["size"] = run_size(ctx)
    if "join" in wanted:
        result["join"] = asyncio.run(run_join(ctx, args.count, args.warmup, args.history))
    if "mam" in wanted:
        result["mam"] = asyncio.run(run_mam(ctx, args.count, args.warmup, args.max))
    if "search" in wanted:
        result["search"] = run_search(ctx, args.count, args.warmup)
    if "breakdown" in wanted:
        result["breakdown"] = run_breakdown(ctx, args.count, args.warmup)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print_rows(rows_of(result))
        for part in ("join", "mam", "search"):
            for note in _failures(result.get(part)):
                print(f"  note ({part}): {note}")
    return 0


def _failures(part) -> list[str]:
    if not isinstance(part, dict):
        return []
    notes = []
    for key, value in part.items():
        if key in ("failure_examples", "errors") and value:
            notes.append(f"{key}: {value}")
        elif isinstance(value, dict):
            notes += _failures(value)
    return notes


if __name__ == "__main__":
    sys.exit(main())
