#!/usr/bin/env python3
"""Restart one XMPP front end under connected clients, and print what the clients saw as JSON.

    PY=/opt/hipchat/venv/bin/python
    $PY bench/frontend_restart.py [--clients 200] [--program chat-core:xmpp-0]

Every client is a slixmpp user (``bench-restart-<n>``, created when missing, left in place) with
stream management and resumption on (XEP-0198); the kernel spreads them over the front ends. A
sender on another front end sends a message to a client of the restarting front end every
``--interval`` seconds, from 2 s before ``supervisorctl restart`` until 3 s after it returned.
Each client reconnects as soon as its connection drops, with the same client object, so it
resumes when the server lets it.

Output: how many clients the restarted front end held; of those, how many resumed their session
and how many had to bind a new one; the time from the dropped connection to ``<resumed/>``
(p50, p95, max); the handover as the front end logged it (sessions handed over, and the seconds
from SIGTERM to that line); messages sent to those clients during the restart, acknowledged to
the sender, then lost (never received) or received twice.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import re
import statistics
import sys
import time
from datetime import datetime

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

PREFIX = "bench-restart-"
LOGIN_CONCURRENCY = 20
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


class Watched:
    """One client and what it saw: when its connection dropped, how it came back, which bodies it received."""

    def __init__(self, client, endpoint):
        self.client, self.endpoint = client, endpoint
        self.dropped_at: float | None = None
        self.resumed_after: float | None = None
        self.bound_anew = False
        self.received: collections.Counter = collections.Counter()
        client.add_event_handler("message", lambda m: m["type"] == "chat" and self.received.update([m["body"]]))
        client.add_event_handler("disconnected", self._dropped)
        client.add_event_handler("session_resumed", self._resumed)
        client.add_event_handler("session_start", self._bound)

    def _dropped(self, _event) -> None:
        if self.dropped_at is None:
            self.dropped_at = time.monotonic()
            # Reconnect at once with the same client: slixmpp sends <resume/> with the session's id.
            self.client.connect("127.0.0.1", self.endpoint.c2s_port)

    def _resumed(self, _event) -> None:
        if self.dropped_at is not None and self.resumed_after is None:
            self.resumed_after = time.monotonic() - self.dropped_at

    def _bound(self, _event) -> None:
        if self.dropped_at is not None:
            self.bound_anew = True


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))], 3)


def handover_from_log(process: str, since: datetime) -> dict:
    """The stopping front end's own account: sessions handed over, seconds from SIGTERM to that line."""
    sigterm = handed = None
    sessions = 0
    with open(f"/var/log/hipchat/chat/{process}.log", errors="replace") as f:
        for line in f:
            match = LOG_TIME.match(line)
            if not match:
                continue
            at = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
            if at < since:
                continue
            if "Received SIGTERM" in line and sigterm is None:
                sigterm = at
            found = re.search(r"handed (\d+) resumable sessions", line)
            if found and handed is None:
                handed, sessions = at, int(found.group(1))
    seconds = (handed - sigterm).total_seconds() if sigterm and handed else None
    return {"sessions_handed_over": sessions, "handover_seconds": seconds}


async def scenario(args, config) -> dict:
    from tests.conftest import supervisorctl
    from tests.e2e.xmpp_client import PASSWORD, Endpoint, front_end_of, login

    endpoint = Endpoint(config)
    process = args.program.split(":")[-1]
    gate = asyncio.Semaphore(LOGIN_CONCURRENCY)

    async def log_in(n: int):
        async with gate:
            client, ok = await login(endpoint, f"{PREFIX}{n}", PASSWORD, resource=f"restart-{n}", plugins=("xep_0198",))
            if not ok:
                raise SystemExit(f"{PREFIX}{n} could not log in")
            while client.plugin["xep_0198"].sm_id is None:
                await asyncio.sleep(0.05)
            return client

    t = time.monotonic()
    clients = await asyncio.gather(*(log_in(n) for n in range(1, args.clients + 1)))
    login_seconds = time.monotonic() - t
    await asyncio.sleep(1.0)  # the directory entries follow the binds
    on_victim = [c for c in clients if (front_end_of(config, c.boundjid.user, c.boundjid.resource) or "").endswith(f":{process}")]
    senders = [c for c in clients if c not in on_victim]
    if not on_victim or not senders:
        raise SystemExit(f"the kernel put {len(on_victim)} of {len(clients)} clients on {process}: run again")
    sender = senders[0]
    acked: set[str] = set()
    sender.add_event_handler("stanza_acked", lambda s: s.name == "message" and acked.add(s["body"]))
    watched = [Watched(c, endpoint) for c in on_victim]
    sent: list[str] = []
    stop = asyncio.Event()

    async def send() -> None:
        n = 0
        while not stop.is_set():
            target = watched[n % len(watched)].client.boundjid.full
            body = f"restart {n}"
            sender.send_message(mto=target, mbody=body, mtype="chat")
            sender.plugin["xep_0198"].request_ack()
            sent.append(body)
            n += 1
            await asyncio.sleep(args.interval)

    sending = asyncio.ensure_future(send())
    await asyncio.sleep(2.0)
    since = datetime.now().replace(microsecond=0)
    t = time.monotonic()
    restarted = await asyncio.get_running_loop().run_in_executor(None, supervisorctl, "restart", args.program)
    restart_seconds = time.monotonic() - t
    await asyncio.sleep(3.0)
    stop.set()
    await sending
    deadline = time.monotonic() + 30
    addressed = {body: watched[n % len(watched)] for n, body in enumerate(sent)}
    while time.monotonic() < deadline:
        sender.plugin["xep_0198"].request_ack()
        missing = [b for b in acked if addressed[b].received[b] == 0]
        back = all(w.resumed_after is not None or w.bound_anew for w in watched if w.dropped_at is not None)
        if not missing and back and acked == set(sent):
            break
        await asyncio.sleep(0.5)
    resume_times = [w.resumed_after for w in watched if w.resumed_after is not None]
    figures = {
        "clients": len(clients),
        "login_seconds": round(login_seconds, 1),
        "restart_exit": restarted.returncode,
        "restart_seconds": round(restart_seconds, 1),
        "clients_on_restarted_front_end": len(watched),
        "connections_dropped": sum(w.dropped_at is not None for w in watched),
        "resumed": len(resume_times),
        "bound_anew": sum(w.bound_anew for w in watched),
        "resume_seconds_p50": percentile(resume_times, 50),
        "resume_seconds_p95": percentile(resume_times, 95),
        "resume_seconds_max": round(max(resume_times), 3) if resume_times else None,
        "messages_sent": len(sent),
        "messages_acknowledged": len(acked),
        "messages_lost": sum(addressed[b].received[b] == 0 for b in acked),
        "messages_received_twice": sum(addressed[b].received[b] > 1 for b in sent),
        **handover_from_log(process, since),
    }
    for client in clients:
        await client.close()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=200, help="slixmpp clients in all (default 200)")
    parser.add_argument("--program", default="chat-core:xmpp-0", help="the front end to restart (default chat-core:xmpp-0)")
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between two messages of the sender (default 0.02)")
    args = parser.parse_args()

    import logging

    from bench.xmpp_load.users import ensure_hipchat_users
    from hipchat_server.config import load_config
    from tests.e2e.xmpp_client import PASSWORD

    logging.getLogger("slixmpp").setLevel(logging.ERROR)
    ensure_hipchat_users(args.clients, PREFIX, PASSWORD)
    figures = asyncio.run(scenario(args, load_config("/etc/hipchat/hipchat.yml")))
    print(json.dumps(figures, indent=2))
    return 0 if figures["messages_lost"] == 0 and figures["restart_exit"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
