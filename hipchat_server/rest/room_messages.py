"""Room messages over HTTP: send a message (201), a notification (204), a reply and a shared link (204); read history.

``history?date=recent`` answers the room's newest messages from Redis
(at most the 75 it keeps); an ISO ``date`` (with ``end-date``,
``timezone``, ``start-index``, ``max-results``, ``reverse``) reads older
history through `history.History`; ``history/latest`` (``not-before``) the
newest; ``history/<id>`` one message. Sending is flood-controlled per room.
"""

from __future__ import annotations

from urllib.parse import quote

from twisted.internet import defer

from hipchat_server import feature_flags
from hipchat_server.rest import api
from hipchat_server.rest.rooms import call, collection, services, user_ref
from hipchat_server.room_posting import DEFAULT_LABEL, MAX_LABEL_LENGTH, Notification

RECENT_DEFAULT = 75


def history_item(context, record: dict, senders: dict, real_jids: bool, room_path: str) -> dict:
    """A record as HipChat's history item: ``from`` a user object, or the label of a notification."""
    notification = record.get("notification")
    sender = senders.get(record.get("sender")) if real_jids else None
    item = {
        "id": record["id"],
        "date": record["timestamp"],
        "message": record.get("html") or record.get("body", ""),
        "type": "notification" if notification else "message",
        "mentions": [],
        "links": {"self": f"{context.public_url}/v2/room/{room_path}/history/{record['id']}"},
    }
    if notification:
        item["from"] = notification.get("from") or record.get("sender_name")
        item["color"] = notification.get("color")
        item["message_format"] = notification.get("message_format")
    elif sender is not None:
        item["from"] = user_ref(context, sender)
    else:
        item["from"] = {"id": None, "name": record.get("sender_name"), "mention_name": record.get("sender_name"), "links": {}}
    if record.get("parent_message_id"):
        item["parent_message_id"] = record["parent_message_id"]
    return item


@defer.inlineCallbacks
def message_sending_allowed(context: api.ApiContext, caller):
    """403 when an admin turned API message sending off for the caller's groups (feature flag, console).

    Every API route that sends a message or notification asks this first: the
    room routes here and the private message (`rest.users`).
    """
    if context.chat_server is None:
        return  # unit tests of the routes: no flags
    flags = feature_flags.for_server(context.chat_server)
    if not (yield context.run_blocking(flags.enabled, feature_flags.API_MESSAGE_SENDING, caller.username)):
        raise api.ApiError(403, "sending messages through the API is turned off for this account by an administrator")


def register(app, context: api.ApiContext) -> None:
    def rooms():
        return services(context).rooms

    def flood_control(request):
        """Counted per room id once the room is known, whichever way the URL names it (id, name, address)."""
        return lambda room_id: api.flood_control(request, context, f"room:{room_id}")

    def sending_allowed(caller):
        return message_sending_allowed(context, caller)

    @defer.inlineCallbacks
    def items(records, real_jids, room, senders=None):
        if senders is None:
            senders = yield rooms().senders(records) if real_jids else {}
        path = quote(room, safe="")
        return [history_item(context, r, senders, real_jids, path) for r in records]

    # Sending.
    @api.route(app, "POST", "/room/<room>/message", scope="send_message")
    @defer.inlineCallbacks
    def send_message(request, caller, room):
        yield sending_allowed(caller)
        body = api.json_body(request, {"message": api.field(str, max_length=10_000)})
        record = yield call(rooms().send_message, caller, room, body["message"], admit=flood_control(request))
        return 201, {"id": record["id"], "timestamp": record["timestamp"]}

    @api.route(app, "POST", "/room/<room>/notification", scope="send_notification")
    @defer.inlineCallbacks
    def send_notification(request, caller, room):
        yield sending_allowed(caller)
        body = api.json_body(
            request,
            {
                "message": api.field(str, max_length=10_000),
                "color": api.field(str, required=False, default="yellow", choices=("yellow", "green", "red", "purple", "gray", "random")),
                "message_format": api.field(str, required=False, default="html", choices=("html", "text")),
                "notify": api.field(bool, required=False, default=False),
                "from": api.field(str, required=False, max_length=MAX_LABEL_LENGTH),
            },
        )
        label = body["from"] or (caller.token_label or "")[:MAX_LABEL_LENGTH] or DEFAULT_LABEL
        notification = Notification(body["message"], body["message_format"], body["color"], body["notify"], label)
        yield call(rooms().send_notification, caller, room, notification, admit=flood_control(request))
        return None

    @api.route(app, "POST", "/room/<room>/reply", scope="send_message")
    @defer.inlineCallbacks
    def reply(request, caller, room):
        yield sending_allowed(caller)
        body = api.json_body(request, {"message": api.field(str, max_length=10_000), "parentMessageId": api.field(str, max_length=64)})
        yield call(rooms().reply, caller, room, body["parentMessageId"], body["message"], admit=flood_control(request))
        return None

    @api.route(app, "POST", "/room/<room>/share/link", scope="send_message")
    @defer.inlineCallbacks
    def share_link(request, caller, room):
        yield sending_allowed(caller)
        body = api.json_body(request, {"link": api.field(str, max_length=2000), "message": api.field(str, required=False, max_length=1000)})
        yield call(rooms().share_link, caller, room, body["link"], body["message"], admit=flood_control(request))
        return None

    # Reading.
    @api.route(app, "POST", "/room/<room>/share/file", scope="send_message")
    @defer.inlineCallbacks
    def share_file(request, caller, room):
        """HipChat's upload: refused. 403 while the file_sharing flag is off for the caller, else 501 (no file store yet)."""
        flags = feature_flags.for_server(context.chat_server) if context.chat_server is not None else None
        if flags is not None and not (yield context.run_blocking(flags.enabled, feature_flags.FILE_SHARING, caller.username)):
            raise api.ApiError(403, "file sharing is turned off for this account by an administrator")
        raise api.ApiError(501, "this appliance does not store files yet: share a link instead (POST /v2/room/<room>/share/link)")

    @api.route(app, "GET", "/room/<room>/history", scope="view_messages")
    @defer.inlineCallbacks
    def history(request, caller, room):
        date = api.query_argument(request, "date", "recent")
        start, count = api.paging(request)
        newest_first = not api.bool_argument(request, "reverse", True)
        if date == "recent":
            records, real_jids, senders = yield call(rooms().recent, caller, room, api.int_argument(request, "max-results", RECENT_DEFAULT))
            records = records[: max(len(records) - start, 0)]  # start-index skips the newest
            if newest_first:
                records.reverse()
            total = len(records) + start
        else:
            records, total, real_jids = yield call(
                rooms().dated,
                caller,
                room,
                date=date,
                end_date=api.query_argument(request, "end-date"),
                tz=api.query_argument(request, "timezone"),
                start=start,
                limit=count,
                newest_first=newest_first,
            )
            senders = None
        shown = yield items(records, real_jids, room, senders)
        return collection(request, context, shown, total, f"room/{quote(room, safe='')}/history")

    @api.route(app, "GET", "/room/<room>/history/latest", scope="view_messages")
    @defer.inlineCallbacks
    def latest(request, caller, room):
        count = api.int_argument(request, "max-results", RECENT_DEFAULT)
        if not 0 <= count <= api.MAX_MAX_RESULTS:
            raise api.ApiError(400, f"max-results: expected 0 to {api.MAX_MAX_RESULTS}")
        records, real_jids = yield call(rooms().latest, caller, room, limit=count, not_before=api.query_argument(request, "not-before"))
        shown = yield items(records, real_jids, room)
        return {
            "items": shown,
            "startIndex": 0,
            "maxResults": count,
            "links": {"self": f"{context.public_url}/v2/room/{quote(room, safe='')}/history/latest"},
        }

    @api.route(app, "GET", "/room/<room>/history/<message_id>", scope="view_messages")
    @defer.inlineCallbacks
    def one_message(request, caller, room, message_id):
        record, real_jids = yield call(rooms().message, caller, room, message_id)
        [item] = yield items([record], real_jids, room)
        return {"message": item, "links": {"self": item["links"]["self"]}}
