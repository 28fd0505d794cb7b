"""The web client page at ``/``: its settings, the web_client feature flag's gate, and the search page's highlights."""

from __future__ import annotations

import json
import re

from twisted.internet import defer
from twisted.web.test.requesthelper import DummyRequest

from hipchat_server.feature_flags import FlagState
from hipchat_server.web import webclient
from hipchat_server.web.search_page import hit_link, safe_highlight
from hipchat_server.web.sessions import COOKIE_NAME, WebSession


class Flags:
    """`feature_flags.FeatureFlags` stand-in: the web_client flag's state, and who is in an enabled group."""

    def __init__(self, enabled: bool, groups: dict | None = None, members=()):
        self._state = FlagState("web_client", "", enabled, groups or {}, False)
        self.members = set(members)

    def state(self, name):
        return self._state

    def enabled(self, name, username=None):
        return username in self.members if self._state.groups else self._state.enabled


class Sessions:
    def from_cookie(self, value):
        return WebSession("s1", "carol", False, "token", 0.0) if value == b"good" else None


def page(tmp_path, flags=None):
    (tmp_path / "converse.min.js").write_text("")
    inline = lambda f, *a: defer.maybeDeferred(f, *a)
    return webclient.WebClientPage("example.com", "conference", str(tmp_path), flags=flags, sessions=Sessions(), run_blocking=inline)


class CookieRequest(DummyRequest):
    cookies_sent: dict = {}

    def getCookie(self, name):
        return self.cookies_sent.get(name)


def get(resource, cookie: bytes | None = None):
    request = CookieRequest([b""])
    request.cookies_sent = {COOKIE_NAME: cookie} if cookie else {}
    body = resource.render_GET(request)
    if not isinstance(body, bytes):
        body = b"".join(request.written)
    return request, body


def test_the_page_names_only_this_host(tmp_path):
    """Settings point at this appliance's domain and rooms, assets at its own versioned path, no external URL."""
    request, body = get(page(tmp_path))
    assert (request.responseCode or 200) == 200
    settings = json.loads(re.search(rb'<script type="application/json" id="hipchat-settings">(.*?)</script>', body).group(1))
    assert settings["locked_domain"] == "example.com" and settings["muc_domain"] == "conference.example.com"
    assert settings["websocket_path"] == "/xmpp-websocket"
    assert settings["assets_path"] == f"/webclient/{tmp_path.name}/"
    assert not re.search(rb"(src|href)=\"(https?:)?//", body)
    csp = request.responseHeaders.getRawHeaders(b"content-security-policy")[0]
    assert b"default-src 'self'" in csp and b"connect-src 'self'" in csp


def test_flag_off_refuses_and_on_serves(tmp_path):
    """Off for everyone: 403; on for everyone: the page, with no login of ours."""
    request, _ = get(page(tmp_path, Flags(False)))
    assert request.responseCode == 403
    request, body = get(page(tmp_path, Flags(True)))
    assert (request.responseCode or 200) == 200 and b"converse.min.js" in body


def test_flag_for_groups_asks_who_it_is(tmp_path):
    """On for chosen groups: no session goes to the login; a member gets the page, anyone else 403."""
    resource = page(tmp_path, Flags(False, {7: True}, members={"carol"}))
    request, _ = get(resource)
    assert request.responseCode == 302
    assert request.responseHeaders.getRawHeaders(b"location") == [b"/search/login?next=/"]
    request, body = get(resource, b"good")
    assert (request.responseCode or 200) == 200 and b"converse.min.js" in body
    request, _ = get(page(tmp_path, Flags(False, {7: True}, members=())), b"good")
    assert request.responseCode == 403


def test_highlights_are_html_only_when_escaped_with_em_alone():
    """The search's highlight is kept when it is escaped text with <em>; anything else shows the body escaped."""
    assert str(safe_highlight("a &lt;b&gt; <em>word</em>", "x")) == "a &lt;b&gt; <em>word</em>"
    assert str(safe_highlight("<script>alert(1)</script>", "<b>body</b>")) == "&lt;b&gt;body&lt;/b&gt;"


def test_hit_links_open_the_room_or_the_other_person():
    """A room hit opens its room; a one-to-one hit opens the conversation with the other person, at the message."""
    assert hit_link({"id": "01A", "room": "ops@conference.example.com"}, "bob@example.com") == "/?jid=ops%40conference.example.com&message=01A"
    one_to_one = {"id": "01B", "room": None, "sender": "bob@example.com/phone", "recipient": "alice@example.com"}
    assert hit_link(one_to_one, "bob@example.com") == "/?jid=alice%40example.com&message=01B"
    assert hit_link(one_to_one, "alice@example.com") == "/?jid=bob%40example.com&message=01B"
