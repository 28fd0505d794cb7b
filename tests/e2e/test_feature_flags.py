"""Where the feature flags reach, per user, against the installed appliance (issue 7's named gaps).

Each test turns one flag off for a group of its own only ("everyone but this
group": on for everyone, off for the group), so other tests running at the same
time keep the feature; the flag is put back as it was afterwards. A change
reaches every process within `feature_flags.CACHE_SECONDS`.

- ``api_message_sending`` covers ``POST /v2/user/<id>/message``;
- ``web_client`` refuses XMPP-over-WebSocket logins with a SASL failure saying
  so, while the same account logs in over TCP;
- ``webhooks`` in chosen-groups mode is decided by the groups of the user who
  created each webhook.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import pytest

from tests.e2e.test_api_rooms import Api
from tests.e2e.test_rooms import join, member
from tests.e2e.test_webhooks import Receiver, delete_created_webhooks, room_with_webhook, say  # noqa: F401  (its cleanup too)
from tests.e2e.test_websocket import SASL, b64, connect
from tests.e2e.xmpp_client import PASSWORD, TIMEOUT, login, run

#: A flag change reaches the other processes within the cache time (5 s); this leaves room for a loaded machine.
REACH_SECONDS = 8.0


@pytest.fixture(scope="module")
def off_for(chat_server, prefix):
    """``off_for(flag, usernames)``: a context in which ``flag`` is off for a new group of ``usernames`` only."""
    from hipchat_server import feature_flags
    from hipchat_server.storage.feature_flags import FeatureFlagStore
    from hipchat_server.storage.groups import GroupStore
    from hipchat_server.storage.users import UserStore

    engine = chat_server.get_database_engine()
    flags, groups, accounts = FeatureFlagStore(engine), GroupStore(engine), UserStore(engine)

    @contextlib.contextmanager
    def off(flag: str, usernames):
        description, default = feature_flags.FLAGS[flag]
        group_id = groups.create(f"{prefix}{flag}-{uuid.uuid4().hex[:4]}")
        for username in usernames:
            groups.add_member(group_id, accounts.get_by_username(username)["id"])
        enabled, own = flags.snapshot().get(flag, (default, {}))
        flags.put(flag, description, True, {**own, group_id: False})
        try:
            yield
        finally:
            flags.put(flag, description, enabled, own)
            groups.delete(group_id)

    return off


def until(predicate, what: str, timeout: float = REACH_SECONDS) -> float:
    """Seconds until ``predicate()`` holds; fails after ``timeout``."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, f"{what} not within {timeout:.0f} s"
        time.sleep(0.5)
    return time.monotonic() - started


def test_api_message_sending_off_refuses_private_messages_by_api(config, new_user, off_for):
    """With ``api_message_sending`` off for their group, ``POST /v2/user/<id>/message`` is 403 in HipChat's error shape;
    a user outside the group still sends (204); on again, the first user sends again."""
    muted, other, target = new_user(), new_user(), new_user()
    target_id = Api(config, target).ok("GET", f"user/@{target}")["id"]

    def send(username):
        return Api(config, username).post(f"user/{target_id}/message", {"message": f"hello from {username}"})

    with off_for("api_message_sending", [muted]):
        took = until(lambda: send(muted).status_code == 403, "the private message refused")
        print(f"the flag reached the HTTPS process after {took:.1f} s")
        error = send(muted).json()["error"]
        assert error["code"] == 403 and error["type"] == "Forbidden" and "turned off" in error["message"]
        assert send(other).status_code == 204
    until(lambda: send(muted).status_code == 204, "the private message allowed again")


async def websocket_plain_login(endpoint, port: int, username: str) -> str:
    """The SASL answer (``<success/>`` or ``<failure/>``) to a PLAIN login over WebSocket; the stream is then dropped."""
    stream = await connect(endpoint, port)
    try:
        await stream.open_stream(endpoint.domain)
        stream.send_xml(f"<auth xmlns='{SASL}' mechanism='PLAIN'>{b64(chr(0).join(('', username, PASSWORD)))}</auth>")
        return await stream.receive() or ""
    finally:
        await stream.abort()


def test_web_client_off_refuses_websocket_logins_with_a_clear_failure_while_tcp_logins_work(config, endpoint, new_user, off_for):
    """With ``web_client`` off for their group, a user's XMPP-over-WebSocket login gets <not-authorized/> with a text
    naming the web client; their TCP login (a desktop client) is bound; a user outside the group logs in over WebSocket."""
    webless, webby = new_user(), new_user()
    port = config.http.https_port

    def websocket_answer(username):
        return run(websocket_plain_login(endpoint, port, username))

    with off_for("web_client", [webless]):
        took = until(lambda: websocket_answer(webless).startswith("<failure"), "the WebSocket login refused")
        print(f"the flag reached the HTTPS process after {took:.1f} s")
        failure = websocket_answer(webless)
        assert failure == (
            f"<failure xmlns='{SASL}'><not-authorized/>"
            "<text>the web client is turned off for you; use a desktop XMPP client</text></failure>"
        )
        assert websocket_answer(webby).startswith(f"<success xmlns='{SASL}'")

        async def desktop():
            client, ok = await login(endpoint, webless)
            await client.close()
            return ok

        assert run(desktop()) is True


def test_webhooks_in_chosen_groups_mode_follow_the_groups_of_each_webhooks_creator(config, endpoint, new_user, off_for):
    """``webhooks`` off for the group of one webhook's creator: that webhook is no longer called, another creator's
    webhook still is (both creators post in their own rooms; the worker decides per webhook)."""
    from hipchat_server import feature_flags

    muted, other = new_user(), new_user()
    muted_hook, other_hook = Receiver(default=(204, b"")), Receiver(default=(204, b""))
    try:
        _, muted_room, _ = room_with_webhook(config, muted, {"url": muted_hook.url, "event": "room_message", "name": "muted"})
        _, other_room, _ = room_with_webhook(config, other, {"url": other_hook.url, "event": "room_message", "name": "other"})

        async def post(username, room, text):
            client = await member(endpoint, username)
            try:
                await join(client, room, username)
                await say(client, room, text)
                await asyncio.sleep(0.5)  # sent before the stream closes
            finally:
                await client.close()

        run(post(muted, muted_room, "before the flag"))
        muted_hook.wait_for_requests(1, TIMEOUT)  # the webhook works while the flag is on
        with off_for("webhooks", [muted]):
            time.sleep(feature_flags.CACHE_SECONDS + 1)  # the workers' cached flags and groups expire
            run(post(muted, muted_room, "while off for my group"))
            run(post(other, other_room, "while off for the other group"))
            other_hook.wait_for_requests(1, TIMEOUT)
            time.sleep(2)  # the muted webhook's job was queued before the other's: it would have arrived by now
            assert len(muted_hook.requests) == 1, "a webhook of a creator the flag is off for was called"
    finally:
        muted_hook.close()
        other_hook.close()
