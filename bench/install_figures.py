#!/usr/bin/env python3
"""Install figures: re-run time, OpenSearch start-to-green time, idle resident memory.

    /opt/hipchat/venv/bin/python bench/install_figures.py [--fresh]

--fresh first stops the appliance and removes every trace of it (data
included!) and times a fresh install; only use it on a test host.
Prints one line per figure.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
import urllib.request

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUPERVISORCTL = ["/opt/hipchat/venv/bin/supervisorctl", "-c", "/etc/hipchat/supervisord.conf"]


def timed(cmd: list[str]) -> float:
    started = time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - started


def wipe() -> None:
    subprocess.run(SUPERVISORCTL + ["shutdown"], check=False, stdout=subprocess.DEVNULL)
    time.sleep(3)
    for path in ("/opt/hipchat", "/etc/hipchat", "/var/lib/hipchat", "/var/log/hipchat"):
        shutil.rmtree(path, ignore_errors=True)


def cluster_status() -> str:
    import json

    try:
        with urllib.request.urlopen("http://127.0.0.1:9200/_cluster/health", timeout=2) as r:
            return json.load(r)["status"]
    except OSError:
        return "down"


def time_to_green() -> float:
    subprocess.run(SUPERVISORCTL + ["stop", "opensearch:*"], check=True, stdout=subprocess.DEVNULL)
    started = time.monotonic()
    subprocess.run(SUPERVISORCTL + ["start", "opensearch:*"], check=True, stdout=subprocess.DEVNULL)
    while cluster_status() != "green":
        if time.monotonic() - started > 600:
            raise SystemExit("cluster not green after 600 s")
        time.sleep(0.5)
    return time.monotonic() - started


def tree_rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` and every process below it."""
    from appliance.lib.summary import descendants

    total = 0
    for p in descendants(pid):
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass  # the process ended while we read
    return total


def idle_memory() -> dict[str, int]:
    pid = int(open("/var/lib/hipchat/run/supervisord.pid").read())
    out = subprocess.run(SUPERVISORCTL + ["status"], capture_output=True, text=True).stdout
    per_program = {}
    for line in out.splitlines():
        fields = line.split()
        if len(fields) > 3 and fields[1] == "RUNNING":
            per_program[fields[0]] = tree_rss_kib(int(fields[3].rstrip(",")))
    per_program["TOTAL (supervisord and every process)"] = tree_rss_kib(pid)
    return per_program


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fresh", action="store_true", help="wipe the appliance and time a fresh install")
    args = parser.parse_args()
    install = ["bash", os.path.join(REPO_DIR, "installer", "install.sh")]
    if args.fresh:
        wipe()
        print(f"fresh install: {timed(install):.0f} s")
    print(f"re-run of the installer: {timed(install):.0f} s")
    print(f"OpenSearch start to green: {time_to_green():.1f} s")
    time.sleep(30)  # let the JVMs settle after start
    for name, kib in idle_memory().items():
        print(f"idle RSS {name}: {kib / 1024:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
