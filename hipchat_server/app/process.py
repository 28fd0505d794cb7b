"""What every appliance process does at start: logging, privileges."""

from __future__ import annotations

import grp
import logging
import os
import pwd
import sys


def setup_logging(level: int = logging.INFO) -> None:
    """Log to stderr; supervisor writes it to the process's log file under /var/log/hipchat."""
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def drop_privileges(user: str) -> None:
    """Switch to ``user`` when running as root (after privileged ports are bound)."""
    if os.getuid() != 0:
        return
    entry = pwd.getpwnam(user)
    os.setgroups([g.gr_gid for g in grp.getgrall() if user in g.gr_mem] + [entry.pw_gid])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    os.environ["HOME"] = entry.pw_dir
