"""A fresh host for install tests: this machine's Debian root with the appliance never installed.

``with fresh_host() as host: host.run("bash installer/install.sh --bundle ...")`` gives a
throw-away Debian 12 root in its own mount, PID and loopback-only network namespaces, so a
second appliance can be installed and started from nothing beside the running one:

- **Root filesystem**: an overlay whose lower layer is this host's root (a plain bind, without
  its submounts) and whose upper layer is a tmpfs, so nothing written there reaches the disk
  and it is gone when the namespace ends. The appliance's directories (``/opt/hipchat``,
  ``/etc/hipchat``, ``/var/lib/hipchat``, ``/var/log/hipchat``), its files elsewhere and the
  caches a build leaves (pip, npm, Maven, Ansible) are hidden by whiteouts; then, inside,
  every Debian package the roles install is purged with what only they needed, and the
  ``hipchat`` user is removed. What remains is a Debian 12 with this host's other packages
  (python3 among them, as on a standard install).
- **Network**: a loopback-only namespace (`tests.netns.loopback_only`, no bridges): its own
  127.0.0.1, so the second appliance's ports never meet the running one's, and no registry,
  resolver or outside address can be reached.
- **Processes**: PID 1 of its own PID namespace is a holder process; everything the install
  starts (supervisord, MariaDB, Redis, OpenSearch, the chat core) lives and dies with it.

Needs root, ``ip``, ``unshare``, ``nsenter`` and overlayfs.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from typing import Iterator

from tests.netns import LoopbackOnly, loopback_only

# What the appliance puts on a host outside Debian's packages (roles/*/tasks), and the caches a
# build or an online install leaves behind: a fresh host has none of them.
APPLIANCE_PATHS = (
    "/opt/hipchat",
    "/etc/hipchat",
    "/var/lib/hipchat",
    "/var/log/hipchat",
    "/etc/apt/sources.list.d/hipchat-offline.list",
    "/etc/apt/hipchat-offline.conf",
    "/etc/sysctl.d/60-hipchat-opensearch.conf",
    "/etc/sysctl.d/60-hipchat-redis.conf",
    "/etc/sysctl.d/60-hipchat-writeback.conf",
    "/etc/postfix",
    "/root/.cache",
    "/root/.npm",
    "/root/.m2",
    "/root/.ansible",
)
TMPFS_BYTES = 12 * 2**30  # the upper layer: packages, the virtualenv, OpenSearch and its data


class FreshHost:
    """A live fresh host: run shell commands in its root, as root."""

    def __init__(self, holder: subprocess.Popen, pid: int, root: str, network: LoopbackOnly):
        self.holder = holder
        self.pid = pid  # PID 1 of the host's PID namespace, seen from here
        self.root = root  # its root, inside its own mount namespace
        self.network = network

    def command(self, script: str) -> list[str]:
        """``script`` (bash) as a command that runs it inside the fresh host, from ``/root``."""
        return [
            "nsenter", f"--target={self.pid}", "--mount", "--pid", "--net", "--",
            "chroot", self.root, "/usr/bin/env", "-i", "HOME=/root", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG=C.UTF-8", "DEBIAN_FRONTEND=noninteractive", "/bin/bash", "-c", f"cd /root && {script}",
        ]

    def run(self, script: str, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(self.command(script), timeout=timeout, **kwargs)

    def carry_in(self, path: str) -> str:
        """Copy ``path`` (a file or directory of this host) into the fresh host, as on a USB stick; its path there."""
        inside = f"/root/carried/{os.path.basename(path.rstrip('/'))}"
        subprocess.run(["nsenter", f"--target={self.pid}", "--mount", "--", "mkdir", "-p", f"{self.root}/root/carried"], check=True)
        subprocess.run(["nsenter", f"--target={self.pid}", "--mount", "--", "cp", "-a", path, f"{self.root}{inside}"], check=True)
        return inside


def _holder_script(scratch: str) -> str:
    hide = []
    for path in APPLIANCE_PATHS:
        upper = f"{scratch}/upper{path}"
        hide.append(f"mkdir -p {shlex.quote(os.path.dirname(upper))} && mknod {shlex.quote(upper)} c 0 0")
    root = f"{scratch}/root"
    return "\n".join([
        "set -e",
        f"mount -t tmpfs -o size={TMPFS_BYTES} fresh-host {scratch}",
        f"mkdir {scratch}/lower {scratch}/upper {scratch}/work {root}",
        f"mount --bind / {scratch}/lower",
        *hide,
        f"mount -t overlay fresh-host -o lowerdir={scratch}/lower,upperdir={scratch}/upper,workdir={scratch}/work {root}",
        f"mount -t proc proc {root}/proc",
        f"mount -t sysfs sysfs {root}/sys",
        f"mount --rbind /dev {root}/dev",
        f"mount -t tmpfs -o mode=1777 tmpfs {root}/dev/shm",
        f"mount -t tmpfs -o mode=1777 tmpfs {root}/tmp",
        f"mount -t tmpfs -o mode=755 tmpfs {root}/run",
        f"touch {scratch}/ready",
        "exec sleep infinity",
    ])


def _pid_one(unshare_pid: int, timeout: float) -> int:
    """The PID (seen from here) of ``unshare --fork``'s child: PID 1 of the new namespace."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = subprocess.run(["pgrep", "-P", str(unshare_pid)], capture_output=True, text=True).stdout.split()
        if children:
            return int(children[0])
        time.sleep(0.1)
    raise RuntimeError("the fresh host's PID namespace did not start")


@contextlib.contextmanager
def fresh_host(purge_packages: list[str], timeout: float = 60) -> Iterator[FreshHost]:
    """A fresh host (see the module) with ``purge_packages`` and what only they needed removed."""
    scratch = tempfile.mkdtemp(prefix="hipchat-fresh-host-", dir="/run")
    with loopback_only() as network:
        holder = subprocess.Popen(
            network.command(["unshare", "--mount", "--pid", "--fork", "--propagation", "private",
                             "/bin/sh", "-c", _holder_script(scratch)]),
            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        try:
            pid = _pid_one(holder.pid, timeout)
            deadline = time.monotonic() + timeout
            ready = ["nsenter", f"--target={pid}", "--mount", "test", "-e", f"{scratch}/ready"]
            while subprocess.run(ready, capture_output=True).returncode != 0:
                if holder.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the fresh host's root could not be made: {holder.stdout.read() if holder.poll() is not None else 'timed out'}")
                time.sleep(0.2)
            host = FreshHost(holder, pid, f"{scratch}/root", network)
            purged = host.run(
                "userdel hipchat 2>/dev/null; groupdel hipchat 2>/dev/null; "
                f"apt-get purge --autoremove -y -qq {' '.join(shlex.quote(p) for p in purge_packages)} >/dev/null 2>&1; "
                f"dpkg-query -W -f='${{db:Status-Status}} ${{Package}}\\n' {' '.join(shlex.quote(p) for p in purge_packages)} 2>/dev/null | grep '^installed' || true",
                timeout=600,
            )
            if purged.returncode != 0 or purged.stdout.strip():
                raise RuntimeError(f"the fresh host still has packages the appliance installs: {purged.stdout}{purged.stderr}")
            yield host
        finally:
            # PID 1 of the namespace ends: the kernel ends every process the install started there.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(holder.pid, signal.SIGKILL)
            holder.wait(timeout=60)
            shutil.rmtree(scratch, ignore_errors=True)
