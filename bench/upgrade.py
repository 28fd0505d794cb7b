#!/usr/bin/env python3
"""Time `hipchat-appliance upgrade apply` while clients chat, and print the figures as JSON.

    PY=/opt/hipchat/venv/bin/python
    $PY bench/upgrade.py                                   # a minimal N+1 bundle of this checkout
    $PY bench/upgrade.py --bundle F --trusted-keys-dir D   # a bundle from `hipchat-appliance bundle build`
    $PY bench/upgrade.py --keep                            # stay on the new version (no rollback)

Runs the same scenario as tests/e2e/test_upgrade.py's chat test: two pairs of slixmpp users
(``bench-upgrade-*``, left in place) send a message every 0.25 s each way, resending what the
server did not acknowledge after each reconnect, while the apply runs inside a loopback-only
network namespace (tests/netns.py). Output: apply time and its steps, the longest stretch any
client went without an acknowledgement (senders) or a new message (receivers), messages sent,
lost and reconnects, the bundle's size. Then `upgrade rollback` unless --keep, and this
checkout's installer for the opensearch and chat_core roles (the test bundle changes the index
template), and the backup the apply took is removed. Everything runs under the deploy lock
(/tmp/hipchat-deploy.lock).
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

DEPLOY_LOCK = "/tmp/hipchat-deploy.lock"


def make_users(count: int) -> list[str]:
    from tests.conftest import run_appliance_cli
    from tests.e2e.xmpp_client import PASSWORD

    names = []
    with tempfile.NamedTemporaryFile("w", suffix=".password") as f:
        f.write(PASSWORD + "\n")
        f.flush()
        for _ in range(count):
            name = f"bench-upgrade-{uuid.uuid4().hex[:6]}"
            done = run_appliance_cli("user", "add", name, "--name", name, "--email", f"{name}@bench.example.com", "--password-file", f.name)
            if done.returncode != 0:
                raise SystemExit(done.stdout + done.stderr)
            names.append(name)
    return names


def test_bundle(work: str) -> tuple[str, str, int]:
    """A minimal N+1 bundle of this checkout (as the e2e test builds it); returns bundle, keys dir, size."""
    from appliance.bundle.manifest import generate_key_pair, make_bundle
    from appliance.upgrade import releases
    from hipchat_server.storage.migrations import head_revision
    from tests.e2e.test_upgrade import build_test_tree, next_version

    keys = os.path.join(work, "keys")
    private, _ = generate_key_pair(keys, key_id=f"bench-upgrade-{uuid.uuid4().hex[:6]}")
    running = releases.installed_version()
    version = next_version(running)
    tree = build_test_tree(work, version, head_revision())
    bundle = os.path.join(work, f"hipchat-appliance-{version}.bundle")
    make_bundle(bundle, source_dir=tree, version=version, upgrades_from=[f"=={running}"], private_key_path=private)
    return bundle, keys, os.path.getsize(bundle)


async def chat_through_upgrade(endpoint, users: list[str], argv: list[str]) -> dict:
    """The e2e test's scenario (`tests.e2e.test_upgrade.chat_through`), reported as figures."""
    from tests.e2e.test_upgrade import chat_through

    outcome = await chat_through(endpoint, list(zip(users[::2], users[1::2])), argv)
    if outcome.done.returncode != 0:
        print(outcome.done.stdout[-4000:], outcome.done.stderr[-4000:], file=sys.stderr)
    return dict(
        outcome.figures(),
        exit=outcome.done.returncode,
        longest_gap_by_client={name: round(gap, 1) for name, gap in outcome.longest_gap_by_client().items()},
        messages_not_received=len(outcome.sent - outcome.received),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", help="A signed bundle (default: build a minimal N+1 bundle of this checkout).")
    parser.add_argument("--trusted-keys-dir", help="Keys that signed --bundle, when not shipped ones.")
    parser.add_argument("--keep", action="store_true", help="Stay on the new version (no rollback).")
    args = parser.parse_args()

    from appliance.upgrade import history, releases
    from hipchat_server.config import load_config
    from tests.conftest import run_installer
    from tests.e2e.xmpp_client import Endpoint

    with open(DEPLOY_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        work = tempfile.mkdtemp(prefix="bench-upgrade-")
        figures: dict = {"from_version": releases.installed_version()}
        if args.bundle:
            bundle, keys, size = args.bundle, args.trusted_keys_dir, os.path.getsize(args.bundle)
        else:
            t = time.monotonic()
            bundle, keys, size = test_bundle(work)
            figures["test_bundle_build_seconds"] = round(time.monotonic() - t, 1)
        figures["bundle_bytes"] = size
        users = make_users(4)
        # In the namespace the bridges hold the ports: preflight would take them for foreign programs.
        argv = ["upgrade", "apply", bundle, "--yes", "--skip-port-check"] + (["--trusted-keys-dir", keys] if keys else [])
        figures.update(asyncio.run(chat_through_upgrade(Endpoint(load_config("/etc/hipchat/hipchat.yml")), users, argv)))
        last = history.read_history()[-1] if history.read_history() else {}
        figures.update(to_version=last.get("to_version"), outcome=last.get("outcome"), steps=last.get("steps"), log=last.get("log"))
        if last.get("backup") and os.path.isfile(last["backup"]) and not args.keep:
            os.remove(last["backup"])  # the size of the whole appliance; the bench needs only its time
        if not args.keep and releases.installed_version() != figures["from_version"]:
            t = time.monotonic()
            done = subprocess.run([f"{sys.prefix}/bin/hipchat-appliance", "upgrade", "rollback", "--yes"], capture_output=True, text=True)
            figures["rollback_seconds"] = round(time.monotonic() - t, 1)
            figures["rollback_exit"] = done.returncode
            if not args.bundle:
                run_installer("--tags", "opensearch,chat_core")
        print(json.dumps(figures, indent=2))
        return 0 if figures["exit"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
