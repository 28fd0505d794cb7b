"""`hipchat-appliance backup` against the running appliance: create while clients send, list, verify, keep N, status.

One backup (a couple of minutes with the 10M-message corpus) is taken while a client keeps
sending acknowledged messages; the module's tests then read that archive. Whether each message
acknowledged before the cut-off is in it is checked in the archive itself: the spool copy is read
from its members, and its snapshot's current month is restored under another name into the
running cluster and searched.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tarfile
import time
import uuid

import pytest
import yaml

from appliance.backup.archive import open_archive
from hipchat_server.indexing import parse_timestamp
from tests.conftest import CONFIG_PATH, VENV_DIR, run_appliance_cli, supervisorctl
from tests.e2e.xmpp_client import send_durably, sm_login

CLI = f"{VENV_DIR}/bin/hipchat-appliance"
BACKUP_SECONDS = 900


@pytest.fixture(scope="module", autouse=True)
def no_deploy_meanwhile():
    """Hold the deploy lock shared for the module: a deploy or a restore (exclusive) waits, other readers do not."""
    import fcntl

    with open("/tmp/hipchat-deploy.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
        yield


@pytest.fixture(scope="module")
def backup_dir(config):
    """A backup directory on the spool's filesystem (segments are hard-linked), removed at the end."""
    directory = os.path.join(os.path.dirname(config.archive.spool_dir.rstrip("/")), f"backups-e2e-{uuid.uuid4().hex[:6]}")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def taken(config, endpoint, alice, bob, backup_dir):
    """Run `backup create` while bob sends alice acknowledged messages; returns (archive path, sent, stdout).

    ``sent`` lists (body, acknowledged at) for every message sent before, during and just after the backup.
    """
    marker = uuid.uuid4().hex
    to = f"{alice}@{config.server.domain}"

    async def scenario():
        sender = await sm_login(endpoint, bob)
        sent: list[tuple[str, float]] = []
        n = 0

        async def send_one():
            nonlocal n
            n += 1
            body = f"backup-e2e {marker} {n}"
            await send_durably(sender, to, body)
            sent.append((body, time.time()))

        try:
            for _ in range(20):  # some before the backup starts
                await send_one()
            process = await asyncio.create_subprocess_exec(
                CLI, "backup", "create", "--to", backup_dir, "--json", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
            )
            finished = asyncio.ensure_future(process.communicate())
            while not finished.done():
                await send_one()
                await asyncio.sleep(0.02)
            for _ in range(5):  # and after it
                await send_one()
            stdout, stderr = finished.result()
            return process.returncode, stdout.decode(), stderr.decode(), sent
        finally:
            await sender.close()

    returncode, stdout, stderr, sent = asyncio.run(asyncio.wait_for(scenario(), BACKUP_SECONDS))
    assert returncode == 0, stdout + stderr
    result = json.loads(stdout)
    return result["path"], sent, result


def spool_bodies(reader) -> set[str]:
    """Bodies of every message record in the archive's spool copy."""
    from appliance.backup.spool import scan_frames

    bodies = set()
    for member in reader.iter_members("spool/"):
        data = reader.read_member(member)
        path = f"/tmp/e2e-segment-{uuid.uuid4().hex}"
        with open(path, "wb") as f:
            f.write(data)
        try:
            for payload in scan_frames(path, len(data))[1]:
                bodies.add(json.loads(payload).get("body", ""))
        finally:
            os.unlink(path)
    return bodies


def snapshot_bodies(chat_server, config, reader, marker_bodies: list[str]) -> set[str]:
    """Bodies among ``marker_bodies`` that the archive's snapshot holds: its current month, restored under another name."""
    client = chat_server.get_opensearch_client()
    manifest = reader.manifest
    month = max(i for i in manifest["snapshot"]["indices"] if manifest["counts"]["messages_in_snapshot"].get(i))
    snapshots_dir = config.appliance.data_dirs["opensearch-snapshots"]
    name = f"e2e-backup-{uuid.uuid4().hex[:6]}"
    location = os.path.join(snapshots_dir, name)
    target = f"{name}-{month}"
    staging = location + "-extract"
    try:
        reader.extract(staging, prefix="opensearch/repository")
        os.rename(os.path.join(staging, "opensearch", "repository"), location)
        for root, dirs, files in os.walk(location):  # OpenSearch runs as the chat user
            for entry in [root] + [os.path.join(root, f) for f in files]:
                shutil.chown(entry, config.server.user, config.server.user)
        client.snapshot.create_repository(repository=name, body={"type": "fs", "settings": {"location": location, "readonly": True}})
        client.snapshot.restore(
            repository=name,
            snapshot=manifest["snapshot"]["name"],
            body={
                "indices": month,
                "rename_pattern": "(.+)",
                "rename_replacement": f"{name}-$1",
                "include_aliases": False,
                "include_global_state": False,
                "ignore_index_settings": manifest["snapshot"]["ignore_index_settings"],
                "index_settings": {"index.number_of_replicas": 0},
            },
            wait_for_completion=True,
            request_timeout=600,
        )
        client.cluster.health(index=target, wait_for_status="green", timeout="120s", request_timeout=130)
        settings = client.indices.get_settings(index=target)[target]["settings"]["index"]
        assert settings.get("blocks", {}).get("write") in (None, "false"), "the restored index must take writes"
        marker = marker_bodies[0].split()[1]
        response = client.search(index=target, body={"query": {"match_phrase": {"body": marker}}, "size": 10000, "_source": ["body"]})
        bodies = {hit["_source"]["body"] for hit in response["hits"]["hits"]}
        assert client.count(index=target)["count"] == manifest["counts"]["messages_in_snapshot"][month]
        return bodies
    finally:
        client.indices.delete(index=target, ignore_unavailable=True)
        try:
            client.snapshot.delete_repository(repository=name)
        except Exception:
            pass
        shutil.rmtree(location, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)


def test_every_message_acknowledged_before_the_cutoff_is_in_the_archive(taken, chat_server, config):
    """Acknowledged before the cut-off: in the spool copy or the snapshot. Missing ones were acknowledged after it."""
    path, sent, result = taken
    with open_archive(path, None) as reader:
        manifest = reader.manifest
        cutoff = parse_timestamp(manifest["cutoff"])
        in_spool = spool_bodies(reader)
        in_snapshot = snapshot_bodies(chat_server, config, reader, [b for b, _ in sent])
    before = [body for body, acked_at in sent if acked_at < cutoff]
    assert len(before) >= 20  # the 20 sent before the backup began at least
    missing = [body for body in before if body not in in_spool and body not in in_snapshot]
    assert missing == []
    # Nothing after the end of the backup can be in it; what is in it was sent by then.
    archived = in_spool | in_snapshot
    for body, acked_at in sent:
        if body in archived:
            assert acked_at < cutoff + result["seconds"] + 5
    assert result["manifest"]["counts"]["users"] >= 2


def test_manifest_describes_the_appliance(taken, chat_server):
    """Versions, counts per month, every member's checksum; no secrets in a clear archive."""
    from hipchat_server.storage.migrations import current_revision

    path, _sent, _result = taken
    with open_archive(path, None) as reader:
        m = reader.manifest
        names = set(reader.members())
        assert m["schema_revision"] == current_revision(chat_server.get_database_engine())
        assert m["opensearch_version"].startswith("2.")
        assert set(m["counts"]["messages"]) == set(m["snapshot"]["indices"])
        assert sum(m["counts"]["messages"].values()) > 0
        assert "mariadb/hipchat.sql.gz" in m["files"] and "redis/jobs.json" in m["files"]
        assert any(n.startswith("opensearch/repository/") for n in m["files"])
        assert names == set(m["files"]) | {"manifest.json"}
        assert m["secrets_included"] is False and not any(n.startswith("secrets/") for n in names)
        config_text = reader.read_member("config/hipchat.yml").decode()
        assert "redacted" in config_text
        with open(CONFIG_PATH) as f:
            password = yaml.safe_load(f)["database"]["password"]
        assert password not in config_text
    assert os.stat(os.path.dirname(path)).st_mode & 0o777 == 0o700
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_list_shows_the_archive(taken, backup_dir):
    """`backup list --json` names the archive with its cut-off and message count."""
    path, _sent, result = taken
    listed = run_appliance_cli("backup", "list", "--dir", backup_dir, "--json")
    assert listed.returncode == 0, listed.stderr
    archives = json.loads(listed.stdout)["archives"]
    assert [a["path"] for a in archives] == [path]
    assert archives[0]["cutoff"] == result["manifest"]["cutoff"]
    assert archives[0]["messages"] == sum(result["manifest"]["counts"]["messages"].values())


def test_verify_accepts_the_archive_and_refuses_it_with_one_byte_changed(taken):
    """A sound archive verifies (exit 0); one flipped byte in a member makes verify refuse it (exit 1)."""
    path, _sent, _result = taken
    ok = run_appliance_cli("backup", "verify", path, timeout=600)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "can be restored on this appliance" in ok.stdout
    with tarfile.open(path) as tar:
        member = tar.getmember("mariadb/hipchat.sql.gz")
    offset = member.offset_data + member.size // 2
    with open(path, "r+b") as f:
        f.seek(offset)
        original = f.read(1)
        f.seek(offset)
        f.write(bytes([original[0] ^ 0x01]))
    try:
        damaged = run_appliance_cli("backup", "verify", path, timeout=600)
        assert damaged.returncode == 1
        assert "mariadb/hipchat.sql.gz" in damaged.stdout + damaged.stderr
        assert "damaged" in damaged.stdout + damaged.stderr
    finally:
        with open(path, "r+b") as f:
            f.seek(offset)
            f.write(original)


def test_scheduler_run_keeps_the_newest_n(taken, backup_dir):
    """`backup scheduler --once --keep 2` takes a backup and deletes all but the newest two archives."""
    path, _sent, _result = taken
    older = [os.path.join(backup_dir, f"hipchat-backup-2020010{d}T023000Z-0.1.0.tar") for d in (1, 2)]
    for name in older:
        os.link(path, name)  # stand-ins for older nights: same bytes, no extra disk
    run = subprocess.run([CLI, "backup", "scheduler", "--once", "--to", backup_dir, "--keep", "2"], capture_output=True, text=True, timeout=BACKUP_SECONDS)
    assert run.returncode == 0, run.stdout + run.stderr
    remaining = sorted(n for n in os.listdir(backup_dir) if n.startswith("hipchat-backup-"))
    assert len(remaining) == 2
    assert os.path.basename(path) == remaining[0]  # the previous newest stays, the two older go
    assert not any(os.path.exists(n) for n in older)
    last = json.load(open(os.path.join(backup_dir, "last.json")))
    assert last["ok"] is True and os.path.basename(last["path"]) == remaining[1]


def test_status_shows_the_last_backup(taken, backup_dir, tmp_path):
    """status has a Backups line with the last result, and stays healthy-neutral about it."""
    with open(CONFIG_PATH) as f:
        raw = yaml.safe_load(f)
    raw["backup"] = {**(raw.get("backup") or {}), "dir": backup_dir}
    config_file = tmp_path / "hipchat.yml"
    config_file.write_text(yaml.safe_dump(raw))
    status = run_appliance_cli("--config", str(config_file), "status", "--json")
    backups = json.loads(status.stdout)["sections"]["backups"]
    assert backups["details"]["state"] == "ok"
    assert backups["details"]["age_seconds"] < 3600
    assert backups["warnings"] == [] and backups["healthy"]
    text = run_appliance_cli("--config", str(config_file), "status")
    assert "Backups" in text.stdout and "last one ok" in text.stdout


def test_backup_scheduler_runs_under_supervisor():
    """The installer added the nightly scheduler as its own supervisor program."""
    out = supervisorctl("status", "chat-core:backup-scheduler").stdout
    assert "RUNNING" in out, out
