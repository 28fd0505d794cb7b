"""The web client (Converse.js served at ``/``) and its search page in a real headless Chromium, with a slixmpp client in the same room.

Two people log in through the browser, join one room and talk both ways; a
slixmpp client in that room sees what the browsers sent and the browsers see
what it sent; history is there after a reload and in a fresh browser; a
search on our search page opens the hit in its room. Every request the pages
make goes to this host: nothing is loaded from another one.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
import uuid

import pytest

from tests.e2e.xmpp_client import PASSWORD, TIMEOUT
from tests.e2e.test_rooms import join, member

playwright_api = pytest.importorskip("playwright.sync_api", reason="tests/run.sh installs playwright")

BASE_URL = "https://127.0.0.1"
CHROMIUM = "/usr/bin/chromium"
# As root, without a sandbox; no background networking: this host reaches no other.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]
STEP_MS = 30_000  # any one browser step: page load, login, a message appearing


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class Person:
    """One browser profile (its own cookies and storage) with the web client open, and every URL it requested."""

    def __init__(self, browser, username: str, requests: list[str]):
        self.username = username
        self.context = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 900})
        self.context.set_default_timeout(STEP_MS)
        self.page = self.context.new_page()
        self.requests = requests
        self.errors: list[str] = []
        self.page.on("request", lambda r: requests.append(r.url))
        self.page.on("websocket", lambda ws: requests.append(ws.url))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def log_in(self, navigate: bool = True) -> None:
        """Open ``/`` (unless already on a web client page) and log in through Converse's form; returns once the contacts list is shown."""
        if navigate:
            self.page.goto(f"{BASE_URL}/")
        self.page.fill("#converse-login-jid", self.username)
        self.page.fill("#converse-login-password", PASSWORD)
        self.page.uncheck("#converse-login-trusted")  # a shared computer: nothing kept in the browser
        self.page.click("converse-login-form [type=submit]")
        self.page.wait_for_selector("converse-roster")

    def join_room(self, room: str) -> None:
        """Join ``room`` through the 'Add groupchat' dialog; returns once the message box is there."""
        self.page.locator("a.show-add-muc-modal").first.dispatch_event("click")
        self.page.fill("converse-add-muc-modal input[name=chatroom]", room)
        self.page.click("converse-add-muc-modal input[name=join]")
        self.room_textarea(room).wait_for()

    def room(self, room: str):
        return self.page.locator(f'converse-muc[jid="{room}"]')

    def room_textarea(self, room: str):
        return self.room(room).locator("textarea.chat-textarea")

    def say(self, room: str, text: str) -> None:
        self.room_textarea(room).fill(text)
        self.room_textarea(room).press("Enter")

    def sees(self, room: str, text: str) -> None:
        """Wait until ``text`` is shown as a message in ``room``."""
        self.room(room).locator(".chat-msg__text", has_text=text).first.wait_for()


class RoomWatcher(threading.Thread):
    """A slixmpp client in ``room`` on its own thread and asyncio loop: collects the bodies it gets, can say one thing."""

    def __init__(self, endpoint, username: str, room: str):
        super().__init__(daemon=True)
        self.endpoint, self.username, self.room = endpoint, username, room
        self.bodies: list[str] = []
        self.joined = threading.Event()
        self.error: BaseException | None = None
        self._done = threading.Event()
        self._to_say: list[str] = []

    def run(self) -> None:
        try:
            asyncio.run(asyncio.wait_for(self._watch(), 10 * TIMEOUT))
        except BaseException as e:  # reported by the test through `error`
            self.error = e
            self.joined.set()

    async def _watch(self) -> None:
        client = await member(self.endpoint, self.username)
        try:
            await join(client, self.room, "slixmpp-watcher")
            self.joined.set()
            while not self._done.is_set():
                while self._to_say:
                    client.send_message(mto=self.room, mbody=self._to_say.pop(0), mtype="groupchat")
                try:
                    message = await asyncio.wait_for(client.groupchat.get(), 0.2)
                    self.bodies.append(message["body"])
                except asyncio.TimeoutError:
                    pass
        finally:
            await client.close()

    def say(self, text: str) -> None:
        self._to_say.append(text)

    def wait_for(self, text: str, timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in body for body in self.bodies):
            assert self.error is None, f"the slixmpp client failed: {self.error!r}"
            assert time.monotonic() < deadline, f"slixmpp did not get {text!r}; it got {self.bodies}"
            time.sleep(0.1)

    def stop(self) -> None:
        self._done.set()
        self.join(TIMEOUT)


def test_two_people_chat_in_the_browser_and_slixmpp_sees_it(browser, alice, bob, new_user, endpoint):
    """Two browsers and a slixmpp client talk in one room; a fresh browser gets the history; the search page's
    hit opens the room at that message; nothing comes from another host."""
    room = f"e2e-web-{uuid.uuid4().hex[:8]}@conference.{endpoint.domain}"
    tag = uuid.uuid4().hex[:8]
    requests: list[str] = []
    a, b = Person(browser, alice, requests), Person(browser, bob, requests)
    watcher = RoomWatcher(endpoint, new_user(), room)
    try:
        a.log_in()
        a.join_room(room)
        b.log_in()
        b.join_room(room)
        watcher.start()
        assert watcher.joined.wait(TIMEOUT) and watcher.error is None, f"slixmpp could not join: {watcher.error!r}"

        a.say(room, f"hello from alice {tag}")
        b.sees(room, f"hello from alice {tag}")
        b.say(room, f"hello back from bob {tag}")
        a.sees(room, f"hello back from bob {tag}")
        watcher.wait_for(f"hello from alice {tag}")
        watcher.wait_for(f"hello back from bob {tag}")
        watcher.say(f"slixmpp was here {tag}")
        a.sees(room, f"slixmpp was here {tag}")
        b.sees(room, f"slixmpp was here {tag}")

        # A fresh browser profile has nothing cached: this history can only have come from the server.
        fresh = Person(browser, bob, requests)
        fresh.log_in()
        fresh.join_room(room)
        for text in (f"hello from alice {tag}", f"hello back from bob {tag}", f"slixmpp was here {tag}"):
            fresh.sees(room, text)
        fresh.context.close()

        # The search page finds the message (once indexed) and its hit opens the room at that message.
        finder = Person(browser, bob, requests)
        finder.page.goto(f"{BASE_URL}/search")
        finder.page.fill("input[name=username]", bob)
        finder.page.fill("input[name=password]", PASSWORD)
        finder.page.click("form.login [type=submit]")
        finder.page.wait_for_selector("form[role=search]")
        deadline = time.monotonic() + 60
        while True:
            finder.page.goto(f"{BASE_URL}/search?q={tag}+alice")
            hits = finder.page.locator("li.hit")
            if hits.count():
                break
            assert time.monotonic() < deadline, "the message was not found by the search page within 60 s"
            time.sleep(2)
        assert hits.count() == 1, finder.page.content()
        assert room in hits.first.inner_text()
        message_id = hits.first.get_attribute("data-message-id")
        assert "<em>" in hits.first.locator("a.text").inner_html()  # the hit's words are highlighted
        hits.first.locator("a.text").click()
        finder.page.wait_for_url(re.compile(r"/\?jid="))
        finder.log_in(navigate=False)
        # (a selector, not a script: the page's CSP allows no eval, a test's included)
        finder.page.locator(f'body[data-hipchat-found="{message_id}"]').wait_for(state="attached")
        found = finder.room(room).locator(".hipchat-found")
        assert f"hello from alice {tag}" in found.inner_text()
        finder.context.close()
    finally:
        watcher.stop()
        a.context.close()
        b.context.close()
    assert not a.errors and not b.errors, a.errors + b.errors
    assert requests, "the request log is empty"
    elsewhere = sorted({url for url in requests if not re.match(r"^(https|wss)://127\.0\.0\.1(:\d+)?/", url)})
    assert not elsewhere, f"the web client loaded from other hosts: {elsewhere}"
    assert any(url.startswith("wss://127.0.0.1/xmpp-websocket") for url in requests), "no XMPP-over-WebSocket connection"


def test_a_reload_keeps_the_room_and_its_history(browser, alice, endpoint):
    """After a reload of the page, the room that was open is usable again and shows what was said before.

    (With Stream Management on in the browser, Converse.js 14 resumed the old stream after a reload,
    then sent from a new resource; the server closed the stream and the room hung half-joined.)
    """
    room = f"e2e-web-{uuid.uuid4().hex[:8]}@conference.{endpoint.domain}"
    tag = uuid.uuid4().hex[:8]
    a = Person(browser, alice, [])
    try:
        a.log_in()
        a.join_room(room)
        a.say(room, f"before the reload {tag}")
        a.sees(room, f"before the reload {tag}")
        a.page.reload()
        a.page.wait_for_selector("converse-roster, #converse-login-jid")
        if a.page.locator("#converse-login-jid").count():
            a.log_in()
        a.room_textarea(room).wait_for(timeout=15_000)
        a.sees(room, f"before the reload {tag}")
    finally:
        a.context.close()
