"""The rooms scenario: R rooms of O occupants each, everyone talking, every reflection counted.

Occupant k of room r (both from 1) is the bench user ``(r - 1) * O + k``, nickname ``u<n>``, in
``<prefix>room-<r>@<rooms service>``. Each enters through XEP-0045 (presence with
``<x xmlns='http://jabber.org/protocol/muc'><history maxstanzas='0'/></x>``, then its
self-presence with status 110); the first occupant of each room enters alone first, so a room
that does not exist yet is created by it (status 201) and made an instant room (an empty
``muc#owner`` form) before the others arrive. Then every occupant sends numbered groupchat
messages at ``rate`` messages/s in total. Each occupant counts each message of its room once
(its own reflection included): deliveries/s, the deliveries expected (messages x occupants),
lost, duplicates, latency send->receive and, under XEP-0198, the time until the server
acknowledged each message (ours acknowledges a message once it is durable).
"""

from __future__ import annotations

import time

from .cpu import CpuWatch
from .figures import percentiles
from .pool import WorkerPool, split
from .scenarios import Target, _login


def room_jid(target: Target, service: str, r: int) -> str:
    return f"{target.prefix}room-{r}@{service}"


def _join(pool: WorkerPool, per_worker: list[list[tuple[int, str, str]]], concurrency: int) -> dict:
    answers = pool.call_all("join", [{"joins": joins, "concurrency": concurrency} for joins in per_worker])
    failures: dict = {}
    for a in answers:
        for kind, n in a["failures"].items():
            failures[kind] = failures.get(kind, 0) + n
    return {"seconds": [s for a in answers for s in a["seconds"]], "created": sum(a["created"] for a in answers),
            "failures": failures, "details": [d for a in answers for d in a["details"]]}


def rooms(pool: WorkerPool, target: Target, service: str, room_count: int = 10, occupants: int = 20,
          rate: float = 600.0, duration: float = 20.0, drain: float = 10.0, settle: float = 3.0,
          concurrency: int = 200) -> dict:
    """Run the scenario (see the module docstring); the result dict of `scenarios`."""
    notes = []
    ids = list(range(1, room_count * occupants + 1))
    room_of = {i: room_jid(target, service, (i - 1) // occupants + 1) for i in ids}
    shares = split(ids, len(pool))  # the same slices `_login` gives each worker
    worker_of = {i: w for w, share in enumerate(shares) for i in share}
    login = _login(pool, ids, concurrency)
    if login["gave_up"]:
        notes.append(f"{login['gave_up']} clients could not log in: {login['failures']}")
    bound = set(ids)  # a failed login shows up as a failed join below

    def joins_of(members: list[int]) -> list[list[tuple[int, str, str]]]:
        per_worker: list[list] = [[] for _ in range(len(pool))]
        for i in members:
            if i in bound:
                per_worker[worker_of[i]].append((i, room_of[i], f"u{i}"))
        return per_worker

    owners = [(r - 1) * occupants + 1 for r in range(1, room_count + 1)]
    first = _join(pool, joins_of(owners), concurrency)
    owner_set = set(owners)
    rest = _join(pool, joins_of([i for i in ids if i not in owner_set]), concurrency)
    join_failures = {k: first["failures"].get(k, 0) + rest["failures"].get(k, 0)
                     for k in set(first["failures"]) | set(rest["failures"])}
    if join_failures:
        notes.append(f"join failures by kind: {join_failures}; e.g. {(first['details'] + rest['details'])[:2]}")
    join_seconds = first["seconds"] + rest["seconds"]
    joined = len(join_seconds)
    time.sleep(settle)
    pool.call_all("collect", [{"reset_since_ns": time.monotonic_ns()}] * len(pool))

    # Only occupants that are in their room send; each worker sends for its own clients.
    members: dict[str, list[int]] = {}
    in_room = set(_occupants(pool))
    for i in ids:
        if i in in_room:
            members.setdefault(room_of[i], []).append(i)
    senders = sorted(in_room)
    sends = []
    for w, share in enumerate(shares):
        routes = [(i, room_of[i]) for i in share if i in in_room]
        sends.append({"routes": routes, "rate": rate * len(routes) / max(1, len(senders)), "duration": duration,
                      "kind": "groupchat"})
    cpu = CpuWatch(extra={"load generator": pool.pids()}) if target.name == "hipchat" else None
    if cpu:
        cpu.start()
    start = time.monotonic()
    answers = [pool.wait(t) for t in [pool.start(w, "send", **args) for w, args in enumerate(sends) if args["routes"]]]
    if cpu:
        cpu.stop()
    sent_ranges = {k: v for a in answers for k, v in a["sent"].items()}
    sent = sum(last - first + 1 for first, last in sent_ranges.values())
    expected = sum((last - first + 1) * len(members[room_of[s]]) for s, (first, last) in sent_ranges.items())
    send_elapsed = max((a["elapsed"] for a in answers), default=duration)

    latencies: list[float] = []
    acks: list[float] = []
    delivered = duplicates = unacked = 0
    bounced = errors_without_body = 0
    deadline = time.monotonic() + drain
    all_in_at = None
    while True:
        unacked = 0
        for a in pool.call_all("collect", [{}] * len(pool)):
            latencies += a["latencies_ms"]
            acks += a["ack_ms"]
            delivered += a["room_deliveries"]
            duplicates += a["room_duplicates"]
            unacked += a["unacked"]
            bounced += sum(len(v) for v in a["bounced"].values())
            errors_without_body += a["errors_without_body"]
        if all_in_at is None and delivered >= expected:
            all_in_at = time.monotonic()
        if all_in_at is not None and (not login["sm_enabled"] or unacked == 0):
            break
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    counted = pool.call_all("room_count", [{"members": members, "sent": sent_ranges}] * len(pool))
    exact_expected = sum(c["expected"] for c in counted)
    exact_received = sum(c["received"] for c in counted)
    lost_by_room: dict = {}
    for c in counted:
        for room, n in c["lost_by_room"].items():
            lost_by_room[room] = lost_by_room.get(room, 0) + n
    window = max(duration, (all_in_at or time.monotonic()) - start - 0.1)
    lat = percentiles(latencies, (50, 95, 99, 100))
    ack = percentiles(acks, (50, 99))
    sm = login["sm_enabled"] > 0
    figures = {
        "rooms": room_count, "occupants_per_room": occupants, "occupants_joined": joined,
        "rooms_created": first["created"] + rest["created"],
        "join_p50_ms": _ms(percentiles(join_seconds, (50,))[50]),
        "target_rate_per_s": rate, "duration_s": duration, "messages_sent": sent,
        "send_rate_per_s": sent / send_elapsed if send_elapsed else None,
        "deliveries_expected": exact_expected, "deliveries_received": exact_received,
        "lost": exact_expected - exact_received, "duplicates": sum(c["duplicates"] for c in counted),
        "bounced": bounced,
        "deliveries_per_s": exact_received / window if window else None,
        "latency_p50_ms": lat[50], "latency_p95_ms": lat[95], "latency_p99_ms": lat[99], "latency_max_ms": lat[100],
        "ack_p50_ms": ack[50] if sm else None, "ack_p99_ms": ack[99] if sm else None,
        "unacked": unacked if sm else None,
        "stream_management": login["sm_offered"],
        "cpu_cores": cpu.cores() if cpu else None,
    }
    if exact_expected != expected:
        notes.append(f"expected deliveries: {expected} from the send counts, {exact_expected} counted by the occupants")
    if lost_by_room:
        notes.append(f"lost deliveries by room: {lost_by_room}")
    restarted = cpu.restarted() if cpu else []
    if restarted:
        figures["void"] = True
        notes.append(f"FIGURES VOID: server processes restarted during the run: {', '.join(restarted)}")
    if errors_without_body:
        notes.append(f"{errors_without_body} error bounces did not quote the message")
    if not sm:
        notes.append("XEP-0198 not offered: durable ack n/a")
    pool.call_all("close", [{}] * len(pool))
    return {"server": target.name, "scenario": "rooms", "figures": figures, "notes": notes}


def _occupants(pool: WorkerPool) -> list[int]:
    return [i for answer in pool.call_all("occupants", [{}] * len(pool)) for i in answer]


def _ms(seconds):
    return None if seconds is None else seconds * 1000
