"""The preflight script on its own: it names each failed check and exits 1, or exits 0 when the host is ready."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from tests.conftest import REPO_DIR

PREFLIGHT = os.path.join(REPO_DIR, "roles", "preflight", "files", "preflight.py")


def run_preflight(**overrides):
    args = {
        "min_memory_mb": 1,
        "min_disk_mb": {"/tmp": 1},
        "ports": {},
        "supervisor_pidfile": "/nonexistent/supervisord.pid",
        "java_major": 1,
        "java_package": "openjdk-17-jre-headless",
    }
    args.update(overrides)
    return subprocess.run([sys.executable, PREFLIGHT, json.dumps(args)], capture_output=True, text=True)


def test_ready_host_passes():
    """With modest needs and no ports the host is ready."""
    result = run_preflight()
    assert result.returncode == 0
    assert "host is ready" in result.stdout


def test_taken_port_is_named_with_its_holder():
    """A port held by another process is reported with the service it was meant for and who holds it."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run_preflight(ports={"xmpp": [port]})
    assert result.returncode == 1
    assert f"port: {port} (xmpp) is taken by" in result.stdout
    assert f"pid {os.getpid()}" in result.stdout


def test_free_port_passes():
    """A port nobody listens on passes."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert run_preflight(ports={"xmpp": [port]}).returncode == 0


def test_memory_and_disk_shortfalls_are_each_named():
    """Too little memory and too little disk give one line each, with the amounts."""
    result = run_preflight(min_memory_mb=10**9, min_disk_mb={"/tmp": 10**12})
    assert result.returncode == 1
    assert "memory: this host has" in result.stdout
    assert "disk: /tmp has" in result.stdout


def test_missing_java_that_cannot_be_installed_is_named():
    """A Java version no host has, from a package apt does not know, is reported with what to do."""
    result = run_preflight(java_major=999, java_package="no-such-java-package")
    assert result.returncode == 1
    assert "java: Java 999 is not installed" in result.stdout
