#!/usr/bin/env python3
"""Preflight checks for the HipChat Server installer (standard library only).

Takes one JSON argument; prints one line per failed check ("PREFLIGHT: ...")
and exits 1 when any check failed, 0 when the host is ready.
"""

import json
import os
import re
import shutil
import subprocess
import sys


def memory_mb():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 0


def existing_parent(path):
    while not os.path.exists(path):
        path = os.path.dirname(path) or "/"
    return path


def listening_pids():
    """Map each listening TCP port to the set of PIDs that hold it (from `ss`)."""
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=False).stdout
    ports = {}
    for line in out.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        port = fields[3].rsplit(":", 1)[-1]
        if port.isdigit():
            ports.setdefault(int(port), set()).update(int(p) for p in re.findall(r"pid=(\d+)", line))
    return ports


def ancestors(pid):
    seen = []
    while pid > 1:
        seen.append(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            break
    return seen


def supervisor_pid(pidfile):
    try:
        pid = int(open(pidfile).read().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def java_major():
    java = shutil.which("java")
    if not java:
        return None
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False).stderr
    m = re.search(r'version "(\d+)', out)
    return int(m.group(1)) if m else None


def java_installable(package):
    out = subprocess.run(["apt-cache", "policy", package], capture_output=True, text=True, check=False).stdout
    m = re.search(r"Candidate:\s*(\S+)", out)
    return bool(m and m.group(1) != "(none)")


def main():
    args = json.loads(sys.argv[1])
    failures = []

    have = memory_mb()
    if have < args["min_memory_mb"]:
        failures.append(
            f"memory: this host has {have} MiB, the profile needs {args['min_memory_mb']} MiB; "
            "add memory or choose a smaller profile (--profile)."
        )

    for path, need in args["min_disk_mb"].items():
        free = shutil.disk_usage(existing_parent(path)).free // (1024 * 1024)
        if free < int(need):
            failures.append(f"disk: {path} has {free} MiB free, the appliance needs {need} MiB; free space or grow the disk.")

    ours = supervisor_pid(args["supervisor_pidfile"])
    listening = listening_pids()
    for service, port in sorted((s, int(p)) for s, ports in args["ports"].items() for p in ports):
        holders = listening.get(port)
        if not holders:
            continue
        if ours and all(ours in ancestors(pid) for pid in holders):
            continue  # an installed appliance's own process
        names = []
        for pid in holders:
            try:
                names.append(f"{open(f'/proc/{pid}/comm').read().strip()} (pid {pid})")
            except OSError:
                names.append(f"pid {pid}")
        failures.append(
            f"port: {port} ({service}) is taken by {', '.join(names) or 'another process'}; "
            "stop that process or set another port for the service."
        )

    major = java_major()
    if major is None or major < args["java_major"]:
        if not java_installable(args["java_package"]):
            failures.append(
                f"java: Java {args['java_major']} is not installed and the package {args['java_package']} "
                "is not available from the configured apt sources; install Java "
                f"{args['java_major']} or add a Debian mirror, then re-run."
            )

    for failure in failures:
        print(f"PREFLIGHT: {failure}")
    if not failures:
        print("PREFLIGHT: host is ready")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
