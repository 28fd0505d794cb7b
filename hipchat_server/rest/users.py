"""``/v2/user``: HipChat's user list, create (201), get by id, e-mail or ``@mention``, update (204), delete (204);
private messages (204) and the caller's one-to-one history with a user."""

from __future__ import annotations

from twisted.internet import defer

from hipchat_server.rest import api
from hipchat_server.rest.room_messages import message_sending_allowed
from hipchat_server.rest.rooms import call, collection, services, user_ref
from hipchat_server.users_api import conversation_history, user_view

USER_FIELDS = {
    "name": api.field(str, max_length=100),
    "email": api.field(str, max_length=255),
    "mention_name": api.field(str, required=False, max_length=50),
    "title": api.field(str, required=False, max_length=50),
    "timezone": api.field(str, required=False, max_length=64),
    "is_group_admin": api.field(bool, required=False, default=False),
    "password": api.field(str, required=False, max_length=1024),
}
UPDATE_FIELDS = {name: api.field(spec.type, required=False, max_length=spec.max_length) for name, spec in USER_FIELDS.items()}


def full_user(context, row: dict, activity: dict) -> dict:
    """HipChat's user object; ``activity`` is `UserDirectory.presence`'s answer (presence and last_active)."""
    body = user_view(row, context.domain)
    body.pop("username")
    body.update(activity)
    body["links"] = {"self": api.link(context, "user", row["id"])}
    return body


def history_item(context, record: dict, senders: dict) -> dict:
    sender = senders.get(record.get("sender"))
    return {
        "id": record["id"],
        "date": record["timestamp"],
        "message": record.get("body", ""),
        "type": "message",
        "from": user_ref(context, sender) if sender else {"id": None, "name": record.get("sender_name"), "links": {}},
        "mentions": [],
    }


def register(app, context: api.ApiContext) -> None:
    def users():
        return services(context).users

    @api.route(app, "GET", "/user", scope="view_group")
    def list_users(request, caller):
        start, count = api.paging(request)
        d = call(
            users().page,
            include_guests=api.bool_argument(request, "include-guests", False),
            include_deleted=api.bool_argument(request, "include-deleted", False),
            start=start,
            limit=count,
        )
        return d.addCallback(
            lambda page: collection(
                request, context, [user_ref(context, row) for row in page[0]], page[1], "user", expand_item=lambda item: item
            )
        )

    @api.route(app, "POST", "/user", scope="admin_group")
    def create_user(request, caller):
        fields = {k: v for k, v in api.json_body(request, USER_FIELDS).items() if v is not None}
        d = call(users().create, fields)
        return d.addCallback(lambda row: (201, {"id": row["id"], "entity_id": row["id"], "links": {"self": api.link(context, "user", row["id"])}}))

    @api.route(app, "GET", "/user/<user>", scope="view_group")
    @defer.inlineCallbacks
    def get_user(request, caller, user):
        row = yield call(users().find, user)
        activity = yield users().presence(row["username"])
        return full_user(context, row, activity)

    @api.route(app, "PUT", "/user/<user>", scope="admin_group")
    def update_user(request, caller, user):
        fields = {k: v for k, v in api.json_body(request, UPDATE_FIELDS).items() if v is not None}
        return call(users().update, user, fields).addCallback(lambda _: None)

    @api.route(app, "DELETE", "/user/<user>", scope="admin_group")
    def delete_user(request, caller, user):
        return call(users().delete, user).addCallback(lambda _: None)

    @api.route(app, "POST", "/user/<user>/message", scope="send_message")
    @defer.inlineCallbacks
    def private_message(request, caller, user):
        body = api.json_body(
            request,
            {
                "message": api.field(str, max_length=10_000),
                "notify": api.field(bool, required=False, default=False),
                "message_format": api.field(str, required=False, default="text", choices=("text", "html")),
            },
        )
        if caller.username is None:
            raise api.ApiError(403, "a room notification token may only send notifications")
        yield message_sending_allowed(context, caller)
        target = yield call(users().find, user)
        yield api.flood_control(request, context, f"user:{target['id']}")
        yield call(services(context).private_messages.send, caller.username, target["username"], body["message"])
        return None

    @defer.inlineCallbacks
    def conversation(request, caller, user, path):
        if caller.username is None:
            raise api.ApiError(403, "a room notification token may only send notifications")
        count = api.int_argument(request, "max-results", 75)
        if not 0 <= count <= api.MAX_MAX_RESULTS:
            raise api.ApiError(400, f"max-results: expected 0 to {api.MAX_MAX_RESULTS}")
        target = yield call(users().find, user, include_deleted=True)
        history = services(context).history
        records = yield call(
            conversation_history, history, context.domain, caller.username, target["username"], limit=count, not_before=api.query_argument(request, "not-before")
        )
        senders = yield services(context).rooms.senders(records)
        return {
            "items": [history_item(context, r, senders) for r in records],
            "startIndex": 0,
            "maxResults": count,
            "links": {"self": f"{api.link(context, 'user', target['id'])}/{path}"},
        }

    @api.route(app, "GET", "/user/<user>/history", scope="view_messages")
    def user_history(request, caller, user):
        return conversation(request, caller, user, "history")

    @api.route(app, "GET", "/user/<user>/history/latest", scope="view_messages")
    def user_history_latest(request, caller, user):
        return conversation(request, caller, user, "history/latest")

