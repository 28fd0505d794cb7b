"""Push notifications through an HTTP gateway (``push`` jobs), for people @mentioned while offline.

When ``push.gateway_url`` is set, the worker POSTs one JSON document per
offline mention to it (``{"user", "title", "body", "room_id", "room_name",
"message_id", "timestamp"}``), with ``Authorization: Bearer <gateway_token>``
when a token is set, and a 10 s timeout; the gateway (the company's, or a
relay to APNs/FCM) does the rest. 5xx and network errors are retried with
backoff; other 4xx go to the dead letters.
"""

from __future__ import annotations

import json

from hipchat_server.jobs import PermanentJobError
from hipchat_server.webhooks import RETRIED_STATUSES, post_json

BODY_LENGTH = 240  # a lock screen shows a line or two


def push_document(details: dict) -> dict:
    body = details.get("body", "")
    return {
        "user": details.get("username"),
        "title": f"{details.get('sender_name') or 'Someone'} mentioned you in {details.get('room_name') or 'a room'}",
        "body": body if len(body) <= BODY_LENGTH else body[: BODY_LENGTH - 1] + "…",
        "room_id": details.get("room_id"),
        "room_name": details.get("room_name"),
        "message_id": details.get("message_id"),
        "timestamp": details.get("timestamp"),
    }


class PushGateway:
    """The ``push`` job handler over the ``push`` config section."""

    def __init__(self, push, post=post_json):
        self.push = push
        self.post = post

    def __call__(self, job) -> None:
        if not self.push.gateway_url:
            return  # turned off since the job was queued
        headers = {"Authorization": f"Bearer {self.push.gateway_token}"} if self.push.gateway_token else {}
        body = json.dumps(push_document(job.payload), ensure_ascii=False).encode("utf-8")
        status, _ = self.post(self.push.gateway_url, body, headers)
        if 200 <= status < 300:
            return
        if 400 <= status < 500 and status not in RETRIED_STATUSES:
            raise PermanentJobError(f"the push gateway refused the notification: HTTP {status}")
        raise RuntimeError(f"the push gateway answered HTTP {status}")
