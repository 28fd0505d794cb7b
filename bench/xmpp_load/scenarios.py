"""The three scenarios (hold, chat, storm): they drive a `WorkerPool` and return their figures.

Each returns ``{"server", "scenario", "figures", "notes"}``; `figures.print_table` prints them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from .figures import percentiles
from .memory import alive, memory_kib, server_pids
from .pool import WorkerPool, split


@dataclass
class Target:
    """The server under test: its name, its domain and how to find its processes."""

    name: str
    domain: str
    prefix: str
    memory_spec: str | None = None
    memory_kind: str = "rss"
    full_jid: bool = False  # address messages to the full JID (the client's resource) instead of the bare JID

    def jid(self, index: int) -> str:
        bare = f"{self.prefix}{index}@{self.domain}"
        return f"{bare}/bench{index}" if self.full_jid else bare

    def pids(self) -> list[int]:
        return server_pids(self.memory_spec) if self.memory_spec else []


def _login(pool: WorkerPool, ids: list[int], concurrency: int) -> dict:
    """Log ``ids`` in over all workers; combined counts and times."""
    per_worker = max(1, concurrency // len(pool))
    answers = pool.call_all("login", [{"ids": part, "concurrency": per_worker} for part in split(ids, len(pool))])
    started = min(a["started"] for a in answers)
    done_at = sorted(t for a in answers for t in a["done_at"])
    failures: dict = {}
    for a in answers:
        for kind, n in a["failures"].items():
            failures[kind] = failures.get(kind, 0) + n
    return {
        "started": started, "done_at": done_at, "failures": failures,
        "gave_up": sum(a["gave_up"] for a in answers),
        "mechanisms": sorted({m for a in answers for m in a["mechanisms"]}),
        "sm_offered": any(True in a["sm_offered"] for a in answers),
        "sm_enabled": sum(a["sm_enabled"] for a in answers),
    }


def _collect(pool: WorkerPool, since_ns: int | None = None) -> dict:
    merged = {"received": {}, "latencies_ms": [], "ack_ms": [], "bounced": {}, "errors_without_body": 0, "unacked": 0}
    for a in pool.call_all("collect", [{"reset_since_ns": since_ns}] * len(pool)):
        for sender, seqs in a["received"].items():
            mine = merged["received"].setdefault(sender, {})
            for seq, n in seqs.items():
                mine[seq] = mine.get(seq, 0) + n
        for sender, seqs in a["bounced"].items():
            merged["bounced"].setdefault(sender, set()).update(seqs)
        merged["latencies_ms"] += a["latencies_ms"]
        merged["ack_ms"] += a["ack_ms"]
        merged["errors_without_body"] += a["errors_without_body"]
        merged["unacked"] = a["unacked"] + merged["unacked"]
    return merged


def _merge_into(total: dict, part: dict) -> None:
    for sender, seqs in part["received"].items():
        mine = total["received"].setdefault(sender, {})
        for seq, n in seqs.items():
            mine[seq] = mine.get(seq, 0) + n
    for sender, seqs in part["bounced"].items():
        total["bounced"].setdefault(sender, set()).update(seqs)
    total["latencies_ms"] += part["latencies_ms"]
    total["ack_ms"] += part["ack_ms"]
    total["errors_without_body"] += part["errors_without_body"]
    total["unacked"] = part["unacked"]


def _accounting(sent_ranges: dict, got: dict) -> dict:
    """Compare what was sent (sender -> (first, last) seq) with what arrived or bounced."""
    sent = received = duplicates = bounced = 0
    for sender, (first, last) in sent_ranges.items():
        seen = got["received"].get(sender, {})
        back = got["bounced"].get(sender, set())
        for seq in range(first, last + 1):
            sent += 1
            n = seen.get(seq, 0)
            if n:
                received += 1
                duplicates += n - 1
            elif seq in back:
                bounced += 1
    return {"sent": sent, "received": received, "duplicates": duplicates, "bounced": bounced,
            "lost": sent - received - bounced}


def _memory(target: Target, pids: list[int]) -> int:
    return memory_kib(pids, target.memory_kind) if pids else 0


def hold(pool: WorkerPool, target: Target, sessions: int, concurrency: int = 400, settle: float = 5.0) -> dict:
    """Log ``sessions`` clients in as fast as the server takes them, hold them, measure memory."""
    notes = []
    pids = target.pids()
    before = _memory(target, pids)
    login = _login(pool, list(range(1, sessions + 1)), concurrency)
    bound = len(login["done_at"])
    all_in = (login["done_at"][-1] - login["started"]) if bound else None
    per_second: dict[int, int] = {}
    for t in login["done_at"]:
        second = int(t - login["started"])
        per_second[second] = per_second.get(second, 0) + 1
    time.sleep(settle)
    pids_after = target.pids()
    restarted = bool(pids) and pids_after != pids
    if restarted:
        notes.append(f"server processes changed during the run: {pids} -> {pids_after}; memory figures void")
    after = _memory(target, pids_after)
    figures = {
        "sessions_requested": sessions, "sessions_bound": bound,
        "login_failures": sum(login["failures"].values()), "failure_kinds": login["failures"],
        "mechanism": ",".join(login["mechanisms"]), "stream_management": login["sm_offered"],
        "login_rate_per_s": bound / all_in if all_in else None,
        "peak_login_rate_per_s": max(per_second.values()) if per_second else None,
        "time_to_all_in_s": all_in,
        "server_rss_before_mib": before / 1024 if pids else None,
        "server_rss_after_mib": after / 1024 if pids else None,
        "server_kib_per_session": (after - before) / bound if pids and bound and not restarted else None,
        "server_processes": len(pids),
    }
    if login["failures"]:
        notes.append(f"login failures by kind: {login['failures']}")
    pool.call_all("close", [{}] * len(pool))
    return {"server": target.name, "scenario": "hold", "figures": figures, "notes": notes}


def chat(pool: WorkerPool, target: Target, pairs: int, rate: float, duration: float, drain: float = 10.0,
         concurrency: int = 200, settle: float = 3.0, observer=None) -> dict:
    """``pairs`` pairs chat both ways at ``rate`` messages/s in total for ``duration`` seconds.

    Sending starts ``settle`` seconds after the last login, so the figures are those of steady
    chat, not of the logins' own presence and roster work (hold and storm measure logins).
    An ``observer`` (the ingest scenario's) is told when sending starts (``started()``), gets a
    ``tick()`` about every 0.1 s while messages are sent and drained, and ``finish(result,
    sent_ranges)`` before the clients close; what it returns is the result.
    """
    notes = []
    pair_ids = [(2 * k + 1, 2 * k + 2) for k in range(pairs)]
    shares = split(pair_ids, len(pool))
    login = _login(pool, [i for p in pair_ids for i in p], concurrency)
    if login["gave_up"]:
        notes.append(f"{login['gave_up']} clients could not log in: {login['failures']}")
    time.sleep(settle)
    _collect(pool, since_ns=time.monotonic_ns())
    sends = []
    for share in shares:
        routes = [(a, target.jid(b)) for a, b in share] + [(b, target.jid(a)) for a, b in share]
        sends.append({"routes": routes, "rate": rate * len(share) / pairs, "duration": duration})
    if observer is not None:
        observer.started()
    start = time.monotonic()
    tickets = [pool.start(i, "send", **args) for i, args in enumerate(sends)]
    while observer is not None and not all(pool.ready(t) for t in tickets):
        observer.tick()
        time.sleep(0.1)
    answers = [pool.wait(t) for t in tickets]
    sent_ranges = {k: v for a in answers for k, v in a["sent"].items()}
    expected = sum(last - first + 1 for first, last in sent_ranges.values())
    total = {"received": {}, "latencies_ms": [], "ack_ms": [], "bounced": {}, "errors_without_body": 0, "unacked": 0}
    deadline = time.monotonic() + drain
    all_in_at = None
    while True:
        _merge_into(total, _collect(pool))
        accounted = _accounting(sent_ranges, total)
        if all_in_at is None and accounted["received"] + accounted["bounced"] >= expected:
            all_in_at = time.monotonic()
        if all_in_at is not None and (not login["sm_enabled"] or total["unacked"] == 0):
            break
        if time.monotonic() > deadline:
            break
        if observer is not None:
            observer.tick()
        time.sleep(0.1)
    # Received messages over the time from the first send until the last arrived (or the drain ended).
    window = max(duration, (all_in_at or time.monotonic()) - start - 0.1)
    lat = percentiles(total["latencies_ms"], (50, 95, 99, 100))
    ack = percentiles(total["ack_ms"], (50, 99))
    sm = login["sm_enabled"] > 0
    figures = {
        "pairs": pairs, "target_rate_per_s": rate, "duration_s": duration, **accounted,
        "achieved_rate_per_s": accounted["received"] / window if window else None,
        "latency_p50_ms": lat[50], "latency_p95_ms": lat[95], "latency_p99_ms": lat[99], "latency_max_ms": lat[100],
        "ack_p50_ms": ack[50] if sm else None, "ack_p99_ms": ack[99] if sm else None,
        "unacked": total["unacked"] if sm else None,
        "mechanism": ",".join(login["mechanisms"]), "stream_management": login["sm_offered"],
    }
    if not sm:
        notes.append("XEP-0198 not offered: latency is send->receive only, durable ack n/a")
    if total["errors_without_body"]:
        notes.append(f"{total['errors_without_body']} error bounces did not quote the message")
    result = {"server": target.name, "scenario": "chat", "figures": figures, "notes": notes}
    if observer is not None:
        result = observer.finish(result, sent_ranges)
    pool.call_all("close", [{}] * len(pool))
    return result


def storm(pool: WorkerPool, target: Target, clients: int, spread: float = 1.0, deadline: float = 60.0,
          senders: int = 10, send_rate: float = 200.0, send_seconds: float = 10.0, drain: float = 10.0,
          concurrency: int = 400) -> dict:
    """``clients`` lose their connections at once and all reconnect within ``spread`` seconds.

    Meanwhile ``senders`` other users (not dropped) send ``send_rate`` messages/s to them for
    ``send_seconds``; each message is counted as received, bounced with an error, or missing.
    """
    notes = []
    storm_ids = list(range(1, clients + 1))
    sender_ids = list(range(clients + 1, clients + senders + 1))
    pids = target.pids()
    login = _login(pool, storm_ids, concurrency)
    sender_login = pool.wait(pool.start(0, "login", ids=sender_ids, concurrency=senders))
    if login["gave_up"] or sender_login["gave_up"]:
        notes.append(f"before the storm, {login['gave_up'] + sender_login['gave_up']} clients could not log in")
    _collect(pool, since_ns=time.monotonic_ns())
    routes = [(sender_ids[j % senders], target.jid(t)) for j, t in enumerate(storm_ids)]
    storm_tickets = [pool.start(i, "storm", ids=part, spread=spread, deadline=deadline)
                     for i, part in enumerate(split(storm_ids, len(pool)))]
    send_ticket = pool.start(0, "send", routes=routes, rate=send_rate, duration=send_seconds)
    results = [pool.wait(t) for t in storm_tickets]
    sent = pool.wait(send_ticket)
    back_after = sorted(t for r in results for t in r["back_after"])
    failures: dict = {}
    for r in results:
        for kind, n in r["failures"].items():
            failures[kind] = failures.get(kind, 0) + n
    total = {"received": {}, "latencies_ms": [], "ack_ms": [], "bounced": {}, "errors_without_body": 0, "unacked": 0}
    end = time.monotonic() + drain
    while True:
        _merge_into(total, _collect(pool))
        accounted = _accounting(sent["sent"], total)
        if accounted["received"] + accounted["bounced"] >= accounted["sent"] or time.monotonic() > end:
            break
        time.sleep(0.5)
    rebind = percentiles(back_after, (50, 99))
    pids_after = target.pids()
    figures = {
        "clients": clients, "reconnect_spread_s": spread, "rebound": len(back_after),
        "time_to_all_back_s": back_after[-1] if len(back_after) == clients else None,
        "rebind_p50_s": rebind[50], "rebind_p99_s": rebind[99],
        "failed_attempts": sum(failures.values()), "failure_kinds": failures or "none",
        "gave_up": sum(r["gave_up"] for r in results),
        "storm_messages_sent": accounted["sent"], "storm_messages_received": accounted["received"],
        "storm_messages_bounced": accounted["bounced"], "storm_messages_missing": accounted["lost"],
        "server_alive_after": (alive(pids) and pids_after == pids) if pids else None,
    }
    if total["errors_without_body"]:
        notes.append(f"{total['errors_without_body']} error bounces did not quote the message")
    pool.call_all("close", [{}] * len(pool))
    return {"server": target.name, "scenario": "storm", "figures": figures, "notes": notes}


def suggested_workers(clients: int) -> int:
    """Two worker processes for large runs (two cores), one for small ones."""
    return 1 if clients <= 500 else 2 if clients <= 20000 else math.ceil(clients / 10000)
