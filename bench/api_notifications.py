"""Notifications per second through the REST API into a room of XMPP occupants, and ``history?date=recent`` latency.

    PY=/opt/hipchat/venv/bin/python
    $PY bench/api_notifications.py notify --rate 1000 --duration 10 --occupants 20
    $PY bench/api_notifications.py recent --count 500

``notify``: the bench users ``bench-1..N`` (password ``bench-password-1``;
`bench/xmpp_load ... users` makes them) join a fresh room as slixmpp clients;
``--threads`` HTTP clients (keep-alive sessions, a room notification token)
post notifications at ``--rate`` per second for ``--duration`` seconds. Each
notification's body carries its sequence number; an occupant's receive time
minus the moment its HTTP request started is one delivery's latency.
Reports notifications accepted per second, deliveries per second, p50/p95/p99
latency, lost deliveries, and the appliance's CPU seconds per notification
(the chat processes' utime+stime from /proc, so a busy shared machine shows).

Flood control (``api.flood_messages`` per ``api.flood_seconds`` per room,
HipChat's 30 a minute by default) refuses a benchmark's rate: run it with the
limit raised, e.g. ``installer/install.sh --tags chat_core -e
chat_core_api_flood_messages=10000000``, and deploy again without it after.

``recent``: GET ``history?date=recent`` of a room holding 75 messages, one
request at a time after 20 warm-up requests: p50/p95/p99.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid

import requests

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

VENV = "/opt/hipchat/venv"
PASSWORD = "bench-password-1"
CHAT_PROGRAMS = ("hipchat-web", "hipchat-xmpp", "hipchat-indexer", "hipchat-worker")


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def chat_cpu_seconds() -> float:
    """utime+stime of the appliance's chat processes (web, xmpp front ends, indexer, workers)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            if not any(program in cmdline for program in CHAT_PROGRAMS):
                continue
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            continue
    return total


def machine_cpu_seconds() -> float:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


class Appliance:
    def __init__(self, config):
        self.base = f"https://localhost:{config.http.https_port}/v2"
        self.ca = config.tls.ca_certificate
        self.domain = config.server.domain

    def session(self, token: str | None = None, user: str | None = None) -> requests.Session:
        s = requests.Session()
        s.verify = self.ca
        s.trust_env = False  # a CA bundle named in the environment would replace the appliance's CA
        if token:
            s.headers["Authorization"] = f"Bearer {token}"
        if user:
            s.auth = (user, PASSWORD)
        return s


def make_room(app: Appliance, owner: str) -> dict:
    s = app.session(user=owner)
    response = s.post(f"{app.base}/room", json={"name": f"bench-api-{uuid.uuid4().hex[:8]}"}, timeout=30)
    response.raise_for_status()
    room_id = response.json()["id"]
    return s.get(f"{app.base}/room/{room_id}", timeout=30).json()


def room_token(room_id: int) -> str:
    result = subprocess.run(
        [f"{VENV}/bin/hipchat-appliance", "token", "create", "--room", str(room_id), "--label", "bench"], capture_output=True, text=True, timeout=120
    )
    if result.returncode != 0:
        sys.exit(f"cannot make a room token: {result.stderr}")
    return result.stdout.strip().splitlines()[0]


async def occupants_join(endpoint, room_jid: str, count: int, on_body):
    from tests.e2e.xmpp_client import Client

    clients = []
    for n in range(1, count + 1):
        client = Client(endpoint, f"bench-{n}", PASSWORD, None, False, plugins=("xep_0045",))
        if not await client.log_in():
            sys.exit(f"bench-{n} cannot log in (make the bench users: bench/xmpp_load --server hipchat users --count {count})")
        client.add_event_handler("groupchat_message", lambda m, n=n: on_body(n, m["body"]))
        await client.plugin["xep_0045"].join_muc_wait(room_jid, f"bench-{n}", timeout=30, maxstanzas=0)
        clients.append(client)
    return clients


def notify(args, config) -> dict:
    from tests.e2e.xmpp_client import Endpoint

    app = Appliance(config)
    room = make_room(app, "bench-1")
    token = room_token(room["id"])
    probe = app.session(token).post(f"{app.base}/room/{room['id']}/notification", json={"message": "probe", "message_format": "text"}, timeout=30)
    flood = int(probe.headers.get("X-FloodControl-Limit", "0"))
    if flood < args.rate * 60:
        sys.exit(
            f"flood control allows {flood} notifications per room and window: deploy with "
            "-e chat_core_api_flood_messages=10000000 for the benchmark (see the module docstring)"
        )
    sent_at: dict[int, float] = {}
    received: dict[int, set] = {}
    latencies: list[float] = []
    lock = threading.Lock()

    def on_body(occupant: int, body: str):
        if not body.startswith("n"):
            return
        now = time.monotonic()
        seq = int(body[1:].split(" ", 1)[0])
        with lock:
            start = sent_at.get(seq)
            if start is not None:
                latencies.append(now - start)
            received.setdefault(seq, set()).add(occupant)

    loop = asyncio.new_event_loop()
    clients = loop.run_until_complete(occupants_join(Endpoint(config), room["xmpp_jid"], args.occupants, on_body))
    total = int(args.rate * args.duration)
    accepted, refused = [0], [0]
    next_seq = iter(range(total))
    started = time.monotonic()

    def poster():
        session = app.session(token)
        url = f"{app.base}/room/{room['id']}/notification"
        while True:
            with lock:
                seq = next(next_seq, None)
            if seq is None:
                return
            due = started + seq / args.rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            with lock:
                sent_at[seq] = time.monotonic()
            response = session.post(url, json={"message": f"n{seq} build <b>ok</b>", "color": "green"}, timeout=30)
            with lock:
                if response.status_code == 204:
                    accepted[0] += 1
                else:
                    refused[0] += 1

    cpu_before, machine_before = chat_cpu_seconds(), machine_cpu_seconds()
    threads = [threading.Thread(target=poster, daemon=True) for _ in range(args.threads)]
    for t in threads:
        t.start()

    async def wait_for_posters():
        while any(t.is_alive() for t in threads):
            await asyncio.sleep(0.05)
        sending = time.monotonic() - started
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and sum(len(v) for v in received.values()) < accepted[0] * args.occupants:
            await asyncio.sleep(0.05)
        return sending

    sending = loop.run_until_complete(wait_for_posters())
    elapsed = time.monotonic() - started
    cpu, machine = chat_cpu_seconds() - cpu_before, machine_cpu_seconds() - machine_before
    for client in clients:
        loop.run_until_complete(client.close())
    deliveries = sum(len(v) for v in received.values())
    return {
        "scenario": "notify",
        "room_occupants": args.occupants,
        "rate_asked": args.rate,
        "notifications": total,
        "accepted_204": accepted[0],
        "refused": refused[0],
        "sending_seconds": round(sending, 2),
        "accepted_per_second": round(accepted[0] / sending, 1),
        "deliveries": deliveries,
        "deliveries_lost": accepted[0] * args.occupants - deliveries,
        "deliveries_per_second": round(deliveries / elapsed, 1),
        "latency_ms_p50": round(percentile(latencies, 50) * 1000, 1),
        "latency_ms_p95": round(percentile(latencies, 95) * 1000, 1),
        "latency_ms_p99": round(percentile(latencies, 99) * 1000, 1),
        "appliance_cpu_ms_per_notification": round(cpu / max(accepted[0], 1) * 1000, 2),
        "machine_busy_cpu_seconds": round(machine, 1),
        "machine_cores": os.cpu_count(),
    }


def recent(args, config) -> dict:
    app = Appliance(config)
    room = make_room(app, "bench-1")
    s = app.session(user="bench-1")
    url = f"{app.base}/room/{room['id']}/history"
    token = room_token(room["id"])
    bot = app.session(token)
    for n in range(75):  # within flood control's window only when it is raised; a refusal ends the fill early
        if bot.post(f"{url.rsplit('/', 1)[0]}/notification", json={"message": f"fill {n}", "message_format": "text"}, timeout=30).status_code != 204:
            break
    for _ in range(20):
        s.get(url, params={"date": "recent"}, timeout=30)
    timings = []
    for _ in range(args.count):
        t0 = time.perf_counter()
        response = s.get(url, params={"date": "recent"}, timeout=30)
        timings.append(time.perf_counter() - t0)
        response.raise_for_status()
    items = len(response.json()["items"])
    return {
        "scenario": "recent",
        "requests": args.count,
        "items_per_answer": items,
        "p50_ms": round(percentile(timings, 50) * 1000, 2),
        "p95_ms": round(percentile(timings, 95) * 1000, 2),
        "p99_ms": round(percentile(timings, 99) * 1000, 2),
        "mean_ms": round(statistics.mean(timings) * 1000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="scenario", required=True)
    n = sub.add_parser("notify")
    n.add_argument("--rate", type=float, default=1000)
    n.add_argument("--duration", type=float, default=10)
    n.add_argument("--occupants", type=int, default=20)
    n.add_argument("--threads", type=int, default=32)
    r = sub.add_parser("recent")
    r.add_argument("--count", type=int, default=500)
    args = parser.parse_args()
    from hipchat_server.config import load_config

    config = load_config(os.environ.get("HIPCHAT_CONFIG", "/etc/hipchat/hipchat.yml"))
    result = notify(args, config) if args.scenario == "notify" else recent(args, config)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
