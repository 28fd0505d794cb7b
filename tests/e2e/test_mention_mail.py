"""Mention e-mail through the installed appliance: a user @mentioned in a room while offline gets an e-mail,
queued in the appliance's local mail relay (postfix on 127.0.0.1:25, holding mail until a company relay is set);
a user who is online gets none."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time

import pytest

from tests.e2e.test_api_rooms import Api, room_name
from tests.e2e.test_rooms import join, member
from tests.e2e.test_webhooks import say
from tests.e2e.xmpp_client import run


def queued_mail() -> list[dict]:
    """Every message in postfix's queue (`postqueue -j`: one JSON object per line)."""
    result = subprocess.run(["/usr/sbin/postqueue", "-j"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def mail_to(address: str) -> list[dict]:
    return [m for m in queued_mail() if any(r["address"] == address for r in m.get("recipients", []))]


@pytest.fixture
def delete_queued():
    """Delete the test's own messages from the relay's queue at the end."""
    ids: list[str] = []
    yield ids
    for queue_id in ids:
        subprocess.run(["/usr/sbin/postsuper", "-d", queue_id], capture_output=True, timeout=30)


def test_an_offline_mentioned_user_gets_a_mail_queued_in_the_local_relay(config, endpoint, new_user, delete_queued):
    alice, bob, carol = new_user(), new_user(), new_user()
    bob_address, carol_address = f"{bob}@e2e.example.com", f"{carol}@e2e.example.com"
    api = Api(config, alice)
    jid = api.ok("GET", f"room/{api.ok('POST', 'room', {'name': room_name()}, status=201)['id']}")["xmpp_jid"]

    async def scenario():
        a = await member(endpoint, alice)
        c = await member(endpoint, carol)  # online: no mail for her
        try:
            await join(a, jid, "alice")
            await say(a, jid, f"@{bob} and @{carol}: the release notes are ready")
            deadline = time.monotonic() + 60
            while not mail_to(bob_address) and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
        finally:
            await a.close()
            await c.close()

    run(scenario())
    [mail] = mail_to(bob_address)
    delete_queued.append(mail["queue_id"])
    assert mail["sender"].startswith("noreply@") or mail["sender"] == (config.mail.from_address or "")
    # Held by the relay (no company relay set on this host) rather than lost.
    assert mail["queue_name"] in ("deferred", "active", "incoming", "hold")
    time.sleep(2)
    assert mail_to(carol_address) == []
