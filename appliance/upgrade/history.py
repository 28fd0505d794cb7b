"""The upgrade history: one JSON file listing every apply and rollback, newest last.

``/var/lib/hipchat/upgrades/history.json`` holds ``{"format": 1, "entries": [...]}``; each
entry names its action (``apply`` or ``rollback``), the versions it went from and to, when it
started and how long it took, its outcome (``succeeded``, ``rolled back``, ``failed``,
``refused``), its log file, the backup it took and the schema revisions before and after.
The file is replaced atomically, so a crash mid-write leaves the previous history.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime, timezone

HISTORY_DIR = os.environ.get("HIPCHAT_UPGRADES_DIR", "/var/lib/hipchat/upgrades")
FORMAT = 1


def history_path(directory: str | None = None) -> str:
    return os.path.join(directory or HISTORY_DIR, "history.json")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def read_history(directory: str | None = None) -> list[dict]:
    """Every recorded entry, oldest first ([] when nothing was ever upgraded)."""
    try:
        with open(history_path(directory)) as f:
            return list(json.load(f).get("entries", []))
    except FileNotFoundError:
        return []


def record(entry: dict, directory: str | None = None) -> None:
    """Append ``entry`` to the history (atomic replace of the file)."""
    directory = directory or HISTORY_DIR
    os.makedirs(directory, mode=0o755, exist_ok=True)
    entries = read_history(directory) + [entry]
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".history-")
    with os.fdopen(fd, "w") as f:
        json.dump({"format": FORMAT, "entries": entries}, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, history_path(directory))
