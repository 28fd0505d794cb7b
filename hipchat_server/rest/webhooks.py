"""``/v2/room/<room>/webhook``: HipChat's room webhooks (list, create, get, delete).

The protocol only: who may (the room's owners and admins, or group
administrators, with the ``admin_room`` scope; a private room is not found by
others) is `rooms_api.RoomsApi`'s check; the webhooks are
`webhooks.RoomWebhooks`'. A created webhook is live in this process at once
and in the others within `events.CACHE_SECONDS`.
"""

from __future__ import annotations

from twisted.internet import defer

from hipchat_server.rest import api
from hipchat_server.rest.rooms import collection, domain_errors, services
from hipchat_server.webhooks import EVENTS, RoomWebhooks, WebhookError

CREATE_FIELDS = {
    "url": api.field(str, max_length=2048),
    "event": api.field(str, choices=EVENTS),
    "pattern": api.field(str, required=False, max_length=512),
    "name": api.field(str, required=False, default="", max_length=100),
    "authentication": api.field(str, required=False, default="none", choices=("none", "jwt")),
    "secret": api.field(str, required=False, max_length=255),
}

_webhooks: dict[int, RoomWebhooks] = {}


def room_webhooks(context: api.ApiContext) -> RoomWebhooks:
    found = _webhooks.get(id(context.chat_server))
    if found is None:
        from hipchat_server import events
        from hipchat_server.storage.webhooks import WebhookStore

        chat_server = context.chat_server
        dispatcher = events.dispatcher_for(chat_server)
        found = RoomWebhooks(WebhookStore(chat_server.get_database_engine()), forget=dispatcher.forget)
        _webhooks[id(chat_server)] = found
    return found


def administered_room(context: api.ApiContext, caller, room: str) -> defer.Deferred:
    """The room's details if the caller administers it (403 if not; 404 if they may not see it)."""
    from hipchat_server.users_api import Caller

    rooms = services(context).rooms
    d = context.run_blocking(rooms.administered, Caller.of(caller), room)
    return domain_errors(d).addCallback(lambda found: found[0].room)


def webhook_link(context: api.ApiContext, room_id: int, webhook_id: int) -> str:
    return api.link(context, "room", room_id, "webhook", webhook_id)


def compact(context: api.ApiContext, row) -> dict:
    return {
        "id": row.id,
        "name": row.name,
        "url": row.url,
        "event": row.event,
        "pattern": row.pattern,
        "links": {"self": webhook_link(context, row.room_id, row.id)},
    }


def full(context: api.ApiContext, row) -> dict:
    shaped = compact(context, row)
    shaped["authentication"] = "jwt" if row.secret else "none"
    shaped["created"] = row.created_at.strftime("%Y-%m-%dT%H:%M:%S+00:00") if row.created_at else None
    shaped["creator"] = {"id": row.created_by} if row.created_by else None
    shaped["oauth_client_id"] = row.oauth_client_id
    return shaped


def webhook_id_of(text: str) -> int:
    if not text.isdigit() or len(text) > 12:
        raise api.ApiError(404, f"no webhook {text[:20]!r}")
    return int(text)


def register(app, context: api.ApiContext) -> None:
    @api.route(app, "GET", "/room/<room>/webhook", scope="admin_room")
    @defer.inlineCallbacks
    def list_webhooks(request, caller, room):
        start, count = api.paging(request)
        found = yield administered_room(context, caller, room)
        rows = yield context.run_blocking(room_webhooks(context).list, found.id)
        page = [compact(context, row) for row in rows[start : start + count]]
        return collection(request, context, page, len(rows), f"room/{found.id}/webhook")

    @api.route(app, "POST", "/room/<room>/webhook", scope="admin_room")
    @defer.inlineCallbacks
    def create_webhook(request, caller, room):
        body = api.json_body(request, CREATE_FIELDS)
        found = yield administered_room(context, caller, room)
        try:
            webhook_id = yield context.run_blocking(
                room_webhooks(context).create, found.id, body, created_by=caller.user_id, oauth_client_id=caller.oauth_client_id
            )
        except WebhookError as e:
            raise api.ApiError(400, str(e)) from None
        return 201, {"id": webhook_id, "links": {"self": webhook_link(context, found.id, webhook_id)}}

    @api.route(app, "GET", "/room/<room>/webhook/<webhook>", scope="admin_room")
    @defer.inlineCallbacks
    def get_webhook(request, caller, room, webhook):
        webhook_id = webhook_id_of(webhook)
        found = yield administered_room(context, caller, room)
        row = yield context.run_blocking(room_webhooks(context).get, found.id, webhook_id)
        if row is None:
            raise api.ApiError(404, f"no webhook {webhook_id} in this room")
        return full(context, row)

    @api.route(app, "DELETE", "/room/<room>/webhook/<webhook>", scope="admin_room")
    @defer.inlineCallbacks
    def delete_webhook(request, caller, room, webhook):
        webhook_id = webhook_id_of(webhook)
        found = yield administered_room(context, caller, room)
        deleted = yield context.run_blocking(room_webhooks(context).delete, found.id, webhook_id)
        if not deleted:
            raise api.ApiError(404, f"no webhook {webhook_id} in this room")
        return None
