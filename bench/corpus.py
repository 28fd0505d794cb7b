#!/usr/bin/env python3
"""Bulk-load a realistic message corpus straight into OpenSearch, for the history and search benchmarks.

    PY=/opt/hipchat/venv/bin/python
    $PY bench/corpus.py --count 1000000                 # users, rooms, 1M messages of 2025, recent lists
    $PY bench/corpus.py --count 9000000 --seed 2        # grow the same corpus to 10M
    $PY bench/corpus.py --info                          # what is loaded
    $PY bench/corpus.py --drop                          # delete messages-2025.01 .. 2025.12 and the recent lists

Messages have the record shape of the durable path (contract: id = ULID whose time is the
message's time, timestamp, type, room, conversation, participants, sender, sender_name,
recipient, body, origin_id, xml) and go into the monthly indices of a past year (``--year``,
2025 by default), so live messages of the current month stay apart and ``--drop`` deletes
exactly the corpus. Nothing goes through the spool or the indexer: this measures the store,
not the path (bench/xmpp_load ingest does that).

The corpus is a *plan* (users, rooms, memberships, contacts: fixed by ``--plan-seed``) and
*messages* drawn from it (``--seed``; a second load with another seed adds to the same rooms):

- users ``bench-corpus-<n>`` (``--users``, 2,000) with the bench password, created through the
  appliance's user store as bench/xmpp_load's users are; user n's activity is 1/n^0.7 (a few
  people write most messages);
- rooms (``--rooms``, 300; ``--private`` 20 % members-only), created in MariaDB (``rooms``
  with ``jid_node``, owners and private-room members in ``room_members``); room activity is
  Zipf-like (one busy room, a long tail of quiet ones), each room has its regulars;
- one-to-one conversations (``--one-to-one``, 30 % of messages) between contact pairs;
- bodies: Zipf word frequencies (exponent 1.07) over a fixed vocabulary of ~4,000 words
  (English function and chat words, tech terms, made-up project and jargon words), chat-like
  lengths (median ~7 words, a long tail), some @mentions, links, ticket and PR numbers;
- times: working hours of working days across the year; ids sort by time.

After the load each corpus room's, conversation's and user's Redis recent list (the newest 75
records, as the archive keeps them) is rebuilt from OpenSearch (``--no-recent`` skips it),
so history on join finds what a live appliance would have.

The indices are created first (the index template applies) and their refresh interval is
raised to ``--refresh-interval`` (-1: off) during the load and restored afterwards, on Ctrl-C too.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import math
import os
import random
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, timedelta, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

USER_PREFIX = "bench-corpus-"
PASSWORD = "bench-password-1"
ROOM_PREFIX = "corpus-"
RESOURCE = "corpus"
ZIPF_EXPONENT = 1.07
RECENT_SIZE = 75

# ---------------------------------------------------------------------------------------------
# Vocabulary: fixed (its own seed), so the search benchmark can pick words by frequency band.

COMMON = """
the to i a and is it you that of in for on this we be have with can not just it's so do are but if at
will was my what me all there they get i'm up out now no about one like from think yes an or don't any
how when see can't know did good more some need he time ok should would then here going still work also
thanks let try back new too got go well today our look make sure one only use been want right them
because has could really which over into again why way thing first after still those last maybe other
something still probably yeah people day week tomorrow morning yesterday already much before same
anyone check fine cool great nice please thank lol yep nope hey hi hmm oh sorry actually though
""".split()

CHAT_AND_TECH = """
deploy deployed deploying deployment build builds release released releases outage incident rollback
staging prod production hotfix patch merge merged branch master main commit commits review reviewed
jira ticket tickets issue issues bug bugs fix fixed fixing test tests testing failing flaky green red
pipeline jenkins bamboo ci cd docker container image kubernetes cluster node nodes pod pods helm chart
database mysql postgres mariadb redis cache caching query queries index indices search elastic
opensearch shard shards replica latency timeout timeouts error errors exception stacktrace trace log
logs logging alert alerts pager oncall postmortem customer customers support sla ticketing escalation
sprint standup meeting meetings retro planning backlog estimate story points epic roadmap demo
upgrade migration migrations schema rollout canary metrics dashboard grafana prometheus monitoring
disk memory cpu load traffic spike dns certificate cert ssl tls vpn proxy nginx haproxy firewall
api endpoint endpoints request requests response server servers client clients frontend backend
service services microservice config configuration feature flag flags toggle experiment
login auth oauth token tokens session sessions password ldap sso permissions role roles admin
python java golang javascript typescript react node npm pip package packages dependency version
repo repository fork pull push tag tags changelog docs documentation wiki confluence readme
lunch coffee wfh vacation holiday office remote call zoom hangout slides calendar invite
script scripts cron job jobs queue worker workers consumer producer kafka rabbitmq message messages
backup backups restore snapshot snapshots storage volume bucket s3 upload download file files
network packet packets loadbalancer region zone failover primary secondary ha cluster-wide
performance benchmark benchmarks profile profiling regression regressions slow faster optimize
security vulnerability cve patching audit compliance encryption key keys secret secrets vault
mobile android ios app apps browser chrome firefox safari css html layout design mockup ux
invoice billing payment payments pricing contract renewal sales marketing campaign launch
""".split()

_ONSETS = "b br c ch cl d dr f fl fr g gl gr h j k kl l m n p pl pr qu r s sh sk sl sp st t th tr v w z".split()
_VOWELS = "a e i o u a e i o ai ea ou io ee oo ay".split()
_CODAS = ["", "", "n", "r", "s", "t", "l", "m", "nd", "st", "ck", "x", "rk", "nt", "sh"]
SYNTHETIC_WORDS = 3600


def _vocabulary() -> tuple[list[str], list[float]]:
    """The words in rank order and their cumulative Zipf weights."""
    rng = random.Random(4242)
    common = list(dict.fromkeys(COMMON))
    taken = set(common)
    tech = [w for w in dict.fromkeys(CHAT_AND_TECH) if w not in taken]
    taken.update(tech)
    synthetic = []
    while len(synthetic) < SYNTHETIC_WORDS:
        word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(rng.choice((1, 2, 2, 2, 3)))) + rng.choice(_CODAS)
        if 3 <= len(word) <= 12 and word not in taken:
            taken.add(word)
            synthetic.append(word)
    # Tech and chat words mostly rank above the made-up jargon; both mix in the middle.
    rest = [(rng.uniform(0.0, 0.5), w) for w in tech] + [(rng.uniform(0.2, 1.0), w) for w in synthetic]
    words = common + [w for _, w in sorted(rest)]
    cumulative = list(itertools.accumulate(1.0 / (rank ** ZIPF_EXPONENT) for rank in range(1, len(words) + 1)))
    return words, cumulative


WORDS, WORD_CUM = _vocabulary()
# English stop words the `english` analyzer drops: never used as search terms.
STOP_WORDS = set("a an and are as at be but by for if in into is it no not of on or such that the their then there "
                 "these they this to was will with".split())


def frequency_bands() -> dict[str, list[str]]:
    """Search-term bands by rank: ``high`` (frequent content words), ``mid``, ``low`` (rare)."""
    content = [(rank, w) for rank, w in enumerate(WORDS, 1) if w not in STOP_WORDS and w.isalpha() and len(w) > 2]
    return {
        "high": [w for rank, w in content if rank <= 300],
        "mid": [w for rank, w in content if 300 < rank <= 1500],
        "low": [w for rank, w in content if rank > 1500],
    }


# ---------------------------------------------------------------------------------------------
# The plan: users, rooms, memberships, contacts.

TEAMS = "platform infra web mobile data search payments growth security support sales design qa ops sre api".split()
TOPICS = "general deploys alerts dev random standup incidents releases builds reviews oncall planning chat team".split()


class Plan:
    """Users, rooms and contact pairs, fixed by the plan seed and sizes."""

    def __init__(self, users: int = 2000, rooms: int = 300, private: float = 0.2, seed: int = 1,
                 domain: str = "localhost", service: str = "conference"):
        rng = random.Random(seed)
        self.domain, self.muc = domain, f"{service}.{domain}"
        self.users = [f"{USER_PREFIX}{n}" for n in range(1, users + 1)]
        self.user_weights = [1.0 / (n ** 0.7) for n in range(1, users + 1)]
        user_cum = list(itertools.accumulate(self.user_weights))
        self.rooms: list[dict] = []
        for r in range(1, rooms + 1):
            team, topic = TEAMS[(r - 1) % len(TEAMS)], TOPICS[((r - 1) // len(TEAMS)) % len(TOPICS)]
            private_room = rng.random() < private
            size = 3 + int(37 * rng.random() ** 1.5) if private_room else 5 + int(145 * rng.random() ** 2)
            members: list[int] = []
            seen: set[int] = set()
            while len(members) < min(size, users):
                u = bisect.bisect_left(user_cum, rng.random() * user_cum[-1])
                if u not in seen:
                    seen.add(u)
                    members.append(u)
            if private_room and 0 not in seen and rng.random() < 0.3:
                members.append(0)  # the searching user (bench-corpus-1) is in about a third of the private rooms
            node = f"{ROOM_PREFIX}{team}-{topic}-{r}"
            self.rooms.append({
                "node": node, "jid": f"{node}@{self.muc}", "name": f"Corpus {team} {topic} {r}",
                "privacy": "private" if private_room else "public", "members": members,
                "member_cum": list(itertools.accumulate(self.user_weights[m] for m in members)),
                "topic": f"{team} {topic}",
            })
        order = list(range(rooms))
        rng.shuffle(order)
        room_weights = [0.0] * rooms
        for rank, r in enumerate(order, 1):
            room_weights[r] = 1.0 / (rank ** 0.9)
        self.room_cum = list(itertools.accumulate(room_weights))
        pairs: dict[tuple[int, int], float] = {}
        while len(pairs) < users * 3:
            a = bisect.bisect_left(user_cum, rng.random() * user_cum[-1])
            b = bisect.bisect_left(user_cum, rng.random() * user_cum[-1])
            if a != b:
                key = (min(a, b), max(a, b))
                pairs[key] = math.sqrt(self.user_weights[a] * self.user_weights[b])
        self.pairs = list(pairs)
        self.pair_cum = list(itertools.accumulate(pairs.values()))

    def bare(self, u: int) -> str:
        return f"{self.users[u]}@{self.domain}"

    def readable_rooms(self, u: int) -> list[dict]:
        return [r for r in self.rooms if r["privacy"] == "public" or u in r["members"]]


# ---------------------------------------------------------------------------------------------
# Messages.

_HOURS = list(range(24))
_HOUR_WEIGHTS = [0.02] * 7 + [0.3, 0.8, 1.0, 1.0, 1.0, 0.7, 1.0, 1.0, 1.0, 1.0, 0.8, 0.4, 0.2, 0.1, 0.1, 0.05, 0.03]
_LINKS = [
    "https://jira.example.com/browse/{p}-{n}",
    "https://git.example.com/{team}/{repo}/pull/{n}",
    "https://grafana.example.com/d/{n}/{team}-overview",
    "https://wiki.example.com/display/{P}/{word}",
    "https://ci.example.com/job/{repo}/{n}/console",
]
_PROJECTS = ["OPS", "PLAT", "WEB", "MOB", "DATA", "SEC", "SUP", "PAY", "API", "HC"]
_REPOS = ["api", "web", "chat", "billing", "deploy-tools", "infra", "search", "mobile", "auth", "gateway"]


def _escape_xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("'", "&apos;")


class MessageFactory:
    """Draws message records from a plan; one instance per load (``seed``)."""

    def __init__(self, plan: Plan, seed: int, one_to_one: float = 0.3):
        self.plan, self.rng, self.one_to_one = plan, random.Random(seed), one_to_one

    def body(self, mention: str | None) -> str:
        rng = self.rng
        n = max(1, min(80, int(math.exp(rng.gauss(1.9, 0.8)))))
        words = rng.choices(WORDS, cum_weights=WORD_CUM, k=n)
        roll = rng.random()
        if roll < 0.05:
            team, repo, number = rng.choice(TEAMS), rng.choice(_REPOS), rng.randint(100, 9999)
            p = rng.choice(_PROJECTS)
            link = rng.choice(_LINKS).format(p=p, P=p, n=number, team=team, repo=repo, word=rng.choice(WORDS))
            words.insert(rng.randint(0, len(words)), link)
        elif roll < 0.09:
            token = f"{rng.choice(_PROJECTS)}-{rng.randint(10, 9999)}" if rng.random() < 0.5 else f"PR #{rng.randint(100, 9999)}"
            words.insert(rng.randint(0, len(words)), token)
        if mention is not None:
            words.insert(0, f"@{mention}")
        text = " ".join(words)
        text = text[0].upper() + text[1:]
        end = rng.random()
        return text + ("?" if end < 0.12 else "!" if end < 0.16 else "." if end < 0.3 else "")

    def record(self, ms: int, ulid_text: str, timestamp: str) -> dict:
        plan, rng = self.plan, self.rng
        origin_id = f"{rng.getrandbits(64):016x}"
        if rng.random() < self.one_to_one:
            a, b = plan.pairs[bisect.bisect_left(plan.pair_cum, rng.random() * plan.pair_cum[-1])]
            if rng.random() < 0.5:
                a, b = b, a
            sender, recipient = plan.bare(a), plan.bare(b)
            body = self.body(plan.users[b] if rng.random() < 0.03 else None)
            conversation, participants = "|".join(sorted((sender, recipient))), sorted((sender, recipient))
            xml = (f"<message to='{recipient}' from='{sender}/{RESOURCE}' type='chat' id='{origin_id}'><body>"
                   f"{_escape_xml(body)}</body><stanza-id xmlns='urn:xmpp:sid:0' id='{ulid_text}' by='{recipient}'/>"
                   "</message>")
            return {"id": ulid_text, "timestamp": timestamp, "type": "chat", "room": None, "conversation": conversation,
                    "participants": participants, "sender": sender, "sender_name": plan.users[a], "recipient": recipient,
                    "body": body, "origin_id": origin_id, "xml": xml}
        room = plan.rooms[bisect.bisect_left(plan.room_cum, rng.random() * plan.room_cum[-1])]
        u = room["members"][bisect.bisect_left(room["member_cum"], rng.random() * room["member_cum"][-1])]
        mention = None
        if rng.random() < 0.08 and len(room["members"]) > 1:
            mention = plan.users[rng.choice(room["members"])]
        body = self.body(mention)
        nick = plan.users[u]
        xml = (f"<message from='{room['jid']}/{nick}' type='groupchat' id='{origin_id}'><body>{_escape_xml(body)}</body>"
               f"<stanza-id xmlns='urn:xmpp:sid:0' id='{ulid_text}' by='{room['jid']}'/></message>")
        return {"id": ulid_text, "timestamp": timestamp, "type": "groupchat", "room": room["jid"], "conversation": None,
                "participants": [], "sender": plan.bare(u), "sender_name": nick, "recipient": None, "body": body,
                "origin_id": origin_id, "xml": xml}


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def ulid_text(ms: int, randomness: int) -> str:
    """The 26-character ULID of a 48-bit millisecond time and 80 random bits (as python-ulid prints it)."""
    value = (ms << 80) | randomness
    out = []
    for _ in range(26):
        out.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(out))


def message_times(year: int, count: int, rng: random.Random):
    """``count`` millisecond times over ``year``, in order: working days and hours weigh more."""
    start = date(year, 1, 1)
    days = [start + timedelta(days=d) for d in range((date(year + 1, 1, 1) - start).days)]
    weights = [1.0 if d.weekday() < 5 else 0.12 for d in days]
    total = sum(weights)
    done, acc = 0, 0.0
    for d, w in zip(days, weights):
        acc += w
        n = round(count * acc / total) - done
        if n <= 0:
            continue
        done += n
        base = int(datetime(d.year, d.month, d.day, tzinfo=timezone.utc).timestamp() * 1000)
        hours = rng.choices(_HOURS, weights=_HOUR_WEIGHTS, k=n)
        times = sorted(base + h * 3_600_000 + int(rng.random() * 3_600_000) for h in hours)
        yield d, base, times


def iso_day(d: date) -> str:
    return d.strftime("%Y-%m-%dT")


# ---------------------------------------------------------------------------------------------
# The appliance: config, users, rooms, OpenSearch, Redis.

def load_appliance(config_path: str | None):
    from hipchat_server.config import load_config
    from hipchat_server.server import ChatServer

    return ChatServer(load_config(config_path))


def ensure_users(count: int) -> dict:
    from xmpp_load.users import ensure_hipchat_users

    return ensure_hipchat_users(count, USER_PREFIX, PASSWORD)


def ensure_rooms(server, plan: Plan) -> dict:
    """Create the plan's rooms in MariaDB when missing: owner, members of private rooms, subject.

    Through the rooms store (`hipchat_server.storage.rooms.RoomStore`: create, set_affiliations,
    set_subject) when the installed appliance has it; else SQL on the ``rooms``/``room_members``
    tables as they are in the database (reflected, so whatever columns migration 0004 added).
    """
    try:
        from hipchat_server.storage.rooms import RoomExists, RoomStore
        from hipchat_server.xmpp.muc_forms import RoomConfig
    except ImportError:
        return _ensure_rooms_sql(server, plan)
    store = RoomStore(server.get_database_engine(), plan.muc)
    created = members_added = 0
    for room in plan.rooms:
        private = room["privacy"] == "private"
        if store.get(room["node"]) is None:
            config = RoomConfig(name=room["name"], description=room["topic"], members_only=private)
            try:
                store.create(room["node"], plan.users[room["members"][0]], config, locked=False)
                store.set_subject(room["node"], room["topic"], plan.users[room["members"][0]])
                created += 1
            except RoomExists:
                pass
        if private:
            have = set(store.affiliated(room["node"], "member")) | set(store.affiliated(room["node"], "owner"))
            wanted = {plan.users[u]: "member" for u in room["members"][1:] if plan.users[u] not in have}
            if wanted:
                store.set_affiliations(room["node"], wanted)
                members_added += len(wanted)
    return {"created": created, "existing": len(plan.rooms) - created, "members_added": members_added, "via": "RoomStore"}


def _ensure_rooms_sql(server, plan: Plan) -> dict:
    import sqlalchemy as sa

    engine = server.get_database_engine()
    meta = sa.MetaData()
    rooms = sa.Table("rooms", meta, autoload_with=engine)
    members = sa.Table("room_members", meta, autoload_with=engine)
    users = sa.Table("users", meta, autoload_with=engine)
    if "jid_node" not in rooms.c:
        return {"skipped": "the rooms table has no jid_node yet (migration 0004 not deployed)"}
    with engine.begin() as connection:
        user_ids = dict(connection.execute(
            sa.select(users.c.username, users.c.id).where(users.c.username.like(f"{USER_PREFIX}%"))).all())
        existing = dict(connection.execute(
            sa.select(rooms.c.jid_node, rooms.c.id).where(rooms.c.jid_node.like(f"{ROOM_PREFIX}%"))).all())
        created = 0
        for room in plan.rooms:
            if room["node"] in existing:
                continue
            owner = user_ids.get(plan.users[room["members"][0]])
            values = {"name": room["name"], "jid_node": room["node"], "privacy": room["privacy"], "owner_id": owner}
            for column, value in (("topic", room["topic"]), ("subject", room["topic"]), ("description", room["topic"])):
                if column in rooms.c:
                    values[column] = value
            existing[room["node"]] = connection.execute(rooms.insert().values(**values)).inserted_primary_key[0]
            created += 1
        have = {(r, u) for r, u in connection.execute(
            sa.select(members.c.room_id, members.c.user_id).where(members.c.room_id.in_(list(existing.values())))).all()}
        rows = []
        for room in plan.rooms:
            room_id = existing[room["node"]]
            wanted = room["members"] if room["privacy"] == "private" else room["members"][:1]
            for k, u in enumerate(wanted):
                user_id = user_ids.get(plan.users[u])
                if user_id is not None and (room_id, user_id) not in have:
                    rows.append({"room_id": room_id, "user_id": user_id, "affiliation": "owner" if k == 0 else "member"})
        if rows:
            connection.execute(members.insert(), rows)
    return {"created": created, "existing": len(plan.rooms) - created, "members_added": len(rows), "via": "SQL"}


def drop_rooms(server) -> int:
    import sqlalchemy as sa

    engine = server.get_database_engine()
    rooms = sa.Table("rooms", sa.MetaData(), autoload_with=engine)
    if "jid_node" not in rooms.c:
        return 0
    with engine.begin() as connection:
        return connection.execute(rooms.delete().where(rooms.c.jid_node.like(f"{ROOM_PREFIX}%"))).rowcount


def month_names(prefix: str, year: int) -> list[str]:
    return [f"{prefix}-{year:04d}.{m:02d}" for m in range(1, 13)]


class RefreshGuard:
    """Raise the refresh interval of the corpus indices for the load; restore each one's value after."""

    def __init__(self, client, names: list[str], interval: str):
        self.client, self.names, self.interval = client, names, interval
        self.saved: dict[str, str | None] = {}

    def __enter__(self):
        for name in self.names:
            settings = self.client.indices.get_settings(index=name, name="index.refresh_interval")
            self.saved[name] = settings[name]["settings"].get("index", {}).get("refresh_interval")
            self.client.indices.put_settings(index=name, body={"index": {"refresh_interval": self.interval}})
        return self

    def __exit__(self, *exc):
        for name, value in self.saved.items():
            self.client.indices.put_settings(index=name, body={"index": {"refresh_interval": value}})
        return False


class BulkSender:
    """Sends NDJSON bulk bodies on ``threads`` threads, at most ``2 * threads`` in flight; retries 429s."""

    def __init__(self, client, threads: int = 2):
        self.client = client
        self.pool = ThreadPoolExecutor(threads)
        self.slots = threading.Semaphore(2 * threads)
        self.indexed = 0
        self.failed: list = []
        self.lock = threading.Lock()
        self.error: BaseException | None = None

    def submit(self, lines: list[bytes], count: int) -> None:
        if self.error is not None:
            raise self.error
        self.slots.acquire()
        future = self.pool.submit(self._send, b"\n".join(lines) + b"\n", count)
        future.add_done_callback(lambda f: self.slots.release())

    def _send(self, body: bytes, count: int) -> None:
        try:
            for attempt in range(8):
                response = self.client.bulk(body=body, request_timeout=120)
                if not response.get("errors"):
                    with self.lock:
                        self.indexed += count
                    return
                retry = []
                items = response["items"]
                ok = 0
                rows = body.split(b"\n")
                for k, item in enumerate(items):
                    status = next(iter(item.values()))["status"]
                    if status < 300:
                        ok += 1
                    elif status == 429 or status >= 500:
                        retry += rows[2 * k : 2 * k + 2]
                    else:
                        self.failed.append(next(iter(item.values())))
                with self.lock:
                    self.indexed += ok
                if not retry:
                    return
                body, count = b"\n".join(retry) + b"\n", len(retry) // 2
                time.sleep(0.5 * 2 ** attempt)
            raise RuntimeError(f"{count} documents still rejected after 8 attempts")
        except BaseException as e:  # noqa: BLE001 - raised in the main thread at the next submit
            self.error = e
            raise

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        if self.error is not None:
            raise self.error


def load_messages(client, plan: Plan, args) -> dict:
    """Generate ``args.count`` messages over ``args.year`` and bulk-index them; figures."""
    factory = MessageFactory(plan, args.seed, args.one_to_one)
    rng = random.Random(args.seed * 7919 + 1)
    sender = BulkSender(client, args.threads)
    lines: list[bytes] = []
    in_batch = generated = 0
    started = time.monotonic()
    progress = _Progress(args.count)
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    try:
        for day, base, times in message_times(args.year, args.count, rng):
            day_prefix = iso_day(day)
            index = f"{args.prefix}-{day.year:04d}.{day.month:02d}"
            action_head = '{"index":{"_index":"' + index + '","_id":"'
            for ms in times:
                offset = ms - base
                timestamp = (f"{day_prefix}{offset // 3_600_000:02d}:{offset // 60_000 % 60:02d}:"
                             f"{offset // 1000 % 60:02d}.{offset % 1000:03d}Z")
                message_id = ulid_text(ms, rng.getrandbits(80))
                record = factory.record(ms, message_id, timestamp)
                lines.append((action_head + message_id + '"}}').encode())
                lines.append(dumps(record).encode())
                in_batch += 1
                if in_batch >= args.batch:
                    sender.submit(lines, in_batch)
                    generated += in_batch
                    lines, in_batch = [], 0
                    progress.update(generated, sender.indexed)
        if lines:
            sender.submit(lines, in_batch)
            generated += in_batch
    finally:
        sender.close()
        progress.update(generated, sender.indexed, final=True)
    seconds = time.monotonic() - started
    return {"generated": generated, "indexed": sender.indexed, "rejected": len(sender.failed),
            "seconds": round(seconds, 1), "docs_per_s": round(sender.indexed / seconds) if seconds else None,
            "rejections": sender.failed[:3]}


class _Progress:
    """A rich progress bar on a terminal, a line every 10 s otherwise."""

    def __init__(self, total: int):
        self.total, self.started, self.last_line = total, time.monotonic(), 0.0
        self.bar = None
        if sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("indexing"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[rate]} docs/s"), TimeRemainingColumn(), transient=False)
            self.task = self.bar.add_task("load", total=total, rate="-")
            self.bar.start()

    def update(self, generated: int, indexed: int, final: bool = False) -> None:
        elapsed = time.monotonic() - self.started
        rate = f"{indexed / elapsed:,.0f}" if elapsed > 0 else "-"
        if self.bar is not None:
            self.bar.update(self.task, completed=indexed, rate=rate)
            if final:
                self.bar.stop()
        elif final or elapsed - self.last_line >= 10:
            self.last_line = elapsed
            print(f"  {indexed:,} of {self.total:,} indexed ({generated:,} generated), {rate} docs/s, "
                  f"{elapsed:,.0f} s", file=sys.stderr, flush=True)


def rebuild_recent(server, client, plan: Plan, alias: str, size: int = RECENT_SIZE) -> dict:
    """Refill the Redis recent lists of the corpus rooms, conversations and users from OpenSearch."""
    from hipchat_server.archive import record_json
    from hipchat_server.storage.recent import CONVERSATION_KEY, ROOM_KEY, USER_KEY

    redis = server.get_redis_primary()
    keys: list[tuple[str, dict]] = [(ROOM_KEY.format(room=r["jid"]), {"term": {"room": r["jid"]}}) for r in plan.rooms]
    for a, b in plan.pairs:
        conversation = "|".join(sorted((plan.bare(a), plan.bare(b))))
        keys.append((CONVERSATION_KEY.format(conversation=conversation), {"term": {"conversation": conversation}}))
    for u in range(len(plan.users)):
        keys.append((USER_KEY.format(bare=plan.bare(u)), {"term": {"participants": plan.bare(u)}}))
    filled = records = 0
    for start in range(0, len(keys), 50):
        chunk = keys[start : start + 50]
        body = []
        for _, query in chunk:
            body.append({"index": alias})
            body.append({"size": size, "query": {"bool": {"filter": [query]}}, "sort": [{"id": "desc"}]})
        responses = client.msearch(body=body, request_timeout=120)["responses"]
        pipe = redis.pipeline(transaction=False)
        for (key, _), response in zip(chunk, responses):
            hits = [h["_source"] for h in response.get("hits", {}).get("hits", [])]
            pipe.delete(key)
            if hits:
                pipe.rpush(key, *(record_json(h) for h in hits))  # newest first, as the archive keeps them
                filled += 1
                records += len(hits)
        pipe.execute()
    return {"lists": filled, "records": records}


def drop_recent(server, plan: Plan) -> int:
    from hipchat_server.storage.recent import CONVERSATION_KEY, ROOM_KEY, USER_KEY

    keys = [ROOM_KEY.format(room=r["jid"]) for r in plan.rooms]
    keys += [CONVERSATION_KEY.format(conversation="|".join(sorted((plan.bare(a), plan.bare(b))))) for a, b in plan.pairs]
    keys += [USER_KEY.format(bare=plan.bare(u)) for u in range(len(plan.users))]
    redis = server.get_redis_primary()
    return sum(redis.delete(*keys[i : i + 500]) for i in range(0, len(keys), 500))


def index_sizes(client, prefix: str, year: int) -> dict:
    """Docs and bytes (primaries, and with replicas) of the corpus indices, and per message."""
    rows = client.cat.indices(index=f"{prefix}-{year:04d}.*", params={"format": "json", "bytes": "b"})
    docs = sum(int(r["docs.count"] or 0) for r in rows)
    total = sum(int(r["store.size"] or 0) for r in rows)
    primaries = sum(int(r["pri.store.size"] or 0) for r in rows)
    return {
        "indices": len(rows), "docs": docs, "store_bytes": total, "primary_store_bytes": primaries,
        "bytes_per_message_primary": round(primaries / docs, 1) if docs else None,
        "bytes_per_message_total": round(total / docs, 1) if docs else None,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--count", type=int, help="messages to add (1000000, 10000000...)")
    parser.add_argument("--drop", action="store_true", help="delete the corpus indices of --year and the recent lists")
    parser.add_argument("--drop-rooms", action="store_true", help="with --drop: delete the corpus rooms from MariaDB too")
    parser.add_argument("--info", action="store_true", help="print the corpus indices' docs and sizes")
    parser.add_argument("--year", type=int, default=2025)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--rooms", type=int, default=300)
    parser.add_argument("--private", type=float, default=0.2, help="share of members-only rooms")
    parser.add_argument("--one-to-one", type=float, default=0.3, help="share of one-to-one messages")
    parser.add_argument("--plan-seed", type=int, default=1, help="fixes users, rooms, members, contacts")
    parser.add_argument("--seed", type=int, default=1, help="fixes the messages; use another one to add more")
    parser.add_argument("--threads", type=int, default=2, help="bulk requests in parallel")
    parser.add_argument("--batch", type=int, default=2000, help="documents per bulk request")
    parser.add_argument("--refresh-interval", default="-1", help="refresh interval during the load (restored after)")
    parser.add_argument("--no-recent", action="store_true", help="do not rebuild the Redis recent lists")
    parser.add_argument("--no-db", action="store_true", help="do not create users and rooms in MariaDB")
    parser.add_argument("--config", help="hipchat.yml (default /etc/hipchat/hipchat.yml)")
    args = parser.parse_args(argv)
    if not (args.count or args.drop or args.info):
        parser.error("one of --count, --drop, --info")
    server = load_appliance(args.config)
    config = server.get_config()
    args.prefix = config.archive.index_prefix
    plan = Plan(args.users, args.rooms, args.private, args.plan_seed, config.server.domain, config.rooms.service)
    client = server.get_opensearch_client()
    names = month_names(args.prefix, args.year)
    out: dict = {}
    if args.drop:
        existing = [n for n in names if client.indices.exists(index=n)]
        for name in existing:
            client.indices.delete(index=name)
        out["dropped_indices"] = existing
        out["dropped_recent_lists"] = drop_recent(server, plan)
        if args.drop_rooms:
            out["dropped_rooms"] = drop_rooms(server)
    if args.count:
        # Ctrl-C and SIGTERM both unwind through the finally blocks (refresh interval restored).
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        if not args.no_db:
            out["users"] = ensure_users(args.users)
            out["rooms"] = ensure_rooms(server, plan)
        for name in names:
            if not client.indices.exists(index=name):
                client.indices.create(index=name)
        client.cluster.health(index=",".join(names), wait_for_status="green", params={"timeout": "120s"}, request_timeout=130)
        with RefreshGuard(client, names, args.refresh_interval):
            out["load"] = load_messages(client, plan, args)
        client.indices.refresh(index=",".join(names))
        client.indices.flush(index=",".join(names))
        if not args.no_recent:
            out["recent"] = rebuild_recent(server, client, plan, args.prefix)
    if args.info or args.count:
        out["sizes"] = index_sizes(client, args.prefix, args.year)
    print(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
