"""Faults during room traffic: what the senders saw acknowledged is in history exactly once.

Occupants on both front ends chat in one room under Stream Management
(XEP-0198), each message carrying a XEP-0359 origin-id. A fault hits in the
middle: the Redis primary is killed (Sentinel fails over), an OpenSearch data
node is killed, every OpenSearch node stops for 30 s, or a front end is killed. A client that loses its stream
logs in again, rejoins and resends what was never acknowledged, with the same
origin-id, as a careful client does. In the end every message is
acknowledged, and history (the OpenSearch index every message is drained
into) holds each exactly once: nothing lost, nothing doubled.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
import xml.etree.ElementTree as ET

import pytest
from slixmpp import JID

from tests.conftest import program_pid, supervisorctl, wait_for
from tests.e2e.xmpp_client import TIMEOUT, front_end_of, login, run

pytestmark = pytest.mark.disruptive

SID_NS = "urn:xmpp:sid:0"
MUC_OWNER_NS = "http://jabber.org/protocol/muc#owner"
SEND_INTERVAL = 0.05  # seconds between two messages of one occupant
TRAFFIC_SECONDS = 8.0
FAULT_AFTER = 2.5


async def join_room(client, room: str, nick: str) -> None:
    """Join ``room`` (creating it as an instant room when it is new) and wait for our own presence."""
    presence, _, _, _ = await client.plugin["xep_0045"].join_muc_wait(JID(room), nick, timeout=TIMEOUT, maxstanzas=0)
    codes = {s.get("code") for s in presence.xml.iter("{http://jabber.org/protocol/muc#user}status")}
    if "201" in codes:  # a new room: accept the default configuration (XEP-0045 10.1.2)
        iq = client.make_iq_set(ito=room)
        query = ET.SubElement(iq.xml, f"{{{MUC_OWNER_NS}}}query")
        ET.SubElement(query, "{jabber:x:data}x", {"type": "submit"})
        await iq.send(timeout=TIMEOUT)


class Occupant:
    """One user in the room: sends numbered messages, logs in again after losing its stream, resends the unacked."""

    def __init__(self, endpoint, username: str, room: str, front_end: str | None = None):
        self.endpoint, self.username, self.room = endpoint, username, room
        self.front_end = front_end  # the XMPP process (xmpp-0) to be on at first
        self.client = None
        self.sent: dict[str, str] = {}  # origin-id -> body, in sending order
        self.acked: set[str] = set()  # origin-ids the server acknowledged
        self.refused: set[str] = set()  # origin-ids answered with an error (acknowledged too: handled, not stored)
        self.sent_on: dict[str, object] = {}  # origin-id -> the client (stream) it was last sent on
        self.logins = 0

    async def connect(self) -> None:
        for _ in range(40):
            resource = f"r{uuid.uuid4().hex[:6]}"
            client, ok = await login(self.endpoint, self.username, resource=resource, plugins=("xep_0198", "xep_0045"))
            assert ok, f"{self.username} could not log in"
            if self.logins or self.front_end is None:
                break
            holder = await self._front_end_holding(resource)
            if holder.endswith(f":{self.front_end}"):
                break
            await client.close()  # the kernel put it on the other front end: try again
        else:
            pytest.fail(f"{self.username} never landed on {self.front_end}")
        client.add_event_handler("stanza_acked", self._acked)
        client.add_event_handler("message_error", self._refused)
        deadline = time.monotonic() + TIMEOUT
        while client.plugin["xep_0198"].sm_id is None:
            assert time.monotonic() < deadline, "stream management was not enabled"
            await asyncio.sleep(0.05)
        await join_room(client, self.room, self.username)
        self.client, self.logins = client, self.logins + 1

    async def _front_end_holding(self, resource: str) -> str:
        for _ in range(40):
            holder = front_end_of(self.endpoint.config, self.username, resource)
            if holder:
                return holder
            await asyncio.sleep(0.05)
        return ""

    def _acked(self, stanza) -> None:
        origin = stanza.xml.find(f"{{{SID_NS}}}origin-id")
        if stanza.name == "message" and origin is not None and origin.get("id") not in self.refused:
            self.acked.add(origin.get("id"))

    def _refused(self, error) -> None:
        # The error precedes the <a/> that counts the message as handled.
        if error["id"] in self.sent:
            self.refused.add(error["id"])

    @property
    def connected(self) -> bool:
        return self.client is not None and self.client.transport is not None and self.client.is_connected()

    def send(self, origin: str) -> None:
        self.refused.discard(origin)
        message = self.client.make_message(mto=self.room, mbody=self.sent[origin], mtype="groupchat")
        message["id"] = origin  # an error reply carries it back
        message.xml.append(ET.fromstring(f"<origin-id xmlns='{SID_NS}' id='{origin}'/>"))
        message.send()
        self.sent_on[origin] = self.client
        self.client.plugin["xep_0198"].request_ack()

    async def chat_for(self, seconds: float) -> None:
        stop = time.monotonic() + seconds
        while time.monotonic() < stop:
            if not self.connected:
                await self._reconnect()
                continue
            origin = uuid.uuid4().hex
            self.sent[origin] = f"{self.username} {len(self.sent)} {origin[:6]}"
            self.send(origin)
            await asyncio.sleep(SEND_INTERVAL)

    async def _reconnect(self) -> None:
        if self.client is not None:
            self.client.abort()
        for _ in range(30):
            try:
                await self.connect()
                return
            except (AssertionError, asyncio.TimeoutError, Exception):  # the service may still be coming back
                await asyncio.sleep(1.0)
        pytest.fail(f"{self.username} could not get back into the room")

    async def resend_unacked(self) -> None:
        """Resend, with the same origin-id, whatever is not acknowledged every 2 s, until all of it is.

        Stricter than a careful client, which resends only what was refused or
        went out on a stream since lost: here copies of a message still on its
        way are sent too, and the archive must still keep one.
        """
        deadline = time.monotonic() + 3 * TIMEOUT
        while True:
            missing = [o for o in self.sent if o not in self.acked or o in self.refused]
            if not missing:
                return
            if time.monotonic() >= deadline:
                order = list(self.sent)
                detail = [(order.index(o), len(order), o in self.refused, self.sent_on.get(o) is self.client) for o in missing]
                pytest.fail(f"{len(missing)} messages of {self.username} never acknowledged (position, of, refused, this stream): {detail}")
            if not self.connected:
                await self._reconnect()
            for origin in missing:
                self.send(origin)
            await asyncio.sleep(2.0)


def room_history(chat_server, room: str) -> list[str]:
    """Every body in the message indices for ``room`` (duplicates included), after a refresh."""
    client = chat_server.get_opensearch_client()
    client.indices.refresh(index="messages")
    result = client.search(
        index="messages", body={"query": {"term": {"room": room}}, "size": 10000, "_source": ["body"]}
    )
    return [hit["_source"]["body"] for hit in result["hits"]["hits"]]


def run_room_traffic(config, endpoint, chat_server, new_user, fault, seconds: float = TRAFFIC_SECONDS) -> list[Occupant]:
    """Four occupants chat for ``seconds``; ``fault()`` (blocking) runs mid-traffic; then every message is in history once."""
    room = f"faults-{uuid.uuid4().hex[:8]}@{config.rooms.service}.{config.server.domain}"
    # Two occupants on each XMPP front end, so a killed front end always takes some of them.
    occupants = [Occupant(endpoint, new_user(), room, front_end=f"xmpp-{n % 2}") for n in range(4)]

    async def scenario():
        for occupant in occupants:
            await occupant.connect()
        chatting = [asyncio.ensure_future(o.chat_for(seconds)) for o in occupants]
        await asyncio.sleep(FAULT_AFTER)
        await asyncio.get_running_loop().run_in_executor(None, fault)
        await asyncio.gather(*chatting)
        for occupant in occupants:
            await occupant.resend_unacked()
        for occupant in occupants:
            await occupant.client.close()

    run(scenario())
    sent = [body for o in occupants for body in o.sent.values()]
    assert len(sent) > 100

    def indexed() -> int:
        try:
            return len(room_history(chat_server, room))
        except Exception:  # the cluster may still be starting
            return -1

    deadline = time.monotonic() + 180
    while indexed() < len(sent) and time.monotonic() < deadline:
        time.sleep(1.0)
    time.sleep(2.0)  # a late duplicate would show up now
    history = room_history(chat_server, room)
    print(f"{room}: {len(sent)} sent, {len(history)} in history, logins {[o.logins for o in occupants]}")
    doubled = sorted({b for b in history if history.count(b) > 1})
    assert not doubled, f"{len(doubled)} messages are in history twice, e.g. {doubled[:3]}"
    missing = sorted(set(sent) - set(history))
    assert not missing, f"{len(missing)} acknowledged messages are not in history, e.g. {missing[:3]}"
    assert len(history) == len(sent)
    return occupants


def kill(program: str) -> int:
    pid = program_pid(program)
    assert pid, f"{program} is not running"
    os.kill(pid, signal.SIGKILL)
    return pid


def redis_primary_program() -> str:
    """The supervisor program of the Redis instance that is primary now, once it has a synced replica."""
    from tests.installer.test_redis import REJOIN_DEADLINE_SECONDS, healthy_primary, program_for_port

    return program_for_port(wait_for(healthy_primary, REJOIN_DEADLINE_SECONDS, what="a primary with a synced replica"))


def test_history_is_complete_after_the_redis_primary_is_killed(config, endpoint, chat_server, new_user):
    """kill -9 of the Redis primary mid-traffic: Sentinel promotes the replica; nothing acknowledged is lost."""
    victim = redis_primary_program()

    def fault():
        pid = kill(victim)
        wait_for(lambda: program_pid(victim) not in (0, pid), 60, what=f"supervisor to restart {victim}")

    try:
        run_room_traffic(config, endpoint, chat_server, new_user, fault)
    finally:
        redis_primary_program()  # the pair is whole again before the next test


def test_history_is_complete_after_an_opensearch_data_node_is_killed(config, endpoint, chat_server, new_user):
    """kill -9 of one OpenSearch data node mid-traffic: the other holds every shard's copy; indexing goes on."""
    victim = "opensearch:opensearch-data-2"

    def fault():
        pid = kill(victim)
        wait_for(lambda: program_pid(victim) not in (0, pid), 120, what=f"supervisor to restart {victim}")

    try:
        run_room_traffic(config, endpoint, chat_server, new_user, fault)
    finally:
        client = chat_server.get_opensearch_client()
        wait_for(
            lambda: client.cluster.health()["status"] == "green",
            300,
            interval=2.0,
            what="the cluster to be green again",
        )


def test_history_is_complete_after_a_front_end_is_killed(config, endpoint, chat_server, new_user):
    """kill -9 of an XMPP front end mid-traffic: its occupants come back and resend; each message is in history once."""
    victim = "chat-core:xmpp-0"

    def fault():
        pid = kill(victim)
        wait_for(lambda: program_pid(victim) not in (0, pid), 60, what=f"supervisor to restart {victim}")

    occupants = run_room_traffic(config, endpoint, chat_server, new_user, fault)
    assert sorted(o.logins for o in occupants) == [1, 1, 2, 2]  # the two on the killed front end came back


def test_history_is_complete_after_every_opensearch_node_is_down_for_30_seconds(config, endpoint, chat_server, new_user):
    """The whole search cluster stops for 30 s while the room keeps chatting: messages are acknowledged from the spool,
    and once the cluster is back the spool drains into history, each message once."""
    client = chat_server.get_opensearch_client()

    def fault():
        supervisorctl("stop", "opensearch:*", check=True)
        time.sleep(30.0)
        supervisorctl("start", "opensearch:*", check=True)

    try:
        occupants = run_room_traffic(config, endpoint, chat_server, new_user, fault, seconds=40.0)
        assert sum(len(o.sent) for o in occupants) > 2000
    finally:
        supervisorctl("start", "opensearch:*")
        wait_for(lambda: client.cluster.health()["status"] == "green", 300, interval=2.0, what="the cluster to be green again")
