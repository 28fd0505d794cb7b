"""``/v2/room/<room>/commit-hook``: incoming GitHub and Bitbucket push hooks (see `commit_hooks`).

``POST /v2/room/<room>/commit-hook`` (``admin_room``, the room's owners and
admins) creates a hook and answers its URL once. ``POST
/v2/room/<id>/commit-hook/<token>`` takes the service's push: no bearer
authentication (the services cannot send one); the token in the URL is the
secret, and GitHub's signature is checked when the hook has a secret. It
answers 204 once the notification is durable in the room (or for an event
that posts nothing), 404 for an unknown room or token, 401 for a bad
signature, 400 for a payload it cannot read.
"""

from __future__ import annotations

from twisted.internet import defer

from hipchat_server.commit_hooks import CommitHookError, CommitHooks, SignatureMismatch, notification_for
from hipchat_server.rest import api
from hipchat_server.rest.webhooks import administered_room

CREATE_FIELDS = {
    "label": api.field(str, required=False, default="", max_length=100),
    "secret": api.field(str, required=False, max_length=255),
}

_hooks: dict[int, CommitHooks] = {}


def commit_hooks(context: api.ApiContext) -> CommitHooks:
    found = _hooks.get(id(context.chat_server))
    if found is None:
        from hipchat_server.storage.webhooks import WebhookStore

        found = CommitHooks(WebhookStore(context.chat_server.get_database_engine()))
        _hooks[id(context.chat_server)] = found
    return found


def register(app, context: api.ApiContext) -> None:
    config = context.chat_server.get_config()
    rooms_domain = f"{config.rooms.service}.{config.server.domain}"

    @api.route(app, "POST", "/room/<room>/commit-hook", scope="admin_room")
    @defer.inlineCallbacks
    def create_commit_hook(request, caller, room):
        body = api.json_body(request, CREATE_FIELDS)
        found = yield administered_room(context, caller, room)
        try:
            hook_id, token = yield context.run_blocking(
                commit_hooks(context).create, found.id, label=body["label"], secret=body["secret"], created_by=caller.user_id
            )
        except CommitHookError as e:
            raise api.ApiError(400, str(e)) from None
        url = api.link(context, "room", found.id, "commit-hook", token)
        return 201, {"id": hook_id, "url": url, "token": token, "links": {"self": url}}

    @api.route(app, "POST", "/room/<room>/commit-hook/<token>", scope=None, public=True)
    @defer.inlineCallbacks
    def receive_push(request, caller, room, token):
        if not room.isdigit() or len(room) > 12:
            raise api.ApiError(404, "no such commit hook")
        body = api.read_body(request)
        hook = yield context.run_blocking(commit_hooks(context).find, int(room), token)
        if hook is None:
            raise api.ApiError(404, "no such commit hook")
        room_ref = yield context.run_blocking(commit_hooks(context).store.room, room_id=hook.room_id)
        if room_ref is None:
            raise api.ApiError(404, "no such commit hook")
        headers = {
            name: (request.getHeader(name.encode()) or b"").decode("latin-1")
            for name in ("x-github-event", "x-event-key", "x-hub-signature-256")
        }
        try:
            notification = notification_for({k: v for k, v in headers.items() if v}, body, hook.secret)
        except SignatureMismatch as e:
            raise api.ApiError(401, str(e)) from None
        except CommitHookError as e:
            raise api.ApiError(400, str(e)) from None
        if notification is not None:
            poster = context.chat_server.get_room_poster()
            yield poster.post_notification(f"{room_ref.jid_node}@{rooms_domain}", notification)
        return None
