"""Export in HipChat Server's group export layout: users, rooms, room history and one-to-one history.

The layout is the one HipChat Server's and HipChat Cloud's data export wrote,
and that other products' HipChat importers (Zulip, Mattermost converters,
Rocket.Chat) read::

    users.json                 [{"User": {id, name, mention_name, email, title, timezone,
                                          account_type, is_group_admin, is_deleted, created, ...}}]
    rooms.json                 [{"Room": {id, name, topic, privacy, owner, members,
                                          room_admins, participants, created, is_archived,
                                          guest_access_url, ...}}]
    rooms/<room id>/history.json   [{"UserMessage": {id, sender, message, timestamp, ...}}
                                    | {"NotificationMessage": {...}}]
    users/<user id>/history.json   [{"PrivateUserMessage": {id, sender, receiver, message, timestamp}}]

A sender or receiver is ``{"id", "name", "mention_name"}``; a notification's
sender is its label (a string), as HipChat wrote it. Timestamps are HipChat's
``2018-08-08T14:23:54Z 626267`` (UTC to the second, a space, microseconds).
A one-to-one message is in the history of both its people (importers take
each id once). Users and rooms come from MariaDB; history from the monthly
OpenSearch indices, read month by month in time order, so memory stays flat
whatever the size. Files (``rooms/<id>/files/``, ``users/files/``) are not
written: the appliance keeps no uploaded files.
"""

from __future__ import annotations

import json
import os
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from sqlalchemy import select

from hipchat_server.events import mention_names
from hipchat_server.storage.database import run_in_transaction
from hipchat_server.storage.message_index import MessageIndex
from hipchat_server.storage.schema import room_members, rooms, users

USERS_FILE = "users.json"
ROOMS_FILE = "rooms.json"
HISTORY_FILE = "history.json"
SEARCH_PAGE = 2000  # documents per search request while reading a month
SEARCH_TIMEOUT_SECONDS = 120


# The format's values.
def hipchat_timestamp(timestamp: str) -> str:
    """HipChat's ``2025-03-04T10:00:00Z 123000`` of a record's ``2025-03-04T10:00:00.123Z``."""
    seconds, _, fraction = timestamp.rstrip("Z").partition(".")
    return f"{seconds}Z {int((fraction or '0').ljust(3, '0')[:3]) * 1000:06d}"


def hipchat_datetime(moment: datetime | None) -> str | None:
    """A user's or room's ``created`` (MariaDB holds naive UTC)."""
    if moment is None:
        return None
    return moment.replace(tzinfo=timezone.utc, microsecond=0).isoformat()


def export_timestamp(record: dict) -> str:
    """The timestamp to write: the one it was imported with (microseconds), else the record's."""
    return record.get("hipchat_timestamp") or hipchat_timestamp(record["timestamp"])


def export_id(record: dict) -> str:
    """The message id to write: the HipChat id it was imported with, else the appliance's own (a ULID)."""
    return record.get("hipchat_id") or record["id"]


@dataclass
class ExportResult:
    """What an export wrote, for the summary."""

    destination: str
    users: int = 0
    rooms: int = 0
    room_messages: int = 0
    notifications: int = 0
    private_messages: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> messages not written
    seconds: float = 0.0

    @property
    def messages(self) -> int:
        return self.room_messages + self.notifications + self.private_messages


class _JsonArrays:
    """JSON arrays written item by item into many files, each opened only while a month is written."""

    def __init__(self):
        self.counts: dict[str, int] = {}
        self._open: dict[str, object] = {}

    def start(self, path: str) -> None:
        """Make ``path`` an (empty so far) array."""
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write("[")
        self.counts[path] = 0

    def add(self, path: str, item: dict) -> None:
        f = self._open.get(path)
        if f is None:
            f = self._open[path] = open(path, "a", encoding="utf-8")
        f.write(("\n" if self.counts[path] == 0 else ",\n") + json.dumps(item, ensure_ascii=False))
        self.counts[path] += 1

    def flush(self) -> None:
        for f in self._open.values():
            f.close()
        self._open.clear()

    def finish(self) -> None:
        self.flush()
        for path, count in self.counts.items():
            with open(path, "a", encoding="utf-8") as f:
                f.write("\n]\n" if count else "]\n")


class GroupExport:
    """Writes the export of the rooms and users selected (all by default) into a directory; see the module docstring.

    ``rooms`` are room names, ``users`` usernames. With a room selection and
    no user selection, the users written are those the rooms' history and
    memberships name; with a user selection and no room selection, no rooms.
    """

    def __init__(self, chat_server, *, rooms: list[str] | None = None, users: list[str] | None = None):
        config = chat_server.get_config()
        self.engine = chat_server.get_database_engine()
        self.client = chat_server.get_opensearch_client()
        self.index = MessageIndex(self.client, config.archive.index_prefix)
        self.domain = config.server.domain
        self.room_domain = f"{config.rooms.service}.{config.server.domain}"
        self.room_names = rooms
        self.usernames = users

    # MariaDB: who and which rooms.
    def _directory(self):
        def work(connection):
            all_users = [dict(r) for r in connection.execute(select(users).order_by(users.c.id)).mappings()]
            all_rooms = [dict(r) for r in connection.execute(select(rooms).where(rooms.c.is_locked.is_(False)).order_by(rooms.c.id)).mappings()]
            members = [dict(r) for r in connection.execute(select(room_members)).mappings()]
            return all_users, all_rooms, members

        return run_in_transaction(self.engine, "read_hipchat_export_directory", work)

    def _select(self, all_users, all_rooms):
        if self.room_names is not None:
            wanted = set(self.room_names)
            chosen_rooms = [r for r in all_rooms if r["name"] in wanted or r["jid_node"] in wanted]
            missing = wanted - {r["name"] for r in chosen_rooms} - {r["jid_node"] for r in chosen_rooms}
            if missing:
                raise LookupError(f"no room named {', '.join(sorted(missing))}")
        else:
            chosen_rooms = [] if self.usernames is not None else all_rooms
        if self.usernames is not None:
            wanted = set(self.usernames)
            chosen_users = [u for u in all_users if u["username"] in wanted]
            missing = wanted - {u["username"] for u in chosen_users}
            if missing:
                raise LookupError(f"no user named {', '.join(sorted(missing))}")
        elif self.room_names is None:
            chosen_users = all_users  # everything
        else:
            chosen_users = None  # decided once the rooms' history is read
        return chosen_rooms, chosen_users

    def run(self, destination: str, progress=None) -> ExportResult:
        """Write the export into the directory ``destination`` (created; must be empty or absent)."""
        started = time.monotonic()
        if os.path.isdir(destination) and os.listdir(destination):
            raise FileExistsError(f"{destination} is not empty; choose a new directory")
        os.makedirs(destination, mode=0o700, exist_ok=True)
        result = ExportResult(destination)
        all_users, all_rooms, members = self._directory()
        chosen_rooms, chosen_users = self._select(all_users, all_rooms)
        by_id = {u["id"]: u for u in all_users}
        by_jid = {f"{u['username']}@{self.domain}": u for u in all_users}
        by_mention = {u["mention_name"].lower(): u for u in all_users}
        room_by_jid = {f"{r['jid_node']}@{self.room_domain}": r for r in chosen_rooms}
        named: set[int] = set()  # users the written history and memberships name
        for m in members:
            if any(r["id"] == m["room_id"] for r in chosen_rooms) and m["affiliation"] != "outcast":
                named.add(m["user_id"])

        arrays = _JsonArrays()
        for room in chosen_rooms:
            arrays.start(os.path.join(destination, "rooms", str(room["id"]), HISTORY_FILE))
        selected_ids = {u["id"] for u in chosen_users} if chosen_users is not None else set()
        for user_id in sorted(selected_ids):
            arrays.start(os.path.join(destination, "users", str(user_id), HISTORY_FILE))

        if self.room_names is None and self.usernames is None:
            query = {"match_all": {}}
        else:
            query = self._history_query(list(room_by_jid), [f"{by_id[i]['username']}@{self.domain}" for i in selected_ids])
        months = self.index.month_indices() if query is not None else []
        task = progress.add_task("history, month by month", total=len(months)) if progress else None
        for name in months:
            for record in self._records(name, query):
                if record.get("deleted"):
                    result.skipped["deleted in the appliance"] = result.skipped.get("deleted in the appliance", 0) + 1
                    continue
                if record.get("room"):
                    room = room_by_jid.get(record["room"])
                    if room is None:
                        continue
                    item = self._room_item(record, by_jid, by_mention)
                    sender = by_jid.get(record.get("sender"))
                    if sender is not None:
                        named.add(sender["id"])
                    arrays.add(os.path.join(destination, "rooms", str(room["id"]), HISTORY_FILE), item)
                    if "NotificationMessage" in item:
                        result.notifications += 1
                    else:
                        result.room_messages += 1
                else:
                    sender, receiver = by_jid.get(record.get("sender")), by_jid.get(record.get("recipient"))
                    if sender is None or receiver is None:
                        result.skipped["one-to-one with an unknown user"] = result.skipped.get("one-to-one with an unknown user", 0) + 1
                        continue
                    item = {"PrivateUserMessage": self._private_item(record, sender, receiver)}
                    for person in {sender["id"], receiver["id"]} & selected_ids:
                        arrays.add(os.path.join(destination, "users", str(person), HISTORY_FILE), item)
                    result.private_messages += 1
            arrays.flush()
            if progress:
                progress.update(task, advance=1, description=f"history: {name}")
        arrays.finish()

        written_users = chosen_users if chosen_users is not None else [u for u in all_users if u["id"] in named]
        memberships = {}
        for m in members:
            memberships.setdefault(m["room_id"], []).append(m)
        _write_json(os.path.join(destination, USERS_FILE), [{"User": self._user_item(u, members)} for u in written_users])
        _write_json(os.path.join(destination, ROOMS_FILE), [{"Room": self._room_entry(r, memberships.get(r["id"], []))} for r in chosen_rooms])
        result.users, result.rooms = len(written_users), len(chosen_rooms)
        result.seconds = time.monotonic() - started
        return result

    # OpenSearch: the history, in time order.
    def _history_query(self, room_jids: list[str], user_jids: list[str]) -> dict | None:
        should = []
        if room_jids:
            should.append({"terms": {"room": room_jids}})
        if user_jids:
            should.append({"bool": {"filter": [{"exists": {"field": "conversation"}}, {"terms": {"participants": user_jids}}]}})
        return {"bool": {"should": should, "minimum_should_match": 1}} if should else None

    def _records(self, index: str, query: dict):
        """Every record of ``index`` that ``query`` matches, oldest first (search_after pages: no scroll context left behind)."""
        after = None
        while True:
            body = {"query": query, "sort": [{"timestamp": "asc"}, {"id": "asc"}], "size": SEARCH_PAGE, "track_total_hits": False}
            if after is not None:
                body["search_after"] = after
            hits = self.client.search(index=index, body=body, request_timeout=SEARCH_TIMEOUT_SECONDS)["hits"]["hits"]
            for hit in hits:
                yield hit["_source"]
            if len(hits) < SEARCH_PAGE:
                return
            after = hits[-1]["sort"]

    # One item each.
    def _person(self, user: dict) -> dict:
        return {"id": user["id"], "name": user["name"], "mention_name": user["mention_name"]}

    def _room_item(self, record: dict, by_jid: dict, by_mention: dict) -> dict:
        mentions = [by_mention[n.lower()]["id"] for n in mention_names(record.get("body", "")) if n.lower() in by_mention]
        notification = record.get("notification")
        if notification:
            return {
                "NotificationMessage": {
                    "id": export_id(record),
                    "sender": notification.get("from") or record.get("sender_name") or "",
                    "message": record.get("html") if record.get("html") is not None else record.get("body", ""),
                    "message_format": notification.get("message_format", "text"),
                    "color": notification.get("color", "yellow"),
                    "notify": bool(notification.get("notify")),
                    "timestamp": export_timestamp(record),
                    "attachment": None,
                    "mentions": mentions,
                }
            }
        sender = by_jid.get(record.get("sender"))
        person = self._person(sender) if sender else {"id": 0, "name": record.get("sender_name") or "", "mention_name": ""}
        return {
            "UserMessage": {
                "id": export_id(record),
                "sender": person,
                "message": record.get("body", ""),
                "timestamp": export_timestamp(record),
                "attachment": None,
                "mentions": mentions,
            }
        }

    def _private_item(self, record: dict, sender: dict, receiver: dict) -> dict:
        return {
            "id": export_id(record),
            "sender": self._person(sender),
            "receiver": self._person(receiver),
            "message": record.get("body", ""),
            "timestamp": export_timestamp(record),
            "attachment": None,
        }

    def _user_item(self, user: dict, members: list[dict]) -> dict:
        account_type = "admin" if user["is_admin"] else "guest" if user["is_guest"] else "user"
        return {
            "id": user["id"],
            "name": user["name"],
            "mention_name": user["mention_name"],
            "email": user["email"],
            "title": user["title"] or "",
            "timezone": user["timezone"] or "UTC",
            "account_type": account_type,
            "is_group_admin": bool(user["is_admin"]),
            "is_deleted": user["deleted_at"] is not None or not user["is_active"],
            "created": hipchat_datetime(user["created_at"]),
            "rooms": sorted(m["room_id"] for m in members if m["user_id"] == user["id"] and m["affiliation"] != "outcast"),
            "avatar": None,
            "roles": ["admin", "user"] if user["is_admin"] else ["user"],
        }

    def _room_entry(self, room: dict, members: list[dict]) -> dict:
        return {
            "id": room["id"],
            "name": room["name"],
            "topic": room["topic"] or "",
            "privacy": room["privacy"],
            "owner": room["owner_id"],
            "members": sorted(m["user_id"] for m in members if m["affiliation"] in ("owner", "admin", "member")),
            "room_admins": sorted(m["user_id"] for m in members if m["affiliation"] in ("owner", "admin")),
            "participants": [],  # who is in the room now: not history
            "created": hipchat_datetime(room["created_at"]),
            "is_archived": bool(room["is_archived"]),
            "guest_access_url": None,  # a link to the running server, meaningless elsewhere
        }


def _write_json(path: str, value) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, ensure_ascii=False, indent=1)
        f.write("\n")


def export_group(chat_server, destination: str, *, rooms=None, users=None, progress=None) -> ExportResult:
    """Export into ``destination``: a directory, or (ending in ``.tar.gz``) one compressed tar of it."""
    exporter = GroupExport(chat_server, rooms=rooms, users=users)
    if not destination.endswith(".tar.gz"):
        return exporter.run(destination, progress)
    if os.path.exists(destination):
        raise FileExistsError(f"{destination} exists; choose a new file name")
    parent = os.path.dirname(os.path.abspath(destination))
    with tempfile.TemporaryDirectory(prefix=".hipchat-export-", dir=parent) as work:
        result = exporter.run(os.path.join(work, "export"), progress)
        partial = destination + ".partial"
        with tarfile.open(partial, "w:gz") as tar:
            for name in sorted(os.listdir(os.path.join(work, "export"))):
                tar.add(os.path.join(work, "export", name), arcname=name)
        os.chmod(partial, 0o600)  # e-mail addresses and every message: for root's eyes only
        os.replace(partial, destination)
    result.destination = destination
    return result

