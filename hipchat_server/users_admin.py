"""Administering users and groups (the console's and the CLI's): list and search, create, edit, deactivate,
reset passwords, import from CSV, and groups with their members.

Every change is written to the audit log (`audit.record`) with the admin who
made it. Deactivating an account (console, ``user deactivate`` and ``user
disable``) or deleting it (``DELETE /v2/user/<id>``, through `session_closer`)
ends its sessions at once: its browser
sessions (`web.sessions.WebSessions.end_user`) and each of its XMPP streams,
on whichever front end holds it (an ``end_session`` item on that front end's
channel, which `end_session_handler` acts on: a ``<not-authorized/>`` stream
error, so the client does not silently reconnect). A password reset ends the
browser sessions too.

Blocking (MariaDB, Redis, password hashing): call from a thread.
"""

from __future__ import annotations

import csv
import io
import json
import secrets
from dataclasses import dataclass, field

from hipchat_server import audit
from hipchat_server import users as accounts
from hipchat_server.storage.groups import GroupExists
from hipchat_server.storage.sessions import SessionDirectory
from hipchat_server.storage.users import DuplicateKeyError

END_SESSION = "end_session"
#: Columns of an import file (a header row names them; ``password``, ``groups`` and ``admin`` may be left out).
CSV_COLUMNS = ("username", "name", "email", "password", "groups", "admin")
CSV_REQUIRED = ("username", "name", "email")
MAX_IMPORT_ROWS = 5000
GROUP_NAME_MAX = 100


class AdminError(ValueError):
    """A change refused; the message says why, naming the value."""


@dataclass
class ImportRow:
    """One data line of an import file: its line number, its values, and what is wrong with it (empty: importable)."""

    line: int
    username: str = ""
    name: str = ""
    email: str = ""
    password: str = ""
    groups: list[str] = field(default_factory=list)
    admin: bool = False
    errors: list[str] = field(default_factory=list)
    outcome: str = ""  # after the import: "created", or the error
    generated_password: str = ""  # shown once when the file gave none


def generate_password() -> str:
    return secrets.token_urlsafe(12)


class SessionCloser:
    """Ends a user's XMPP streams on every front end (through Redis) and their browser sessions."""

    def __init__(self, redis_primary, web_sessions, domain: str):
        self.redis_primary, self.web_sessions, self.domain = redis_primary, web_sessions, domain

    def close(self, username: str, reason: str) -> dict:
        """End every session of ``username``; answers how many browser sessions and XMPP streams were told."""
        bare = f"{username}@{self.domain}"
        directory = SessionDirectory(self.redis_primary(), "console")
        told = 0
        for resource, frontend in directory.resources(bare).items():
            told += directory.publish(frontend, json.dumps({"kind": END_SESSION, "to": f"{bare}/{resource}", "reason": reason})) > 0
        web = self.web_sessions.end_user(username) if self.web_sessions is not None else 0
        return {"web_sessions": web, "xmpp_streams": told}


def end_session_handler(sessions):
    """The front end's handler of ``end_session`` items: close that stream with ``<not-authorized/>``.

    ``sessions`` is the front end's `xmpp.bind.SessionTable`; a stream that
    lost its connection and waits to be resumed (XEP-0198) ends too.
    """
    from hipchat_server.xmpp.jid import parse_jid

    def handle(item: dict) -> None:
        connection = sessions.get(parse_jid(item["to"]))
        if connection is not None:
            connection.send_stream_error("not-authorized", item.get("reason") or "this session was ended by an administrator")

    return handle


class UsersAdmin:
    """Users and groups for administrators. ``closer`` is a `SessionCloser` (None: sessions are not ended)."""

    def __init__(self, user_store, search_store, group_store, closer=None):
        self.users, self.search_store, self.groups, self.closer = user_store, search_store, group_store, closer

    # Reading.
    def search(self, text: str = "", *, include_inactive: bool = True, start: int = 0, limit: int = 50):
        return self.search_store.search(text.strip(), include_inactive=include_inactive, start=start, limit=limit)

    def get(self, username: str) -> dict:
        row = self.users.get_by_username(username)
        if row is None or row.get("deleted_at") is not None:
            raise AdminError(f"no user {username!r}")
        row = dict(row)
        row["groups"] = self.groups.groups_of(row["id"])
        return row

    def all_groups(self) -> list[dict]:
        return self.groups.all()

    # Changing users.
    def create(self, actor: str, username: str, name: str, email: str, password: str = "", *, is_admin=False, group_ids=()) -> tuple[dict, str]:
        """Create an active user; answers it and the password (generated when none is given: shown once)."""
        password = password or generate_password()
        try:
            user = accounts.create_user(self.users, username.strip(), name.strip(), email.strip(), password, is_admin=bool(is_admin))
        except accounts.UserError as e:
            raise AdminError(str(e)) from None
        if group_ids:
            self.groups.set_groups_of(user.id, group_ids)
        audit.record(actor, "user.create", user.username, {"email": user.email, "admin": user.is_admin, "groups": sorted(map(int, group_ids))})
        return user.to_dict(), password

    def update(self, actor: str, username: str, *, name: str, email: str, is_admin: bool, group_ids=()) -> dict:
        """Change a user's name, e-mail, admin flag and groups. A demoted admin's browser sessions end."""
        row = self.get(username)
        try:
            values = {"name": accounts.validate_name(name.strip()), "email": accounts.validate_email(email.strip()), "is_admin": bool(is_admin)}
        except accounts.UserError as e:
            raise AdminError(str(e)) from None
        try:
            self.users.update_fields(row["id"], **values)
        except DuplicateKeyError as e:
            raise AdminError(f"{e.column} {values.get(e.column, '')!r} is taken by another user") from None
        self.groups.set_groups_of(row["id"], group_ids)
        changes = {k: v for k, v in values.items() if row.get(k) != v}
        before = sorted(g["id"] for g in row["groups"])
        if before != sorted({int(g) for g in group_ids}):
            changes["groups"] = sorted({int(g) for g in group_ids})
        if row["is_admin"] and not is_admin and self.closer is not None and self.closer.web_sessions is not None:
            self.closer.web_sessions.end_user(username)  # its console sessions were opened as an admin
        audit.record(actor, "user.update", username, changes)
        return changes

    def deactivate(self, actor: str, username: str) -> dict:
        """Stop ``username`` from logging in and end every session it has now.

        Answers what was ended (``web_sessions``, ``xmpp_streams``) and whether
        the account was active until now (``changed``); the sessions of an
        account disabled already are ended all the same.
        """
        if username == actor:
            raise AdminError("you cannot deactivate your own account")
        try:
            changed = accounts.disable_user(self.users, username)
        except accounts.UserError as e:
            raise AdminError(str(e)) from None
        ended = self.closer.close(username, "this account was deactivated") if self.closer is not None else {}
        audit.record(actor, "user.deactivate", username, dict(ended, changed=changed))
        return dict(ended, changed=changed)

    def activate(self, actor: str, username: str) -> bool:
        try:
            changed = accounts.enable_user(self.users, username)
        except accounts.UserError as e:
            raise AdminError(str(e)) from None
        audit.record(actor, "user.activate", username, {"changed": changed})
        return changed

    def reset_password(self, actor: str, username: str, password: str = "") -> str:
        """Give ``username`` a new password (generated when none is given); its browser sessions end. Answers it."""
        generated, password = not password, password or generate_password()
        try:
            accounts.set_password(self.users, username, password)
        except accounts.UserError as e:
            raise AdminError(str(e)) from None
        if self.closer is not None and self.closer.web_sessions is not None:
            self.closer.web_sessions.end_user(username)
        audit.record(actor, "user.reset_password", username, {"generated": generated})
        return password

    # Groups.
    def create_group(self, actor: str, name: str) -> int:
        name = (name or "").strip()
        if not name or len(name) > GROUP_NAME_MAX:
            raise AdminError(f"a group name is 1 to {GROUP_NAME_MAX} characters")
        try:
            group_id = self.groups.create(name)
        except GroupExists:
            raise AdminError(f"a group named {name!r} exists already") from None
        audit.record(actor, "group.create", name, {"id": group_id})
        return group_id

    def delete_group(self, actor: str, group_id: int) -> None:
        group = self.groups.get(group_id)
        if group is None:
            raise AdminError(f"no group {group_id}")
        self.groups.delete(group_id)
        audit.record(actor, "group.delete", group["name"], {"id": group_id})

    def group_members(self, group_id: int) -> tuple[dict, list[dict]]:
        group = self.groups.get(group_id)
        if group is None:
            raise AdminError(f"no group {group_id}")
        return group, self.groups.members(group_id)

    def add_to_group(self, actor: str, group_id: int, username: str) -> None:
        group, _ = self.group_members(group_id)
        row = self.get(username.strip())
        if self.groups.add_member(group_id, row["id"]):
            audit.record(actor, "group.add_member", group["name"], {"user": row["username"]})

    def remove_from_group(self, actor: str, group_id: int, username: str) -> None:
        group, _ = self.group_members(group_id)
        row = self.get(username)
        if self.groups.remove_member(group_id, row["id"]):
            audit.record(actor, "group.remove_member", group["name"], {"user": row["username"]})

    # CSV import.
    def preview_import(self, text: str) -> list[ImportRow]:
        """Every data line of a CSV (header row first) with what is wrong with it; nothing is written."""
        reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
        header = [h.strip().lower() for h in (reader.fieldnames or [])]
        missing = [c for c in CSV_REQUIRED if c not in header]
        if missing:
            raise AdminError(f"the first line must name the columns; missing: {', '.join(missing)} (columns: {', '.join(CSV_COLUMNS)})")
        unknown = [h for h in header if h not in CSV_COLUMNS]
        if unknown:
            raise AdminError(f"unknown column(s) {', '.join(unknown)}; the columns are {', '.join(CSV_COLUMNS)}")
        reader.fieldnames = header
        groups = {g["name"]: g["id"] for g in self.groups.all()}
        rows, seen_usernames, seen_emails = [], set(), set()
        for values in reader:
            if len(rows) >= MAX_IMPORT_ROWS:
                raise AdminError(f"at most {MAX_IMPORT_ROWS} users per file")
            values = {k: (v or "").strip() for k, v in values.items() if k}
            if not any(values.values()):
                continue
            row = ImportRow(
                line=reader.line_num,
                username=values.get("username", ""),
                name=values.get("name", ""),
                email=values.get("email", ""),
                password=values.get("password", ""),
                groups=[g.strip() for g in values.get("groups", "").split(";") if g.strip()],
                admin=values.get("admin", "").lower() in ("1", "yes", "true", "y"),
            )
            valid = {}
            for key, check, value in (("username", accounts.validate_username, row.username), ("name", accounts.validate_name, row.name), ("email", accounts.validate_email, row.email)):
                try:
                    check(value)
                    valid[key] = True
                except accounts.UserError as e:
                    row.errors.append(str(e))
            if row.password:
                try:
                    accounts.validate_password(row.password)
                except accounts.UserError as e:
                    row.errors.append(str(e))
            if row.username in seen_usernames:
                row.errors.append(f"username {row.username!r} appears twice in the file")
            if row.email.lower() in seen_emails:
                row.errors.append(f"email {row.email!r} appears twice in the file")
            seen_usernames.add(row.username)
            seen_emails.add(row.email.lower())
            if valid.get("username") and self.users.get_by_username(row.username) is not None:
                row.errors.append(f"username {row.username!r} is taken by another user")
            other = self.users.get_by_email(row.email) if valid.get("email") else None
            if other is not None:
                row.errors.append(f"email {row.email!r} is already used by user {other['username']!r}")
            for name in row.groups:
                if name not in groups:
                    row.errors.append(f"no group {name!r} (create it first)")
            rows.append(row)
        return rows

    def run_import(self, actor: str, text: str) -> list[ImportRow]:
        """Create every error-free row of the file (rows with errors are skipped); each row says what happened."""
        rows = self.preview_import(text)
        groups = {g["name"]: g["id"] for g in self.groups.all()}
        created = 0
        for row in rows:
            if row.errors:
                row.outcome = "skipped: " + "; ".join(row.errors)
                continue
            try:
                password = row.password or generate_password()
                user = accounts.create_user(self.users, row.username, row.name, row.email, password, is_admin=row.admin)
                if row.groups:
                    self.groups.set_groups_of(user.id, [groups[g] for g in row.groups])
                row.outcome, row.generated_password = "created", "" if row.password else password
                created += 1
            except accounts.UserError as e:  # someone made the same user since the preview
                row.outcome = f"failed: {e}"
        audit.record(actor, "user.import", f"{created} users", {"created": created, "lines": len(rows)})
        return rows


def users_admin(chat_server, web_sessions=None) -> UsersAdmin:
    """The `UsersAdmin` over ``chat_server``'s stores; ``web_sessions`` ends browser sessions."""
    from hipchat_server.storage.groups import GroupStore
    from hipchat_server.storage.users import UserStore
    from hipchat_server.storage.users_admin import UserSearchStore

    engine = chat_server.get_database_engine()
    audit.for_server(chat_server)
    return UsersAdmin(UserStore(engine), UserSearchStore(engine), GroupStore(engine), session_closer(chat_server, web_sessions))


def session_closer(chat_server, web_sessions=None) -> SessionCloser:
    """The `SessionCloser` over ``chat_server``'s Redis; ``web_sessions`` ends browser sessions (None: only XMPP streams)."""
    return SessionCloser(chat_server.get_redis_primary, web_sessions, chat_server.get_config().server.domain)
