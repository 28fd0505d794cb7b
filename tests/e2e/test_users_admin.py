"""Ending an account's sessions from every place that disables or deletes it, against the installed appliance.

The console and `user deactivate` are covered by test_console.py; here the
other two ways in: `hipchat-appliance user disable` and ``DELETE
/v2/user/<id>``. Each must close the account's open XMPP stream with
``<not-authorized/>`` (no silent reconnection) within seconds, like the console.
"""

from __future__ import annotations

import asyncio
import time

from tests.conftest import run_appliance_cli
from tests.e2e.test_api_rooms import Api
from tests.e2e.test_api_users import admin  # noqa: F401  (the module's group administrator)
from tests.e2e.xmpp_client import TIMEOUT, event, login, run

#: From the command or request returning to the stream being closed, at most.
CLOSED_WITHIN = 5.0


async def stream_closed_by(endpoint, username: str, action) -> tuple[str, float]:
    """Log ``username`` in, run ``action`` (blocking, in a thread); answer the stream error's condition and the
    seconds from the action's return to the close (0 when the stream closed while the action ran)."""
    client, ok = await login(endpoint, username)
    assert ok, f"{username} could not log in"
    try:
        error = await event(client, "stream_error")
        disconnected = await event(client, "disconnected")
        started = time.monotonic()
        await asyncio.to_thread(action)
        done = time.monotonic()
        await asyncio.wait_for(disconnected, TIMEOUT)
        waited = time.monotonic() - done
        print(f"closed {time.monotonic() - started:.2f} s after the action began (it took {done - started:.2f} s)")
        condition = (await asyncio.wait_for(error, 1))["condition"]
        return condition, waited
    finally:
        await client.close()


def test_user_disable_from_the_cli_closes_the_open_stream(endpoint, new_user):
    """`hipchat-appliance user disable` ends the user's XMPP stream at once (not-authorized) and says so; the next login is refused."""
    username = new_user()
    outputs = []

    def disable():
        result = run_appliance_cli("user", "disable", username)
        assert result.returncode == 0, result.stdout + result.stderr
        outputs.append(result.stdout)

    condition, waited = run(stream_closed_by(endpoint, username, disable))
    print(f"stream closed {waited:.2f} s after `user disable` returned")
    assert condition == "not-authorized" and waited < CLOSED_WITHIN
    assert f"User {username} disabled." in outputs[0] and "1 chat sessions" in outputs[0]

    async def again():
        client, ok = await login(endpoint, username)
        await client.close()
        return ok

    assert run(again()) is False


def test_deleting_a_user_through_the_api_closes_the_open_stream(config, endpoint, new_user, admin):  # noqa: F811
    """``DELETE /v2/user/<id>`` (204) ends the user's XMPP stream at once, as the console's deactivation does."""
    username = new_user()
    api = Api(config, admin)
    user_id = api.ok("GET", f"user/@{username}")["id"]
    condition, waited = run(stream_closed_by(endpoint, username, lambda: api.ok("DELETE", f"user/{user_id}", status=204)))
    print(f"stream closed {waited:.2f} s after DELETE answered")
    assert condition == "not-authorized" and waited < CLOSED_WITHIN
    assert api.get(f"user/{user_id}").status_code == 404
