"""Admin console render time: p50/p95/max per page over HTTPS on loopback, with at least 10,000 users and 1,000 rooms.

Tops the appliance up to ``--users`` users and ``--rooms`` rooms with the
prefixes ``bench-console-user-`` / ``bench-console-room-`` (left in place for
the next run), logs in as an administrator of its own (``bench-console-admin``),
warms each page once, then requests each page ``--requests`` times one after
another on one keep-alive connection and reports the time to the last byte.

    sudo /opt/hipchat/venv/bin/python bench/console.py [--requests 50] [--json]

The dashboard and capacity pages serve figures gathered in the background
(every 15 s and every 60 s): a request that arrives when they are due does not
wait for them, so their p95 is the page's, not the gathering's (printed too).
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import ssl
import statistics
import sys
import time
from urllib.parse import urlencode

sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])

ADMIN = "bench-console-admin"
PASSWORD = "bench-console-password"
USER_PREFIX = "bench-console-user-"
ROOM_PREFIX = "bench-console-room-"


def top_up(chat_server, users_wanted: int, rooms_wanted: int) -> tuple[int, int]:
    """Add users and rooms (cheaply, straight into the stores) until there are at least as many as wanted."""
    from sqlalchemy import func, select

    from hipchat_server import users as accounts
    from hipchat_server.storage.database import run_in_transaction
    from hipchat_server.storage.rooms import RoomExists, RoomStore
    from hipchat_server.storage.schema import rooms, users
    from hipchat_server.storage.users import UserStore
    from hipchat_server.xmpp.muc_forms import RoomConfig

    engine = chat_server.get_database_engine()
    count = lambda table: run_in_transaction(engine, "bench_count", lambda c: c.execute(select(func.count()).select_from(table)).scalar())  # noqa: E731
    store = UserStore(engine)
    if store.get_by_username(ADMIN) is None:
        accounts.create_user(store, ADMIN, "Bench console admin", f"{ADMIN}@bench.example.com", PASSWORD, is_admin=True)
    missing = users_wanted - count(users)
    if missing > 0:
        password_hash = accounts.hash_password(PASSWORD)  # one hash for all: these accounts never log in
        start = count(users)
        rows = [{"username": f"{USER_PREFIX}{start + i}", "name": f"Bench Console {start + i}", "mention_name": f"{USER_PREFIX}{start + i}",
                 "email": f"{USER_PREFIX}{start + i}@bench.example.com", "password_hash": password_hash} for i in range(missing)]
        run_in_transaction(engine, "bench_add_users", lambda c: c.execute(users.insert(), rows))
    service = f"{chat_server.get_config().rooms.service}.{chat_server.get_config().server.domain}"
    room_store = RoomStore(engine, service)
    i = count(rooms)
    while count(rooms) < rooms_wanted:
        try:
            room_store.create(f"{ROOM_PREFIX}{i}", ADMIN, RoomConfig(name=f"{ROOM_PREFIX}{i}"), locked=False)
        except RoomExists:
            pass
        i += 1
    return count(users), count(rooms)


class Browser:
    """One keep-alive HTTPS connection with the console's session cookie."""

    def __init__(self, host: str, port: int):
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        self.connection = http.client.HTTPSConnection(host, port, context=context, timeout=60)
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes, dict]:
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}
        data = None
        if body is not None:
            data = urlencode(body).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        self.connection.request(method, path, body=data, headers=headers)
        reply = self.connection.getresponse()
        content = reply.read()
        for value in reply.headers.get_all("Set-Cookie") or []:
            name, _, rest = value.partition("=")
            self.cookies[name] = rest.split(";", 1)[0]
        return reply.status, content, dict(reply.headers)

    def log_in(self) -> None:
        _, page, _ = self.request("GET", "/admin/login")
        token = re.search(rb'name="csrf_token" value="([^"]+)"', page).group(1).decode()
        status, _, headers = self.request("POST", "/admin/login", {"csrf_token": token, "next": "/admin/", "username": ADMIN, "password": PASSWORD})
        if status != 302 or "error" in headers.get("Location", ""):
            raise SystemExit(f"logging in as {ADMIN} failed: {status} {headers.get('Location')}")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(p / 100 * len(ordered) + 0.5)) - 1))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--rooms", type=int, default=1_000)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=443)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from hipchat_server.config import load_config
    from hipchat_server.server import ChatServer

    chat_server = ChatServer(load_config())
    users, rooms = top_up(chat_server, args.users, args.rooms)
    browser = Browser(args.host, args.port)
    browser.log_in()
    pages = {
        "dashboard": "/admin/",
        "users": "/admin/users",
        "users, search": "/admin/users?q=bench-1",
        "users, last page": f"/admin/users?start={max(0, users - 50)}",
        "user": f"/admin/users/{ADMIN}",
        "rooms": "/admin/rooms",
        "rooms, last page": f"/admin/rooms?start={max(0, rooms - 50)}&archived=1",
        "flags": "/admin/flags",
        "integrations": "/admin/integrations",
        "backups": "/admin/backups",
        "capacity": "/admin/capacity",
        "audit log": "/admin/audit",
    }
    results = {}
    for name, path in pages.items():
        started = time.perf_counter()
        status, _, _ = browser.request("GET", path)  # warm: the first dashboard/capacity request gathers their figures
        first = (time.perf_counter() - started) * 1000
        if status != 200:
            raise SystemExit(f"{path}: HTTP {status}")
        times = []
        for _ in range(args.requests):
            started = time.perf_counter()
            status, body, _ = browser.request("GET", path)
            times.append((time.perf_counter() - started) * 1000)
            assert status == 200, (path, status)
        results[name] = {"path": path, "first_ms": round(first, 1), "p50_ms": round(statistics.median(times), 1),
                         "p95_ms": round(percentile(times, 95), 1), "max_ms": round(max(times), 1), "bytes": len(body)}
    summary = {"users": users, "rooms": rooms, "requests_per_page": args.requests, "pages": results,
               "worst_p95_ms": max(r["p95_ms"] for r in results.values())}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{users:,} users, {rooms:,} rooms; {args.requests} requests per page after one warm-up, one connection")
    print(f"{'page':<18} {'first':>8} {'p50':>8} {'p95':>8} {'max':>8} {'KiB':>6}")
    for name, r in results.items():
        print(f"{name:<18} {r['first_ms']:>7.0f}ms {r['p50_ms']:>7.1f}ms {r['p95_ms']:>7.1f}ms {r['max_ms']:>7.0f}ms {r['bytes'] / 1024:>6.0f}")
    print(f"worst p95: {summary['worst_p95_ms']:.1f} ms (target: under 200 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
