"""Browser sessions (`web.sessions`) against a real throwaway redis-server.

A login opens a session only for the right password and an active account;
the cookie is signed (a changed one is refused); sessions expire, end one at
a time or all of a user's at once; CSRF tokens must match; failed logins
are limited per address.
"""

from __future__ import annotations

import pytest
from twisted.internet import task

from hipchat_server.authentication import AuthenticationFailed, Caller
from hipchat_server.web import sessions as web
from hipchat_server.xmpp.auth_limits import AuthFailureLimiter


class FakeAuthenticator:
    """Passwords and admin flags of a few accounts; ``bob`` is deactivated."""

    accounts = {"alice": ("alice-secret", False), "root": ("root-secret", True), "bob": ("bob-secret", False)}

    def password_caller(self, username, password):
        known = self.accounts.get(username)
        if known is None or known[0] != password or username == "bob":
            raise AuthenticationFailed("wrong username or password")
        return Caller(username, 1, frozenset(), f"user:{username}", is_admin=known[1])


@pytest.fixture
def redis(redis_server):
    redis_server.flushall()
    return redis_server


@pytest.fixture
def sessions(redis):
    return web.WebSessions(lambda: redis, FakeAuthenticator(), limiter=AuthFailureLimiter(3, 60.0, clock=task.Clock()))


def test_login_opens_a_session_with_the_accounts_admin_flag(sessions, redis):
    """The right password opens a session in Redis under web:session:<id>, with a TTL of 12 hours."""
    session = sessions.login("root", "root-secret", "127.0.0.1")
    assert session.is_admin and session.username == "root"
    assert 0 < redis.ttl(f"web:session:{session.id}") <= 12 * 3600
    assert sessions.get(session.id) == session
    assert not sessions.login("alice", "alice-secret", "127.0.0.1").is_admin


@pytest.mark.parametrize("username,password", [("alice", "wrong"), ("nobody", "x"), ("bob", "bob-secret"), ("", ""), ("alice", "")])
def test_wrong_password_unknown_or_inactive_account_is_refused(sessions, redis, username, password):
    """No session for a wrong password, an unknown or deactivated account, or empty fields."""
    with pytest.raises(web.LoginRefused):
        sessions.login(username, password, "10.0.0.1")
    assert not redis.keys("web:session:*")


def test_failed_logins_are_limited_per_address(sessions):
    """After 3 failures from one address even the right password is refused there; another address still logs in."""
    for _ in range(3):
        with pytest.raises(web.LoginRefused):
            sessions.login("alice", "wrong", "10.0.0.2")
    with pytest.raises(web.LoginRefused, match="too many"):
        sessions.login("alice", "alice-secret", "10.0.0.2")
    assert sessions.login("alice", "alice-secret", "10.0.0.3").username == "alice"


def test_cookie_is_signed(sessions):
    """The cookie names the session with a signature; a changed id or signature finds no session."""
    session = sessions.create("alice", False)
    value = sessions.cookie_value(session)
    assert sessions.from_cookie(value) == session
    assert sessions.from_cookie(value.encode()) == session
    session_id, _, signature = value.partition(".")
    assert sessions.from_cookie(session_id) is None
    flip = lambda text: text[:-1] + ("B" if text[-1] == "A" else "A")  # noqa: E731  one character changed
    assert sessions.from_cookie(f"{session_id}.{flip(signature)}") is None
    assert sessions.from_cookie(f"{flip(session_id)}.{signature}") is None
    assert sessions.from_cookie("") is None and sessions.from_cookie(None) is None


def test_signing_key_is_shared_by_processes(sessions, redis):
    """A second process (another WebSessions on the same Redis) accepts the first one's cookies."""
    session = sessions.create("alice", False)
    other = web.WebSessions(lambda: redis)
    assert other.from_cookie(sessions.cookie_value(session)) == session


def test_end_and_end_user(sessions):
    """Logging out ends one session; ending a user ends all of theirs and no one else's."""
    a1, a2, r = sessions.create("alice", False), sessions.create("alice", False), sessions.create("root", True)
    sessions.end(a1)
    assert sessions.get(a1.id) is None and sessions.get(a2.id) == a2
    a3 = sessions.create("alice", False)
    assert sessions.end_user("alice") == 2
    assert sessions.get(a2.id) is None and sessions.get(a3.id) is None
    assert sessions.get(r.id) == r
    assert sessions.end_user("alice") == 0


def test_session_expires(redis):
    """A session is gone once its TTL has passed."""
    import time

    short = web.WebSessions(lambda: redis, ttl=1)
    session = short.create("alice", False)
    time.sleep(1.2)
    assert short.get(session.id) is None


def test_csrf_token_must_match(sessions):
    """Only the session's own token passes; another session's token, an empty one or no session fail."""
    a, b = sessions.create("alice", False), sessions.create("alice", False)
    assert web.csrf_ok(a, a.csrf_token)
    assert web.csrf_ok(a, a.csrf_token.encode())
    assert not web.csrf_ok(a, b.csrf_token)
    assert not web.csrf_ok(a, "") and not web.csrf_ok(a, None)
    assert not web.csrf_ok(None, a.csrf_token)


def test_cookie_attributes(sessions):
    """The cookie is Secure, HttpOnly and SameSite=Strict for the whole host."""
    from twisted.web.server import Request
    from twisted.web.test.requesthelper import DummyChannel

    request = Request(DummyChannel())
    web.set_cookie(request, sessions, sessions.create("alice", False))
    (cookie,) = request.cookies
    assert cookie.startswith(b"hipchat_session=")
    for attribute in (b"Secure", b"HttpOnly", b"SameSite=strict", b"Path=/"):
        assert attribute.lower() in cookie.lower()


def test_password_caller_checks_every_time():
    """`Authenticator.password_caller` remembers no result: a changed password or a deactivation counts at once."""
    from hipchat_server.authentication import Authenticator

    class Credentials:
        password, active = "old-secret", True

        def get_scram_credentials(self, username, mechanism):
            return None

        def check_password(self, username, password):
            return password == self.password

        def is_active(self, username):
            return self.active

    credentials = Credentials()
    authenticator = Authenticator(credentials, accounts=lambda username: (5, True))
    caller = authenticator.password_caller("root", "old-secret")
    assert caller.is_admin and caller.user_id == 5
    credentials.password = "new-secret"
    with pytest.raises(AuthenticationFailed):
        authenticator.password_caller("root", "old-secret")
    credentials.active = False
    with pytest.raises(AuthenticationFailed):
        authenticator.password_caller("root", "new-secret")
