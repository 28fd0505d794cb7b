"""A loopback-only network namespace for tests that must prove they need no network.

``with loopback_only(ports=[3306, 443]) as ns: ns.run([...])`` creates a namespace whose only
interface is its own loopback, so no registry, resolver or outside address can be reached from
it. The appliance's services listen on the host's 127.0.0.1, which the namespace cannot see: each
port in ``ports`` is carried across by a pair of socat processes over a UNIX socket (host side
``UNIX-LISTEN:<dir>/<port>.sock,fork TCP:127.0.0.1:<port>``; namespace side
``TCP-LISTEN:<port>,bind=127.0.0.1,fork,reuseaddr UNIX-CONNECT:<dir>/<port>.sock``, and the same on
``[::1]``), so a client inside connects to ``127.0.0.1:<port>`` as it would on the host. A UNIX
socket is a file, not a network route: it adds no address the namespace can reach beyond those
ports.

The namespace is a named one (``ip netns add``), so any number of commands can join it
(``ns.run``, ``ns.popen``, or ``nsenter --net=ns.path``). Everything started here (the socat
processes, each in its own process group) is stopped by PID on exit, and the namespace and the
socket directory are removed. The host's network configuration is never touched. Needs root,
``ip`` (iproute2) and ``socat``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from typing import Iterator, Sequence

SOCKET_ROOT = "/run/hipchat-netns"
# A TEST-NET-1 address (RFC 5737): outside this machine, and not routable from the namespace.
OUTSIDE_ADDRESS = ("192.0.2.1", 443)

# The appliance's TCP services on the host's loopback (see docs/architecture.md): the mail relay,
# HTTPS, MariaDB, XMPP, Redis, OpenSearch HTTP, Redis Sentinel.
APPLIANCE_PORTS = (25, 443, 3306, 5222, 5223, 6379, 6380, 9200, 9201, 26379, 26380, 26381)


class NetnsError(RuntimeError):
    """The namespace or one of its bridges could not be set up."""


def available() -> str | None:
    """Why a loopback-only namespace cannot be made here (None when it can)."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("ip", "socat", "ss"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


class LoopbackOnly:
    """A live namespace: run commands in it, check that it reaches nothing outside."""

    def __init__(self, name: str, socket_dir: str, ports: Sequence[int]) -> None:
        self.name = name
        self.path = f"/run/netns/{name}"
        self.socket_dir = socket_dir
        self.ports = tuple(ports)

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` prefixed so that it runs inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
        """``subprocess.run`` inside the namespace (text output captured unless told otherwise)."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(self.command(argv), **kwargs)

    def popen(self, argv: Sequence[str], **kwargs) -> subprocess.Popen:
        """``subprocess.Popen`` inside the namespace; the caller stops it (by its PID)."""
        return subprocess.Popen(self.command(argv), **kwargs)

    def python(self, code: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return self.run(["/usr/bin/python3", "-c", code], timeout=timeout)

    def outside_problems(self) -> list[str]:
        """What inside the namespace reaches the outside (empty when nothing does).

        Checks: no route but loopback; a TCP connect to an outside address fails; the host's
        resolver is unreachable; no host named in the host's apt sources or pip configuration
        resolves (those names are read at run time, none is written here).
        """
        problems = []
        routes = self.run(["ip", "-o", "route", "show", "table", "all"]).stdout
        for line in routes.splitlines():
            if " dev lo " not in f" {line} " and "dev lo" not in line:
                problems.append(f"a route other than loopback: {line}")
        hosts = sorted(_registry_hosts())
        nameservers = _nameservers()
        code = (
            "import socket, sys\n"
            f"targets = [{OUTSIDE_ADDRESS!r}] + [(ns, 53) for ns in {nameservers!r}]\n"
            "for target in targets:\n"
            "    s = socket.socket(socket.AF_INET6 if ':' in target[0] else socket.AF_INET)\n"
            "    s.settimeout(3)\n"
            "    try:\n"
            "        s.connect(target)\n"
            "        print(f'connected to {target}')\n"
            "    except OSError:\n"
            "        pass\n"
            f"for host in {hosts!r}:\n"
            "    try:\n"
            "        socket.getaddrinfo(host, 443, proto=socket.IPPROTO_TCP)\n"
            "        print(f'resolved {host}')\n"
            "    except OSError:\n"
            "        pass\n"
        )
        done = self.python(code, timeout=60)
        if done.returncode != 0:
            problems.append(f"the check itself failed: {done.stderr.strip()}")
        problems += [line for line in done.stdout.splitlines() if line.strip()]
        return problems


def _nameservers() -> list[str]:
    try:
        with open("/etc/resolv.conf") as f:
            return [line.split()[1] for line in f if line.startswith("nameserver") and len(line.split()) > 1]
    except OSError:
        return []


def _registry_hosts() -> set[str]:
    """Host names in the host's apt sources and pip configuration."""
    hosts: set[str] = set()
    paths = ["/etc/apt/sources.list", "/etc/pip.conf", os.path.expanduser("~/.config/pip/pip.conf")]
    if os.path.isdir("/etc/apt/sources.list.d"):
        paths += [os.path.join("/etc/apt/sources.list.d", n) for n in os.listdir("/etc/apt/sources.list.d")]
    for path in paths:
        try:
            with open(path) as f:
                hosts.update(re.findall(r"https?://([A-Za-z0-9.-]+)", f.read()))
        except OSError:
            continue
    return hosts


def _stop(process: subprocess.Popen) -> None:
    """Stop a process this module started, and its forked children (its own process group)."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
    else:
        # The leader is gone; forked children of its group may still hold connections.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGTERM)


def _listening(ns: LoopbackOnly, port: int) -> bool:
    out = ns.run(["ss", "-Hltn", f"sport = :{port}"]).stdout
    return bool(out.strip())


@contextlib.contextmanager
def loopback_only(ports: Sequence[int] = (), name: str | None = None, timeout: float = 15) -> Iterator[LoopbackOnly]:
    """A loopback-only network namespace with ``ports`` of the host's 127.0.0.1 carried into it."""
    why_not = available()
    if why_not:
        raise NetnsError(f"cannot make a loopback-only namespace: {why_not}")
    name = name or f"hipchat-test-{os.getpid()}-{time.monotonic_ns() % 100000}"
    socket_dir = os.path.join(SOCKET_ROOT, name)
    processes: list[subprocess.Popen] = []
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        ns = LoopbackOnly(name, socket_dir, ports)
        ns.run(["ip", "link", "set", "lo", "up"], check=True)
        os.makedirs(socket_dir, mode=0o700, exist_ok=True)
        for port in ports:
            sock = os.path.join(socket_dir, f"{port}.sock")
            processes.append(subprocess.Popen(
                ["socat", f"UNIX-LISTEN:{sock},fork,unlink-early,mode=600", f"TCP:127.0.0.1:{port}"],
                start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))
            for listen in (f"TCP4-LISTEN:{port},bind=127.0.0.1", f"TCP6-LISTEN:{port},bind=[::1],ipv6only=1"):
                processes.append(subprocess.Popen(
                    ns.command(["socat", f"{listen},fork,reuseaddr", f"UNIX-CONNECT:{sock}"]),
                    start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                ))
        deadline = time.monotonic() + timeout
        for port in ports:
            sock = os.path.join(socket_dir, f"{port}.sock")
            while not (os.path.exists(sock) and _listening(ns, port)):
                dead = [p.args for p in processes if p.poll() is not None]
                if dead:
                    raise NetnsError(f"a bridge process ended at start: {dead[0]}")
                if time.monotonic() > deadline:
                    raise NetnsError(f"port {port} was not bridged into namespace {name} within {timeout:.0f} s")
                time.sleep(0.1)
        yield ns
    finally:
        for process in processes:
            _stop(process)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        shutil.rmtree(socket_dir, ignore_errors=True)


def host_port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something listens on the host's ``host:port`` (to bridge only what exists)."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=2):
        return True
    return False
