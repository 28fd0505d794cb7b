#!/usr/bin/env python3
"""Time a restore of a backup archive onto this appliance, step by step, and print the figures as JSON.

    PY=/opt/hipchat/venv/bin/python
    $PY bench/restore.py /var/lib/hipchat/backups/hipchat-backup-....tar          # asks nothing: replaces the data
    $PY bench/restore.py ARCHIVE --passphrase-file F

It REPLACES every user, room and message of this appliance by the archive's (the same
`appliance.backup.restore.restore_archive` that `hipchat-appliance restore --yes` runs), under
the deploy lock (/tmp/hipchat-deploy.lock) so no deploy overlaps. Output: seconds per step
(verify, extract, MariaDB, snapshot, spool replay, caches, start), the archive's size and
message count, and the manifest-against-appliance comparison.

The end-to-end wipe test (tests/e2e/test_restore.py) measures the same steps after a fresh
install and writes its figures to /var/log/hipchat/restore-wipe-test.json.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

DEPLOY_LOCK = "/tmp/hipchat-deploy.lock"


class PrintedSteps:
    """Prints each step as it starts and ends (seconds since the start), nothing in between."""

    def __init__(self):
        self.started = time.monotonic()
        self.seen: set[str] = set()

    def start(self, name, total=None):
        if name not in self.seen:
            self.seen.add(name)
            print(f"  {time.monotonic() - self.started:7.1f} s  {name}", file=sys.stderr, flush=True)

    def update(self, name, completed, total=None):
        pass

    def finish(self, name, detail=""):
        print(f"  {time.monotonic() - self.started:7.1f} s  {name} done", file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("archive")
    parser.add_argument("--passphrase-file")
    parser.add_argument("--config", default="/etc/hipchat/hipchat.yml")
    args = parser.parse_args()

    from appliance.backup.archive import open_archive
    from appliance.backup.restore import restore_archive
    from hipchat_server.config import load_config
    from hipchat_server.server import ChatServer

    passphrase = None
    if args.passphrase_file:
        with open(args.passphrase_file, "rb") as f:
            passphrase = f.readline().rstrip(b"\r\n")
    server = ChatServer(load_config(args.config))
    with open(DEPLOY_LOCK, "a") as lock:
        print(f"waiting for {DEPLOY_LOCK} ...", file=sys.stderr, flush=True)
        fcntl.flock(lock, fcntl.LOCK_EX)
        started = time.monotonic()
        with open_archive(args.archive, passphrase) as reader:
            report = restore_archive(server, reader, args.archive, confirm=lambda _holding: True, steps=PrintedSteps())
        seconds = time.monotonic() - started
    counts = report.manifest.get("counts") or {}
    out = {
        "archive": args.archive,
        "archive_bytes": os.path.getsize(args.archive),
        "messages": sum((counts.get("messages") or {}).values()),
        "seconds": round(seconds, 1),
        "steps_seconds": {k: round(v, 1) for k, v in report.seconds.items()},
        "recent_lists_rebuilt": report.rebuilt_lists,
        "ok": report.ok,
        "comparisons": [{"what": c.what, "manifest": c.expected, "here": c.found, "ok": c.ok} for c in report.comparisons],
    }
    print(json.dumps(out, indent=2))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
