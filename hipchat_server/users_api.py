"""Users as the REST API v2 sees them: HipChat's user objects, the user directory, private messages and their history.

`UserDirectory` lists, finds (by id, e-mail or ``@mention``), creates,
updates and deletes users over `storage.users.UserStore`, with the same
validation as the CLI (`users`). Deleting keeps the row (history still
names its sender), stops the account from logging in, as HipChat does, and
ends its open sessions at once (`users_admin.SessionCloser`, the console's).

`PrivateMessages` sends a one-to-one message from the caller to a user the
way a client's message is routed: archived first (spool, recent lists),
then handed to each of the recipient's available sessions on whichever
front end holds it (a ``deliver`` item on that front end's channel), or
stored offline when none is available or no front end took it.

Every blocking store call runs through ``run_database``; methods return Deferreds.
"""

from __future__ import annotations

import datetime
import json
import re
import secrets
from dataclasses import dataclass

from twisted.internet import defer
from twisted.logger import Logger
from twisted.words.xish import domish

from hipchat_server import users as accounts
from hipchat_server.storage.sessions import SessionDirectory
from hipchat_server.storage.users import DuplicateKeyError
from hipchat_server.xmpp.stanzas import stanza_from_xml
from hipchat_server.xmpp.xml_parser import CLIENT_NS


class Refused(Exception):
    """A request the domain refuses; ``status`` is the HTTP status the API answers with (400, 403, 404, 409)."""

    status = 400

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class Invalid(Refused):
    status = 400


class Forbidden(Refused):
    status = 403


class NotFound(Refused):
    status = 404


class Conflict(Refused):
    status = 409


MENTION_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,50}")
TITLE_MAX_LENGTH = 50


@dataclass(frozen=True)
class Caller:
    """Who asks (the part of the API's caller the domain needs): a user, or a room's notification token."""

    username: str | None
    is_admin: bool = False
    room_id: int | None = None

    @classmethod
    def of(cls, caller) -> "Caller":
        """From the API framework's caller (any object with ``username``, ``is_admin``, ``room_id``)."""
        if isinstance(caller, cls):
            return caller
        return cls(getattr(caller, "username", None), bool(getattr(caller, "is_admin", False)), getattr(caller, "room_id", None))


def user_view(row: dict, domain: str) -> dict:
    """A users row as the fields of HipChat's user object (the API adds links)."""
    return {
        "id": row["id"],
        "name": row["name"],
        "mention_name": row["mention_name"],
        "email": row["email"],
        "title": row.get("title") or "",
        "timezone": row.get("timezone") or "UTC",
        "is_group_admin": bool(row.get("is_admin")),
        "is_guest": bool(row.get("is_guest")),
        "is_deleted": row.get("deleted_at") is not None,
        "created": _iso(row.get("created_at")),
        "last_active": None,
        "xmpp_jid": f"{row['username']}@{domain}",
        "username": row["username"],
    }


# XMPP <show/> values are HipChat's; a plain available presence is shown as "chat" (free to talk).
PRESENCE_SHOWS = ("away", "chat", "dnd", "xa")


def presence_view(available: dict[str, tuple[int, str]]) -> dict:
    """HipChat's presence object from a user's available resources (`PresenceStore.available`).

    The highest-priority resource speaks for the user, as XMPP routing would
    pick it; a user with no available resource is offline.
    """
    if not available:
        return {"status": None, "idle": None, "show": None, "client": None, "is_online": False}
    _, xml = max(available.values(), key=lambda entry: entry[0])
    stanza = stanza_from_xml(xml)
    show = _child_text(stanza, "show")
    return {
        "status": _child_text(stanza, "status"),
        "idle": None,
        "show": show if show in PRESENCE_SHOWS else "chat",
        "client": None,
        "is_online": True,
    }


def _child_text(stanza, name: str) -> str | None:
    for child in stanza.elements():
        if child.name == name:
            return str(child) or None
    return None


def _iso_ms(epoch_ms: int | None) -> str | None:
    if epoch_ms is None:
        return None
    return _iso(datetime.datetime.fromtimestamp(epoch_ms / 1000, tz=datetime.timezone.utc))


def _iso(moment) -> str | None:
    return moment.strftime("%Y-%m-%dT%H:%M:%S+00:00") if moment is not None else None


def username_from(mention_name: str | None, email: str) -> str:
    """An XMPP localpart for a new API user: the mention name, else the e-mail's local part, made valid."""
    base = (mention_name or email.split("@", 1)[0]).lower()
    base = re.sub(r"[^a-z0-9._-]+", "-", base).strip("-.") or "user"
    return base[:56]


class UserDirectory:
    """Users for the REST API over ``store`` (a `storage.users.UserStore`); see the module docstring."""

    log = Logger()

    def __init__(self, store, *, domain: str, run_database, presences=None, closer=None):
        self.store, self.domain, self.run_database = store, domain, run_database
        self.presences = presences  # a storage.presence.PresenceStore; None: presence unknown
        self.closer = closer  # a users_admin.SessionCloser; None: sessions are not ended

    def presence(self, username: str) -> defer.Deferred:
        """``{"presence": ..., "last_active": ...}`` of ``username`` for its user object (both None when unknown)."""
        if self.presences is None:
            return defer.succeed({"presence": None, "last_active": None})
        d = self.run_database(self.presences.available_and_last_active, f"{username}@{self.domain}")
        d.addCallback(lambda found: {"presence": presence_view(found[0]), "last_active": _iso_ms(found[1])})
        return d.addErrback(self._presence_unknown, username)

    def _presence_unknown(self, failure, username: str) -> dict:
        # Redis failing over: the user object is still worth answering, without presence.
        self.log.warn("presence of {user} unknown: {error}", user=username, error=failure.getErrorMessage())
        return {"presence": None, "last_active": None}

    # Reading.
    def page(self, *, include_guests: bool, include_deleted: bool, start: int, limit: int) -> defer.Deferred:
        """``(rows, total)`` of the user list, by name."""
        return self.run_database(lambda: self.store.page(include_guests=include_guests, include_deleted=include_deleted, start=start, limit=limit))

    def find(self, id_email_or_mention: str, *, include_deleted: bool = False) -> defer.Deferred:
        """The users row named by id, e-mail or ``@mention``; NotFound otherwise."""
        return self.run_database(self._find, id_email_or_mention, include_deleted)

    def _find(self, key: str, include_deleted: bool = False) -> dict:
        if key.isascii() and key.isdigit() and len(key) < 10:  # an id (INT), not "¹" or a huge number
            row = self.store.get_by_id(int(key))
        elif key.startswith("@"):
            row = self.store.get_by_mention_name(key[1:])
        elif "@" in key:
            row = self.store.get_by_email(key)
        else:
            row = self.store.get_by_username(key)
        if row is None or (row.get("deleted_at") is not None and not include_deleted):
            raise NotFound(f"no user {key[:100]!r}")
        return row

    # Changing (group administrators: the API checks the admin_group scope).
    def create(self, fields: dict) -> defer.Deferred:
        """Create a user from HipChat's fields (name, email, mention_name, title, is_group_admin, timezone, password); fires with its row."""
        return self.run_database(self._create, fields)

    def _create(self, fields: dict) -> dict:
        name, email = fields.get("name"), fields.get("email")
        if not isinstance(name, str) or not isinstance(email, str):
            raise Invalid("name and email are required strings")
        mention = fields.get("mention_name") or None
        if mention is not None:
            self._check_mention(mention)
        password = fields.get("password") or secrets.token_urlsafe(18)  # HipChat invites by e-mail; here an admin sets it later
        base = username_from(mention, email)
        username, n = base, 1
        while self.store.get_by_username(username) is not None:
            n += 1
            username = f"{base}-{n}"
        try:
            user = accounts.create_user(self.store, username, name, email, password, is_admin=bool(fields.get("is_group_admin")))
        except accounts.UserError as e:
            raise (Conflict if "taken" in str(e) or "already used" in str(e) else Invalid)(str(e)) from None
        extra = {}
        if mention is not None and mention != username:
            extra["mention_name"] = mention
        for key, limit in (("title", TITLE_MAX_LENGTH), ("timezone", 64)):
            value = fields.get(key)
            if value:
                if not isinstance(value, str) or len(value) > limit:
                    raise Invalid(f"{key}: expected a string of at most {limit} characters")
                extra[key] = value
        if extra:
            self._update_columns(user.id, extra)
        self.log.info("created user {username} through the API", username=username)
        return self.store.get_by_id(user.id)

    def update(self, key: str, fields: dict) -> defer.Deferred:
        """Change a user's name, email, mention_name, title, timezone, is_group_admin or password."""
        return self.run_database(self._update, key, fields)

    def _update(self, key: str, fields: dict) -> None:
        row = self._find(key)
        values = {}
        try:
            if "name" in fields:
                values["name"] = accounts.validate_name(_text(fields, "name"))
            if "email" in fields:
                values["email"] = accounts.validate_email(_text(fields, "email"))
            if "mention_name" in fields:
                values["mention_name"] = self._check_mention(_text(fields, "mention_name"))
            for name, limit in (("title", TITLE_MAX_LENGTH), ("timezone", 64)):
                if name in fields and fields[name] is not None:
                    value = _text(fields, name)
                    if len(value) > limit:
                        raise Invalid(f"{name}: at most {limit} characters")
                    values[name] = value
            if "is_group_admin" in fields:
                values["is_admin"] = bool(fields["is_group_admin"])
            if values:
                self._update_columns(row["id"], values)
            if fields.get("password"):
                accounts.set_password(self.store, row["username"], fields["password"])
        except accounts.UserError as e:
            raise Invalid(str(e)) from None

    def delete(self, key: str) -> defer.Deferred:
        return self.run_database(self._delete, key)

    def _delete(self, key: str) -> None:
        row = self._find(key)
        self.store.mark_deleted(row["id"])
        ended = self.closer.close(row["username"], "this account was deleted") if self.closer is not None else {}
        self.log.info("deleted user {username} through the API; ended {ended}", username=row["username"], ended=ended)

    def _update_columns(self, user_id: int, values: dict) -> None:
        try:
            self.store.update_fields(user_id, **values)
        except DuplicateKeyError as e:
            raise Conflict(f"{e.column.replace('_', ' ')} is taken by another user") from None

    @staticmethod
    def _check_mention(mention) -> str:
        if not isinstance(mention, str) or not MENTION_PATTERN.fullmatch(mention):
            raise Invalid("mention_name: 1 to 50 letters, digits, '.', '_' or '-'")
        return mention


def _text(fields: dict, name: str) -> str:
    value = fields[name]
    if not isinstance(value, str):
        raise Invalid(f"{name}: expected a string")
    return value


class UserDelivery:
    """Hands a stanza to a user's available sessions on any front end, or keeps it offline (XEP-0160).

    ``writer`` is the process's ordered Redis writer (session lookups and
    publishes), ``offline`` a `storage.offline.OfflineStore`.
    """

    log = Logger()

    def __init__(self, writer, offline, *, run_database):
        self.writer, self.offline, self.run_database = writer, offline, run_database

    @defer.inlineCallbacks
    def deliver(self, bare: str, stanza: domish.Element):
        """"delivered" (some front end took it) or "stored" (offline); ``stanza`` has no ``to`` yet."""
        replies = yield self.writer.submit(lambda pipe: SessionDirectory.lookup_commands(pipe, [bare]))
        [sessions] = SessionDirectory.lookups_from(replies)
        taken = 0
        for resource in sessions.available():
            stanza["to"] = f"{bare}/{resource}"
            item = {"kind": "deliver", "to": stanza["to"], "xml": stanza.toXml(defaultUri=CLIENT_NS)}
            taken += (yield self.writer.publish(SessionDirectory.channel_of(sessions.frontends[resource]), json.dumps(item))) > 0
        if taken:
            return "delivered"
        stanza["to"] = bare
        outcome = yield self.run_database(self.offline.store, bare.partition("@")[0], stanza.getAttribute("from", ""), stanza.toXml(defaultUri=CLIENT_NS))
        if outcome != "stored":
            self.log.warn("offline storage of {bare} refused a message ({outcome})", bare=bare, outcome=outcome)
        return "stored"


class PrivateMessages:
    """One-to-one messages sent through the API; see the module docstring."""

    def __init__(self, archive, delivery: UserDelivery, *, domain: str):
        self.archive, self.delivery, self.domain = archive, delivery, domain

    @defer.inlineCallbacks
    def send(self, sender: str, recipient: str, message: str):
        """Send ``message`` from user ``sender`` to user ``recipient`` (usernames); fires with the archive record once delivered or stored."""
        if not isinstance(message, str) or not message.strip():
            raise Invalid("message: expected a non-empty string")
        if len(message) > 10_000:
            raise Invalid("message: at most 10000 characters")
        frm, to = f"{sender}@{self.domain}", f"{recipient}@{self.domain}"
        stanza = domish.Element((CLIENT_NS, "message"))
        stanza["from"], stanza["type"] = f"{frm}/api", "chat"
        stanza.addElement("body", content=message)
        record = self.archive.new_record(stanza, type="chat", sender=frm, body=message, recipient=to)
        yield self.archive.store(record)  # durable before delivery, like any one-to-one message
        yield self.delivery.deliver(to, stanza)
        return record


def user_delivery(chat_server) -> UserDelivery:
    from twisted.internet import threads

    from hipchat_server.storage.offline import OfflineStore

    return UserDelivery(
        chat_server.get_room_poster().writer, OfflineStore(chat_server.get_database_engine()), run_database=threads.deferToThread
    )


def user_directory(chat_server) -> UserDirectory:
    from twisted.internet import threads

    from hipchat_server.storage.presence import PresenceStore
    from hipchat_server.storage.users import UserStore
    from hipchat_server.users_admin import session_closer
    from hipchat_server.web.sessions import web_sessions

    config = chat_server.get_config()
    return UserDirectory(
        UserStore(chat_server.get_database_engine()),
        domain=config.server.domain,
        run_database=threads.deferToThread,
        presences=PresenceStore(chat_server.get_redis_primary()),
        closer=session_closer(chat_server, web_sessions(chat_server)),
    )


def private_messages(chat_server) -> PrivateMessages:
    config = chat_server.get_config()
    return PrivateMessages(chat_server.get_message_archive(), user_delivery(chat_server), domain=config.server.domain)


@defer.inlineCallbacks
def conversation_history(history, domain: str, reader: str, other: str, *, limit: int, not_before: str | None = None):
    """The newest ``limit`` one-to-one messages between users ``reader`` and ``other`` (usernames), oldest first.

    ``not_before`` (a message id) keeps out anything older than that message.
    """
    from hipchat_server.history import HistoryError, Paging
    from hipchat_server.storage.message_search import is_message_id, message_id_milliseconds

    if not_before is not None and not is_message_id(not_before):
        raise NotFound(f"no message {not_before[:40]!r} in this conversation")
    archive = history.user_archive(f"{reader}@{domain}")
    start_ms = message_id_milliseconds(not_before) if not_before else None
    try:
        criteria = history.criteria(archive, with_bare=f"{other}@{domain}", start_ms=start_ms)
        page = yield history.query(criteria, Paging(before="", max=limit))
    except HistoryError as e:
        raise (NotFound if e.condition == "item-not-found" else Invalid)(e.text) from None
    return [r for r in page.records if not_before is None or r["id"] >= not_before]
