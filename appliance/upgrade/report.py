"""What an operator sees of upgrades: the running version, the ``current`` and ``previous``
releases, every apply and rollback, and a warning when the newest of them failed or was rolled back.

One source for ``hipchat-appliance upgrade status``, the Upgrades line of ``hipchat-appliance
status`` and the console's Backups page. Everything it reads is world-readable (history.json is
0644, the release links and the virtualenv's metadata too), so the console's HTTPS process,
running as the service user, reads it itself.
"""

from __future__ import annotations

import importlib.metadata

from appliance.upgrade import history, releases

#: Characters of a failure kept in a warning (the installer's failure carries its last 15 lines).
FAILURE_SHOWN = 200


def upgrade_report(history_dir: str | None = None) -> dict:
    """The versions and the history (oldest first), the newest entry's ``warning`` and ``error``
    when the history cannot be read (then ``history`` is empty); never raises for a missing or
    unreadable file."""
    try:
        installed = releases.installed_version()
    except importlib.metadata.PackageNotFoundError:
        installed = None  # run from a source tree without the package installed
    error = None
    try:
        entries = history.read_history(history_dir)
    except (OSError, ValueError, AttributeError) as e:  # AttributeError: JSON that is not an object
        entries, error = [], f"cannot read {history.history_path(history_dir)}: {e}"
    return {
        "installed_version": installed,
        "current": releases.release_version(releases.linked_release("current")),
        "previous": releases.release_version(releases.linked_release("previous")),
        "history": entries,
        "warning": warning_of(entries[-1] if entries else None),
        "error": error,
    }


def first_line(text: str | None, limit: int = FAILURE_SHOWN) -> str:
    """The first line of a failure, cut to ``limit`` characters (the log has the rest)."""
    lines = (text or "").strip().splitlines()
    line = lines[0] if lines else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def warning_of(entry: dict | None) -> str | None:
    """What the operator must be told about the newest history entry; None after a successful or refused upgrade."""
    if entry is None:
        return None
    action, outcome = entry.get("action"), entry.get("outcome")
    was, to = entry.get("from_version", "?"), entry.get("to_version", "?")
    when = entry.get("finished_at") or entry.get("started_at") or "?"
    log = f"; log {entry['log']}" if entry.get("log") else ""
    if action == "apply":
        if outcome in ("succeeded", "refused"):
            return None
        why = first_line(entry.get("failure"))
        if outcome == "rolled back":
            return f"the upgrade from {was} to {to} failed at {when} and was rolled back to {was}: {why}{log}"
        backup = entry.get("backup")
        restore = f"restore the backup it took: `hipchat-appliance restore {backup}`" if backup else "restore the last backup"
        return (f"the upgrade from {was} to {to} failed at {when} and its rollback failed too "
                f"({first_line(entry.get('rollback_failure'))}): {restore}{log}")
    if action == "rollback":
        if outcome == "succeeded":
            return f"the appliance was rolled back from {was} to {to} at {when} (`upgrade rollback`){log}"
        return f"the rollback from {was} to {to} at {when} ended {outcome}: see `hipchat-appliance status`{log}"
    return None


def newest_first(entries: list[dict], limit: int | None = None) -> list[dict]:
    """The entries newest first (at most ``limit``), each with ``detail``: the first line of why it
    failed (its rollback's failure too), else its first note, else empty."""
    rows = []
    for entry in list(reversed(entries))[:limit]:
        reasons = [first_line(entry.get(k)) for k in ("failure", "rollback_failure") if entry.get(k)]
        if not reasons and entry.get("health") and entry.get("outcome") not in ("succeeded", None):
            reasons = [f"{name}: {first_line(r.get('detail'))}" for name, r in entry["health"].items() if not r.get("ok")]
        if not reasons and entry.get("notes"):
            reasons = [first_line(entry["notes"][0])]
        rows.append(dict(entry, detail="; ".join(reasons)))
    return rows
