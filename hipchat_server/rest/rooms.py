"""``/v2/room``: HipChat's room list, create, get, update, delete, topic and statistics; and the shapes every room area shares.

The protocol only: every operation is `rooms_api.RoomsApi`'s. A room is named
in a URL by its id, name or address. Objects carry absolute ``links.self``
(client libraries such as hypchat pick object types by matching it); a
collection's ``self`` is its URL without the paging query, as HipChat's was.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from twisted.internet import defer

from hipchat_server.rest import api
from hipchat_server.users_api import Refused

#: Filled per process by `services`.
_services: dict[int, "RoomServices"] = {}


@dataclass
class RoomServices:
    rooms: object  # rooms_api.RoomsApi
    users: object  # users_api.UserDirectory
    private_messages: object  # users_api.PrivateMessages
    history: object  # history.History


def services(context: api.ApiContext) -> RoomServices:
    """The domain services of this process (built once, on first use)."""
    found = _services.get(id(context.chat_server))
    if found is None:
        from hipchat_server.history import history_for
        from hipchat_server.rooms_api import rooms_api
        from hipchat_server.users_api import private_messages, user_directory

        chat_server = context.chat_server
        history = history_for(chat_server)
        found = RoomServices(rooms_api(chat_server, history), user_directory(chat_server), private_messages(chat_server), history)
        _services[id(context.chat_server)] = found
    return found


def domain_errors(d: defer.Deferred) -> defer.Deferred:
    """Turn the domain's refusals into HipChat's error answers."""

    def refused(failure):
        failure.trap(Refused)
        raise api.ApiError(failure.value.status, failure.value.message)

    return d.addErrback(refused)


def call(function, *args, **kwargs) -> defer.Deferred:
    """``function(*args, **kwargs)`` as a Deferred whose refusals are API errors (also when raised at once)."""
    return domain_errors(defer.maybeDeferred(function, *args, **kwargs))


def require_any_scope(caller, *scopes: str) -> None:
    """For routes one of several scopes opens (HipChat: admin_room, or manage_rooms for rooms one owns)."""
    if caller.rate_key.startswith("address:"):
        raise api.ApiError(401, api.NO_CREDENTIALS)
    if not set(scopes) & set(caller.scopes):
        raise api.ApiError(403, f"This endpoint requires the scope {scopes[0]}")


def collection(request, context, items, total, path: str, expand_item=None) -> dict:
    """`api.collection`, with ``links.self`` the collection's own URL (no query), as hypchat matches it."""
    body = api.collection(request, items, total, expand_item=expand_item)
    body["links"]["self"] = f"{context.public_url}/v2/{path}"
    return body


# Shapes.
def iso(moment) -> str | None:
    return moment.strftime("%Y-%m-%dT%H:%M:%S+00:00") if moment is not None else None


def user_ref(context, row: dict) -> dict:
    """A user as other objects name it: id, name, mention_name, links."""
    return {"id": row["id"], "name": row["name"], "mention_name": row["mention_name"], "links": {"self": api.link(context, "user", row["id"])}}


def room_links(context, room_id: int) -> dict:
    return {
        "self": api.link(context, "room", room_id),
        "webhooks": api.link(context, "room", room_id, "webhook"),
        "members": api.link(context, "room", room_id, "member"),
        "participants": api.link(context, "room", room_id, "participant"),
    }


def compact_room(context, details) -> dict:
    room = details.room
    return {
        "id": room.id,
        "name": room.config.name,
        "privacy": "private" if room.config.members_only else "public",
        "is_archived": details.is_archived,
        "version": "1",
        "links": room_links(context, room.id),
    }


def guest_access_url(context, details) -> str | None:
    """The room's guest link (``guests.py``) while guest access is on; None otherwise."""
    from hipchat_server.guests import guest_link

    token = getattr(details, "guest_token", None)
    return guest_link(context.public_url, token) if details.is_guest_accessible and token else None


def full_room(context, details, owner: dict | None = None, participants=()) -> dict:
    room = details.room
    body = compact_room(context, details)
    body.update(
        xmpp_jid=f"{room.jid_node}@{services(context).rooms.service}",
        topic=details.topic,
        created=iso(details.created_at),
        last_active=None,
        owner=user_ref(context, owner) if owner else None,
        participants=[user_ref(context, row) for row in participants],
        is_guest_accessible=details.is_guest_accessible,
        guest_access_url=guest_access_url(context, details),
        statistics={"links": {"self": api.link(context, "room", room.id, "statistics")}},
        delegate_admin_visibility=None,
    )
    return body


ROOM_FIELDS = {
    "name": api.field(str, max_length=50),
    "privacy": api.field(str, required=False, default="public", choices=("public", "private")),
    "topic": api.field(str, required=False, default="", max_length=250),
    "guest_access": api.field(bool, required=False, default=False),
    "owner_user_id": api.field(int, required=False),
}
UPDATE_FIELDS = {
    "name": api.field(str, required=False, max_length=50),
    "privacy": api.field(str, required=False, choices=("public", "private")),
    "is_archived": api.field(bool, required=False),
    "is_guest_accessible": api.field(bool, required=False),
    "topic": api.field(str, required=False, max_length=250),
    "owner": api.field(dict, required=False),
}


def register(app, context: api.ApiContext) -> None:
    @api.route(app, "GET", "/room", scope="view_group")
    def list_rooms(request, caller):
        start, count = api.paging(request)
        d = call(
            services(context).rooms.page,
            caller,
            include_private=api.bool_argument(request, "include-private", True),
            include_archived=api.bool_argument(request, "include-archived", False),
            start=start,
            limit=count,
        )
        return d.addCallback(
            lambda page: collection(
                request, context, [compact_room(context, d) for d in page[0]], page[1], "room", expand_item=lambda item: item
            )
        )

    @api.route(app, "POST", "/room", scope="manage_rooms")
    def create_room(request, caller):
        fields = {k: v for k, v in api.json_body(request, ROOM_FIELDS).items() if v is not None}
        d = call(services(context).rooms.create, caller, fields)
        return d.addCallback(lambda details: (201, {"id": details.room.id, "entity_id": details.room.id, "links": {"self": api.link(context, "room", details.room.id)}}))

    @api.route(app, "GET", "/room/<room>", scope="view_group")
    def get_room(request, caller, room):
        d = call(services(context).rooms.get, caller, room)
        return d.addCallback(lambda found: full_room(context, *found))

    @api.route(app, "PUT", "/room/<room>", scope=None)
    def update_room(request, caller, room):
        require_any_scope(caller, "admin_room", "manage_rooms")
        fields = {k: v for k, v in api.json_body(request, UPDATE_FIELDS).items() if v is not None}
        return call(services(context).rooms.update, caller, room, fields).addCallback(lambda _: None)

    @api.route(app, "DELETE", "/room/<room>", scope=None)
    def delete_room(request, caller, room):
        require_any_scope(caller, "admin_room", "manage_rooms")
        return call(services(context).rooms.delete, caller, room).addCallback(lambda _: None)

    @api.route(app, "PUT", "/room/<room>/topic", scope="admin_room")
    def set_topic(request, caller, room):
        body = api.json_body(request, {"topic": api.field(str, max_length=250)})
        return call(services(context).rooms.set_topic, caller, room, body["topic"]).addCallback(lambda _: None)

    @api.route(app, "GET", "/room/<room>/statistics", scope="view_group")
    def statistics(request, caller, room):
        d = call(services(context).rooms.statistics, caller, room)

        def shaped(stats):
            stats["links"] = {"self": f"{context.public_url}/v2/room/{quote(room, safe='')}/statistics"}
            return stats

        return d.addCallback(shaped)
