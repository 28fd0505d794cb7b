#!/usr/bin/env python3
"""Backup figures: time and archive size, and chat latency p99 idle against during a backup.

    PY=/opt/hipchat/venv/bin/python
    $PY bench/backup.py                                  # backup into a scratch directory, then removed
    $PY bench/backup.py --pairs 20 --rate 200 --keep     # keep the archive (prints its path)

Steps: (1) `xmpp_load chat` on the idle appliance (the same pairs, rate and duration as in 3);
(2) `hipchat-appliance backup create --json` into a scratch directory beside the spool;
(3) while it runs, the same `xmpp_load chat` again, started once the backup is past its first
seconds. Prints JSON: backup seconds per step, archive bytes and bytes per message, the write
block's length, the chat figures of both runs and the p99 ratio (target: under 2).
It holds the deploy lock shared, so no deploy restarts chat in the middle. Figures vary with the
machine's other load: run it on a quiet machine, or say how busy it was (the load average is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PY = sys.executable
CLI = os.path.join(os.path.dirname(PY), "hipchat-appliance")


def chat(pairs: int, rate: float, duration: float) -> dict:
    """One `xmpp_load chat` run's figures (its --json output)."""
    out = subprocess.run(
        [PY, os.path.join(HERE, "xmpp_load"), "--server", "hipchat", "--json", "chat", "--pairs", str(pairs), "--rate", str(rate), "--duration", str(duration)],
        capture_output=True, text=True, check=True, timeout=duration + 300,
    )
    return json.loads(out.stdout)


def pick(figures: dict) -> dict:
    keys = ("sent", "received", "lost", "duplicated", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "latency_max_ms", "ack_p50_ms", "ack_p99_ms")
    flat = figures.get("figures", figures)
    return {k: flat[k] for k in keys if k in flat}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--rate", type=float, default=200.0, help="messages per second, all pairs together")
    parser.add_argument("--duration", type=float, default=90.0, help="seconds of chat in each run (about a backup's length)")
    parser.add_argument("--delay", type=float, default=3.0, help="seconds into the backup before the loaded chat run starts")
    parser.add_argument("--dir", default="/var/lib/hipchat/backups-bench", help="scratch backup directory (on the spool's filesystem)")
    parser.add_argument("--keep", action="store_true", help="keep the archive")
    args = parser.parse_args()

    # Shared: no deploy (exclusive) restarts chat in the middle of the figures; other readers go on.
    import fcntl

    lock = open("/tmp/hipchat-deploy.lock", "a")
    fcntl.flock(lock, fcntl.LOCK_SH)
    idle = chat(args.pairs, args.rate, args.duration)
    result: dict = {}

    def run_backup() -> None:
        started = time.monotonic()
        out = subprocess.run([CLI, "backup", "create", "--to", args.dir, "--json"], capture_output=True, text=True, timeout=3600)
        result["wall_seconds"] = round(time.monotonic() - started, 1)
        result["returncode"] = out.returncode
        result["output"] = out.stdout if out.returncode else json.loads(out.stdout)
        result["stderr"] = out.stderr[-2000:]

    backup = threading.Thread(target=run_backup)
    backup.start()
    time.sleep(args.delay)
    loaded = chat(args.pairs, args.rate, args.duration)
    loaded_finished_before_backup = backup.is_alive()
    backup.join()
    if result["returncode"] != 0:
        print(json.dumps(result, indent=2))
        sys.exit(1)
    made = result["output"]
    manifest = made["manifest"]
    messages = sum(manifest["counts"]["messages"].values())
    figures = {
        "backup": {
            "seconds": made["seconds"],
            "wall_seconds_with_cli": result["wall_seconds"],
            "steps_seconds": {k: round(v, 1) for k, v in made["steps"].items()},
            "write_block_seconds": manifest.get("write_block_seconds"),
            "archive_bytes": made["bytes"],
            "messages": messages,
            "archive_bytes_per_message": round(made["bytes"] / messages, 1) if messages else None,
            "users": manifest["counts"]["users"],
        },
        "chat_idle": pick(idle),
        "chat_during_backup": pick(loaded),
        "chat_run_inside_backup": loaded_finished_before_backup,
        "chat": {"pairs": args.pairs, "rate": args.rate, "duration": args.duration},
        "load_average_at_end": os.getloadavg(),
    }
    p99_idle = figures["chat_idle"].get("latency_p99_ms")
    p99_loaded = figures["chat_during_backup"].get("latency_p99_ms")
    if p99_idle and p99_loaded:
        figures["p99_ratio"] = round(p99_loaded / p99_idle, 2)
    if args.keep:
        figures["archive"] = made["path"]
    else:
        shutil.rmtree(args.dir, ignore_errors=True)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
