"""Guest access against the installed appliance: a room's guest link, a guest chatting from the browser, and its limits.

A room owner turns guest access on over the REST API and gets the room's
``guest_access_url``; a headless Chromium opens it, types a name and chats
in the room, and a slixmpp member of the room sees it and answers; history
marks the message as a guest's. Turning guest access off ends the guest's
session and kills the link. A guest logged in over a raw WebSocket cannot
join another room, see the rooms list, have a roster or send one-to-one
messages, and its password works nowhere else (TCP XMPP, the REST API);
with the ``guest_access`` flag off the link is refused and the guest's
stream is closed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import re
import time
import uuid
from urllib.parse import urlparse

import pytest
import requests

from tests.e2e.test_api_rooms import Api
from tests.e2e.test_websocket import connect
from tests.e2e.xmpp_client import TIMEOUT, login, run

playwright_api = pytest.importorskip("playwright.sync_api", reason="tests/run.sh installs playwright")

from tests.e2e.test_web_client import STEP_MS, RoomWatcher, browser  # noqa: E402,F401 (browser: the module's Chromium)

BASE_URL = "https://127.0.0.1"


@pytest.fixture(scope="module")
def guest_flag(chat_server):
    """The guest_access flag on for everyone while this module runs; off (its default) afterwards."""
    from hipchat_server import feature_flags
    from hipchat_server.storage.feature_flags import FeatureFlagStore

    flags = feature_flags.FeatureFlags(FeatureFlagStore(chat_server.get_database_engine()))
    flags.set(feature_flags.GUEST_ACCESS, "on")
    time.sleep(feature_flags.CACHE_SECONDS)  # the HTTPS process reads flags with a cache of this age
    yield flags
    flags.set(feature_flags.GUEST_ACCESS, "off")


def guest_room(config, owner: str) -> tuple[Api, dict, str]:
    """A public room of ``owner`` with guest access on: (owner's Api, the room object, the guest link's path)."""
    api = Api(config, owner)
    created = api.ok("POST", "room", {"name": f"guests-{uuid.uuid4().hex[:8]}"}, status=201)
    assert api.ok("GET", f"room/{created['id']}")["guest_access_url"] is None
    api.ok("PUT", f"room/{created['id']}", {"is_guest_accessible": True}, status=204)
    room = api.ok("GET", f"room/{created['id']}")
    assert room["is_guest_accessible"] is True
    url = room["guest_access_url"]
    assert url and re.fullmatch(re.escape(config.server.public_url.rstrip("/")) + r"/guest/[A-Za-z0-9_-]{32,}", url), url
    return api, room, urlparse(url).path


def become_guest(path: str, name: str) -> dict:
    """POST a name to a guest link, as the page's form does; the web client settings the answer carries."""
    response = requests.post(f"{BASE_URL}{path}", data={"name": name}, verify=False, timeout=30)
    assert response.status_code == 200, response.text[:500]
    found = re.search(r'<script type="application/json" id="hipchat-settings">(.*?)</script>', response.text, re.S)
    assert found, response.text[:500]
    return json.loads(found.group(1))


def session_resources(chat_server, bare: str) -> dict:
    from hipchat_server.storage.sessions import SessionDirectory

    return SessionDirectory(chat_server.get_redis_primary(), "e2e-guests").resources(bare)


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.25)


def test_a_guest_chats_from_the_browser_a_member_sees_it_and_turning_access_off_ends_it(
    config, chat_server, endpoint, new_user, guest_flag, browser
):
    """The guest link opens a name form; the guest's browser joins only that room and chats both ways with a
    slixmpp member; history marks the guest; access off closes the guest's session and the link."""
    owner = new_user()
    api, room, path = guest_room(config, owner)
    room_jid, tag = room["xmpp_jid"], uuid.uuid4().hex[:8]
    watcher = RoomWatcher(endpoint, new_user(), room_jid)
    watcher.start()
    if True:
        context = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 900})
        context.set_default_timeout(STEP_MS)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        try:
            assert watcher.joined.wait(TIMEOUT) and watcher.error is None, f"slixmpp could not join: {watcher.error!r}"
            page.goto(f"{BASE_URL}{path}")
            assert room["name"] in page.locator("h1").inner_text()
            page.fill("input[name=name]", f"Ada {tag}")
            page.click("form.guest [type=submit]")
            textarea = page.locator(f'converse-muc[jid="{room_jid}"] textarea.chat-textarea')
            textarea.wait_for()
            assert page.locator("converse-roster").count() == 0  # no contacts, no room list: the room only
            textarea.fill(f"hello from the guest {tag}")
            textarea.press("Enter")
            watcher.wait_for(f"hello from the guest {tag}")
            watcher.say(f"welcome, guest {tag}")
            page.locator(f'converse-muc[jid="{room_jid}"] .chat-msg__text', has_text=f"welcome, guest {tag}").first.wait_for()

            # Stored like any message, its author marked as a guest.
            recent = api.ok("GET", f"room/{room['id']}/history", date="recent")["items"]
            said = [m for m in recent if m.get("message") == f"hello from the guest {tag}"]
            assert said and said[0]["from"]["name"] == f"Ada {tag} (guest)", recent[-3:]
            guest_username = said[0]["from"]["mention_name"]
            assert guest_username.startswith("guest-")
            bare = f"{guest_username}@{endpoint.domain}"
            assert session_resources(chat_server, bare), "the guest has no session"
            # ... and searchable like any message, once indexed.
            deadline = time.monotonic() + 60
            while True:
                hits = [m for m in api.ok("GET", "search", q=tag)["items"] if m.get("message") == f"hello from the guest {tag}"]
                if hits:
                    break
                assert time.monotonic() < deadline, "the guest's message was not found by search within 60 s"
                time.sleep(1)
            assert "(guest)" in json.dumps(hits[0]["from"]), hits[0]

            assert not errors, errors  # (after the forced end below Converse 14 throws on its own teardown)
            # Off: the guest's session ends at once and the link is dead.
            started = time.monotonic()
            api.ok("PUT", f"room/{room['id']}", {"is_guest_accessible": False}, status=204)
            wait_until(lambda: not session_resources(chat_server, bare), 10, "the guest's session ended")
            print(f"guest session closed {time.monotonic() - started:.2f} s after guest access went off")
            page.locator(".hipchat-guest-ended").wait_for()  # the guest is told, not shown a login form
            assert api.ok("GET", f"room/{room['id']}")["guest_access_url"] is None
            assert requests.get(f"{BASE_URL}{path}", verify=False, timeout=30).status_code == 403
        finally:
            watcher.stop()
            context.close()


def test_a_guest_stays_in_its_room_and_the_flag_off_refuses_the_link_and_ends_the_guest(
    config, chat_server, endpoint, new_user, guest_flag
):
    """Over a raw WebSocket the guest joins its room but not another, sees no rooms list, gets an empty roster and
    cannot message anyone one-to-one; its password works neither over TCP XMPP nor on the API. The flag off: the link
    is refused and the guest's stream closes with not-authorized."""
    from hipchat_server import feature_flags

    owner = new_user()
    api, room, path = guest_room(config, owner)
    other = api.ok("POST", "room", {"name": f"other-{uuid.uuid4().hex[:8]}"}, status=201)
    other_jid = api.ok("GET", f"room/{other['id']}")["xmpp_jid"]
    settings = become_guest(path, "Grace")
    username, password = settings["jid"].partition("@")[0], settings["password"]
    assert settings["auto_join_rooms"] == [{"jid": room["xmpp_jid"], "nick": "Grace (guest)"}]

    # The guest's password is good for the guest page's WebSocket only.
    assert requests.get(f"{Api(config).base}/room", auth=(username, password), verify=config.tls.ca_certificate, timeout=30).status_code == 401

    async def scenario():
        # One mechanism only: each refused attempt counts against 127.0.0.1 in the front end's failed-login limit.
        tcp, ok = await login(endpoint, username, password, mechanism="SCRAM-SHA-256")
        await tcp.close()
        assert not ok, "a guest logged in over TCP XMPP"

        stream = await connect(endpoint, config.http.https_port)
        try:
            await stream.log_in(endpoint.domain, username, "SCRAM-SHA-256", password)

            async def answer_to(xml: str, stanza_id: str, *, wanted=None) -> str:
                """Send ``xml``; the first stanza back with id ``stanza_id`` (or that ``wanted`` accepts)."""
                stream.send_xml(xml)
                while True:
                    got = await stream.receive()
                    assert got is not None, "the stream closed"
                    if wanted(got) if wanted else (f"id='{stanza_id}'" in got or f'id="{stanza_id}"' in got):
                        return got

            client = "xmlns='jabber:client'"
            refused = await answer_to(f"<presence {client} to='{other_jid}/Grace' id='p1'><x xmlns='http://jabber.org/protocol/muc'/></presence>", "p1")
            assert "type='error'" in refused and "forbidden" in refused, refused
            joined = await answer_to(
                f"<presence {client} to='{room['xmpp_jid']}/Grace (guest)' id='p2'><x xmlns='http://jabber.org/protocol/muc'/></presence>", "p2",
                wanted=lambda xml: xml.startswith("<presence") and (room["xmpp_jid"] in xml) and ("110" in xml or "type='error'" in xml),
            )
            assert "type='error'" not in joined, joined  # in: its own presence, status 110
            roster = await answer_to(f"<iq {client} type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>", "r1")
            assert "type='result'" in roster and "<item" not in roster, roster
            listing = await answer_to(
                f"<iq {client} type='get' id='d1' to='conference.{endpoint.domain}'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>", "d1"
            )
            assert "forbidden" in listing and room["xmpp_jid"] not in listing, listing
            chat = await answer_to(f"<message {client} type='chat' id='m1' to='{owner}@{endpoint.domain}'><body>hi</body></message>", "m1")
            assert "type='error'" in chat and "forbidden" in chat, chat
            said = await answer_to(f"<message {client} type='groupchat' id='m2' to='{room['xmpp_jid']}'><body>in the room</body></message>", "m2")
            assert "type='error'" not in said and "in the room" in said, said

            # The flag off: the link is refused, and the guest's stream ends at its next check.
            started = time.monotonic()
            guest_flag.set(feature_flags.GUEST_ACCESS, "off")
            response = await asyncio.to_thread(requests.get, f"{BASE_URL}{path}", verify=False, timeout=30)
            deadline = time.monotonic() + 2 * feature_flags.CACHE_SECONDS + 1
            while response.status_code != 403 and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                response = await asyncio.to_thread(requests.get, f"{BASE_URL}{path}", verify=False, timeout=30)
            assert response.status_code == 403 and "guest access is turned off" in response.text, response.text[:300]
            while True:
                got = await stream.receive()
                assert got is not None, "the stream closed without a stream error"
                if "<stream:error" in got:
                    assert "not-authorized" in got and "turned off" in got, got
                    break
                assert time.monotonic() - started < 20, "the guest's stream was not closed within 20 s of the flag going off"
            print(f"guest stream closed {time.monotonic() - started:.2f} s after the flag went off")
        finally:
            guest_flag.set(feature_flags.GUEST_ACCESS, "on")
            await stream.abort()
            # The HTTPS process may hold "off" for its cache's age; the next test needs the link served again.
            deadline = time.monotonic() + 2 * feature_flags.CACHE_SECONDS + 1
            while time.monotonic() < deadline:
                served = await asyncio.to_thread(requests.get, f"{BASE_URL}{path}", verify=False, timeout=30)
                if served.status_code == 200:
                    break
                await asyncio.sleep(0.5)

    # On a thread of its own: the module's Playwright keeps an event loop running on this one.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(run, scenario()).result()
    wait_until(lambda: not session_resources(chat_server, f"{username}@{endpoint.domain}"), 10, "the guest's session ended")
    from hipchat_server.storage.users import UserStore

    row = UserStore(chat_server.get_database_engine()).get_by_username(username)
    assert row["is_guest"] and not row["is_active"] and row["deleted_at"] is not None  # the guest account ended with it


def test_the_console_turns_guest_access_on_and_off_and_shows_the_link(config, new_user, guest_flag, browser, tmp_path):
    """An administrator's toggle on the console's room page gives the room a guest link, shown there, that opens
    the name form; turned off, the same link is refused."""
    from tests.conftest import run_appliance_cli
    from tests.e2e.xmpp_client import PASSWORD

    owner = new_user()
    admin = f"{owner}-admin"
    (tmp_path / "password").write_text(PASSWORD + "\n")
    made = run_appliance_cli("user", "add", admin, "--name", "Guest admin", "--email", f"{admin}@e2e.example.com",
                             "--password-file", str(tmp_path / "password"), "--admin")
    assert made.returncode == 0, made.stdout + made.stderr
    created = Api(config, owner).ok("POST", "room", {"name": f"console-guests-{uuid.uuid4().hex[:8]}"}, status=201)
    context = browser.new_context(ignore_https_errors=True)
    context.set_default_timeout(STEP_MS)
    try:
        page = context.new_page()
        page.goto(f"{BASE_URL}/admin/login")
        page.fill("input[name=username]", admin)
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_load_state()
        page.goto(f"{BASE_URL}/admin/rooms/{created['id']}")
        page.click("#guest-access button[type=submit]")
        page.wait_for_load_state()
        link = page.inner_text("#guest-url").strip()
        assert link == Api(config, owner).ok("GET", f"room/{created['id']}")["guest_access_url"], link
        path = urlparse(link).path
        guest = context.new_page()
        guest.goto(f"{BASE_URL}{path}")
        assert guest.locator("form.guest input[name=name]").count() == 1
        page.click("#guest-access button[type=submit]")  # now "Turn guest access off"
        page.wait_for_load_state()
        assert page.locator("#guest-url").count() == 0
        assert requests.get(f"{BASE_URL}{path}", verify=False, timeout=30).status_code == 403
    finally:
        context.close()
