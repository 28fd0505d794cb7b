"""History (XEP-0313 MAM with RSM) through the installed appliance, with real slixmpp clients.

One-to-one archives paged both ways over more than a hundred messages,
filters, read-your-writes straight after sending, fulltext search, and room
archives under the permission rule (a private room's history is forbidden
to a non-member).
"""

from __future__ import annotations

import asyncio
import time
import uuid
import xml.etree.ElementTree as ET

import pytest
from slixmpp.exceptions import IqError
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from tests.conftest import wait_for
from tests.e2e.test_rooms import create, member, room_of
from tests.e2e.xmpp_client import TIMEOUT, acked, login, run, send_durably, sent_count, sm_login

MAM = "urn:xmpp:mam:2"
RSM = "http://jabber.org/protocol/rsm"
FORWARD = "urn:xmpp:forward:0"
DELAY = "urn:xmpp:delay"
CLIENT = "jabber:client"
FULLTEXT = "{urn:xmpp:fulltext:0}fulltext"
# Seconds the indexer may take to make a message searchable (its target is 1-2 s; the tests allow for a busy box).
INDEXING_WAIT = 30.0
# Twice the indices' refresh interval: by then every copy of every shard shows what one copy showed.
REFRESH_SECONDS = 2.0


def form(**fields) -> str:
    values = "".join(f"<field var='{name}'><value>{value}</value></field>" for name, value in fields.items())
    return f"<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>{MAM}</value></field>{values}</x>"


def rsm(max=None, after=None, before=None) -> str:
    parts = f"<max>{max}</max>" if max is not None else ""
    if after is not None:
        parts += f"<after>{after}</after>"
    if before is not None:
        parts += f"<before>{before}</before>" if before else "<before/>"
    return f"<set xmlns='{RSM}'>{parts}</set>"


class Page:
    """What one MAM query returned: each result's (id, body, stamp) in arrival order, and the <fin/>."""

    def __init__(self, results: list[ET.Element], fin: ET.Element):
        self.results = []
        for message in results:
            result = message.find(f"{{{MAM}}}result")
            forwarded = result.find(f"{{{FORWARD}}}forwarded")
            body = forwarded.find(f"{{{CLIENT}}}message/{{{CLIENT}}}body")
            stamp = forwarded.find(f"{{{DELAY}}}delay").get("stamp")
            self.results.append((result.get("id"), body.text if body is not None else None, stamp, message.get("from")))
        self.complete = fin.get("complete") == "true"
        rsm_set = fin.find(f"{{{RSM}}}set")
        self.first = rsm_set.findtext(f"{{{RSM}}}first")
        self.last = rsm_set.findtext(f"{{{RSM}}}last")
        count = rsm_set.findtext(f"{{{RSM}}}count")
        self.count = int(count) if count is not None else None

    @property
    def ids(self) -> list[str]:
        return [r[0] for r in self.results]

    @property
    def bodies(self) -> list[str]:
        return [r[1] for r in self.results]


async def mam(client, payload: str = "", to: str | None = None) -> Page:
    """Run one MAM query; its result messages are collected by queryid until the iq result arrives."""
    queryid = uuid.uuid4().hex[:8]
    collected: list[ET.Element] = []
    name = f"mam-{queryid}"
    client.register_handler(
        Callback(name, MatchXPath(f"{{{CLIENT}}}message/{{{MAM}}}result"), lambda m: collected.append(m.xml))
    )
    try:
        iq = client.make_iq_set(ito=to)
        iq.xml.append(ET.fromstring(f"<query xmlns='{MAM}' queryid='{queryid}'>{payload}</query>"))
        reply = await iq.send(timeout=TIMEOUT)
    finally:
        client.remove_handler(name)
    mine = [m for m in collected if m.find(f"{{{MAM}}}result").get("queryid") == queryid]
    return Page(mine, reply.xml.find(f"{{{MAM}}}fin"))


async def refused(client, payload: str = "", to: str | None = None) -> str:
    """The stanza error condition a MAM query is answered with."""
    with pytest.raises(IqError) as error:
        await mam(client, payload, to)
    return error.value.iq["error"]["condition"]


async def walk(client, with_jid: str | None, *, backwards: bool, size: int = 50, to: str | None = None) -> list[Page]:
    """Every page of an archive, newest page first (backwards) or oldest first (forwards)."""
    pages, reference = [], "" if backwards else None
    payload = form(**{"with": with_jid}) if with_jid else ""
    for _ in range(100):
        page = await mam(
            client, payload + (rsm(size, before=reference) if backwards else rsm(size, after=reference)), to
        )
        pages.append(page)
        if page.complete:
            return pages
        reference = page.first if backwards else page.last
    raise AssertionError("paging never completed")


def indexed_count(chat_server, ids: list[str]) -> int:
    client = chat_server.get_opensearch_client()
    prefix = chat_server.get_config().archive.index_prefix
    return client.count(index=prefix, body={"query": {"ids": {"values": ids}}})["count"]


def wait_until_searchable(chat_server, ids: list[str]) -> None:
    """Wait until OpenSearch has every one of ``ids``, then for every copy of each shard to show them.

    Primaries and replicas refresh on their own schedules (1 s): a search right
    after one copy showed a document may be served by another that does not yet.
    """
    wait_for(lambda: indexed_count(chat_server, ids) == len(ids), INDEXING_WAIT, what="indexing")
    time.sleep(REFRESH_SECONDS)


async def searchable(chat_server, ids: list[str]) -> None:
    await asyncio.get_running_loop().run_in_executor(None, wait_until_searchable, chat_server, ids)


def jid(endpoint, username: str) -> str:
    return f"{username}@{endpoint.domain}"


def test_a_conversation_of_130_messages_pages_both_ways_for_both_sides(chat_server, endpoint, new_user):
    """alice and bob write 130 messages; each pages through it backwards (<before/>) and forwards (<after/>):
    every message exactly once, in order, counted, the last page complete, from Redis and OpenSearch together."""
    alice, bob = new_user(), new_user()
    bodies = [f"m{n:03d} {uuid.uuid4().hex[:6]}" for n in range(130)]

    async def scenario():
        a, b = await sm_login(endpoint, alice), await sm_login(endpoint, bob)
        try:
            for n, body in enumerate(bodies):
                sender, to = (a, jid(endpoint, bob)) if n % 3 else (b, jid(endpoint, alice))
                await send_durably(sender, to, body)
            # Read-your-writes: the newest page straight away (Redis), before the indexer has them all.
            newest = await mam(a, form(**{"with": jid(endpoint, bob)}) + rsm(5, before=""))
            assert newest.bodies == bodies[-5:] and not newest.complete
            ids = (await mam(a, form(**{"with": jid(endpoint, bob)}) + rsm(250))).ids
            assert len(ids) == 130
            # Older pages come from OpenSearch: wait until the indexer has every one of them.
            await searchable(chat_server, ids)
            for client, other in ((a, bob), (b, alice)):
                back = await walk(client, jid(endpoint, other), backwards=True)
                assert [body for page in reversed(back) for body in page.bodies] == bodies
                assert [len(p.results) for p in back] == [50, 50, 30] and back[-1].complete
                # The newest page comes from Redis: its count is OpenSearch's cached one, or none if that is not at hand.
                assert back[0].count in (None, 130) and [p.count for p in back[1:]] == [130, 130]
                forward = await walk(client, jid(endpoint, other), backwards=False)
                assert [body for page in forward for body in page.bodies] == bodies
                assert [len(p.results) for p in forward] == [50, 50, 30] and forward[-1].complete
            flipped = await mam(
                a, form(**{"with": jid(endpoint, bob)}) + rsm(10, before="") + f"<flip-page xmlns='{MAM}'/>"
            )
            assert flipped.bodies == list(reversed(bodies[-10:]))
        finally:
            await a.close()
            await b.close()

    run(scenario())


def test_a_message_is_in_history_the_moment_it_is_acknowledged(endpoint, new_user):
    """Read-your-writes: a query straight after the ack finds the message, also on the path through OpenSearch."""
    alice, bob = new_user(), new_user()

    async def scenario():
        a = await sm_login(endpoint, alice)
        try:
            for n in range(3):
                body = f"just now {n} {uuid.uuid4().hex[:6]}"
                await send_durably(a, jid(endpoint, bob), body)
                # The first page of the whole conversation (not the newest): OpenSearch, merged with Redis.
                page = await mam(a, form(**{"with": jid(endpoint, bob)}))
                assert page.bodies[-1] == body and len(page.results) == n + 1 and page.complete and page.count == n + 1
                newest = await mam(a, rsm(1, before=""))
                assert newest.bodies == [body]
        finally:
            await a.close()

    run(scenario())


def test_start_end_after_id_and_before_id_select_exactly(endpoint, new_user):
    """start/end are inclusive times (the delay stamps), after-id/before-id exclusive ids; an unknown id is item-not-found."""
    alice, bob = new_user(), new_user()

    async def scenario():
        a = await sm_login(endpoint, alice)
        try:
            for n in range(10):
                await send_durably(a, jid(endpoint, bob), f"filter {n}")
                await asyncio.sleep(0.01)  # distinct milliseconds, so start/end can split them
            everything = await mam(a, form(**{"with": jid(endpoint, bob)}))
            ids, stamps = everything.ids, [r[2] for r in everything.results]
            by_time = await mam(a, form(**{"with": jid(endpoint, bob), "start": stamps[3], "end": stamps[6]}))
            assert by_time.ids == ids[3:7] and by_time.count == 4
            by_id = await mam(a, form(**{"after-id": ids[2], "before-id": ids[8]}))
            assert by_id.ids == ids[3:8]
            assert await refused(a, rsm(after="01ARZ3NDEKTSV4RRFFQ69G5FAV")) == "item-not-found"
            assert await refused(a, form(**{"include-groupchat": "true"})) == "feature-not-implemented"
        finally:
            await a.close()

    run(scenario())


def test_another_users_archive_is_forbidden(endpoint, new_user):
    alice, bob = new_user(), new_user()

    async def scenario():
        a, ok = await login(endpoint, alice)
        assert ok
        try:
            assert await refused(a, to=jid(endpoint, bob)) == "forbidden"
            info = await a.plugin["xep_0030"].get_info(jid=endpoint.domain, timeout=TIMEOUT)
            assert {MAM, f"{MAM}#extended", "urn:xmpp:fulltext:0"} <= set(info["disco_info"]["features"])
        finally:
            await a.close()

    run(scenario())


def test_fulltext_search_in_the_archive(chat_server, endpoint, new_user):
    """XEP-0431: the fulltext field finds messages by their words (stemmed) once indexed."""
    alice, bob = new_user(), new_user()
    word = f"zebra{uuid.uuid4().hex[:6]}"

    async def scenario():
        a = await sm_login(endpoint, alice)
        try:
            await send_durably(a, jid(endpoint, bob), f"the {word} builds failed")
            await send_durably(a, jid(endpoint, bob), "nothing to see")
            await send_durably(a, jid(endpoint, bob), f"{word} failing again")
            ids = (await mam(a)).ids
            await searchable(chat_server, ids)
            found = await mam(a, form(**{FULLTEXT: f"{word} fail"}))  # stemmed: failed, failing
            assert found.bodies == [f"the {word} builds failed", f"{word} failing again"] and found.count == 2
        finally:
            await a.close()

    run(scenario())


async def sm_member(endpoint, username):
    """A room member (`test_rooms.member`) with Stream Management on, so its messages can be awaited as acknowledged."""
    client = await member(endpoint, username, plugins=("xep_0198",))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while client.plugin["xep_0198"].sm_id is None:
        assert loop.time() < deadline, "stream management was not enabled"
        await asyncio.sleep(0.05)
    return client


def test_room_history_pages_and_a_private_rooms_history_is_for_members(chat_server, endpoint, new_user):
    """A room's archive (MAM to the room JID): members page through it; a private room refuses a non-member."""
    owner, outsider = new_user(), new_user()
    public, private = room_of(endpoint), room_of(endpoint)

    async def scenario():
        o = await sm_member(endpoint, owner)
        x, ok = await login(endpoint, outsider)
        assert ok
        try:
            await create(o, public, "boss")
            await create(o, private, "boss", members_only=True)
            for n in range(80):
                await send_durably_to_room(o, public, f"public {n}")
            await send_durably_to_room(o, private, "the launch date")
            newest = await mam(o, rsm(10, before=""), to=public)
            assert newest.bodies == [f"public {n}" for n in range(70, 80)] and not newest.complete
            assert {r[3] for r in newest.results} == {public}
            ids = (await mam(o, rsm(250), to=public)).ids
            await searchable(chat_server, ids)
            assert [b for p in reversed(await walk(o, None, backwards=True, size=30, to=public)) for b in p.bodies] == [
                f"public {n}" for n in range(80)
            ]
            assert (await mam(x, rsm(5, before=""), to=public)).bodies == [f"public {n}" for n in range(75, 80)]
            assert (await mam(o, to=private)).bodies == ["the launch date"]
            assert await refused(x, to=private) == "forbidden"
        finally:
            await o.close()
            await x.close()

    run(scenario())


async def send_durably_to_room(client, room: str, body: str) -> None:
    """A groupchat message, acknowledged (so it is archived) before the next."""
    mark = sent_count(client) + 1
    client.send_message(mto=room, mbody=body, mtype="groupchat")
    await acked(client, mark)
