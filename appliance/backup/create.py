"""Taking a backup of the running appliance: the cut-off, then spool, MariaDB, OpenSearch, jobs, configuration.

Order matters (see ``spool``): the cut-off time is taken first, then the spool segments are
linked, then MariaDB is dumped, then the message indices are snapshotted. Every message
acknowledged before the cut-off is in the spool copy or, indexed (and its segment removed)
since, in the snapshot. The work runs at low CPU and I/O priority so chat keeps its latency.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Protocol

import yaml

from appliance.backup import mariadb, opensearch, redis_jobs
from appliance.backup.archive import ArchiveWriter
from appliance.backup.manifest import archive_name, build_manifest, iso_ms, stamp_of
from appliance.backup.spool import cut_spool, message_records

log = logging.getLogger("hipchat.backup")

DEFAULT_BACKUP_DIR = "/var/lib/hipchat/backups"
DEFAULT_SNAPSHOTS_DIR = "/var/lib/hipchat/opensearch-snapshots"
LAST_RESULT = "last.json"
CONFIG_FILE = "/etc/hipchat/hipchat.yml"
SECRETS_DIR = "/etc/hipchat/secrets"
TLS_FILES = ("server.key", "server.crt", "ca.key", "ca.crt")
# The snapshot is written beside the indices, then copied into the archive: room for both.
SPACE_FACTOR = 2.2
_SECRET_KEYS = ("password", "token", "secret")


class BackupError(Exception):
    """The backup could not be made; the message tells the operator what to do."""


class Reporter(Protocol):
    """Where create_backup says how far it is (the CLI draws rich progress bars)."""

    def step(self, name: str, total: int | None = None) -> None: ...

    def advance(self, amount: int) -> None: ...


class _Silent:
    def step(self, name: str, total: int | None = None) -> None:
        pass

    def advance(self, amount: int) -> None:
        pass


@dataclass
class BackupResult:
    path: str
    manifest: dict
    bytes: int
    seconds: float
    steps: dict[str, float] = field(default_factory=dict)  # seconds per step
    notes: list[str] = field(default_factory=list)


def lower_priority() -> None:
    """The idle CPU policy and I/O class for this process and what it starts (tar, gzip, mariadb-dump).

    SCHED_IDLE gives the backup only the CPU time the chat processes leave; at
    nice 10 it still took a tenth of a contended core from them.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        try:
            os.nice(19)
        except OSError:
            pass
    if shutil.which("ionice"):
        subprocess.run(["ionice", "-c3", "-p", str(os.getpid())], check=False, capture_output=True)


def exit_on_sigterm() -> None:
    """Turn SIGTERM (supervisor stopping us) into SystemExit, so a backup in progress cleans up after itself."""
    import signal

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def redacted_config(text: str) -> bytes:
    """``hipchat.yml`` with every password, token and secret value replaced (for a clear archive)."""

    def scrub(node):
        if isinstance(node, dict):
            return {k: ("<redacted: only in an encrypted backup>" if any(s in str(k) for s in _SECRET_KEYS) and node[k] else scrub(v)) for k, v in node.items()}
        if isinstance(node, list):
            return [scrub(v) for v in node]
        return node

    body = yaml.safe_dump(scrub(yaml.safe_load(text)), sort_keys=False)
    return ("# hipchat.yml at backup time; secrets are left out of a clear archive.\n" + body).encode()


def ensure_backup_dir(directory: str) -> None:
    os.makedirs(directory, mode=0o700, exist_ok=True)
    os.chmod(directory, 0o700)


def write_last_result(directory: str, result: dict) -> None:
    """Record the last backup's outcome in ``<directory>/last.json`` (what status shows)."""
    path = os.path.join(directory, LAST_RESULT)
    with open(path + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(path + ".tmp", path)


def read_last_result(directory: str) -> dict | None:
    try:
        with open(os.path.join(directory, LAST_RESULT)) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return None


def _check_space(client, backups_dir: str, snapshots_dir: str) -> int:
    """Refuse early when the disk cannot hold the snapshot and the archive; returns the estimate."""
    stats = client.indices.stats(index="*", metric="store")
    primary = stats["_all"]["primaries"]["store"]["size_in_bytes"]
    needed = int(primary * SPACE_FACTOR)
    free = shutil.disk_usage(backups_dir).free
    if os.stat(backups_dir).st_dev != os.stat(snapshots_dir).st_dev:
        free = min(free, shutil.disk_usage(snapshots_dir).free * 2)
    if free < needed:
        raise BackupError(
            f"not enough free space: the backup needs about {needed / 2**30:.1f} GiB (the indices hold {primary / 2**30:.1f} GiB) "
            f"and {backups_dir} has {free / 2**30:.1f} GiB free; remove old backups (`hipchat-appliance backup list`) or use --to"
        )
    return needed


def create_backup(
    chat_server,
    to_dir: str,
    passphrase: bytes | None = None,
    reporter: Reporter | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
) -> BackupResult:
    """Take one backup of the running appliance into ``to_dir``; returns what was written.

    Raises ``BackupError`` (with what to do) when it cannot; nothing half-written is left behind.
    """
    from hipchat_server import __version__
    from hipchat_server.storage.migrations import current_revision

    reporter = reporter or _Silent()
    config = chat_server.get_config()
    client = chat_server.get_opensearch_client()
    snapshots_dir = config.appliance.data_dirs.get("opensearch-snapshots", DEFAULT_SNAPSHOTS_DIR)
    ensure_backup_dir(to_dir)
    for index in opensearch.lift_leftover_block(client, to_dir):
        log.warning("lifted a leftover write block on %s", index)
    _check_space(client, to_dir, snapshots_dir)

    started = time.monotonic()
    steps: dict[str, float] = {}
    notes: list[str] = []
    cutoff = clock()
    stamp = stamp_of(cutoff)
    staging = os.path.join(to_dir, f".staging-{stamp}")
    os.makedirs(staging, mode=0o700)
    writer = None
    try:
        # 1-2. The cut: spool segments as they are now.
        t = time.monotonic()
        reporter.step("Spool segments at the cut-off")
        copies = cut_spool(config.archive.spool_dir, os.path.join(staging, "spool"))
        records = message_records(copies)
        if any(c.copied for c in copies):
            notes.append("spool segments were copied (the spool is on another filesystem than the backup directory)")
        steps["spool"] = time.monotonic() - t

        # 3. MariaDB, one transaction.
        t = time.monotonic()
        reporter.step("MariaDB dump")
        engine = chat_server.get_database_engine()
        schema_revision = current_revision(engine)
        dump = mariadb.dump_database(config.database, os.path.join(staging, "hipchat.sql.gz"), staging)
        steps["mariadb"] = time.monotonic() - t

        # 4. OpenSearch snapshot (after the spool cut: what the indexer removed since is in it).
        t = time.monotonic()
        reporter.step("OpenSearch snapshot")
        snapshot = opensearch.snapshot_messages(client, config.archive.index_prefix, snapshots_dir, stamp, to_dir, records)
        steps["opensearch_snapshot"] = time.monotonic() - t

        # Job streams.
        t = time.monotonic()
        reporter.step("Job streams")
        jobs = redis_jobs.dump_jobs(chat_server.get_redis_primary())
        steps["redis_jobs"] = time.monotonic() - t

        # The archive.
        t = time.monotonic()
        path = os.path.join(to_dir, archive_name(cutoff, __version__, passphrase is not None))
        repository_bytes = sum(os.path.getsize(os.path.join(r, n)) for r, _, ns in os.walk(snapshot.location) for n in ns)
        spool_bytes = sum(c.bytes for c in copies)
        reporter.step("Writing the archive", total=repository_bytes + spool_bytes + dump.bytes)
        writer = ArchiveWriter(path, passphrase)
        writer.add_file("mariadb/hipchat.sql.gz", dump.path)
        reporter.advance(dump.bytes)
        writer.add_tree("opensearch/repository", snapshot.location, progress=lambda _m, n: reporter.advance(n), drop_cache=True)
        for copy in copies:
            writer.add_file(copy.member, copy.path, size=copy.bytes)
            reporter.advance(copy.bytes)
        writer.add_bytes("redis/jobs.json", redis_jobs.encode(jobs))
        with open(CONFIG_FILE) as f:
            config_text = f.read()
        if passphrase is not None:
            writer.add_bytes("config/hipchat.yml", config_text.encode())
            for name in sorted(os.listdir(SECRETS_DIR)) if os.path.isdir(SECRETS_DIR) else []:
                writer.add_file(f"secrets/{name}", os.path.join(SECRETS_DIR, name))
            tls_dir = os.path.dirname(config.tls.private_key)
            for name in TLS_FILES:
                if os.path.isfile(os.path.join(tls_dir, name)):
                    writer.add_file(f"secrets/tls/{name}", os.path.join(tls_dir, name))
        else:
            writer.add_bytes("config/hipchat.yml", redacted_config(config_text))
        steps["archive"] = time.monotonic() - t

        messages = {index: n + snapshot.spool_only.get(index, 0) for index, n in snapshot.documents.items()}
        for index, n in snapshot.spool_only.items():
            messages.setdefault(index, n)
        counts = {
            "users": dump.rows.get("users", 0),
            "rooms": dump.rows.get("rooms", 0),
            "room_members": dump.rows.get("room_members", 0),
            "messages": dict(sorted(messages.items())),
            "messages_in_snapshot": snapshot.documents,
            "spool_records": sum(c.records for c in copies),
            "job_entries": redis_jobs.entry_count(jobs),
            "tables": dict(sorted(dump.rows.items())),
        }
        manifest = build_manifest(
            appliance_version=__version__,
            schema_revision=schema_revision,
            opensearch_version=opensearch.server_version(client),
            mariadb_version=mariadb.server_version(engine),
            created_at=clock(),
            cutoff=cutoff,
            duration_seconds=time.monotonic() - started,
            snapshot={
                "repository_path": "opensearch/repository",
                "name": snapshot.name,
                "indices": snapshot.indices,
                "ignore_index_settings": [opensearch.BLOCK_SETTING],
            },
            counts=counts,
            extra={
                "config_redacted": passphrase is None,
                "spool_segments_copied": any(c.copied for c in copies),
                "write_block_seconds": snapshot.blocked_seconds,
            },
        )
        manifest = writer.close(manifest)
        writer = None
        seconds = time.monotonic() - started
        result = BackupResult(path, manifest, os.path.getsize(path), seconds, steps, notes)
        write_last_result(to_dir, {
            "ok": True, "path": path, "finished_at": iso_ms(clock()), "cutoff": manifest["cutoff"],
            "seconds": round(seconds, 1), "bytes": result.bytes, "encrypted": passphrase is not None,
        })
        return result
    except BaseException as e:
        if writer is not None:
            writer.abort()
        write_last_result(to_dir, {"ok": False, "finished_at": iso_ms(clock()), "error": f"{type(e).__name__}: {e}"})
        if isinstance(e, Exception) and not isinstance(e, BackupError):
            raise BackupError(f"the backup failed ({type(e).__name__}: {e}); nothing was kept. Check `hipchat-appliance status`, then try again") from e
        raise
    finally:
        # Registered (or half-written) or not: the repository is this backup's alone.
        opensearch.remove_repository(client, f"backup-{stamp}", os.path.join(snapshots_dir, f"backup-{stamp}"))
        shutil.rmtree(staging, ignore_errors=True)
