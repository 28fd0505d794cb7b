"""The admin console's guard and login (`web.console.app.Console`), in process, sessions in a throwaway redis-server.

No session: a GET goes to the login form, a POST is refused. A non-admin's
session: 403 on every page and action. A POST without the session's CSRF
token, or with another session's: 403 and the action does not run. The login
form needs its own double-submit token, sets a Secure/HttpOnly/SameSite
cookie and never redirects to another host; logging out ends the session.
"""

from __future__ import annotations

import re
from urllib.parse import urlencode

import pytest
from twisted.internet import defer
from twisted.web import server
from twisted.web.test.requesthelper import DummyChannel

from hipchat_server.authentication import AuthenticationFailed, Caller
from hipchat_server.web import sessions as web
from hipchat_server.web.console.app import Console


class Authenticator:
    def password_caller(self, username, password):
        if password != f"{username}-pw":
            raise AuthenticationFailed("wrong")
        return Caller(username, 1, frozenset(), f"user:{username}", is_admin=username.startswith("admin"))


def run_now(call, *args, **kwargs):
    return defer.maybeDeferred(call, *args, **kwargs)


@pytest.fixture
def console(redis_server):
    redis_server.flushall()
    sessions = web.WebSessions(lambda: redis_server, Authenticator())
    demoted = set()
    console = Console(None, sessions, run_blocking=run_now, admin_check=lambda username: username not in demoted)
    console.demoted = demoted
    console.changes = []

    @console.page("/things")
    def things(request, admin):
        return "refused.html", {"status": 200, "message": f"things for {admin.username}"}

    @console.action("/things/create")
    def create(request, admin, form):
        console.changes.append((admin.username, form.get("name")))
        return "/admin/things", "created"

    return console


class Answer:
    def __init__(self, request, raw: bytes):
        self.request, self.raw = request, raw
        self.status = request.code
        self.body = raw.partition(b"\r\n\r\n")[2]

    def header(self, name: str):
        value = self.request.responseHeaders.getRawHeaders(name.encode())
        return value[0].decode() if value else None

    def cookies(self) -> dict:
        return {c.split(b"=", 1)[0].decode(): c for c in self.request.cookies}


def call(console, method, path, *, cookies=None, form=None) -> Answer:
    site = server.Site(console.resource())
    channel = DummyChannel()
    channel.site = site
    request = server.Request(channel, False)
    request.site = site
    body = urlencode(form or {}).encode()
    if cookies:
        request.requestHeaders.setRawHeaders(b"cookie", ["; ".join(f"{k}={v}" for k, v in cookies.items()).encode()])
        request.parseCookies()  # the channel does this once the headers are in
    request.requestHeaders.setRawHeaders(b"content-length", [str(len(body)).encode()])
    request.gotLength(len(body))
    request.content.write(body)
    request.content.seek(0)
    request.requestReceived(method.encode(), path.encode(), b"HTTP/1.1")
    assert request.finished
    return Answer(request, channel.transport.written.getvalue())


def log_in(console, username, password=None) -> dict:
    """Log in through the form; the cookies a browser would then hold."""
    form_page = call(console, "GET", "/login")
    token = re.search(rb'name="csrf_token" value="([^"]+)"', form_page.body).group(1).decode()
    answer = call(console, "POST", "/login", cookies={"hipchat_login_csrf": token},
                  form={"csrf_token": token, "username": username, "password": password or f"{username}-pw", "next": "/admin/things"})
    assert answer.status == 302, answer.body
    cookie = answer.cookies().get("hipchat_session")
    if cookie is None:
        return {}
    return {"hipchat_session": cookie.split(b";")[0].split(b"=", 1)[1].decode()}


def csrf_of(console, cookies) -> str:
    return console.sessions.from_cookie(cookies["hipchat_session"]).csrf_token


def test_no_session_goes_to_login_and_a_post_is_refused(console):
    """A GET without a session is redirected to the login form (with where it was going); a POST is 403 and runs nothing."""
    answer = call(console, "GET", "/things?x=1")
    assert answer.status == 302 and answer.header("location") == "/admin/login?next=%2Fthings%3Fx%3D1"
    assert call(console, "POST", "/things/create", form={"name": "x"}).status == 403
    assert console.changes == []


def test_login_sets_a_strict_cookie_and_refuses_a_wrong_password(console):
    """The session cookie is Secure, HttpOnly, SameSite=Strict; a wrong password gets the form again with an error and no cookie."""
    form_page = call(console, "GET", "/login")
    token = re.search(rb'name="csrf_token" value="([^"]+)"', form_page.body).group(1).decode()
    answer = call(console, "POST", "/login", cookies={"hipchat_login_csrf": token}, form={"csrf_token": token, "username": "admin1", "password": "admin1-pw"})
    cookie = answer.cookies()["hipchat_session"].lower()
    assert b"secure" in cookie and b"httponly" in cookie and b"samesite=strict" in cookie
    wrong = call(console, "POST", "/login", cookies={"hipchat_login_csrf": token}, form={"csrf_token": token, "username": "admin1", "password": "nope"})
    assert wrong.status == 302 and "error=" in wrong.header("location") and "hipchat_session" not in wrong.cookies()


def test_login_form_needs_its_token_and_never_redirects_elsewhere(console):
    """A login POST without the form's double-submit token is 403; a next of another host goes to /admin/."""
    assert call(console, "POST", "/login", form={"username": "admin1", "password": "admin1-pw"}).status == 403
    form_page = call(console, "GET", "/login?next=//evil.example.com/")
    assert b"//evil.example.com" not in form_page.body
    token = re.search(rb'name="csrf_token" value="([^"]+)"', form_page.body).group(1).decode()
    answer = call(console, "POST", "/login", cookies={"hipchat_login_csrf": token},
                  form={"csrf_token": token, "username": "admin1", "password": "admin1-pw", "next": "https://evil.example.com/"})
    assert answer.header("location") == "/admin/"


def test_admin_sees_pages_and_posts_with_the_csrf_token(console):
    """An admin's session reaches pages; a POST with the session's token runs the action and redirects."""
    cookies = log_in(console, "admin1")
    page = call(console, "GET", "/things", cookies=cookies)
    assert page.status == 200 and b"things for admin1" in page.body
    assert page.header("content-security-policy").startswith("default-src 'self'")
    answer = call(console, "POST", "/things/create", cookies=cookies, form={"csrf_token": csrf_of(console, cookies), "name": "x"})
    assert answer.status == 302 and answer.header("location") == "/admin/things?notice=created"
    assert console.changes == [("admin1", "x")]


def test_post_without_or_with_another_sessions_csrf_token_is_refused(console):
    """No token, a wrong one, or another session's (of the same admin): 403, the action does not run."""
    cookies, other = log_in(console, "admin1"), log_in(console, "admin1")
    for token in (None, "wrong", csrf_of(console, other)):
        form = {"name": "x"} if token is None else {"name": "x", "csrf_token": token}
        assert call(console, "POST", "/things/create", cookies=cookies, form=form).status == 403
    assert console.changes == []


def test_non_admin_and_demoted_admin_are_refused_everything(console):
    """A non-admin's session gets 403 on pages and actions; an admin demoted since logging in too."""
    cookies = log_in(console, "carol")
    assert call(console, "GET", "/things", cookies=cookies).status == 403
    assert call(console, "POST", "/things/create", cookies=cookies, form={"csrf_token": csrf_of(console, cookies)}).status == 403
    admin = log_in(console, "admin2")
    console.demoted.add("admin2")
    assert call(console, "GET", "/things", cookies=admin).status == 403
    assert console.changes == []


def test_forged_cookie_and_logout(console):
    """A cookie with a changed signature is no session; logging out ends the session for good."""
    cookies = log_in(console, "admin1")
    session_id = cookies["hipchat_session"].split(".")[0]
    assert call(console, "GET", "/things", cookies={"hipchat_session": f"{session_id}.forged"}).status == 302
    assert call(console, "POST", "/logout", cookies=cookies, form={"csrf_token": csrf_of(console, cookies)}).status == 302
    assert call(console, "GET", "/things", cookies=cookies).status == 302


def test_unknown_page_is_404(console):
    cookies = log_in(console, "admin1")
    assert call(console, "GET", "/nothing-here", cookies=cookies).status == 404
