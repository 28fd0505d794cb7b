"""``GET /v2/messages/<id>``: one message, for permalinks; 404 when it does not exist or is not the caller's to read.

The answer does not tell "no such message" from "not yours": both are 404.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.web import resource

from hipchat_server.history import HistoryError
from hipchat_server.rest.api import ApiContext, ApiError, ApiResource, error_body, write_json


def message_item(record: dict, public_url: str, *, real_jids: bool = True) -> dict:
    """A message as the API shows it; ``real_jids`` False hides which account sent a room message."""
    sender = {"name": record.get("sender_name")}
    if real_jids or not record.get("room"):
        sender["jid"] = record.get("sender")
    item = {
        "id": record["id"],
        "date": record["timestamp"],
        "type": "message" if record.get("room") else "private",
        "room": record.get("room"),
        "from": sender,
        "message": record.get("body", ""),
        "links": {"self": f"{public_url}/v2/messages/{record['id']}"},
    }
    if not record.get("room"):
        item["to"] = record.get("recipient")
    return item


class MessageResource(ApiResource):
    def __init__(self, context: ApiContext, history, message_id: str):
        super().__init__(context)
        self.history, self.message_id = history, message_id

    @defer.inlineCallbacks
    def get(self, request, username: str):
        try:
            found = yield self.history.message(self.context.bare_jid(username), self.message_id)
        except HistoryError as e:
            raise ApiError(503, e.text) from e
        if found is None:
            raise ApiError(404, f"no message {self.message_id!r} you may read")
        record, real_jids = found
        return message_item(record, self.context.public_url, real_jids=real_jids)


class MessagesResource(resource.Resource):
    """``/v2/messages``: each child is one message id."""

    def __init__(self, context: ApiContext, history):
        super().__init__()
        self.context, self.history = context, history

    def getChild(self, path: bytes, request):
        if not path:
            return _NotFound()
        return MessageResource(self.context, self.history, path.decode("utf-8", "replace"))


class _NotFound(resource.Resource):
    isLeaf = True

    def render(self, request):
        write_json(request, 404, error_body(404, "name a message: /v2/messages/<id>"))
        return b""
