"""Run one scenario of the XMPP load generator against one server.

    /opt/hipchat/venv/bin/python bench/xmpp_load --server hipchat hold --sessions 200
    /opt/hipchat/venv/bin/python bench/xmpp_load --server prosody chat --pairs 20 --rate 200 --duration 10
    /opt/hipchat/venv/bin/python bench/xmpp_load --server ejabberd storm --clients 200
    /opt/hipchat/venv/bin/python bench/xmpp_load --server hipchat users --count 10000
    /opt/hipchat/venv/bin/python bench/xmpp_load rooms --rooms 10 --occupants 20 --rate 600 --duration 20
    /opt/hipchat/venv/bin/python bench/xmpp_load ingest --pairs 100 --rate 2000 --duration 30

See bench/README.md. ``--json`` prints the figures as JSON instead of a table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

if __package__ in (None, ""):  # run as `python bench/xmpp_load`: make the package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    __package__ = "xmpp_load"

from xmpp_load import ingest, rooms, scenarios, servers  # noqa: E402
from xmpp_load.figures import print_table  # noqa: E402
from xmpp_load.pool import WorkerPool  # noqa: E402
from xmpp_load.users import ensure_users  # noqa: E402
from xmpp_load.worker import raise_fd_limit  # noqa: E402


def add_common(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("connection")
    g.add_argument("--host", help="server address (default 127.0.0.1)")
    g.add_argument("--port", type=int, help="client port (default: the server's STARTTLS port)")
    g.add_argument("--direct-tls", action="store_true", help="TLS from the first byte (XEP-0368; hipchat: 5223)")
    g.add_argument("--domain", help="XMPP domain (default: the server's)")
    g.add_argument("--ca-file", help="CA certificate to trust (default: the server's)")
    g.add_argument("--no-verify", action="store_true", help="do not verify the server certificate")
    g.add_argument("--mechanism", default="auto", choices=["auto", "SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"],
                   help="SASL mechanism; auto takes SCRAM-SHA-256, else SCRAM-SHA-1, else PLAIN")
    g.add_argument("--password", default=servers.PASSWORD, help="password of every bench user")
    g.add_argument("--prefix", default=servers.PREFIX, help="bench user names are <prefix><n>")
    g.add_argument("--address", choices=["bare", "full"], default="bare",
                   help="send chat messages to the bare JID (as clients do) or to the full JID of the receiver")
    g.add_argument("--no-sm", action="store_true", help="do not enable XEP-0198 stream management")
    g.add_argument("--login-timeout", type=float, default=60.0)
    g.add_argument("--workers", type=int, help="load-generator processes (default: 1 up to 500 clients, else 2)")
    g.add_argument("--server-memory", help="server processes to measure: pid:1,2 | pidfile:PATH | match:REGEX | "
                   "supervisor:GLOB, several joined by ';' (default: the server's)")
    g.add_argument("--memory-kind", choices=["rss", "pss"], default="rss")
    g.add_argument("--no-create-users", action="store_true", help="do not create missing bench users first")


def add_scenarios(sub) -> None:
    p = sub.add_parser("hold", help="connect-and-hold N sessions")
    p.add_argument("--sessions", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=400, help="logins in flight at once (all workers)")
    p.add_argument("--settle", type=float, default=5.0, help="seconds to hold before measuring memory")
    p = sub.add_parser("chat", help="one-to-one chat between pairs at a total rate")
    p.add_argument("--pairs", type=int, default=20)
    p.add_argument("--rate", type=float, default=200.0, help="messages per second, all pairs together")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--drain", type=float, default=10.0, help="seconds to wait for late messages and acks")
    p.add_argument("--settle", type=float, default=3.0,
                   help="seconds between the last login and the first message (the logins' presence and roster work ends)")
    p = sub.add_parser("storm", help="drop M connections at once; all reconnect within --spread seconds")
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--spread", type=float, default=1.0)
    p.add_argument("--deadline", type=float, default=60.0)
    p.add_argument("--senders", type=int, default=10)
    p.add_argument("--send-rate", type=float, default=200.0)
    p.add_argument("--send-seconds", type=float, default=10.0)
    p.add_argument("--drain", type=float, default=10.0)
    p = sub.add_parser("rooms", help="R rooms x O occupants (XEP-0045), everyone sending groupchat messages")
    p.add_argument("--rooms", type=int, default=10)
    p.add_argument("--occupants", type=int, default=20, help="occupants per room")
    p.add_argument("--rate", type=float, default=600.0, help="messages per second into the rooms, all together")
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--drain", type=float, default=10.0)
    p.add_argument("--settle", type=float, default=3.0)
    p.add_argument("--room-service", help="the MUC service domain (default: conference.<domain>)")
    p = sub.add_parser("ingest", help="one-to-one chat at a rate while measuring how soon messages are searchable")
    p.add_argument("--pairs", type=int, default=100)
    p.add_argument("--rate", type=float, default=2000.0)
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--drain", type=float, default=10.0)
    p.add_argument("--settle", type=float, default=3.0)
    p.add_argument("--samples", type=int, default=400, help="messages whose indexing lag is measured")
    p.add_argument("--poll", type=float, default=0.1, help="seconds between OpenSearch polls")
    p.add_argument("--index-wait", type=float, default=60.0,
                   help="seconds to wait after the run for the last messages to be indexed")
    p = sub.add_parser("users", help="create the bench users <prefix>1..N when missing")
    p.add_argument("--count", type=int, required=True)


def users_needed(args) -> int:
    return {"hold": lambda: args.sessions, "chat": lambda: 2 * args.pairs, "ingest": lambda: 2 * args.pairs,
            "rooms": lambda: args.rooms * args.occupants,
            "storm": lambda: args.clients + args.senders, "users": lambda: args.count}[args.scenario]()


def run(server: str, args) -> dict:
    """Run ``args.scenario`` against ``server``; its result dict."""
    options, target = servers.build(server, args)
    if not args.no_create_users or args.scenario == "users":
        done = ensure_users(server, users_needed(args), args.prefix, args.password, options.domain)
        if args.scenario == "users":
            return {"server": server, "scenario": "users", "figures": done, "notes": []}
        if done["created"]:
            print(f"{server}: created {done['created']} bench users", file=sys.stderr)
    workers = args.workers or scenarios.suggested_workers(users_needed(args))
    if args.scenario == "rooms" and not args.workers:
        workers = 2  # every occupant receives every message of its room: the receiving side needs both cores
    pool = WorkerPool(workers, options, args.prefix)
    try:
        if args.scenario == "hold":
            return scenarios.hold(pool, target, args.sessions, args.concurrency, args.settle)
        if args.scenario == "chat":
            return scenarios.chat(pool, target, args.pairs, args.rate, args.duration, args.drain, settle=args.settle)
        if args.scenario == "rooms":
            return rooms.rooms(pool, target, servers.rooms_service(server, args), args.rooms, args.occupants,
                               args.rate, args.duration, args.drain, args.settle)
        if args.scenario == "ingest":
            urls, alias = servers.opensearch_settings()
            return ingest.ingest(pool, target, args.pairs, args.rate, args.duration, args.drain, args.settle,
                                 samples=args.samples, poll=args.poll, index_wait=args.index_wait,
                                 opensearch_urls=urls, alias=alias)
        return scenarios.storm(pool, target, args.clients, args.spread, args.deadline, args.senders,
                               args.send_rate, args.send_seconds, args.drain)
    finally:
        pool.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="xmpp_load", description=__doc__.splitlines()[1])
    parser.add_argument("--server", default="hipchat", choices=["hipchat", "prosody", "ejabberd"])
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    add_common(parser)
    sub = parser.add_subparsers(dest="scenario", required=True)
    add_scenarios(sub)
    args = parser.parse_args(argv)
    raise_fd_limit()
    result = run(args.server, args)
    if args.json or args.scenario == "users":
        print(json.dumps(result, indent=2, default=str))
    else:
        print_table(args.scenario, [result])
    return 0


if __name__ == "__main__":
    sys.exit(main())
