"""The durable message path through the installed appliance, for one-to-one messages.

A message acknowledged to its sender (XEP-0198) is already fsynced in a
front end's spool and listed in Redis's recent lists, and its recipient gets
it with the archive's stanza-id (XEP-0359), the same id the record carries.
"""

from __future__ import annotations

import asyncio
import glob
import json
import os
import uuid
import xml.etree.ElementTree as ET

from hipchat_server.storage.spool import read_frames
from tests.e2e.xmpp_client import TIMEOUT, run, send_acked, send_durably, sm_login

SID_NS = "urn:xmpp:sid:0"


def spooled_records(spool_dir: str, marker: str) -> list[dict]:
    """Every record in every process's spool whose body contains ``marker``."""
    found = []
    for path in sorted(glob.glob(os.path.join(spool_dir, "*", "*.seg"))):
        records, _ = read_frames(path)
        found.extend(r for r in records if marker in r.get("body", ""))
    return found


def stanza_id_of(message) -> str | None:
    element = message.xml.find(f"{{{SID_NS}}}stanza-id")
    return element.get("id") if element is not None else None


def test_an_acknowledged_message_is_in_the_spool_and_the_recent_lists(config, chat_server, endpoint, new_user):
    """bob's message is acknowledged only once durable: by then it is on disk and in Redis, under one id."""
    alice, bob = new_user(), new_user()
    domain = config.server.domain
    marker = uuid.uuid4().hex
    bodies = [f"durable {n} {marker}" for n in range(5)]

    async def scenario():
        receiver = await sm_login(endpoint, alice)
        sender = await sm_login(endpoint, bob)
        try:
            for body in bodies:
                await send_durably(sender, f"{alice}@{domain}", body)
                # Acknowledged: it must be on disk already (not "soon").
                [record] = spooled_records(config.archive.spool_dir, body)
                assert (record["sender"], record["recipient"]) == (f"{bob}@{domain}", f"{alice}@{domain}")
            return [await asyncio.wait_for(receiver.received.get(), TIMEOUT) for _ in bodies]
        finally:
            await receiver.close()
            await sender.close()

    received = run(scenario())
    records = spooled_records(config.archive.spool_dir, marker)
    assert [r["body"] for r in records] == bodies  # exactly once each, in order
    assert [stanza_id_of(m) for m in received] == [r["id"] for r in records]
    ids = [r["id"] for r in records]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)

    redis = chat_server.get_redis_primary()
    conversation = "|".join(sorted((f"{alice}@{domain}", f"{bob}@{domain}")))
    listed = [json.loads(item) for item in redis.lrange(f"archive:recent:conversation:{conversation}", 0, -1)]
    assert [r["id"] for r in listed] == list(reversed(ids))  # newest first
    for user in (alice, bob):
        mine = [json.loads(item)["id"] for item in redis.lrange(f"archive:recent:user:{user}@{domain}", 0, -1)]
        assert mine[: len(ids)] == list(reversed(ids))


def test_chat_states_and_errors_are_not_archived(config, endpoint, new_user):
    """Only messages people write (a body) go into the archive; a typing notification does not."""
    alice, bob = new_user(), new_user()
    domain = config.server.domain
    marker = uuid.uuid4().hex

    async def scenario():
        receiver = await sm_login(endpoint, alice)
        sender = await sm_login(endpoint, bob)
        try:
            typing = sender.make_message(mto=f"{alice}@{domain}", mtype="chat")
            typing["chat_state"] = "composing"
            typing["id"] = marker
            await send_acked(sender, typing)
            await send_durably(sender, f"{alice}@{domain}", f"after typing {marker}")
        finally:
            await receiver.close()
            await sender.close()

    run(scenario())
    records = spooled_records(config.archive.spool_dir, marker)
    assert [r["body"] for r in records] == [f"after typing {marker}"]


def test_a_resend_with_the_same_origin_id_is_delivered_and_archived_once(config, endpoint, new_user):
    """A client resending after a lost stream (same XEP-0359 origin-id) gets its ack; the recipient sees one copy."""
    alice, bob = new_user(), new_user()
    domain = config.server.domain
    marker = uuid.uuid4().hex

    async def scenario():
        receiver = await sm_login(endpoint, alice)
        sender = await sm_login(endpoint, bob)
        try:
            for _ in range(2):
                message = sender.make_message(mto=f"{alice}@{domain}", mbody=f"once {marker}", mtype="chat")
                message.xml.append(ET.fromstring(f"<origin-id xmlns='{SID_NS}' id='{marker}'/>"))
                await send_acked(sender, message)
            await send_durably(sender, f"{alice}@{domain}", f"next {marker}")
            return [(await asyncio.wait_for(receiver.received.get(), TIMEOUT))["body"] for _ in range(2)]
        finally:
            await receiver.close()
            await sender.close()

    assert run(scenario()) == [f"once {marker}", f"next {marker}"]
    assert [r["body"] for r in spooled_records(config.archive.spool_dir, marker)] == [f"once {marker}", f"next {marker}"]
