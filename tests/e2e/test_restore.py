"""Restore through the installed appliance: archives it must refuse, and a backup that survives wiping the host's data.

The wipe test builds users, a public and a private room with members, and
history over five months (2,400 backdated records written straight into a
spool directory for the indexer, the way an import does, plus live messages
from slixmpp clients), keeps a last batch in the spool only (the indexer is
stopped while it is sent), then backs up while a client keeps sending,
stops every program, moves every data directory away, re-runs the installer
and restores. Then: logins with the old passwords (the test users' and a
bench corpus user's), rooms and memberships, room history through MAM,
search, the 10-million-message corpus counts, and each message sent during
the backup is there or was stored after the cut-off.

It runs last in the suite (marker ``wipe``, see tests/conftest.py) and holds
the deploy lock from the wipe until the appliance is healthy again. The data
directories are moved aside rather than deleted until the restore is proven:
if install or restore fails, they are put back, so a failed run does not
cost the shared appliance its corpus.
"""

from __future__ import annotations

import asyncio
import fcntl
import gzip
import json
import os
import shutil
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from ulid import ULID

from appliance.backup.archive import ArchiveWriter, open_archive
from hipchat_server.archive import conversation_of
from hipchat_server.storage.migrations import head_revision
from hipchat_server.storage.spool import encode_frame
from tests.conftest import run_appliance_cli, run_installer, supervisorctl, wait_for
from tests.e2e.test_history import send_durably_to_room, sm_member, walk
from tests.e2e.test_rooms import create, join, room_of
from tests.e2e.test_search import Api
from tests.e2e.xmpp_client import PASSWORD, TIMEOUT, login, send_durably

pytestmark = pytest.mark.wipe

DEPLOY_LOCK = "/tmp/hipchat-deploy.lock"
WORK_DIR = "/var/lib/hipchat-restore-test"  # beside the data directories, not among them: survives the wipe
TIMINGS_FILE = "/var/log/hipchat/restore-wipe-test.json"
BACKDATED_MONTHS = [(2026, 6), (2026, 7), (2026, 8), (2026, 9), (2026, 10)]
PER_MONTH = 480
BENCH_USER, BENCH_PASSWORD = "bench-corpus-1", "bench-password-1"
# The whole run: backup and restore of the 10M corpus take minutes each.
SCENARIO_TIMEOUT = 1800


def run_long(coroutine, timeout: float = SCENARIO_TIMEOUT):
    """`xmpp_client.run` with room for a backup in the middle."""
    return asyncio.run(asyncio.wait_for(coroutine, timeout))


# Synthetic archives for the refusals: nothing in them would restore, so a refusal that did not happen
# would still stop at the confirmation (the tests run without --yes on an appliance that holds data).
def small_archive(path: str, chat_server, passphrase: bytes | None = None, **manifest_changes) -> str:
    """A structurally sound archive (through ArchiveWriter, so every checksum is right) with ``manifest_changes``."""
    client = chat_server.get_opensearch_client()
    writer = ArchiveWriter(path, passphrase)
    writer.add_bytes("mariadb/hipchat.sql.gz", gzip.compress(b"-- nothing\n" + b"X" * 8192))
    writer.add_bytes("redis/jobs.json", json.dumps({"format": 1, "streams": {}, "delayed": []}).encode())
    manifest = {
        "format": 1,
        "appliance_version": "test",
        "schema_revision": head_revision(),
        "opensearch_version": client.info()["version"]["number"],
        "mariadb_version": "10.11",
        "created_at": "2026-01-01T00:00:00.000Z",
        "cutoff": "2026-01-01T00:00:00.000Z",
        "snapshot": {"repository_path": "opensearch/repository", "name": "none", "indices": []},
        "counts": {"users": 0, "rooms": 0, "room_members": 0, "messages": {}, "spool_records": 0, "job_entries": 0},
    }
    manifest.update(manifest_changes)
    writer.close(manifest)
    return path


def chat_core_pids() -> dict[str, str]:
    """Each chat-core program's state and PID: unchanged when nothing was stopped."""
    out = supervisorctl("status").stdout
    return {line.split()[0]: " ".join(line.split()[1:4]) for line in out.splitlines() if line.startswith("chat-core:")}


def test_restore_refuses_a_damaged_archive_and_changes_nothing(tmp_path, chat_server):
    """One byte changed inside a member: restore says the archive is damaged and exits 1; no program was stopped."""
    path = small_archive(str(tmp_path / "damaged.tar"), chat_server)
    data = bytearray(open(path, "rb").read())
    at = data.find(b"jobs.json")  # the tar header precedes the member's bytes; change one byte of the member
    at = data.find(b'"streams"', at)
    data[at + 2] ^= 0x01
    open(path, "wb").write(bytes(data))
    before = chat_core_pids()
    result = run_appliance_cli("restore", path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "damaged" in result.stderr and "redis/jobs.json" in result.stderr, result.stderr
    assert "confirm" not in result.stderr  # refused for the damage, before the question
    assert chat_core_pids() == before


def test_restore_refuses_an_archive_of_a_newer_schema(tmp_path, chat_server):
    """A manifest naming a schema revision this code does not know (re-signed, so only the revision is wrong) is refused."""
    path = small_archive(str(tmp_path / "newer.tar"), chat_server, schema_revision="9999_written_by_a_later_version")
    before = chat_core_pids()
    result = run_appliance_cli("restore", path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "newer than this appliance's code" in result.stderr and "9999_written_by_a_later_version" in result.stderr
    assert chat_core_pids() == before


def test_restore_of_an_encrypted_archive_reads_the_passphrase_file(tmp_path, chat_server):
    """A wrong passphrase is told apart from damage; the right one opens the archive (refused here for its newer schema)."""
    path = small_archive(str(tmp_path / "sealed.tar.enc"), chat_server, b"correct passphrase", schema_revision="9999_later")
    (tmp_path / "wrong").write_text("not the passphrase\n")
    (tmp_path / "right").write_text("correct passphrase\n")
    before = chat_core_pids()
    wrong = run_appliance_cli("restore", path, "--passphrase-file", str(tmp_path / "wrong"))
    assert wrong.returncode == 1 and "wrong passphrase" in wrong.stderr, wrong.stderr
    missing = run_appliance_cli("restore", path)
    assert missing.returncode == 1 and "encrypted" in missing.stderr, missing.stderr
    right = run_appliance_cli("restore", path, "--passphrase-file", str(tmp_path / "right"))
    assert right.returncode == 1 and "9999_later" in right.stderr, right.stderr
    assert chat_core_pids() == before


# The data set.
def backdated_records(owner: str, member: str, public: str, private: str, token: str) -> list[dict]:
    """``PER_MONTH`` records in each month of `BACKDATED_MONTHS`: public room, private room, one-to-one, both ways."""
    records = []
    nicks = {owner: "owner", member: "member"}
    for year, month in BACKDATED_MONTHS:
        start = datetime(year, month, 1, 8, tzinfo=timezone.utc)
        for n in range(PER_MONTH):
            moment = start + timedelta(days=n % 27, minutes=n * 7 % 600, milliseconds=n)
            ms = int(moment.timestamp() * 1000)
            message_id = str(ULID.from_timestamp(ms / 1000))
            timestamp = moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
            body = f"{token} old {year}-{month:02d} {n}"
            kind = n % 5
            sender = owner if kind in (0, 2, 3) else member
            if kind <= 2:
                room = private if kind == 2 else public
                xml = (f"<message from='{room}/{nicks[sender]}' type='groupchat' id='old{n}'><body>{body}</body>"
                       f"<stanza-id xmlns='urn:xmpp:sid:0' id='{message_id}' by='{room}'/></message>")
                record = {"type": "groupchat", "room": room, "conversation": None, "participants": [], "recipient": None}
            else:
                recipient = member if sender == owner else owner
                conversation, participants = conversation_of(sender, recipient)
                xml = (f"<message from='{sender}/old' to='{recipient}' type='chat' id='old{n}'><body>{body}</body>"
                       f"<stanza-id xmlns='urn:xmpp:sid:0' id='{message_id}' by='{recipient}'/></message>")
                record = {"type": "chat", "room": None, "conversation": conversation, "participants": participants, "recipient": recipient}
            record.update(id=message_id, timestamp=timestamp, sender=sender, sender_name=nicks[sender], body=body, origin_id=None, xml=xml)
            records.append(record)
    return sorted(records, key=lambda r: r["id"])


def spool_backdated(spool_dir: str, name: str, records: list[dict]) -> str:
    """Write ``records`` as one segment of a new spool directory (whole, by a rename) for the indexer to drain."""
    owner = os.stat(spool_dir)
    staging, target = os.path.join(spool_dir, f".{name}"), os.path.join(spool_dir, name)
    os.makedirs(staging, mode=0o750)
    segment = os.path.join(staging, "000000000001.seg")
    with open(segment, "wb") as f:
        f.write(b"".join(encode_frame(r) for r in records))
        f.flush()
        os.fsync(f.fileno())
    for path in (staging, segment):
        os.chown(path, owner.st_uid, owner.st_gid)
    os.rename(staging, target)
    return target


def indexed(chat_server, ids: list[str]) -> int:
    client = chat_server.get_opensearch_client()
    prefix = chat_server.get_config().archive.index_prefix
    return sum(
        client.count(index=prefix, body={"query": {"ids": {"values": ids[i : i + 1000]}}})["count"] for i in range(0, len(ids), 1000)
    )


def corpus_counts(chat_server) -> dict[str, int]:
    """Documents per ``messages-2025.*`` index: the bench corpus (nobody writes there)."""
    client = chat_server.get_opensearch_client()
    rows = client.cat.indices(index="messages-2025.*", format="json", h="index,docs.count")
    return {row["index"]: int(row["docs.count"]) for row in rows}


def stanza_id(message) -> str | None:
    element = message.xml.find("{urn:xmpp:sid:0}stanza-id")
    return element.get("id") if element is not None else None


async def reflection_id(client, body: str) -> str:
    """The stanza-id of ``body``'s reflection to its sender (the archive's record id)."""
    while True:
        message = await asyncio.wait_for(client.groupchat.get(), TIMEOUT)
        if message["body"] == body:
            return stanza_id(message)


def database_rows(chat_server, rooms: list[str], usernames: list[str]) -> dict:
    """The test rooms (settings), their members and the test users, as MariaDB has them."""
    from sqlalchemy import select

    from hipchat_server.storage.schema import room_members, rooms as rooms_table, users

    nodes = [r.split("@")[0] for r in rooms]
    with chat_server.get_database_engine().connect() as c:
        room_rows = c.execute(
            select(rooms_table.c.jid_node, rooms_table.c.privacy, rooms_table.c.name).where(rooms_table.c.jid_node.in_(nodes))
        ).all()
        member_rows = c.execute(
            select(rooms_table.c.jid_node, users.c.username, room_members.c.affiliation)
            .select_from(room_members.join(rooms_table, rooms_table.c.id == room_members.c.room_id).join(users, users.c.id == room_members.c.user_id))
            .where(rooms_table.c.jid_node.in_(nodes))
        ).all()
        user_rows = c.execute(select(users.c.username, users.c.email, users.c.is_active).where(users.c.username.in_(usernames))).all()
    return {"rooms": sorted(map(tuple, room_rows)), "members": sorted(map(tuple, member_rows)), "users": sorted(map(tuple, user_rows))}


# The wipe.
DATA_DIRS = ("mariadb", "redis", "redis-sentinel", "opensearch", "opensearch-snapshots", "spool")


def data_directories(config) -> list[str]:
    dirs = config.appliance.data_dirs
    found = [dirs[name] for name in DATA_DIRS if name in dirs]
    spool_rejected = os.path.join(os.path.dirname(config.archive.spool_dir.rstrip("/")), "spool-rejected")
    return found + ([spool_rejected] if os.path.isdir(spool_rejected) else [])


def move_aside(directories: list[str], aside: str) -> list[tuple[str, str]]:
    """Stop every program and move each data directory to ``aside`` (same filesystem: a rename)."""
    supervisorctl("stop", "all")
    os.makedirs(aside, mode=0o700)
    moved = []
    for directory in directories:
        target = os.path.join(aside, directory.strip("/").replace("/", "_"))
        os.rename(directory, target)
        moved.append((directory, target))
    return moved


def put_back(moved: list[tuple[str, str]]) -> None:
    """Undo `move_aside` after a failed install or restore: the appliance gets its own data back."""
    supervisorctl("stop", "all")
    for directory, target in moved:
        shutil.rmtree(directory, ignore_errors=True)
        os.rename(target, directory)
    supervisorctl("start", "all")


def test_backup_wipe_install_restore_brings_everything_back(config, chat_server, endpoint, new_user):
    """The appliance rebuilt from nothing but the archive: logins, rooms, members, history, search, counts, the cut-off."""
    timings: dict[str, float] = {}
    domain = endpoint.domain
    owner, member, outsider = new_user(), new_user(), new_user()
    owner_jid, member_jid = f"{owner}@{domain}", f"{member}@{domain}"
    public, private = room_of(endpoint), room_of(endpoint)
    token = f"rst{uuid.uuid4().hex[:8]}"
    during_token = f"dur{token[3:]}"
    spool_dir = config.archive.spool_dir
    shutil.rmtree(WORK_DIR, ignore_errors=True)
    os.makedirs(WORK_DIR, mode=0o700)

    # 1. Rooms, members and live history; then months of history through the spool.
    started = time.monotonic()
    live_public = [f"{token} live public {n}" for n in range(20)]
    live_private = [f"{token} live private {n}" for n in range(10)]
    live_chat = [f"{token} live chat {n}" for n in range(20)]

    async def live():
        o, m = await sm_member(endpoint, owner), await sm_member(endpoint, member)
        try:
            await create(o, public, "owner")
            await create(o, private, "owner", members_only=True)
            await o.plugin["xep_0045"].set_affiliation(private, "member", jid=member_jid, timeout=TIMEOUT)
            await join(m, public, "member")
            await join(m, private, "member")
            for body in live_public:
                await send_durably_to_room(o, public, body)
            for body in live_private:
                await send_durably_to_room(m, private, body)
            for body in live_chat:
                await send_durably(o, member_jid, body)
        finally:
            await o.close()
            await m.close()

    run_long(live(), 300)
    old = backdated_records(owner_jid, member_jid, public, private, token)
    old_dir = spool_backdated(spool_dir, f"e2e-restore-{token}", old)
    wait_for(lambda: indexed(chat_server, [r["id"] for r in old]) == len(old), 120, 1, what="the backdated records to be indexed")
    shutil.rmtree(old_dir)  # drained; the indexer forgets a directory that is gone
    timings["data set"] = time.monotonic() - started

    corpus_before = corpus_counts(chat_server)

    # 2. A last batch stays in the spool (indexer stopped), then a backup while a client keeps sending.
    in_spool_public = [f"{token} spooled public {n}" for n in range(30)]
    in_spool_chat = [f"{token} spooled chat {n}" for n in range(10)]
    during: list[tuple[str, str, float]] = []  # (body, stanza-id, acknowledged at)
    backup: dict = {}

    async def spool_then_backup():
        o, m = await sm_member(endpoint, owner), await sm_member(endpoint, member)
        try:
            await join(o, public, "owner")
            await join(m, public, "member")
            assert supervisorctl("stop", "chat-core:indexer").returncode == 0
            for body in in_spool_public:
                await send_durably_to_room(o, public, body)
            for body in in_spool_chat:
                await send_durably(m, owner_jid, body)
            began = time.monotonic()
            process = await asyncio.create_subprocess_exec(
                "/opt/hipchat/venv/bin/hipchat-appliance", "backup", "create", "--to", WORK_DIR, "--json",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )
            finished = asyncio.ensure_future(process.communicate())
            n = 0
            while not finished.done():
                body = f"during {during_token} {n}"  # not the search token: the search counts stay exact
                await send_durably_to_room(m, public, body)
                during.append((body, await reflection_id(m, body), time.time()))
                n += 1
                await asyncio.sleep(0.5)
            out, err = await finished
            backup.update(returncode=process.returncode, out=out.decode(), err=err.decode(), seconds=time.monotonic() - began)
            # A few more after the backup: these must not be in it, and are not restored.
            for k in range(3):
                body = f"during {during_token} after {k}"
                await send_durably_to_room(m, public, body)
                during.append((body, await reflection_id(m, body), time.time()))
        finally:
            supervisorctl("start", "chat-core:indexer")
            await o.close()
            await m.close()

    # From here until the restored appliance is healthy the deploy lock is held: a deploy restarting the
    # chat processes would cut the clients off mid-backup, and then the whole appliance goes away.
    lock = open(DEPLOY_LOCK, "a")
    fcntl.flock(lock, fcntl.LOCK_EX)
    aside = f"/var/lib/hipchat-wiped-{int(time.time())}"
    moved: list[tuple[str, str]] = []
    restored = False
    archive = None
    try:
        run_long(spool_then_backup())
        assert backup["returncode"] == 0, backup["out"] + backup["err"]
        timings["backup"] = backup["seconds"]
        archive = json.loads(backup["out"][backup["out"].index("{"):])["path"]  # after the progress lines
        with open_archive(archive, None) as reader:
            manifest = reader.manifest
        cutoff = datetime.fromisoformat(manifest["cutoff"].replace("Z", "+00:00")).timestamp()
        assert manifest["counts"]["spool_records"] >= len(in_spool_public) + len(in_spool_chat)
        corpus = {i: n for i, n in manifest["counts"]["messages"].items() if i.startswith("messages-2025.")}
        assert corpus == corpus_before  # the bench corpus went into the archive whole
        before = database_rows(chat_server, [public, private], [owner, member, outsider])
        assert len(before["members"]) >= 2 and len(before["users"]) == 3
        bench_user_exists = any(
            u["username"] == BENCH_USER for u in json.loads(run_appliance_cli("user", "list", "--json").stdout or "[]")
        )

        # 3. Wipe: every program stopped, every data directory gone; a fresh install; the restore.
        started = time.monotonic()
        moved = move_aside(data_directories(config), aside)
        timings["wipe"] = time.monotonic() - started
        started = time.monotonic()
        installed = run_installer(timeout=1200)
        timings["install"] = time.monotonic() - started
        assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-2000:]
        users = json.loads(run_appliance_cli("user", "list", "--json").stdout)
        assert owner not in {u["username"] for u in users}  # really empty
        started = time.monotonic()
        # No --yes: a freshly installed appliance holds nothing, so restore must not ask.
        result = run_appliance_cli("restore", archive, timeout=SCENARIO_TIMEOUT)
        timings["restore"] = time.monotonic() - started
        print(result.stdout[-6000:])
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
        assert "every count matches the manifest" in result.stdout
        wait_for(lambda: run_appliance_cli("status").returncode == 0, 300, 5, what="the restored appliance to be healthy")
        restored = True
    finally:
        if moved and not restored:
            put_back(moved)  # the shared appliance keeps its data; the failure above says what went wrong
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()
        timings_out = {k: round(v, 1) for k, v in timings.items()}
        with open(TIMINGS_FILE, "w") as f:
            size = os.path.getsize(archive) if archive and os.path.exists(archive) else None
            json.dump({"timings_seconds": timings_out, "archive_bytes": size, "restored": restored}, f, indent=1)
        print("wipe test timings (s):", timings_out)
    shutil.rmtree(aside, ignore_errors=True)

    # 4. Everything is back.
    owner_of_spool = os.stat(spool_dir).st_uid
    for name in ("web", "xmpp-0", "xmpp-1"):  # the indexer (the service user) must be able to read each
        assert os.stat(os.path.join(spool_dir, name)).st_uid == owner_of_spool, f"spool/{name} changed owner"
    assert database_rows(chat_server, [public, private], [owner, member, outsider]) == before
    assert corpus_counts(chat_server) == corpus_before
    api = Api(config)
    owner_sees = len(old) + len(live_public) + len(live_private) + len(live_chat) + len(in_spool_public) + len(in_spool_chat)
    assert api.search(owner, token)["total"] == owner_sees
    outsider_sees = sum(1 for r in old if r["room"] == public) + len(live_public) + len(in_spool_public)
    assert api.search(outsider, token)["total"] == outsider_sees  # the private room and the 1:1 stay private

    async def after():
        o = await sm_member(endpoint, owner)
        x, ok = await login(endpoint, outsider, PASSWORD)
        assert ok, "the outsider could not log in with the old password"
        bench_ok = True
        if bench_user_exists:
            b, bench_ok = await login(endpoint, BENCH_USER, BENCH_PASSWORD)
            await b.close()
        try:
            pages = await walk(o, None, backwards=True, size=100, to=public)
            public_bodies = [body for page in reversed(pages) for body in page.bodies]
            private_bodies = [body for page in reversed(await walk(o, None, backwards=True, size=100, to=private)) for body in page.bodies]
            chat_bodies = [body for page in reversed(await walk(o, member_jid, backwards=True, size=100)) for body in page.bodies]
            return public_bodies, private_bodies, chat_bodies, bench_ok
        finally:
            await o.close()
            await x.close()

    public_bodies, private_bodies, chat_bodies, bench_ok = run_long(after(), 300)
    assert bench_ok, "a bench corpus user could not log in with its password"
    old_public = [r["body"] for r in old if r["room"] == public]
    assert [b for b in public_bodies if token in b] == old_public + live_public + in_spool_public
    assert private_bodies == [r["body"] for r in old if r["room"] == private] + live_private
    assert chat_bodies == [r["body"] for r in old if r["conversation"]] + live_chat + in_spool_chat

    present = set(public_bodies)
    for body, message_id, _ in during:
        if body not in present:
            stored_at = ULID.from_str(message_id).timestamp
            assert stored_at >= cutoff, f"{body} was stored before the cut-off ({stored_at} < {cutoff}) and is missing"
    assert any(body in present for body, _, _ in during), "no message sent during the backup made it into the archive"
    shutil.rmtree(WORK_DIR, ignore_errors=True)
    remove_test_messages(chat_server, [public, private], conversation_of(owner_jid, member_jid)[0])


def remove_test_messages(chat_server, rooms: list[str], conversation: str) -> None:
    """Delete this run's messages, and the backdated months' indices once empty (each run would add 2,400)."""
    client = chat_server.get_opensearch_client()
    prefix = chat_server.get_config().archive.index_prefix
    query = {"bool": {"should": [{"terms": {"room": rooms}}, {"term": {"conversation": conversation}}]}}
    client.delete_by_query(index=prefix, body={"query": query}, refresh=True, conflicts="proceed", request_timeout=120)
    months = [f"{prefix}-{year:04d}.{month:02d}" for year, month in BACKDATED_MONTHS]
    for name in months:
        if client.indices.exists(index=name) and client.count(index=name)["count"] == 0:
            client.indices.delete(index=name)
