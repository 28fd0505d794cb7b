"""Import a HipChat group export (the layout `hipchat_export` writes) into the running appliance.

Users are matched by e-mail, rooms by name; what is missing is created:
users with a random password nobody knows (an administrator sets one with
``hipchat-appliance user passwd``; each is written to the audit log as
``user_imported``, "password must be set"), rooms with their owner, privacy,
topic, archived flag, and their members and admins.

Messages keep their original timestamps and go the durable path every
message takes: records appended (group-committed, fsynced) to a spool
directory of their own, ``<spool_dir>/import-<stamp>``, which the indexer
drains like any chat process's into the month index of each record's
timestamp (`archive.index_name`). A record's id is a ULID made of the
original timestamp and a hash of the export's message id (`message_id_for`),
so importing the same export again makes the same ids: what OpenSearch has
already is counted as "already there" and not spooled, and whatever is
spooled twice replaces itself (the id is the document id). An id that is one
of this appliance's own ULIDs (an export of this appliance) is kept as it is.
The HipChat id travels in the record as ``hipchat_id``, and a timestamp
finer than the record's milliseconds as ``hipchat_timestamp``, so that an
export writes both back unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from twisted.python.failure import Failure
from twisted.words.xish import domish
from ulid import ULID

from appliance.backup.hipchat_export import HISTORY_FILE, ROOMS_FILE, USERS_FILE, hipchat_timestamp
from hipchat_server.archive import MessageArchive, index_name
from hipchat_server.storage.spool import Spool
from hipchat_server.xmpp.xml_parser import CLIENT_NS

MESSAGE_BATCH = 2000  # records looked up in OpenSearch, then spooled, at a time
MAX_MESSAGE_LENGTH = 10_000  # HipChat's own limit
DRAIN_POLL_SECONDS = 0.5
READ_CHUNK_CHARS = 1 << 20  # a history file is read this much at a time
STALLED_SECONDS = 600  # an import waiting on an indexer that takes nothing gives up after this
MAX_ITEM_CHARS = 64 << 20  # one message entry larger than this is damage, not a message
IMPORT_ACTOR = "hipchat-import"


class ImportRefused(Exception):
    """The export cannot be imported at all (not an export, unreadable); the text says what to do."""


# The format's values.
def parse_hipchat_timestamp(text: str) -> int:
    """Milliseconds since the epoch of HipChat's ``2018-08-08T14:23:54Z 626267`` (or a plain ISO 8601 time)."""
    if not isinstance(text, str) or not text:
        raise ValueError("no timestamp")
    moment, _, micros = text.strip().partition(" ")
    if micros and not micros.isdigit():
        moment, micros = text.strip(), ""  # "2014-09-04 19:02:42": ISO 8601 with a space, not HipChat's microseconds
    parsed = datetime.fromisoformat(moment.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    ms = int(parsed.timestamp()) * 1000 + parsed.microsecond // 1000
    if micros:
        ms = int(parsed.timestamp()) * 1000 + int(micros) // 1000
    if ms < 0 or ms >= 2**48:
        raise ValueError(f"{text!r} is out of range")
    return ms


def message_id_for(original_id: str, ms: int) -> str:
    """The record id of an exported message: its own id if that is a ULID of the same millisecond, else one derived from it."""
    try:
        if ULID.from_str(original_id).milliseconds == ms:
            return original_id.upper()
    except (ValueError, TypeError):
        pass
    digest = hashlib.sha256(f"hipchat-export:{original_id}".encode()).digest()
    return str(ULID.from_bytes(ms.to_bytes(6, "big") + digest[:10]))


def username_for(mention_name: str, email: str) -> str:
    """An XMPP-safe username for a HipChat user: the mention name (else the e-mail's local part), lower case."""
    base = re.sub(r"[^a-z0-9._-]+", "", (mention_name or "").lower()) or re.sub(r"[^a-z0-9._-]+", "", email.split("@")[0].lower())
    return base[:64]


def created_at(text) -> datetime | None:
    """A naive UTC datetime (MariaDB's) of a ``created`` value, None when there is none or it cannot be read."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromtimestamp(parse_hipchat_timestamp(text) / 1000, tz=timezone.utc).replace(tzinfo=None, microsecond=0)
    except ValueError:
        return None


@dataclass
class Tally:
    """Created, already there, refused (with each reason) for one kind of thing."""

    created: int = 0
    existing: int = 0
    refused: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def refuse(self, reason: str) -> None:
        self.refused += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1


@dataclass
class ImportResult:
    users: Tally = field(default_factory=Tally)
    rooms: Tally = field(default_factory=Tally)
    memberships: Tally = field(default_factory=Tally)
    messages: Tally = field(default_factory=Tally)
    months: dict[str, int] = field(default_factory=dict)  # month index -> messages spooled for it
    spool_directory: str = ""
    drained: bool | None = None  # None: not waited for
    seconds: float = 0.0
    spool_seconds: float = 0.0  # until the last record was fsynced
    created_users: list[str] = field(default_factory=list)


class _GivenIds:
    """`MessageArchive.new_record` takes its id from here: the one derived for the message being imported."""

    def __init__(self):
        self.value: tuple[str, int] = ("", 0)

    def next(self) -> tuple[str, int]:
        return self.value


class _ReturnInThread:
    """Spool's reactor here: its Deferreds fire on the writer thread, where `_SpoolWriter` waits for them."""

    @staticmethod
    def callFromThread(function, *args):
        function(*args)


class _SpoolWriter:
    """The import's own spool directory; `append_all` returns once every record given is fsynced."""

    def __init__(self, directory: str, segment_bytes: int, owner: str):
        self.directory = directory
        self.owner = owner
        self.spool = Spool(directory, reactor=_ReturnInThread(), segment_bytes=segment_bytes)
        self.spool.open()
        self._chown(directory)

    def _chown(self, path: str) -> None:
        # The indexer runs as the service user and removes the segments it has indexed.
        try:
            shutil.chown(path, self.owner, self.owner)
        except (LookupError, PermissionError):
            pass

    def append_all(self, records: list[dict]) -> None:
        if not records:
            return
        done, lock, errors = threading.Event(), threading.Lock(), []
        left = [len(records)]

        def finished(result):
            if isinstance(result, Failure):
                errors.append(result)
            with lock:
                left[0] -= 1
                if left[0] == 0:
                    done.set()

        for record in records:
            self.spool.append(record).addBoth(finished)
        done.wait()
        if errors:
            raise OSError(f"the spool {self.directory} refused records: {errors[0].getErrorMessage()}")

    def close(self) -> None:
        self.spool.close()
        for segment in self.spool.segments():
            self._chown(segment.path)


class GroupImport:
    """Imports one export; see the module docstring. `run` it with the export's directory."""

    def __init__(self, chat_server):
        from hipchat_server.storage.rooms import RoomStore
        from hipchat_server.storage.users import UserStore

        config = chat_server.get_config()
        self.config = config
        self.engine = chat_server.get_database_engine()
        self.client = chat_server.get_opensearch_client()
        self.users = UserStore(self.engine)
        self.room_domain = f"{config.rooms.service}.{config.server.domain}"
        self.rooms = RoomStore(self.engine, self.room_domain)
        self.domain = config.server.domain
        self.prefix = config.archive.index_prefix
        self.result = ImportResult()
        self.user_by_id: dict = {}  # export user id -> users row
        self.room_by_id: dict = {}  # export room id -> room JID
        self._ids = _GivenIds()
        self._archive = MessageArchive(None, None, None, ids=self._ids)
        self._seen: set[str] = set()

    def run(self, directory: str, progress=None, wait_indexed: bool = True, drain_timeout: float = 3600) -> ImportResult:
        started = time.monotonic()
        users_json, rooms_json = _read_list(directory, USERS_FILE, "User"), _read_list(directory, ROOMS_FILE, "Room")
        self._import_users(users_json, progress)
        self._import_rooms(rooms_json, progress)
        histories = self._history_files(directory)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        spool_dir = os.path.join(self.config.archive.spool_dir, f"import-{stamp}-{os.getpid()}")
        self.result.spool_directory = spool_dir
        writer = _SpoolWriter(spool_dir, self.config.archive.spool_segment_bytes, self.config.server.user)
        try:
            task = progress.add_task("messages", total=len(histories)) if progress else None
            for path, kind, owner in histories:
                self._import_history(path, kind, owner, writer)
                if progress:
                    progress.update(task, advance=1)
        finally:
            writer.close()
        self._closed_at = time.time()
        self.result.spool_seconds = time.monotonic() - started
        if not self.result.messages.created:
            shutil.rmtree(spool_dir, ignore_errors=True)  # nothing spooled: nothing for the indexer to drain
            self.result.drained = True
        elif wait_indexed:
            self.result.drained = self._wait_drained(spool_dir, drain_timeout, progress)
        self.result.seconds = time.monotonic() - started
        return self.result

    # Users.
    def _import_users(self, items: list[dict], progress) -> None:
        from hipchat_server.users import SCRAM_MECHANISMS, UserError, hash_password, make_scram_credentials, validate_email, validate_name, validate_username
        from hipchat_server.storage.users import DuplicateKeyError

        task = progress.add_task("users", total=len(items)) if progress else None
        for user in items:
            if progress:
                progress.update(task, advance=1)
            email = (user.get("email") or "").strip()
            if not email:
                self.result.users.refuse("no e-mail address (HipChat exports none for some deactivated users)")
                continue
            existing = self.users.get_by_email(email)
            if existing is not None:
                self.user_by_id[user.get("id")] = existing
                self.result.users.existing += 1
                continue
            try:
                username = validate_username(username_for(user.get("mention_name") or "", email))
                name = validate_name((user.get("name") or username)[:100])
                validate_email(email)
            except UserError as e:
                self.result.users.refuse(f"invalid: {e}")
                continue
            if self.users.get_by_username(username) is not None:
                self.result.users.refuse("username taken by a user with another e-mail address")
                continue
            password = secrets.token_urlsafe(24)
            account_type = user.get("account_type") or ("admin" if user.get("is_group_admin") else "user")
            values = dict(
                username=username,
                name=name,
                mention_name=(user.get("mention_name") or username)[:100],
                email=email,
                password_hash=hash_password(password),
                title=(user.get("title") or "")[:100],
                timezone=(user.get("timezone") or "UTC")[:64],
                is_admin=account_type == "admin" or bool(user.get("is_group_admin")),
                is_guest=account_type == "guest",
                is_active=not user.get("is_deleted"),
            )
            if created_at(user.get("created")) is not None:
                values["created_at"] = created_at(user.get("created"))
            credentials = [vars(make_scram_credentials(password, m)) for m in SCRAM_MECHANISMS]
            try:
                values["id"] = self.users.insert(credentials=credentials, **values)
            except DuplicateKeyError as e:
                self.result.users.refuse(f"{e.column.replace('_', ' ')} taken by another user")
                continue
            self._audit("user_imported", username, "random password: must be set by an administrator (hipchat-appliance user passwd)")
            self.user_by_id[user.get("id")] = values
            self.result.users.created += 1
            self.result.created_users.append(username)

    def _audit(self, action: str, target: str, details: str) -> None:
        from hipchat_server.storage.database import run_in_transaction
        from hipchat_server.storage.schema import audit_log

        run_in_transaction(
            self.engine, "audit_hipchat_import", lambda c: c.execute(audit_log.insert().values(actor=IMPORT_ACTOR, action=action, target=target, details=details))
        )

    # Rooms and memberships.
    def _import_rooms(self, items: list[dict], progress) -> None:
        from hipchat_server.rooms_api import room_node_for
        from hipchat_server.storage.rooms import RoomExists
        from hipchat_server.xmpp.muc_forms import RoomConfig

        task = progress.add_task("rooms", total=len(items)) if progress else None
        for room in items:
            if progress:
                progress.update(task, advance=1)
            name = room.get("name")
            if not isinstance(name, str) or not name.strip() or len(name) > 100:
                self.result.rooms.refuse("no usable name (1 to 100 characters)")
                continue
            if room.get("is_deleted"):
                self.result.rooms.refuse("deleted in HipChat")
                continue
            members = [self.user_by_id[i] for i in room.get("members") or [] if i in self.user_by_id]
            admins = [self.user_by_id[i] for i in room.get("room_admins") or [] if i in self.user_by_id]
            details = self.rooms.details(name)
            if details is not None:
                node = details.room.jid_node
                self.result.rooms.existing += 1
            else:
                owner = self.user_by_id.get(room.get("owner")) or (admins or members or [None])[0]
                if owner is None:
                    self.result.rooms.refuse("its owner and members were not imported")
                    continue
                base = room_node_for(name)
                node, n = base, 1
                while True:
                    try:
                        self.rooms.create(node, owner["username"], RoomConfig(name=name, members_only=room.get("privacy") == "private"), locked=False)
                        break
                    except RoomExists:
                        n += 1
                        node = f"{base}-{n}"
                self._room_details(node, room)
                self.result.rooms.created += 1
            self.room_by_id[room.get("id")] = f"{node}@{self.room_domain}"
            self._memberships(node, members, admins)

    def _room_details(self, node: str, room: dict) -> None:
        from sqlalchemy import update

        from hipchat_server.storage.database import run_in_transaction
        from hipchat_server.storage.schema import rooms

        if room.get("topic"):
            self.rooms.set_subject(node, str(room["topic"])[:250], None)
        self.rooms.set_details(node, archived=bool(room.get("is_archived")), guest_accessible=bool(room.get("guest_access_url")))
        if created_at(room.get("created")) is not None:
            when = created_at(room.get("created"))
            run_in_transaction(self.engine, "set_imported_room_created", lambda c: c.execute(update(rooms).where(rooms.c.jid_node == node).values(created_at=when)))

    def _memberships(self, node: str, members: list[dict], admins: list[dict]) -> None:
        current = {}
        for affiliation in ("owner", "admin", "member"):
            for username in self.rooms.affiliated(node, affiliation):
                current[username] = affiliation
        wanted = {u["username"]: "member" for u in members}
        wanted.update({u["username"]: "admin" for u in admins})
        changes = {}
        for username, affiliation in wanted.items():
            if username in current:
                self.result.memberships.existing += 1
            else:
                changes[username] = affiliation
        if changes:
            self.rooms.set_affiliations(node, changes)
            self.result.memberships.created += len(changes)

    # Messages.
    def _history_files(self, directory: str) -> list[tuple[str, str, object]]:
        files = []
        for room_id in self.room_by_id:
            path = os.path.join(directory, "rooms", str(room_id), HISTORY_FILE)
            if os.path.exists(path):
                files.append((path, "room", room_id))
        users_dir = os.path.join(directory, "users")
        if os.path.isdir(users_dir):
            for name in sorted(os.listdir(users_dir)):
                path = os.path.join(users_dir, name, HISTORY_FILE)
                if os.path.exists(path):
                    files.append((path, "user", name))
        return files

    def _import_history(self, path: str, kind: str, owner, writer: _SpoolWriter) -> None:
        batch: list[dict] = []
        for item in iter_json_array(path):
            record = self._record(item, kind, owner)
            if record is None:
                continue
            batch.append(record)
            if len(batch) >= MESSAGE_BATCH:
                self._store(batch, writer)
                batch = []
        self._store(batch, writer)

    def _record(self, item: dict, kind: str, owner) -> dict | None:
        tally = self.result.messages
        if not isinstance(item, dict) or len(item) != 1:
            tally.refuse("not a message entry")
            return None
        (key, message), = item.items()
        allowed = ("UserMessage", "NotificationMessage") if kind == "room" else ("PrivateUserMessage",)
        if key not in allowed or not isinstance(message, dict):
            if key not in ("UserMessage", "NotificationMessage", "PrivateUserMessage", "ArchiveRoomMessage", "TopicRoomMessage", "GuestAccessMessage"):
                tally.refuse(f"unknown entry {key}")
            else:
                tally.refuse(f"{key} is not imported (no chat message)")
            return None
        try:
            ms = parse_hipchat_timestamp(message.get("timestamp"))
        except (ValueError, TypeError) as e:
            tally.refuse(f"timestamp unreadable ({e.__class__.__name__})")
            return None
        text = message.get("message")
        if not isinstance(text, str) or not text.strip():
            tally.refuse("empty message")
            return None
        if len(text) > MAX_MESSAGE_LENGTH:
            tally.refuse(f"longer than {MAX_MESSAGE_LENGTH} characters")
            return None
        original = str(message.get("id") or "")
        if not original:
            tally.refuse("no message id")
            return None
        record_id = message_id_for(original, ms)
        if record_id in self._seen:
            return None  # the other person's copy of a one-to-one message
        self._seen.add(record_id)
        self._ids.value = (record_id, ms)
        if key == "PrivateUserMessage":
            record = self._private_record(message, text)
        elif key == "NotificationMessage":
            record = self._notification_record(message, text, self.room_by_id[owner])
        else:
            record = self._room_record(message, text, self.room_by_id[owner])
        if record is None:
            self._seen.discard(record_id)
            return None
        if record_id != original.upper():
            record["hipchat_id"] = original
        if hipchat_timestamp(record["timestamp"]) != message["timestamp"]:
            record["hipchat_timestamp"] = message["timestamp"]  # microseconds, or an offset: written back as it came
        return record

    def _person(self, value) -> dict | None:
        if isinstance(value, dict):
            return self.user_by_id.get(value.get("id"))
        return None

    def _room_record(self, message: dict, text: str, room: str) -> dict | None:
        sender = self._person(message.get("sender", message.get("from")))
        if sender is None:
            self.result.messages.refuse("sender not imported (unknown id, or refused above)")
            return None
        stanza = domish.Element((CLIENT_NS, "message"))
        stanza["from"], stanza["type"] = f"{room}/{sender['name']}", "groupchat"
        stanza.addElement("body", content=text)
        sender_jid = f"{sender['username']}@{self.domain}"
        return self._archive.new_record(stanza, type="groupchat", sender=sender_jid, body=text, room=room, sender_name=sender["name"])

    def _notification_record(self, message: dict, text: str, room: str) -> dict | None:
        from hipchat_server.room_posting import COLORS, FORMATS, MAX_LABEL_LENGTH, Notification, notification_stanza

        sender = message.get("sender", message.get("from"))
        label = (sender if isinstance(sender, str) else (sender or {}).get("name") or "") or "HipChat"
        color = message.get("color") if message.get("color") in COLORS else "yellow"
        message_format = message.get("message_format") if message.get("message_format") in FORMATS else "html"
        notification = Notification(text, message_format, color, bool(message.get("notify")), label.strip()[:MAX_LABEL_LENGTH] or "HipChat")
        stanza, body, html = notification_stanza(f"{room}/{notification.label}", notification)
        record = self._archive.new_record(stanza, type="groupchat", sender=room, body=body, room=room, sender_name=notification.label)
        record["notification"] = {"color": color, "message_format": message_format, "notify": notification.notify, "from": notification.label}
        if html is not None:
            record["html"] = html
        return record

    def _private_record(self, message: dict, text: str) -> dict | None:
        sender, receiver = self._person(message.get("sender", message.get("from"))), self._person(message.get("receiver"))
        if sender is None or receiver is None:
            self.result.messages.refuse("sender or receiver not imported")
            return None
        sender_jid, receiver_jid = f"{sender['username']}@{self.domain}", f"{receiver['username']}@{self.domain}"
        stanza = domish.Element((CLIENT_NS, "message"))
        stanza["from"], stanza["to"], stanza["type"] = sender_jid, receiver_jid, "chat"
        stanza.addElement("body", content=text)
        return self._archive.new_record(stanza, type="chat", sender=sender_jid, body=text, recipient=receiver_jid)

    def _store(self, batch: list[dict], writer: _SpoolWriter) -> None:
        """Spool the records OpenSearch does not hold yet; count the others as already there."""
        if not batch:
            return
        docs = [{"_index": index_name(self.prefix, r), "_id": r["id"], "_source": False} for r in batch]
        found = self.client.mget(body={"docs": docs}, request_timeout=120)["docs"]
        present = {d["_id"] for d in found if d.get("found")}
        fresh = [r for r in batch if r["id"] not in present]
        self._make_room(writer)
        writer.append_all(fresh)
        self.result.messages.existing += len(batch) - len(fresh)
        self.result.messages.created += len(fresh)
        for record in fresh:
            month = index_name(self.prefix, record)
            self.result.months[month] = self.result.months.get(month, 0) + 1

    def _make_room(self, writer: _SpoolWriter) -> None:
        """Refuse below the spool's disk guard; wait while the indexer is far behind this import.

        Spooling runs faster than indexing (2,300 against 1,400 messages/s
        here): unchecked, a large import would pile gigabytes into the spool and
        make `status` warn about a backlog. Half the warning level is kept at most.
        """
        from hipchat_server.indexing import read_status

        archive = self.config.archive
        stat = os.statvfs(writer.directory)
        if stat.f_bavail * stat.f_frsize < archive.spool_min_free_mb * 1024 * 1024:
            raise ImportRefused(
                f"less than {archive.spool_min_free_mb} MiB free for the spool ({writer.directory}); free space, then run the "
                "same import again (what is spooled already is not imported twice)"
            )
        name = os.path.basename(writer.directory)
        lowest, moved_at = None, time.monotonic()
        while True:
            entry = ((read_status(archive.spool_dir) or {}).get("directories") or {}).get(name) or {}
            backlog = entry.get("backlog_bytes") or 0
            if backlog <= archive.spool_warn_bytes // 2:
                return
            if lowest is None or backlog < lowest:
                lowest, moved_at = backlog, time.monotonic()
            elif time.monotonic() - moved_at > STALLED_SECONDS:
                raise ImportRefused(
                    f"the indexer has taken nothing from {writer.directory} for {STALLED_SECONDS} s; check `hipchat-appliance status` "
                    "(indexer, OpenSearch), then run the same import again (what is spooled is indexed once the indexer runs)"
                )
            time.sleep(DRAIN_POLL_SECONDS)

    def _wait_drained(self, spool_dir: str, timeout: float, progress) -> bool:
        """Wait until the indexer has taken every record of ``spool_dir``, then remove it; False on timeout."""
        from hipchat_server.indexing import read_status

        name = os.path.basename(spool_dir)
        total = sum(os.path.getsize(s.path) for s in Spool(spool_dir).segments())
        task = progress.add_task("indexing (KiB of the import's spool drained)", total=max(total // 1024, 1)) if progress else None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = read_status(self.config.archive.spool_dir) or {}
            entry = (status.get("directories") or {}).get(name) or {}
            backlog = entry.get("backlog_bytes")
            if progress and isinstance(backlog, int):
                progress.update(task, completed=max(total - backlog, 0) // 1024)
            # Only a status written after the last record was fsynced tells about all of them.
            written_after = _seconds(status.get("updated")) > self._closed_at
            if written_after and backlog == 0 and "segment" in entry:
                if progress:
                    progress.update(task, completed=max(total // 1024, 1))
                shutil.rmtree(spool_dir, ignore_errors=True)
                return True
            time.sleep(DRAIN_POLL_SECONDS)
        return False


def iter_json_array(path: str, chunk_chars: int = READ_CHUNK_CHARS):
    """The items of the JSON array in ``path``, one at a time: memory holds one chunk, not the file.

    A room's whole history is one array in HipChat's layout; read at once, a
    busy room's file (gigabytes) would take several times its size in memory.
    Raises ImportRefused when the file is not a JSON array.
    """
    decoder = json.JSONDecoder()
    with open(path, encoding="utf-8") as f:
        buffer, pos, at_end, started, expect_comma = "", 0, False, False, False
        dropped = 0  # characters of the file before the buffer, for error messages
        while True:
            while pos < len(buffer) and buffer[pos] in " \t\r\n":
                pos += 1
            if pos >= len(buffer):
                if at_end:
                    raise ImportRefused(f"{path} ends before its JSON array does")
                more = f.read(chunk_chars)
                at_end = not more
                dropped += pos
                buffer, pos = buffer[pos:] + more, 0
                continue
            if not started:
                if buffer[pos] != "[":
                    raise ImportRefused(f"{path} is not a JSON list")
                started, pos = True, pos + 1
                continue
            if buffer[pos] == "]":
                return
            if expect_comma:
                if buffer[pos] != ",":
                    raise ImportRefused(f"{path} is not valid JSON near character {dropped + pos}")
                expect_comma, pos = False, pos + 1
                continue
            try:
                item, end = decoder.raw_decode(buffer, pos)
            except json.JSONDecodeError:
                if at_end or len(buffer) - pos > MAX_ITEM_CHARS:
                    raise ImportRefused(f"{path} is not valid JSON near character {dropped + pos}") from None
                more = f.read(chunk_chars)  # the item goes on in the next chunk
                at_end = not more
                dropped += pos
                buffer, pos = buffer[pos:] + more, 0
                continue
            yield item
            pos, expect_comma = end, True


def _seconds(iso: str | None) -> float:
    try:
        return parse_hipchat_timestamp(iso) / 1000
    except (ValueError, TypeError):
        return 0.0


def _read_list(directory: str, name: str, key: str | None) -> list:
    """The JSON array in ``directory/name`` (each item's ``key`` object when given); ImportRefused when unreadable."""
    path = os.path.join(directory, name)
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except FileNotFoundError:
        raise ImportRefused(f"{name} is missing from {directory}: is this a HipChat export (its 'data' directory)?") from None
    except (OSError, ValueError) as e:
        raise ImportRefused(f"{path} cannot be read as JSON: {e}") from None
    if not isinstance(value, list):
        raise ImportRefused(f"{path} is not a JSON list")
    if key is None:
        return value
    return [item[key] for item in value if isinstance(item, dict) and isinstance(item.get(key), dict)]


def _extract_data(tar: tarfile.TarFile, directory: str) -> None:
    """Extract the regular files and directories of ``tar`` under ``directory``; refuse a name that would leave it.

    (tarfile's own "data" filter is missing from older 3.11 releases.)
    """
    root = os.path.realpath(directory)
    for member in tar.getmembers():
        target = os.path.realpath(os.path.join(root, member.name))
        if os.path.isabs(member.name) or not target.startswith(root + os.sep):
            raise ImportRefused(f"the tar member {member.name!r} would be written outside the import directory")
        if member.isdir():
            os.makedirs(target, exist_ok=True)
        elif member.isfile():
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with tar.extractfile(member) as source, open(target, "wb") as f:
                shutil.copyfileobj(source, f)
        # Links, devices and FIFOs have no place in an export: skipped.


def import_group(chat_server, source: str, *, progress=None, wait_indexed: bool = True) -> ImportResult:
    """Import from ``source``: an export directory or a ``.tar.gz`` / ``.tar`` of one."""
    if os.path.isdir(source):
        return GroupImport(chat_server).run(source, progress, wait_indexed)
    if not os.path.isfile(source):
        raise ImportRefused(f"{source} does not exist")
    with tempfile.TemporaryDirectory(prefix=".hipchat-import-", dir=os.path.dirname(os.path.abspath(source))) as work:
        try:
            with tarfile.open(source) as tar:
                _extract_data(tar, work)
        except (tarfile.TarError, OSError) as e:
            raise ImportRefused(f"{source} is not a readable tar file ({e}); a HipChat .tar.gz.aes must be decrypted first") from None
        root = work
        if not os.path.exists(os.path.join(root, USERS_FILE)):
            inner = [d for d in os.listdir(work) if os.path.exists(os.path.join(work, d, USERS_FILE))]
            if inner:
                root = os.path.join(work, inner[0])
        return GroupImport(chat_server).run(root, progress, wait_indexed)
