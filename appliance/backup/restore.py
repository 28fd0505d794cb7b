"""Restoring a backup archive onto this appliance: MariaDB, the message indices, the spool, Redis.

`restore_archive` runs the steps in an order that keeps the appliance
recoverable for as long as possible: everything that can refuse (damage, a
newer schema, another OpenSearch major, an operator who says no) happens
before anything is stopped or deleted. Then the chat processes stop (the data
services keep running), MariaDB is replaced by the dump, the month indices by
the snapshot, the spool copy goes where the indexer drains it, the job
streams are loaded, the Redis caches are dropped and rebuilt, the chat
processes start, and the counts of the manifest are compared with what is
there.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from appliance.backup import opensearch_restore
from appliance.backup.archive import ArchiveError
from hipchat_server.archive import index_name
from hipchat_server.storage.spool import SEGMENT_SUFFIX, read_frames

CHAT_CORE_GROUP = "chat-core"
# Keys of live state that make no sense after a restore: sessions, presence, room occupants, the
# origin-ids of the last hour (a resend check), web sessions. The recent lists are rebuilt.
EPHEMERAL_PATTERNS = (
    "xmpp:sessions:*", "xmpp:frontend:*", "xmpp:carbons:*", "xmpp:presence:*", "xmpp:roster-interest:*",
    "xmpp:deliver:*", "muc:*", "archive:origin:*", "archive:recent:*", "web:session:*", "web:user-sessions:*",
)
DRAIN_TIMEOUT_SECONDS = 30 * 60
START_TIMEOUT_SECONDS = 180
RESTORED_SPOOL_PREFIX = "restored-"


class RestoreRefused(Exception):
    """The archive cannot be restored here (damaged, too new, another OpenSearch): nothing was changed."""


class RestoreFailed(Exception):
    """A step failed after the appliance was stopped; the message says what to do next."""


class Steps:
    """Progress of a restore; the CLI draws it with rich.progress, tests use this silent one."""

    def start(self, name: str, total: float | None = None) -> None:
        pass

    def update(self, name: str, completed: float, total: float | None = None) -> None:
        pass

    def finish(self, name: str, detail: str = "") -> None:
        pass


@dataclass
class Comparison:
    """One line of the closing comparison: what the manifest says against what is there now."""

    what: str
    expected: int
    found: int
    exact: bool = True  # False: at least `expected` (live traffic may add more after the restart)

    @property
    def ok(self) -> bool:
        return self.found == self.expected if self.exact else self.found >= self.expected


@dataclass
class RestoreReport:
    archive: str
    manifest: dict
    seconds: dict[str, float] = field(default_factory=dict)  # per step
    comparisons: list[Comparison] = field(default_factory=list)
    schema_upgraded: tuple[str, str] | None = None
    missing_spool_ids: list[str] = field(default_factory=list)
    rebuilt_lists: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.comparisons) and not self.missing_spool_ids

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())


# Checks that refuse before anything changes.
def schema_relation(archive_revision: str | None, script=None) -> str:
    """"same", "older" or "newer" of the archive's Alembic revision against the code's head.

    Ordered by Alembic's revision graph, not by the strings: a revision this
    code does not know is "newer" (written by a later version).
    """
    from alembic.script import ScriptDirectory

    from hipchat_server.storage.migrations import MIGRATIONS_DIR

    script = script or ScriptDirectory(MIGRATIONS_DIR)
    head = script.get_current_head()
    if archive_revision == head:
        return "same"
    if archive_revision is None:
        return "older"  # an empty schema: upgrading creates it
    known = {revision.revision for revision in script.walk_revisions("base", head)}
    return "older" if archive_revision in known else "newer"


def refusals(manifest: dict, opensearch_version: str, script=None) -> list[str]:
    """Why ``manifest``'s archive cannot be restored onto this code and cluster (empty: it can)."""
    problems = []
    if manifest.get("format") != 1:
        problems.append(f"the archive's format {manifest.get('format')!r} is not one this version reads (1)")
    revision = manifest.get("schema_revision")
    if schema_relation(revision, script) == "newer":
        problems.append(
            f"the archive's database schema ({revision}) is newer than this appliance's code knows: "
            "upgrade the appliance to the version that made the backup "
            f"({manifest.get('appliance_version', 'unknown')}) or later, then restore"
        )
    archive_major = opensearch_restore.major_version(manifest.get("opensearch_version"))
    here_major = opensearch_restore.major_version(opensearch_version)
    if archive_major is None or archive_major != here_major:
        problems.append(
            f"the snapshot was taken by OpenSearch {manifest.get('opensearch_version')} and this cluster runs "
            f"{opensearch_version}: a snapshot restores only within the same major version"
        )
    return problems


def appliance_data(server) -> dict[str, int]:
    """What the appliance holds now: users (administrators apart), rooms, messages (0 everywhere on a fresh install)."""
    from sqlalchemy import func, select

    from hipchat_server.storage.schema import rooms, users

    with server.get_database_engine().connect() as connection:
        people = connection.execute(select(func.count()).select_from(users).where(users.c.is_admin.is_(False))).scalar_one()
        room_count = connection.execute(select(func.count()).select_from(rooms)).scalar_one()
    prefix = server.get_config().archive.index_prefix
    messages = sum(opensearch_restore.month_indices(server.get_opensearch_client(), prefix).values())
    return {"users": int(people), "rooms": int(room_count), "messages": messages}


def check_extracted(manifest: dict, directory: str) -> list[str]:
    """Members the manifest lists that are not in the extracted ``directory``."""
    return sorted(member for member in (manifest.get("files") or {}) if not os.path.isfile(os.path.join(directory, member)))


# Supervisor.
def _supervisor(config):
    from appliance.lib.status import supervisor_rpc

    return supervisor_rpc(config.appliance.supervisor_config).supervisor


def stop_chat_core(config) -> None:
    """Stop every chat-core program (the data services keep running)."""
    import xmlrpc.client

    try:
        _supervisor(config).stopProcessGroup(CHAT_CORE_GROUP, True)
    except xmlrpc.client.Fault as e:
        raise RestoreFailed(f"supervisord did not stop the {CHAT_CORE_GROUP} programs: {e.faultString}") from e


def chat_core_programs(config) -> set[str]:
    """The names of the chat-core programs (``xmpp-0``, ``web``, ...): each has a spool directory of that name."""
    return {i["name"] for i in _supervisor(config).getAllProcessInfo() if i["group"] == CHAT_CORE_GROUP}


def start_chat_core(config, only: str | None = None, timeout: float = START_TIMEOUT_SECONDS) -> None:
    """Start the chat-core programs (or just ``only``, e.g. "indexer") and wait until they are RUNNING."""
    supervisor = _supervisor(config)
    if only is None:
        supervisor.startProcessGroup(CHAT_CORE_GROUP, False)
    else:
        supervisor.startProcess(f"{CHAT_CORE_GROUP}:{only}", False)
    deadline = time.monotonic() + timeout
    while True:
        infos = [i for i in supervisor.getAllProcessInfo() if i["group"] == CHAT_CORE_GROUP and only in (None, i["name"])]
        pending = [i["name"] for i in infos if i["statename"] != "RUNNING"]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise RestoreFailed(f"{', '.join(pending)} did not start within {timeout:.0f} s: see /var/log/hipchat and `hipchat-appliance status`")
        time.sleep(1)


# MariaDB.
def restore_mariadb(database, dump_path: str) -> None:
    """Drop and create ``database.name``, then load the gzipped dump into it (the mariadb client, as the appliance's DB user)."""
    with tempfile.NamedTemporaryFile("w", prefix="hipchat-restore-", suffix=".cnf") as defaults:
        # The password goes through a 0600 file, never the command line (ps would show it).
        defaults.write(
            f"[client]\nuser={database.user}\npassword={database.password}\nhost={database.host}\nport={database.port}\n"
            "default-character-set=utf8mb4\n"
        )
        defaults.flush()
        client = ["mariadb", f"--defaults-extra-file={defaults.name}"]
        name = database.name.replace("`", "``")
        _run(client + ["-e", f"DROP DATABASE IF EXISTS `{name}`; CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"],
             "dropping and creating the database")
        process = subprocess.Popen(client + [database.name], stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            with gzip.open(dump_path, "rb") as dump:
                shutil.copyfileobj(dump, process.stdin, 1024 * 1024)
            process.stdin.close()
        except BrokenPipeError:
            pass  # the client died; its error is read below
        error = process.stderr.read().decode("utf-8", "replace")
        if process.wait() != 0:
            raise RestoreFailed(f"loading the MariaDB dump failed: {error.strip()[-500:]}")


def _run(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RestoreFailed(f"{what} failed: {result.stderr.strip()[-500:]}")


# The spool.
def clear_spool(spool_dir: str, processes: set[str]) -> int:
    """Empty the spool: what it held belongs to the state being replaced. Returns the directories removed.

    The directories of ``processes`` (the chat-core programs) are emptied but
    kept: the installer made them for the service user, and a process that
    must create its own as root (the HTTPS process, before it drops
    privileges) would leave one the indexer cannot read. Any other directory
    (an import's, an earlier restore's) goes, and so do the indexer's positions.
    """
    from hipchat_server.indexing import STATUS_FILE

    removed = 0
    for entry in os.scandir(spool_dir):
        if not entry.is_dir(follow_symlinks=False) or entry.name.startswith("."):
            continue
        if entry.name in processes:
            for item in os.scandir(entry.path):
                if item.is_dir(follow_symlinks=False):
                    shutil.rmtree(item.path)
                else:
                    os.unlink(item.path)
        else:
            shutil.rmtree(entry.path)
            removed += 1
    try:
        os.unlink(os.path.join(spool_dir, STATUS_FILE))
    except FileNotFoundError:
        pass
    return removed


def restore_spool(extracted_spool: str, spool_dir: str, stamp: str, prefix: str) -> tuple[list[str], dict[str, list[str]]]:
    """Move each process's segment copies into ``<spool_dir>/restored-<stamp>-<process>/`` for the indexer.

    The indexer drains every directory under the spool directory, one with
    no saved position from its first byte; a record the snapshot holds too
    has the same id and replaces itself. Returns the directory names and the
    record ids per month index.
    """
    names, ids_by_index = [], {}
    if not os.path.isdir(extracted_spool):
        return names, ids_by_index
    owner = os.stat(spool_dir)
    for process in sorted(os.listdir(extracted_spool)):
        source = os.path.join(extracted_spool, process)
        segments = sorted(f for f in os.listdir(source) if f.endswith(SEGMENT_SUFFIX))
        if not segments:
            continue
        for segment in segments:
            records, _ = read_frames(os.path.join(source, segment))
            for record in records:
                if isinstance(record, dict) and isinstance(record.get("id"), str) and isinstance(record.get("timestamp"), str):
                    ids_by_index.setdefault(index_name(prefix, record), []).append(record["id"])
        name = f"{RESTORED_SPOOL_PREFIX}{stamp}-{process}"
        target = os.path.join(spool_dir, name)
        # Built beside it under a dot name (the indexer skips those), then renamed: never seen half-copied.
        staging = os.path.join(spool_dir, f".{name}")
        shutil.copytree(source, staging)
        for path in [staging] + [os.path.join(staging, f) for f in os.listdir(staging)]:
            os.chown(path, owner.st_uid, owner.st_gid)
        os.chmod(staging, 0o750)
        os.rename(staging, target)
        names.append(name)
    return names, ids_by_index


def wait_for_drain(spool_dir: str, names: list[str], steps: Steps, timeout: float = DRAIN_TIMEOUT_SECONDS) -> None:
    """Wait until the indexer reports no backlog in each of ``names`` (its status file, written every second)."""
    from hipchat_server.indexing import read_status

    if not names:
        return
    deadline = time.monotonic() + timeout
    first = None
    while True:
        directories = (read_status(spool_dir) or {}).get("directories") or {}
        backlog = [directories.get(n, {}).get("backlog_bytes") for n in names]
        if all(b == 0 for b in backlog):
            return
        waiting = sum(b or 0 for b in backlog)
        first = first or waiting or None
        if first:
            steps.update("spool", first - waiting, first)
        if time.monotonic() > deadline:
            raise RestoreFailed(
                f"the indexer has not drained the restored spool within {timeout:.0f} s ({waiting} bytes left): "
                "see /var/log/hipchat/indexer*.log and `hipchat-appliance status`"
            )
        time.sleep(1)


def remove_drained(spool_dir: str, names: list[str]) -> None:
    """Remove the restored spool directories once drained (the indexer keeps a read segment otherwise)."""
    for name in names:
        shutil.rmtree(os.path.join(spool_dir, name), ignore_errors=True)


# Redis.
def drop_ephemeral(redis) -> int:
    """Delete the live-state keys (`EPHEMERAL_PATTERNS`); returns how many went."""
    deleted = 0
    for pattern in EPHEMERAL_PATTERNS:
        batch = []
        for key in redis.scan_iter(match=pattern, count=5000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += redis.unlink(*batch)
                batch = []
        if batch:
            deleted += redis.unlink(*batch)
    return deleted


def rebuild_recent_lists(server, steps: Steps) -> int:
    """Refill every room's recent list from the (restored and drained) indices; returns the lists written.

    Only the rooms': history on join and the REST API's latest history read
    nothing else. The conversation and per-user lists serve messages the
    indexer has not made searchable yet, and after the drain there are none:
    they fill again with the next messages.
    """
    from hipchat_server.archive import record_json
    from hipchat_server.storage.message_index import parse_month_index
    from hipchat_server.storage.recent import ROOM_KEY

    config = server.get_config()
    prefix, size = config.archive.index_prefix, config.archive.recent_messages
    client = server.get_opensearch_client()
    client.indices.refresh(index=f"{prefix}-*", allow_no_indices=True, request_timeout=opensearch_restore.ADMIN_TIMEOUT_SECONDS)
    months = sorted((i for i in opensearch_restore.month_indices(client, prefix) if parse_month_index(prefix, i)), reverse=True)
    rooms = opensearch_restore.distinct_values(client, prefix, "room")
    steps.start("caches", len(rooms))
    redis = server.get_redis_primary()
    lists = 0
    for start in range(0, len(rooms), 200):
        chunk = rooms[start : start + 200]
        found = opensearch_restore.newest_records(client, months, "room", chunk, size)
        pipe = redis.pipeline(transaction=False)
        for room, records in found.items():
            key = ROOM_KEY.format(room=room)
            pipe.delete(key)
            pipe.rpush(key, *(record_json(r) for r in records))  # newest first, as the archive keeps them
            lists += 1
        pipe.execute()
        steps.update("caches", start + len(chunk), len(rooms))
    return lists


# Counts.
def database_counts(engine) -> dict[str, int]:
    from sqlalchemy import func, select

    from hipchat_server.storage.schema import room_members, rooms, users

    with engine.connect() as connection:
        return {
            name: int(connection.execute(select(func.count()).select_from(table)).scalar_one())
            for name, table in (("users", users), ("rooms", rooms), ("room_members", room_members))
        }


def compare_database(manifest_counts: dict, engine) -> list[Comparison]:
    found = database_counts(engine)
    return [Comparison(name, int(manifest_counts.get(name, 0)), found[name]) for name in ("users", "rooms", "room_members")]


def compare_snapshot(manifest_counts: dict, client, prefix: str) -> tuple[Comparison, list[str]]:
    """The restored indices against the manifest's ``messages_in_snapshot`` (exact: nothing else was written yet).

    Returns the total's comparison and a note per index that differs.
    """
    found = opensearch_restore.month_indices(client, prefix)
    expected = manifest_counts.get("messages_in_snapshot") or {}
    notes = [f"{index}: {count} in the snapshot, {found.get(index, 0)} restored" for index, count in sorted(expected.items()) if found.get(index, 0) != count]
    total = Comparison("messages restored from the snapshot", sum(int(n) for n in expected.values()), sum(found.get(i, 0) for i in expected))
    return total, notes


def compare_messages(manifest_counts: dict, client, prefix: str) -> list[Comparison]:
    """Each month index of the manifest's ``messages`` (snapshot plus spool copy, each id once) against the index now."""
    found = opensearch_restore.month_indices(client, prefix)
    expected = manifest_counts.get("messages") or {}
    return [Comparison(f"messages {index}", int(count), found.get(index, 0)) for index, count in sorted(expected.items())]


# The whole restore.
def _counter(steps: Steps, name: str, total: int):
    """An archive progress callback (member, bytes) that adds up to ``steps.update``."""
    done = 0

    def progress(_member: str, count: int) -> None:
        nonlocal done
        done += count
        steps.update(name, done, total)

    return progress


def restore_archive(server, reader, archive_path: str, *, confirm=None, steps: Steps | None = None, staging_root: str | None = None) -> RestoreReport:
    """Restore the opened archive ``reader`` onto this appliance; see the module docstring for the order.

    ``confirm(data)`` is asked when the appliance holds data (users, rooms or
    messages) and must return True to go on. Raises `RestoreRefused` before
    any change, `RestoreFailed` (or the underlying error) after.
    """
    from hipchat_server.storage.migrations import upgrade_to_head

    steps = steps or Steps()
    config = server.get_config()
    manifest = reader.manifest
    report = RestoreReport(archive_path, manifest)
    client = server.get_opensearch_client()
    prefix = config.archive.index_prefix
    clock = time.monotonic

    began = clock()
    problems = refusals(manifest, opensearch_restore.cluster_version(client))
    if problems:
        raise RestoreRefused("; ".join(problems))
    snapshots_dir = staging_root or config.appliance.data_dirs.get("opensearch-snapshots", "/var/lib/hipchat/opensearch-snapshots")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    # Extracted under path.repo: the snapshot repository inside it is registered where it lies.
    staging = os.path.join(snapshots_dir, f"restore-{stamp}")
    os.makedirs(staging, mode=0o750)
    try:
        size = sum(int(f.get("bytes", 0)) for f in (manifest.get("files") or {}).values())
        # Verified whole first (checksums, extra members, padding, GCM tags), then extracted (checked
        # again while written): a damaged archive is refused before anything is stopped.
        steps.start("verify", size)
        problems = reader.verify(progress=_counter(steps, "verify", size))
        if problems:
            raise RestoreRefused(f"the archive is damaged ({len(problems)} problem(s): {'; '.join(problems[:3])}); use another backup")
        steps.finish("verify")
        steps.start("extract", size)
        try:
            reader.extract(staging, progress=_counter(steps, "extract", size))
        except ArchiveError as e:
            raise RestoreRefused(str(e)) from e
        missing = check_extracted(manifest, staging)
        if missing:
            raise RestoreRefused(f"the archive is damaged: {len(missing)} member(s) missing ({', '.join(missing[:5])})")
        report.seconds["extract and verify"] = clock() - began
        steps.finish("extract")

        holding = appliance_data(server)
        if any(holding.values()) and not (confirm and confirm(holding)):
            raise RestoreRefused(
                "the appliance holds data ({users} users, {rooms} rooms, {messages} messages) and the restore was not confirmed".format(**holding)
            )

        owner = os.stat(snapshots_dir)
        for root, dirs, files in os.walk(staging):
            for name in dirs + files:
                os.chown(os.path.join(root, name), owner.st_uid, owner.st_gid)
        os.chown(staging, owner.st_uid, owner.st_gid)

        step_started = clock()
        steps.start("stop")
        stop_chat_core(config)
        report.seconds["stop chat processes"] = clock() - step_started
        steps.finish("stop")

        step_started = clock()
        steps.start("mariadb")
        restore_mariadb(config.database, os.path.join(staging, "mariadb", "hipchat.sql.gz"))
        engine = server.get_database_engine()
        engine.dispose()  # pooled connections knew the dropped database
        if schema_relation(manifest.get("schema_revision")) == "older":
            report.schema_upgraded = upgrade_to_head(engine)
        report.comparisons += compare_database(manifest.get("counts") or {}, engine)
        report.seconds["MariaDB"] = clock() - step_started
        steps.finish("mariadb")

        step_started = clock()
        snapshot = manifest.get("snapshot") or {}
        steps.start("opensearch")
        opensearch_restore.restore_snapshot(
            client,
            os.path.join(staging, snapshot.get("repository_path", "opensearch/repository")),
            snapshot["name"],
            list(snapshot.get("indices") or []),
            prefix,
            ignore_index_settings=snapshot.get("ignore_index_settings") or [],
            on_wait=lambda done, total: steps.update("opensearch", done, total),
        )
        restored, differing = compare_snapshot(manifest.get("counts") or {}, client, prefix)
        report.comparisons.append(restored)
        report.notes += differing
        report.seconds["OpenSearch snapshot"] = clock() - step_started
        steps.finish("opensearch")

        step_started = clock()
        steps.start("redis")
        redis = server.get_redis_primary()
        drop_ephemeral(redis)
        jobs_path = os.path.join(staging, "redis", "jobs.json")
        if os.path.isfile(jobs_path):
            from appliance.backup.redis_jobs_restore import load_jobs

            with open(jobs_path, encoding="utf-8") as f:
                loaded = load_jobs(redis, json.load(f))
            expected_jobs = (manifest.get("counts") or {}).get("job_entries")
            if expected_jobs is not None:
                report.comparisons.append(Comparison("job entries", int(expected_jobs), loaded))
        report.seconds["Redis job streams"] = clock() - step_started
        steps.finish("redis")

        step_started = clock()
        clear_spool(config.archive.spool_dir, chat_core_programs(config))
        names, ids_by_index = restore_spool(os.path.join(staging, "spool"), config.archive.spool_dir, stamp, prefix)
        spool_records = sum(len(ids) for ids in ids_by_index.values())
        expected_spool = (manifest.get("counts") or {}).get("spool_records")
        if expected_spool is not None:
            report.comparisons.append(Comparison("spool records", int(expected_spool), spool_records))
        # The indexer alone first: no client can write (and push onto the recent lists) until they are rebuilt.
        start_chat_core(config, only="indexer")
        steps.start("spool", 1)
        wait_for_drain(config.archive.spool_dir, names, steps)
        client.indices.refresh(index=f"{prefix}-*", allow_no_indices=True, request_timeout=opensearch_restore.ADMIN_TIMEOUT_SECONDS)
        report.missing_spool_ids = opensearch_restore.ids_missing(client, prefix, ids_by_index)
        report.comparisons.append(Comparison("spool records indexed", spool_records, spool_records - len(report.missing_spool_ids)))
        # Exact: only the indexer runs, and it had nothing but the restored spool to index.
        report.comparisons += compare_messages(manifest.get("counts") or {}, client, prefix)
        remove_drained(config.archive.spool_dir, names)
        report.seconds["spool replay"] = clock() - step_started
        steps.finish("spool")

        step_started = clock()
        report.rebuilt_lists = rebuild_recent_lists(server, steps)
        report.seconds["Redis caches"] = clock() - step_started
        steps.finish("caches")

        step_started = clock()
        steps.start("start")
        start_chat_core(config)
        report.seconds["start chat processes"] = clock() - step_started
        steps.finish("start")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report
