"""Room events: what happened in a room becomes background jobs (webhooks, mention e-mail).

``emit(chat_server, kind, room, payload)`` is called once the thing is done
and durable (a message archived, a room deleted, ...). It never blocks its
caller and never fails it: it returns a Deferred that fires (with None) once
the jobs are queued, which callers on the message path ignore; errors are
logged. ``room`` is the room's JID (``node@conference.<domain>``), its
localpart, or its id. ``payload``:

- ``room_message`` / ``room_notification``: the archive record (``id``,
  ``timestamp``, ``sender``, ``sender_name``, ``body``, and for notifications
  ``notification`` and ``html``), as `archive.MessageArchive.store` returns it;
- ``room_enter`` / ``room_exit`` / ``room_created`` / ``room_deleted`` /
  ``room_archived``: ``{"sender": <bare JID or username>, "nick": ...}``
  (``sender``, or ``by``, optional: the API acting as a room token has none);
- ``room_topic_change``: the same plus ``topic``.

Each process keeps, per room, its webhooks for a few seconds (one MariaDB
read per room and `CACHE_SECONDS`), so a room without webhooks costs a dict
lookup per event. For each webhook of the event (``room_message`` ones only
when their pattern finds the text) one ``webhook`` job is queued with
HipChat's payload; matching and payload building run in a thread, never on
the reactor. A ``room_message`` that @mentions someone also queues one
``mention_mail`` job (the worker finds who of them is offline). Emit
``room_deleted`` before deleting the room, and wait for its Deferred: the
room's webhooks go with it.
"""

from __future__ import annotations

import re
import time
import weakref

from twisted.internet import defer
from twisted.logger import Logger

from hipchat_server import jobs
from hipchat_server.webhooks import EVENTS, Webhook

CACHE_SECONDS = 5.0
# HipChat mention names: @ then letters, digits and a few marks; @all and @here are not people.
MENTION = re.compile(r"(?<![\w@])@([A-Za-z0-9_][\w.\-]*[\w])")
NOT_PEOPLE = frozenset({"all", "here"})

log = Logger()
_dispatchers: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def emit(chat_server, kind: str, room, payload: dict) -> defer.Deferred:
    """Announce ``kind`` in ``room`` (see the module docstring); a no-op without a ``chat_server``."""
    if chat_server is None:
        return defer.succeed(None)
    try:
        return dispatcher_for(chat_server).emit(kind, room, payload)
    except Exception:
        log.failure("announcing {kind} in {room} failed", kind=kind, room=room)
        return defer.succeed(None)


def dispatcher_for(chat_server) -> "EventDispatcher":
    """This process's dispatcher over ``chat_server`` (built on first use; `install` swaps it in tests)."""
    dispatcher = _dispatchers.get(chat_server)
    if dispatcher is None:
        dispatcher = build_dispatcher(chat_server)
        _dispatchers[chat_server] = dispatcher
    return dispatcher


def install(chat_server, dispatcher: "EventDispatcher") -> None:
    _dispatchers[chat_server] = dispatcher


def build_dispatcher(chat_server) -> "EventDispatcher":
    from twisted.internet import reactor, threads

    from hipchat_server.storage.webhooks import WebhookStore

    writer = chat_server.get_redis_writer()
    writer.start()  # idempotent: a front end or a RoomPoster in this process starts it too

    def enqueue(items: list[tuple[str, dict]]) -> defer.Deferred:
        now = time.time()
        return writer.submit(lambda pipe: [jobs.enqueue_command(pipe, kind, payload, now) for kind, payload in items])

    return EventDispatcher(
        WebhookStore(chat_server.get_database_engine()),
        run_blocking=threads.deferToThread,
        enqueue=enqueue,
        public_url=chat_server.get_config().server.public_url.rstrip("/"),
        clock=reactor.seconds,
    )


def room_key(room) -> tuple[str, object]:
    """``("id", n)`` for a room id, ``("node", localpart)`` for a JID or localpart."""
    if isinstance(room, bool):
        raise ValueError(f"not a room: {room!r}")
    if isinstance(room, int):
        return ("id", room)
    if isinstance(room, str) and room:
        if room.isdigit():
            return ("id", int(room))
        return ("node", room.split("@", 1)[0])
    raise ValueError(f"not a room: {room!r}")


def mention_names(text: str) -> list[str]:
    """The @mention names in ``text``, in order, once each, without @all and @here."""
    seen: dict[str, None] = {}
    for name in MENTION.findall(text or ""):
        if name.lower() not in NOT_PEOPLE:
            seen.setdefault(name, None)
    return list(seen)


class EventDispatcher:
    """Turns events into jobs; see the module docstring.

    ``store`` is a `storage.webhooks.WebhookStore`; ``run_blocking(f, *args)``
    runs ``f`` in a thread; ``enqueue([(kind, payload), ...])`` queues jobs
    without blocking (Deferred).
    """

    def __init__(self, store, *, run_blocking, enqueue, public_url: str, clock=time.monotonic, cache_seconds: float = CACHE_SECONDS):
        self.store = store
        self.run_blocking = run_blocking
        self.enqueue = enqueue
        self.public_url = public_url
        self.clock = clock
        self.cache_seconds = cache_seconds
        self._cache: dict[tuple, tuple[float, object, list[Webhook]]] = {}

    def forget(self, room) -> None:
        """Drop the cached webhooks of ``room`` (after one was created or deleted here)."""
        key = room_key(room)
        for cached_key, (_, ref, _) in list(self._cache.items()):
            if cached_key == key or (ref is not None and (("id", ref.id) == key or ("node", ref.jid_node) == key)):
                del self._cache[cached_key]

    def emit(self, kind: str, room, payload: dict) -> defer.Deferred:
        if kind not in EVENTS:
            raise ValueError(f"unknown event {kind!r}")
        key = room_key(room)
        queued = []
        if kind == "room_message" and "@" in payload.get("body", "") and mention_names(payload["body"]):
            mentioned = self.enqueue([("mention_mail", mention_job(room, payload))])
            queued.append(mentioned.addErrback(lambda f: log.failure("the mention mail of a message in {room} was not queued", f, room=room)))
        cached = self._cache.get(key)
        if cached is not None and self.clock() - cached[0] < self.cache_seconds and not any(h.event == kind for h in cached[2]):
            # The usual case on the message path: a room without webhooks for this event, known already.
            return queued[0].addCallback(lambda _: None) if queued else defer.succeed(None)
        d = self._webhooks(key)
        d.addCallback(self._dispatch, kind, payload)
        d.addErrback(lambda f: log.failure("webhooks of {kind} in {room} were not queued", f, kind=kind, room=room))
        queued.append(d)
        return defer.DeferredList(queued, consumeErrors=True).addCallback(lambda _: None)

    def _webhooks(self, key) -> defer.Deferred:
        cached = self._cache.get(key)
        now = self.clock()
        if cached is not None and now - cached[0] < self.cache_seconds:
            return defer.succeed(cached[1:])
        d = self.run_blocking(self._load, key)
        d.addCallback(self._remember, key, now)
        return d

    def _load(self, key) -> tuple[object, list[Webhook]]:
        kind, value = key
        ref, rows = self.store.room_webhooks(room_id=value) if kind == "id" else self.store.room_webhooks(node=value)
        return ref, [Webhook.of(row) for row in rows]

    def _remember(self, loaded, key, now):
        self._cache[key] = (now, *loaded)
        if len(self._cache) > 10_000:  # rooms come and go: never grow without bound
            oldest = min(self._cache, key=lambda k: self._cache[k][0])
            del self._cache[oldest]
        return loaded

    def _dispatch(self, loaded, kind: str, payload: dict):
        ref, hooks = loaded
        hooks = [h for h in hooks if h.event == kind]
        if ref is None or not hooks:
            return None
        d = self.run_blocking(self._webhook_jobs, ref, hooks, kind, payload)
        d.addCallback(lambda items: self.enqueue(items) if items else None)
        return d

    def _webhook_jobs(self, ref, hooks: list[Webhook], kind: str, payload: dict) -> list[tuple[str, dict]]:
        """In a thread: match patterns, look up the people the payload names, build one job per webhook."""
        if kind == "room_message":
            hooks = [h for h in hooks if h.matches(payload.get("body", ""))]
            if not hooks:
                return []
        sender = payload.get("sender") or payload.get("by") or ""
        username = "" if sender.startswith(f"{ref.jid_node}@") else sender.split("@", 1)[0]
        mentioned = mention_names(payload.get("body", "")) if kind in ("room_message", "room_notification") else []
        people = self.store.people(usernames=[username] if username else [], mention_names=mentioned)
        item = event_item(kind, ref, payload, people, self.public_url)
        return [
            (
                "webhook",
                {
                    "webhook_id": hook.id,
                    "room_id": ref.id,
                    "room": ref.jid_node,
                    "body": {"event": kind, "item": item, "webhook_id": hook.id, "oauth_client_id": hook.oauth_client_id},
                },
            )
            for hook in hooks
        ]


def mention_job(room, record: dict) -> dict:
    """The ``mention_mail`` job of a room message: who wrote what where (the worker finds who is offline)."""
    return {
        "room": room if isinstance(room, str) else str(room),
        "message_id": record.get("id"),
        "timestamp": record.get("timestamp"),
        "sender": record.get("sender"),
        "sender_name": record.get("sender_name"),
        "body": (record.get("body") or "")[:10_000],
        "mentions": mention_names(record.get("body", "")),
    }


# HipChat's payload shapes.
def room_item(ref, public_url: str) -> dict:
    base = f"{public_url}/v2/room/{ref.id}"
    return {
        "id": ref.id,
        "name": ref.name,
        "links": {"self": base, "webhooks": f"{base}/webhook", "members": f"{base}/member", "participants": f"{base}/participant"},
    }


def person_item(person, public_url: str) -> dict:
    return {
        "id": person.id,
        "mention_name": person.mention_name,
        "name": person.name,
        "links": {"self": f"{public_url}/v2/user/{person.id}"},
    }


def hipchat_date(timestamp: str | None) -> str | None:
    """The record's ``...Z`` timestamp as HipChat writes dates (``+00:00``)."""
    if not timestamp:
        return None
    return timestamp[:-1] + "+00:00" if timestamp.endswith("Z") else timestamp


def event_item(kind: str, ref, payload: dict, people: list, public_url: str) -> dict:
    """The ``item`` of an event's payload, as HipChat sends it for ``kind``."""
    sender = payload.get("sender") or payload.get("by") or ""
    username = sender.split("@", 1)[0]
    by_username = {p.username: p for p in people}
    by_mention = {p.mention_name.lower(): p for p in people}
    found = by_username.get(username)
    if found is not None:
        who = person_item(found, public_url)
    else:
        name = payload.get("sender_name") or payload.get("nick") or username or "API"
        who = {"id": None, "mention_name": name, "name": name}
    item: dict = {"room": room_item(ref, public_url)}
    if kind in ("room_message", "room_notification"):
        mentions = [person_item(by_mention[m.lower()], public_url) for m in mention_names(payload.get("body", "")) if m.lower() in by_mention]
        message = {
            "date": hipchat_date(payload.get("timestamp")),
            "id": payload.get("id"),
            "mentions": mentions,
            "message": payload.get("body", ""),
            "type": "message",
        }
        notification = payload.get("notification")
        if kind == "room_notification" or notification:
            notification = notification or {}
            message.update(
                type="notification",
                message=payload.get("html") or payload.get("body", ""),
                color=notification.get("color", "yellow"),
                message_format=notification.get("message_format", "html"),
                **{"from": notification.get("from") or payload.get("sender_name") or ""},
            )
        else:
            message["from"] = who
        item["message"] = message
    else:
        item["sender"] = who
    if kind == "room_topic_change":
        item["topic"] = payload.get("topic", "")
    return item
