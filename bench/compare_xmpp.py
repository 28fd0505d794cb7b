#!/usr/bin/env python3
"""Run the same XMPP scenario against this appliance, Prosody and ejabberd; print the figures side by side.

    /opt/hipchat/venv/bin/python bench/compare_xmpp.py hold --sessions 10000
    /opt/hipchat/venv/bin/python bench/compare_xmpp.py --only hipchat,prosody chat --pairs 100 --rate 1500 --duration 60
    /opt/hipchat/venv/bin/python bench/compare_xmpp.py --manage-peers storm --clients 5000

The peers are the Debian packages set up by bench/peers/install.sh. With ``--manage-peers`` each
peer is started (bench/peers/start.sh) just before its run and stopped right after, so only one
peer runs at a time (the appliance keeps running: it is installed on this host). Scenario options
and the connection options are those of bench/xmpp_load (``--help`` there); ``--json`` prints every
result as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from xmpp_load.__main__ import add_common, add_scenarios, run  # noqa: E402
from xmpp_load.figures import print_table  # noqa: E402
from xmpp_load.worker import raise_fd_limit  # noqa: E402

SERVERS = ("hipchat", "prosody", "ejabberd")


def peer_script(name: str, peer: str) -> None:
    subprocess.run(["bash", os.path.join(HERE, "peers", f"{name}.sh"), peer], check=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SERVERS), help="servers to run, comma-separated (default: all three)")
    parser.add_argument("--manage-peers", action="store_true", help="start each peer before its run, stop it after")
    parser.add_argument("--pause", type=float, default=5.0, help="seconds between servers (let the machine settle)")
    parser.add_argument("--json", action="store_true")
    add_common(parser)
    sub = parser.add_subparsers(dest="scenario", required=True)
    add_scenarios(sub)
    args = parser.parse_args(argv)
    servers = [s for s in args.only.split(",") if s]
    unknown = set(servers) - set(SERVERS)
    if unknown:
        parser.error(f"--only: unknown server(s) {', '.join(sorted(unknown))}")
    raise_fd_limit()
    results = []
    for i, server in enumerate(servers):
        if i:
            time.sleep(args.pause)
        managed = args.manage_peers and server != "hipchat"
        if managed:
            peer_script("start", server)
        try:
            print(f"running {args.scenario} against {server} ...", file=sys.stderr)
            results.append(run(server, args))
        except Exception as e:  # noqa: BLE001 - one server failing must not hide the others' figures
            results.append({"server": server, "scenario": args.scenario, "figures": {}, "notes": [f"run failed: {e}"]})
        finally:
            if managed:
                peer_script("stop", server)
    if args.json:
        print(json.dumps(results, indent=2, default=str))
    elif args.scenario != "users":
        print_table(args.scenario, results)
    else:
        for r in results:
            print(r["server"], r["figures"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
