"""What every appliance process does at start: logging, privileges."""

from __future__ import annotations

import argparse
import gc
import grp
import logging
import os
import pwd
import sys
import time


def start_process(prog: str, description: str, argv: list[str] | None):
    """Parse ``--config``, send stdlib and Twisted logs to stderr, load the configuration.

    Returns the configuration, or None after printing why it is invalid.
    """
    from twisted.logger import STDLibLogObserver, globalLogBeginner

    from hipchat_server.config import ConfigError, load_config

    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", help="configuration file (default /etc/hipchat/hipchat.yml)")
    args = parser.parse_args(argv)
    setup_logging()
    globalLogBeginner.beginLoggingTo([STDLibLogObserver()], redirectStandardIO=False)
    try:
        return load_config(args.config)
    except ConfigError as e:
        print(f"{prog}: configuration error: {e}", file=sys.stderr)
        return None


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


# Collection thresholds of a chat process (Python's default is 700, 10, 10). Every stanza leaves a
# small cycle of elements behind, which young collections reclaim; what survives them is mostly
# sessions, which live long. With the default, a full collection (it walks every live object: a
# 10,000-session front end holds about a million) ran every few seconds and paused each stream
# for 100-700 ms; these make young collections rarer and full ones rarer still.
GC_THRESHOLDS = (10_000, 20, 100)


def tune_garbage_collection() -> None:
    """Set `GC_THRESHOLDS` and move what start-up allocated (modules, config) out of the collector's way."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class GarbageCollectionWatch:
    """Logs every garbage collection that paused the process longer than ``warn_seconds``.

    A chat process allocates an element tree per stanza; a full collection of
    a large heap stops every stream at once, which shows as a latency spike.
    """

    def __init__(self, warn_seconds: float = 0.05):
        self.warn_seconds = warn_seconds
        self._clock = time.perf_counter
        self._started = 0.0
        self.log = logging.getLogger("hipchat.gc")

    def install(self) -> None:
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = self._clock()
            return
        paused = self._clock() - self._started
        if paused >= self.warn_seconds:
            self.log.warning(
                "garbage collection of generation %d paused the process %.0f ms (%d collected)",
                info.get("generation", -1),
                paused * 1000,
                info.get("collected", 0),
            )
