"""kill -9 of an XMPP front end during traffic: every message a sender saw acknowledged is delivered or stored.

Senders use Stream Management (XEP-0198), so they learn which messages the
server acknowledged; the server acknowledges a message only once it is
written to a recipient's stream (confirmed by the front end holding it) or
stored offline in MariaDB. Clients are pinned to a front end by logging in
until the session directory shows the wanted one (the kernel spreads
connections over the front ends, SO_REUSEPORT).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid

import pytest

from tests.conftest import program_pid, supervisorctl, wait_for
from tests.e2e.xmpp_client import TIMEOUT, front_end_of, login, run

pytestmark = pytest.mark.disruptive

VICTIM, SURVIVOR = "chat-core:xmpp-0", "chat-core:xmpp-1"
SEND_INTERVAL = 0.02  # seconds between two messages of one sender


async def login_on(config, endpoint, username: str, program: str, **options):
    """Log ``username`` in on the front end run by supervisor ``program`` (retrying until the kernel picks it)."""
    process_name = program.split(":")[-1]
    for _ in range(40):
        resource = f"crash-{uuid.uuid4().hex[:6]}"
        client, ok = await login(endpoint, username, resource=resource, **options)
        assert ok, f"{username} could not log in"
        for _ in range(20):
            holder = front_end_of(config, username, resource)
            if holder:
                break
            await asyncio.sleep(0.05)
        if holder and holder.endswith(f":{process_name}"):
            return client
        await client.close()
    pytest.fail(f"never landed on {program}")


class Sender:
    """Sends numbered messages to one recipient and records which ones the server acknowledged."""

    def __init__(self, client, to: str):
        self.client, self.to = client, to
        self.sent: list[str] = []
        self.acked: set[str] = set()
        client.add_event_handler("stanza_acked", self._acked)

    def _acked(self, stanza) -> None:
        if stanza.name == "message" and stanza["body"]:
            self.acked.add(stanza["body"])

    async def send_for(self, seconds: float) -> None:
        stop = time.monotonic() + seconds
        while time.monotonic() < stop and self.client.transport is not None:
            body = f"{self.client.boundjid.user} {len(self.sent)} {uuid.uuid4().hex[:6]}"
            self.client.send_message(mto=self.to, mbody=body, mtype="chat")
            self.sent.append(body)
            self.client.plugin["xep_0198"].request_ack()
            await asyncio.sleep(SEND_INTERVAL)


def bodies(received: asyncio.Queue) -> set[str]:
    out = set()
    while not received.empty():
        message = received.get_nowait()
        if message["type"] != "error":
            out.add(message["body"])
    return out


async def arrivals_at_next_login(endpoint, username: str, wanted: set[str]) -> set[str]:
    """The bodies a fresh login of ``username`` receives (offline storage) until all of ``wanted`` came or TIMEOUT."""
    again, ok = await login(endpoint, username)
    assert ok, f"{username} could not log in again"
    got: set[str] = set()
    try:
        deadline = asyncio.get_running_loop().time() + TIMEOUT
        while not wanted <= got and asyncio.get_running_loop().time() < deadline:
            try:
                got.add((await asyncio.wait_for(again.received.get(), 1.0))["body"])
            except asyncio.TimeoutError:
                continue
    finally:
        await again.close()
    return got


def kill_and_wait_for_restart(program: str) -> None:
    pid = program_pid(program)
    assert pid, f"{program} is not running"
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: program_pid(program) not in (0, pid), 60, what=f"supervisor to restart {program}")


def test_acknowledged_messages_survive_a_killed_sender_front_end(config, endpoint, new_user):
    """Senders on a front end that dies: every message they saw acknowledged reached its online recipient."""
    recipients = [new_user() for _ in range(2)]
    senders = [new_user() for _ in range(4)]

    async def scenario():
        receivers = [await login_on(config, endpoint, r, SURVIVOR) for r in recipients]
        clients = []
        for n, username in enumerate(senders):
            program = VICTIM if n < 3 else SURVIVOR
            clients.append(await login_on(config, endpoint, username, program, plugins=("xep_0198",)))
        try:
            streams = [
                Sender(c, f"{recipients[n % len(recipients)]}@{endpoint.domain}") for n, c in enumerate(clients)
            ]
            survivor_pid = program_pid(SURVIVOR)
            sending = [asyncio.ensure_future(s.send_for(4.0)) for s in streams]
            await asyncio.sleep(1.5)
            await asyncio.get_running_loop().run_in_executor(None, kill_and_wait_for_restart, VICTIM)
            await asyncio.gather(*sending)
            await asyncio.sleep(3.0)  # late deliveries and acks
            received = set().union(*(bodies(r.received) for r in receivers))
            acked = set().union(*(s.acked for s in streams))
            on_victim = set().union(*(s.acked for s in streams[:3]))
            assert on_victim, "no message from the killed front end's senders was acknowledged before the kill"
            missing = acked - received
            assert not missing, f"{len(missing)} acknowledged messages never arrived, e.g. {sorted(missing)[:3]}"
            assert program_pid(SURVIVOR) == survivor_pid, "the other front end was harmed"
        finally:
            for client in (*clients, *receivers):
                await client.close()

    run(scenario())


def test_messages_for_a_killed_recipient_front_end_are_stored_and_delivered_at_next_login(config, endpoint, new_user):
    """Recipients on a front end that dies: what is acknowledged after the kill is stored, then delivered at login."""
    recipient, sender_name = new_user(), new_user()

    async def scenario():
        receiver = await login_on(config, endpoint, recipient, VICTIM)
        sender = await login_on(config, endpoint, sender_name, SURVIVOR, plugins=("xep_0198",))
        stream = Sender(sender, f"{recipient}@{endpoint.domain}")
        try:
            await stream.send_for(1.0)
            killed_at = len(stream.sent)
            await asyncio.get_running_loop().run_in_executor(None, kill_and_wait_for_restart, VICTIM)
            await stream.send_for(2.0)
            await asyncio.sleep(5.0)  # confirmations time out into offline storage; acks arrive
            after_kill = {b for b in stream.sent[killed_at:] if b in stream.acked}
            assert after_kill, "nothing sent after the kill was acknowledged"
            receiver.abort()
            missing = after_kill - await arrivals_at_next_login(endpoint, recipient, after_kill)
            assert not missing, f"{len(missing)} acknowledged messages were lost, e.g. {sorted(missing)[:3]}"
        finally:
            await sender.close()

    run(scenario())


def test_a_restarted_recipient_front_end_keeps_what_its_clients_did_not_acknowledge(config, endpoint, new_user):
    """A graceful restart (supervisor's SIGTERM) ends each session that cannot be resumed first: messages its
    client never acknowledged are stored offline."""
    recipient, sender_name = new_user(), new_user()

    async def scenario():
        receiver = await login_on(
            config, endpoint, recipient, VICTIM, plugins=("xep_0198",), plugin_config={"xep_0198": {"allow_resume": False}}
        )
        receiver.plugin["xep_0198"].send_ack = lambda: None  # a phone that read the messages, then lost its network
        sender = await login_on(config, endpoint, sender_name, SURVIVOR, plugins=("xep_0198",))
        stream = Sender(sender, f"{recipient}@{endpoint.domain}")
        try:
            await stream.send_for(0.5)
            unacknowledged = set(stream.sent)
            await asyncio.sleep(0.2)
            sender.plugin["xep_0198"].request_ack()  # slixmpp sends a message after the <r/> that follows it
            await wait_async(lambda: unacknowledged <= stream.acked, "the server to acknowledge every message")
            live: set[str] = set()
            while not unacknowledged <= live:
                live.add((await asyncio.wait_for(receiver.received.get(), TIMEOUT))["body"])
            restarted = await asyncio.get_running_loop().run_in_executor(None, supervisorctl, "restart", VICTIM)
            assert restarted.returncode == 0, restarted.stdout + restarted.stderr
            receiver.abort()
            missing = unacknowledged - await arrivals_at_next_login(endpoint, recipient, unacknowledged)
            assert not missing, f"{len(missing)} of {len(unacknowledged)} unacknowledged messages were lost, e.g. {sorted(missing)[:3]}"
        finally:
            await sender.close()

    run(scenario())


async def wait_async(predicate, what: str, timeout: float = TIMEOUT) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def test_a_restarted_front_end_hands_its_sessions_over_and_their_clients_resume(config, chat_server, endpoint, new_user):
    """A graceful restart hands each resumable session to the other front end: the client's connection drops
    without a stream error, it resumes (XEP-0198) instead of binding anew, gets every message sent meanwhile,
    and is still in its room after the restarted front end cleared what it held before."""
    from slixmpp import JID

    from hipchat_server.storage.rooms import OccupantStore
    from tests.e2e.test_message_path_faults import join_room

    recipient, sender_name = new_user(), new_user()
    room = f"handover-{uuid.uuid4().hex[:8]}@conference.{endpoint.domain}"

    async def scenario():
        receiver = await login_on(config, endpoint, recipient, VICTIM, plugins=("xep_0198", "xep_0045"))
        sender = await login_on(config, endpoint, sender_name, SURVIVOR, plugins=("xep_0198", "xep_0045"))
        starts: list[float] = []
        receiver.add_event_handler("session_start", lambda _: starts.append(time.monotonic()))
        sm_id = receiver.plugin["xep_0198"].sm_id
        stream = Sender(sender, receiver.boundjid.full)
        try:
            await join_room(sender, room, "sender")
            await join_room(receiver, room, "receiver")
            await stream.send_for(0.5)
            disconnected = asyncio.get_running_loop().create_future()
            receiver.add_event_handler("disconnected", lambda e: disconnected.done() or disconnected.set_result(e), disposable=True)
            stream_errors: list = []
            receiver.add_event_handler("stream_error", stream_errors.append)
            sending = asyncio.ensure_future(stream.send_for(6.0))  # through the restart
            restarting = asyncio.get_running_loop().run_in_executor(None, supervisorctl, "restart", VICTIM)
            await asyncio.wait_for(disconnected, TIMEOUT)
            assert not stream_errors, f"the session was ended, not handed over: {stream_errors[0]}"
            resumed = asyncio.get_running_loop().create_future()
            receiver.add_event_handler("session_resumed", lambda e: resumed.done() or resumed.set_result(e), disposable=True)
            receiver.connect("127.0.0.1", endpoint.c2s_port)
            await asyncio.wait_for(resumed, TIMEOUT)
            assert receiver.plugin["xep_0198"].sm_id == sm_id and not starts, "the client bound a new session instead of resuming"
            restarted = await restarting
            assert restarted.returncode == 0, restarted.stdout + restarted.stderr
            await sending
            await asyncio.sleep(1.0)
            sender.plugin["xep_0198"].request_ack()
            await wait_async(lambda: set(stream.sent) <= stream.acked, "the server to acknowledge every message")
            got: set[str] = set()
            deadline = asyncio.get_running_loop().time() + TIMEOUT
            while not set(stream.sent) <= got and asyncio.get_running_loop().time() < deadline:
                try:
                    message = await asyncio.wait_for(receiver.received.get(), 1.0)
                except asyncio.TimeoutError:
                    continue
                if message["type"] == "chat":
                    got.add(message["body"])
            missing = set(stream.sent) - got
            assert not missing, f"{len(missing)} of {len(stream.sent)} messages never reached the resumed session, e.g. {sorted(missing)[:3]}"

            # Still in the room, though its old front end restarted and took its own occupants out.
            holder = front_end_of(config, recipient, receiver.boundjid.resource)
            entry = OccupantStore(chat_server.get_redis_primary()).occupant(room, receiver.boundjid.full)
            assert entry is not None and entry.frontend == holder, (entry, holder)
            said = f"after the restart {uuid.uuid4().hex[:6]}"
            sender.send_message(mto=JID(room), mbody=said, mtype="groupchat")
            while True:
                message = await asyncio.wait_for(receiver.received.get(), TIMEOUT)
                if message["type"] == "groupchat" and message["body"] == said:
                    break
        finally:
            await sender.close()
            await receiver.close()

    run(scenario())
