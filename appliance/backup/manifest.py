"""The backup manifest: what an archive holds, from which versions, and whether this appliance can restore it."""

from __future__ import annotations

from datetime import datetime, timezone

from appliance.backup.archive import FORMAT


def iso_ms(moment: datetime) -> str:
    """ISO 8601 UTC with milliseconds (the records' timestamp format)."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def stamp_of(moment: datetime) -> str:
    """The archive name's time: ``YYYYmmddTHHMMSSZ``."""
    return moment.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def archive_name(moment: datetime, version: str, encrypted: bool) -> str:
    return f"hipchat-backup-{stamp_of(moment)}-{version}.tar" + (".enc" if encrypted else "")


def build_manifest(
    *,
    appliance_version: str,
    schema_revision: str | None,
    opensearch_version: str,
    mariadb_version: str,
    created_at: datetime,
    cutoff: datetime,
    duration_seconds: float,
    snapshot: dict,
    counts: dict,
    extra: dict | None = None,
) -> dict:
    """The manifest before ``ArchiveWriter.close`` adds ``files``, ``secrets_included`` and its checksum."""
    manifest = {
        "format": FORMAT,
        "appliance_version": appliance_version,
        "schema_revision": schema_revision,
        "opensearch_version": opensearch_version,
        "mariadb_version": mariadb_version,
        "created_at": iso_ms(created_at),
        "cutoff": iso_ms(cutoff),
        "duration_seconds": round(duration_seconds, 1),
        "snapshot": snapshot,
        "counts": counts,
    }
    manifest.update(extra or {})
    return manifest


def schema_problem(revision: str | None) -> str | None:
    """Why a dump at Alembic ``revision`` cannot be loaded by this code (None when it can).

    A revision this code's migrations do not know was written by a newer version: loading it
    would leave a schema the code does not understand. An older one is upgraded after loading.
    """
    from alembic.util.exc import CommandError

    from hipchat_server.storage.migrations import _alembic_config
    from alembic.script import ScriptDirectory

    if revision is None:
        return None
    script = ScriptDirectory.from_config(_alembic_config())
    try:
        known = script.get_revision(revision)
    except CommandError:
        known = None
    if known is None:
        return (
            f"the archive's schema revision {revision} is newer than this appliance's code (head {script.get_current_head()}): "
            "install the appliance version that wrote it (see appliance_version in the manifest), then restore"
        )
    return None


def opensearch_problem(archive_version: str, here_version: str) -> str | None:
    """A snapshot restores only into the same OpenSearch major version (or the next one; we stay on one)."""
    if archive_version.split(".")[0] != here_version.split(".")[0]:
        return f"the archive's snapshot is from OpenSearch {archive_version}, this appliance runs {here_version}: another major version cannot restore it"
    return None


def restorable_here(manifest: dict, opensearch_version: str | None) -> list[str]:
    """Why this appliance cannot restore the archive (empty when it can); ``opensearch_version`` None skips that check."""
    problems = []
    schema = schema_problem(manifest.get("schema_revision"))
    if schema:
        problems.append(schema)
    if opensearch_version and manifest.get("opensearch_version"):
        search = opensearch_problem(manifest["opensearch_version"], opensearch_version)
        if search:
            problems.append(search)
    return problems
