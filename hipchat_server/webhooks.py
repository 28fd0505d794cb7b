"""Room webhooks: HipChat's room events POSTed as JSON to an integration's URL, and its reply posted back.

A webhook belongs to a room and names one event (`EVENTS`); ``room_message``
webhooks may carry a ``pattern`` (Python ``re``, at most 512 characters) and
fire only for messages it finds (``re.search``). Patterns are compiled once,
when the webhook is created, and tried there against a few long strings in a
separate process with a time limit: a pattern that backtracks for ages (such
as ``(a+)+$``) is refused, so it cannot stall whatever matches messages later.

Delivery (a ``webhook`` job in the worker processes, `deliver`): a POST of the
event payload (``{"event", "item", "webhook_id", "oauth_client_id"}``) with a
10 s timeout; with a secret, an ``Authorization: JWT <token>`` header signed
HS256 with it (claims: ``iss`` the appliance's URL, ``sub`` the webhook id,
``iat``/``exp``, and ``body_sha256`` of the exact body sent). A 2xx reply whose
JSON is in HipChat's notification format (``message``, optional ``color``,
``message_format``, ``notify``, ``from``) is posted into the room: this is how
bots answer. 5xx, 408, 429 and network errors are retried; other 4xx go to the
dead letters (the receiver refused it; sending it again will not help).
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from urllib.parse import urlsplit

from hipchat_server.jobs import PermanentJobError

EVENTS = (
    "room_message",
    "room_notification",
    "room_enter",
    "room_exit",
    "room_topic_change",
    "room_created",
    "room_deleted",
    "room_archived",
)
MAX_PATTERN_LENGTH = 512
MAX_NAME_LENGTH = 100
MAX_URL_LENGTH = 2048
MIN_SECRET_LENGTH = 32  # RFC 7518 3.2: an HS256 key at least as long as the hash
# What a pattern is matched against: at most this much of a message (HipChat's message limit).
MAX_MATCHED_LENGTH = 10_000
# A new pattern must search each probe string within this time (all of them, in a child process).
PATTERN_PROBE_SECONDS = 2.0
DELIVERY_TIMEOUT_SECONDS = 10.0
MAX_REPLY_BYTES = 1024 * 1024
JWT_LIFETIME_SECONDS = 300
RETRIED_STATUSES = frozenset({408, 425, 429})
USER_AGENT = "HipChat-Server-Webhooks"

# Strings that make catastrophic backtracking show: long runs of one class of character, then a misfit.
_PROBE_PROGRAM = r"""
import re, sys
pattern = re.compile(sys.stdin.read())
for unit in ("a", "0", " ", "-", "a0", "ab", ".", "@a", "/"):
    for tail in ("!", "\n", "\x00"):
        pattern.search(unit * (2000 // len(unit)) + tail)
"""


class WebhookError(ValueError):
    """A webhook that cannot be created as asked; the text says which value is wrong."""


@dataclass(frozen=True)
class Webhook:
    """A stored webhook with its pattern compiled (None: every message)."""

    id: int
    room_id: int
    name: str
    url: str
    event: str
    pattern: str | None
    compiled: re.Pattern | None
    has_secret: bool
    oauth_client_id: str | None

    @classmethod
    def of(cls, row) -> "Webhook":
        compiled = None
        if row.pattern:
            try:
                compiled = re.compile(row.pattern)
            except re.error:
                compiled = re.compile(r"(?!)")  # checked at creation; should it not compile now, it matches nothing
        return cls(row.id, row.room_id, row.name, row.url, row.event, row.pattern, compiled, bool(row.secret), row.oauth_client_id)

    def matches(self, text: str) -> bool:
        """Whether a room_message with ``text`` fires this webhook."""
        return self.compiled is None or self.compiled.search(text[:MAX_MATCHED_LENGTH]) is not None


def check_url(url) -> str:
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        raise WebhookError(f"url: expected an http or https URL of at most {MAX_URL_LENGTH} characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookError("url: expected an http or https URL with a host")
    return url


def check_pattern(pattern) -> str | None:
    """The pattern if usable, else WebhookError: too long, not a valid ``re``, or too slow on the probe strings."""
    if pattern is None or pattern == "":
        return None
    if not isinstance(pattern, str) or len(pattern) > MAX_PATTERN_LENGTH:
        raise WebhookError(f"pattern: expected a regular expression of at most {MAX_PATTERN_LENGTH} characters")
    try:
        re.compile(pattern)
    except re.error as e:
        raise WebhookError(f"pattern: not a valid regular expression ({e})") from None
    try:
        probe = subprocess.run(
            [sys.executable, "-I", "-c", _PROBE_PROGRAM],
            input=pattern,
            text=True,
            capture_output=True,
            timeout=PATTERN_PROBE_SECONDS,
        )
    except subprocess.TimeoutExpired:
        raise WebhookError("pattern: too slow (it backtracks for a long time on long messages); simplify it") from None
    if probe.returncode != 0:
        raise WebhookError("pattern: could not be checked")
    return pattern


def check_new_webhook(body: dict) -> dict:
    """The values of a webhook to create from HipChat's request body, or WebhookError naming the bad field."""
    event = body.get("event")
    if event not in EVENTS:
        raise WebhookError(f"event: expected one of {', '.join(EVENTS)}")
    name = body.get("name") or ""
    if not isinstance(name, str) or len(name) > MAX_NAME_LENGTH:
        raise WebhookError(f"name: expected at most {MAX_NAME_LENGTH} characters")
    pattern = body.get("pattern")
    if pattern and event != "room_message":
        raise WebhookError("pattern: only room_message webhooks have a pattern")
    authentication = body.get("authentication", "none")
    if authentication not in ("none", "jwt"):
        raise WebhookError("authentication: expected none or jwt")
    secret = body.get("secret")
    if authentication == "jwt" or secret is not None:
        if not isinstance(secret, str) or len(secret) < MIN_SECRET_LENGTH or len(secret) > 255:
            raise WebhookError(f"secret: JWT signing needs a secret of {MIN_SECRET_LENGTH} to 255 characters")
    return {"name": name, "url": check_url(body.get("url")), "event": event, "pattern": check_pattern(pattern), "secret": secret}


def jwt_token(secret: str, webhook_id: int, body: bytes, issuer: str, now: float | None = None) -> str:
    """The JWT sent with a webhook that has a secret (HS256)."""
    import jwt

    now = int(time.time() if now is None else now)
    claims = {
        "iss": issuer,
        "sub": str(webhook_id),
        "iat": now,
        "exp": now + JWT_LIFETIME_SECONDS,
        "body_sha256": hashlib.sha256(body).hexdigest(),
    }
    return jwt.encode(claims, secret, algorithm="HS256")


def post_json(url: str, body: bytes, headers: dict[str, str], timeout: float = DELIVERY_TIMEOUT_SECONDS) -> tuple[int, bytes]:
    """POST ``body`` (JSON) to ``url``: (status, reply body up to 1 MiB). Network errors raise OSError."""
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("Content-Type", "application/json; charset=utf-8")
    request.add_header("User-Agent", USER_AGENT)
    for key, value in headers.items():
        request.add_header(key, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read(MAX_REPLY_BYTES)
    except urllib.error.HTTPError as e:
        return e.code, e.read(MAX_REPLY_BYTES) if e.fp is not None else b""


def deliver(webhook_row, payload: dict, issuer: str, post=post_json) -> bytes:
    """POST an event to a webhook; return the 2xx reply's body. Raises to retry, PermanentJobError to give up."""
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    headers = {}
    if webhook_row.secret:
        headers["Authorization"] = f"JWT {jwt_token(webhook_row.secret, webhook_row.id, body, issuer)}"
    status, reply = post(webhook_row.url, body, headers)
    if 200 <= status < 300:
        return reply
    if 400 <= status < 500 and status not in RETRIED_STATUSES:
        raise PermanentJobError(f"{webhook_row.url} refused the event: HTTP {status}")
    raise RuntimeError(f"{webhook_row.url} answered HTTP {status}")


def reply_notification(reply: bytes, default_label: str):
    """The notification a receiver's reply asks to post, or None when the reply is not one.

    Returns a `room_posting.Notification` (not yet checked: posting checks it).
    """
    from hipchat_server.room_posting import Notification

    if not reply or not reply.strip():
        return None
    try:
        data = json.loads(reply)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("message"), str) or not data["message"].strip():
        return None
    label = data.get("from") if isinstance(data.get("from"), str) and data.get("from").strip() else default_label
    return Notification(
        message=data["message"],
        message_format=data.get("message_format", "html") if isinstance(data.get("message_format"), str) else "html",
        color=data.get("color", "yellow") if isinstance(data.get("color"), str) else "yellow",
        notify=bool(data.get("notify", False)),
        label=label[:64],
    )


class WebhookDelivery:
    """The ``webhook`` job handler: deliver the event, then post the receiver's reply into the room.

    ``store`` is a `storage.webhooks.WebhookStore` (the webhook is read again:
    one deleted since the event is not delivered); ``post_reply(room_jid,
    notification)`` posts a reply (blocking; raises `room_posting.PostingError`
    for a reply HipChat would refuse, which is logged, not retried);
    ``rooms_domain`` is ``<rooms.service>.<domain>``.
    """

    def __init__(self, store, post_reply, *, issuer: str, rooms_domain: str, post=post_json, log=None, enabled=None, note=None):
        """``enabled(creator)`` says whether webhooks are on for the username that created the webhook
        (the console's feature flag, per user in chosen-groups mode; ``creator`` None: everyone's value;
        ``enabled`` None: always on);
        ``note(entry)`` keeps each delivery's outcome for the console (None: not kept)."""
        import logging

        self.enabled, self.note = enabled, note
        self.store = store
        self.post_reply = post_reply
        self.issuer = issuer
        self.rooms_domain = rooms_domain
        self.post = post
        self.log = log or logging.getLogger("hipchat.webhooks")

    def __call__(self, job) -> None:
        from hipchat_server.room_posting import PostingError

        payload = job.payload
        row = self.store.get(payload["room_id"], payload["webhook_id"])
        if row is None:
            self.log.info("webhook %s of room %s was deleted; event not delivered", payload["webhook_id"], payload["room_id"])
            return
        if self.enabled is not None and not self.enabled(row.creator):
            self.log.info("webhooks are turned off (feature flag) for %s: webhook %s not called", row.creator or "everyone", row.id)
            return
        try:
            reply = deliver(row, payload["body"], self.issuer, self.post)
        except Exception as e:
            self._note(row, payload, str(e) or type(e).__name__)
            raise
        self._note(row, payload, None)
        notification = reply_notification(reply, row.name or "Webhook")
        if notification is None:
            return
        try:
            self.post_reply(f"{payload['room']}@{self.rooms_domain}", notification)
        except PostingError as e:
            self.log.warning("webhook %s replied with a notification that cannot be posted: %s", row.id, e)


    def _note(self, row, payload: dict, error: str | None) -> None:
        if self.note is None:
            return
        import time

        entry = {"webhook_id": row.id, "room": payload.get("room"), "url": row.url, "ok": error is None, "error": error or "",
                 "at": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}
        try:
            self.note(entry)
        except Exception as e:  # the console's list of deliveries is a convenience: never fail a delivery for it
            self.log.warning("keeping webhook %s's delivery outcome failed: %s", row.id, e)


MAX_WEBHOOKS_PER_ROOM = 100


class RoomWebhooks:
    """A room's webhooks: list, get, create (checked), delete. Blocking; the caller has checked who may.

    ``store`` is a `storage.webhooks.WebhookStore`; ``forget(room_id)`` drops
    this process's cached webhooks of the room (`events.EventDispatcher.forget`).
    """

    def __init__(self, store, *, forget=None):
        self.store = store
        self.forget = forget or (lambda room_id: None)

    def list(self, room_id: int) -> list:
        _, rows = self.store.room_webhooks(room_id=room_id)
        return rows

    def get(self, room_id: int, webhook_id: int):
        return self.store.get(room_id, webhook_id)

    def create(self, room_id: int, body: dict, *, created_by: int | None, oauth_client_id: str | None) -> int:
        values = check_new_webhook(body)
        if self.store.count_for_room(room_id) >= MAX_WEBHOOKS_PER_ROOM:
            raise WebhookError(f"a room has at most {MAX_WEBHOOKS_PER_ROOM} webhooks")
        webhook_id = self.store.insert(room_id=room_id, created_by=created_by, oauth_client_id=oauth_client_id, **values)
        self.forget(room_id)
        return webhook_id

    def delete(self, room_id: int, webhook_id: int) -> bool:
        deleted = self.store.delete(room_id, webhook_id)
        self.forget(room_id)
        return deleted
