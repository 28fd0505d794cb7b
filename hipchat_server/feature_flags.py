"""Feature flags and group flags: a feature on for everyone, off, or on for chosen groups only.

Each flag in `FLAGS` has a value for everyone and, optionally, a value per
group (``group_flags``). A user in at least one group that has its own value
gets the feature when any of those groups has it on; everyone else gets the
value for everyone. So "for chosen groups" is: off for everyone, on for those
groups; and "everyone but this group" is on for everyone, off for it.

A flag never written keeps its default from `FLAGS`. Values are read from
MariaDB on use and remembered for at most `CACHE_SECONDS` (a user's groups
too), so a change made in any process takes effect everywhere within that
time, without a restart; the process that made the change sees it at once.

`enabled(name, username)` is the one call the features make (blocking: from a
thread); the HTTPS, XMPP and worker processes install their instance with
`for_server(chat_server)` first.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

#: Seconds a read flag (and a user's groups) is used before MariaDB is asked again.
CACHE_SECONDS = 5.0
MAX_CACHED_USERS = 10_000

FILE_SHARING = "file_sharing"
GUEST_ACCESS = "guest_access"
WEB_CLIENT = "web_client"
API_MESSAGE_SENDING = "api_message_sending"
WEBHOOKS = "webhooks"

#: Every flag: name -> (what it turns on, its value until an admin sets one).
FLAGS: dict[str, tuple[str, bool]] = {
    FILE_SHARING: ("Uploading files into rooms and chats (the API refuses uploads when off).", True),
    GUEST_ACCESS: ("Guest accounts and guest-accessible rooms.", False),
    WEB_CLIENT: ("The built-in web client at https://<host>/.", True),
    API_MESSAGE_SENDING: ("Sending messages and notifications through the REST API.", True),
    WEBHOOKS: ("Calling room webhooks when their events happen.", True),
}

EVERYONE, NOBODY, GROUPS = "on", "off", "groups"


class UnknownFlag(ValueError):
    """A flag name not in `FLAGS`."""


@dataclass(frozen=True)
class FlagState:
    """One flag as the console shows it: its mode and the groups with their own value."""

    name: str
    description: str
    enabled: bool  # the value for everyone
    groups: dict  # group id -> that group's value
    is_default: bool  # never set by an admin

    @property
    def mode(self) -> str:
        """``on`` (everyone), ``off`` (nobody) or ``groups`` (only the groups with a value of their own)."""
        if any(self.groups.values()) and not self.enabled:
            return GROUPS
        return EVERYONE if self.enabled else NOBODY


def _check(name: str) -> None:
    if name not in FLAGS:
        raise UnknownFlag(f"no feature flag {name!r}; the flags are {', '.join(sorted(FLAGS))}")


class FeatureFlags:
    """Reads and sets flags over a `storage.feature_flags.FeatureFlagStore`. Blocking; thread-safe."""

    def __init__(self, store, *, clock=time.monotonic, cache_seconds: float = CACHE_SECONDS):
        self.store, self.clock, self.cache_seconds = store, clock, cache_seconds
        self._lock = threading.Lock()
        self._snapshot: tuple[float, dict] | None = None
        self._groups: dict[str, tuple[float, frozenset[int]]] = {}

    def _flags(self) -> dict:
        now = self.clock()
        with self._lock:
            cached = self._snapshot
        if cached is not None and cached[0] > now:
            return cached[1]
        flags = self.store.snapshot()
        with self._lock:
            self._snapshot = (now + self.cache_seconds, flags)
        return flags

    def _groups_of(self, username: str) -> frozenset[int]:
        now = self.clock()
        with self._lock:
            cached = self._groups.get(username)
        if cached is not None and cached[0] > now:
            return cached[1]
        groups = self.store.groups_of(username)
        with self._lock:
            if len(self._groups) >= MAX_CACHED_USERS:
                self._groups.pop(next(iter(self._groups)))
            self._groups[username] = (now + self.cache_seconds, groups)
        return groups

    def state(self, name: str) -> FlagState:
        _check(name)
        description, default = FLAGS[name]
        stored = self._flags().get(name)
        if stored is None:
            return FlagState(name, description, default, {}, True)
        return FlagState(name, description, stored[0], dict(stored[1]), False)

    def states(self) -> list[FlagState]:
        return [self.state(name) for name in FLAGS]

    def enabled(self, name: str, username: str | None = None) -> bool:
        """Whether ``name`` is on for ``username`` (None: someone in no group, e.g. a room token)."""
        state = self.state(name)
        if state.groups and username:
            own = [state.groups[g] for g in self._groups_of(username) if g in state.groups]
            if own:
                return any(own)
        return state.enabled

    def set(self, name: str, mode: str, groups=()) -> FlagState:
        """Turn ``name`` on for everyone, off, or on for the group ids ``groups`` only; answers the new state."""
        _check(name)
        if mode not in (EVERYONE, NOBODY, GROUPS):
            raise ValueError(f"mode must be {EVERYONE}, {NOBODY} or {GROUPS}, not {mode!r}")
        chosen = sorted({int(g) for g in groups}) if mode == GROUPS else []
        if mode == GROUPS and not chosen:
            raise ValueError("choose at least one group (or turn the flag off)")
        self.store.put(name, FLAGS[name][0], mode == EVERYONE, {g: True for g in chosen})
        self.forget()
        return self.state(name)

    def forget(self) -> None:
        """Drop what is remembered: the next read asks MariaDB."""
        with self._lock:
            self._snapshot = None
            self._groups.clear()


_installed: FeatureFlags | None = None


def install(flags: FeatureFlags | None) -> None:
    """Make ``flags`` the instance `enabled` asks (None: none, `enabled` then refuses to guess)."""
    global _installed
    _installed = flags


def for_server(chat_server) -> FeatureFlags:
    """The process's `FeatureFlags` over ``chat_server``'s database, installed for `enabled` (made once)."""
    global _installed
    if _installed is None:
        from hipchat_server.storage.feature_flags import FeatureFlagStore

        _installed = FeatureFlags(FeatureFlagStore(chat_server.get_database_engine()))
    return _installed


def enabled(name: str, username: str | None = None) -> bool:
    """Whether feature ``name`` is on for ``username``, through the installed instance. Blocking."""
    if _installed is None:
        raise RuntimeError("feature_flags.for_server(chat_server) was not called in this process")
    return _installed.enabled(name, username)
