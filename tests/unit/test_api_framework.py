"""The REST API v2 framework (`rest.api`): authentication, scopes, rate limits, flood control, bodies, collections.

Requests go through a real `twisted.web.server.Request` and the real Klein
app over a dummy channel; Redis is an in-memory fake with INCR/EXPIRE.
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import datetime, timedelta

import pytest
from twisted.internet import defer, task
from twisted.web import server
from twisted.web.test.requesthelper import DummyChannel

from hipchat_server.authentication import AuthenticationFailed, Authenticator, Caller, SCOPES
from hipchat_server.config import ApiConfig
from hipchat_server.rate_limits import Limit, WindowCounter
from hipchat_server.rest import api
from hipchat_server.storage.api_tokens import TokenRow
from hipchat_server.xmpp.auth_limits import AuthFailureLimiter

NOW = 1_800_000_000.0


class FakePipeline:
    def __init__(self, redis):
        self.redis, self.commands = redis, []

    def incr(self, key):
        self.commands.append(("incr", key))

    def expire(self, key, seconds):
        self.commands.append(("expire", key, seconds))

    def execute(self):
        if self.redis.down:
            raise ConnectionError("Redis is down")
        results = []
        for command in self.commands:
            if command[0] == "incr":
                self.redis.values[command[1]] = self.redis.values.get(command[1], 0) + 1
                results.append(self.redis.values[command[1]])
            else:
                self.redis.expiries[command[1]] = command[2]
                results.append(True)
        return results


class FakeRedis:
    def __init__(self):
        self.values, self.expiries, self.down, self.calls = {}, {}, False, 0

    def pipeline(self, transaction=False):
        self.calls += 1
        return FakePipeline(self)


class FakeCredentials:
    def get_scram_credentials(self, username, mechanism):
        return None

    def check_password(self, username, password):
        return password == "secret"

    def is_active(self, username):
        return True


class FakeTokens:
    def __init__(self):
        self.rows, self.finds = {}, 0

    def add(self, token, **values):
        defaults = dict(
            id=len(self.rows) + 1,
            label="bot",
            user_id=7,
            username="alice",
            user_is_active=True,
            user_is_admin=False,
            user_is_deleted=False,
            room_id=None,
            room_name=None,
            scopes=("view_group",),
            created_at=None,
            expires_at=None,
            oauth_client_id=None,
            client_id=None,
        )
        defaults.update(values)
        self.rows[hashlib.sha256(token.encode()).hexdigest()] = TokenRow(**defaults)

    def find(self, token_hash):
        self.finds += 1
        return self.rows.get(token_hash)


def basic(username, password="secret"):
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


@pytest.fixture
def redis():
    return FakeRedis()


@pytest.fixture
def tokens():
    tokens = FakeTokens()
    tokens.add("personal", scopes=("view_group", "send_message"))
    tokens.add("room", user_id=None, username=None, room_id=3, scopes=("send_notification",), label="CI")
    tokens.add("expired", expires_at=datetime(2020, 1, 1))
    return tokens


@pytest.fixture
def context(redis, tokens):
    config = ApiConfig(rate_limit_requests=5, rate_limit_seconds=300, flood_messages=2, flood_seconds=60)
    clock = lambda: NOW  # noqa: E731
    admins = {"root": (1, True), "alice": (7, False)}
    return api.ApiContext(
        authenticator=Authenticator(
            FakeCredentials(), tokens, accounts=lambda u: admins.get(u, (None, False)), now=lambda: datetime(2026, 1, 1)
        ),
        limiter=AuthFailureLimiter(3, 60.0, clock=task.Clock()),
        run_blocking=lambda f, *args: defer.maybeDeferred(f, *args),
        domain="example.com",
        public_url="https://chat.example.com",
        rate_limit=Limit(WindowCounter(lambda: redis, "api:ratelimit", clock=clock), 5, 300),
        flood_limit=Limit(WindowCounter(lambda: redis, "api:flood", clock=clock), 2, 60),
        config=config,
        clock=clock,
    )


@pytest.fixture
def app(context):
    app = api.ApiApp(context)

    @api.route(app, "GET", "/room/<room_id>", scope="view_group")
    def get_room(request, caller, room_id):
        return {"id": room_id, "who": caller.username, "links": {"self": api.link(context, "room", room_id)}}

    @api.route(app, "POST", "/room/<room_id>/message", scope="send_message")
    @defer.inlineCallbacks
    def send(request, caller, room_id):
        body = api.json_body(request, {"message": api.field(str, max_length=20), "notify": api.field(bool, required=False, default=False)})
        yield api.flood_control(request, context, f"room:{room_id}")
        return 201, {"echo": body}

    @api.route(app, "GET", "/capabilities", scope=None)
    def capabilities(request, caller):
        return {"caller": caller.username, "authenticated": caller.authenticated}

    @api.route(app, "GET", "/rooms", scope="view_group")
    def rooms(request, caller):
        start, count = api.paging(request)
        everything = [{"id": i} for i in range(7)]
        return api.collection(request, everything[start : start + count], len(everything), expand_item=lambda r: {**r, "full": True})

    @api.route(app, "DELETE", "/room/<room_id>", scope="admin_room")
    def delete(request, caller, room_id):
        return None

    @api.route(app, "GET", "/boom", scope=None)
    def boom(request, caller):
        raise RuntimeError("a bug")

    return app


class Answer:
    def __init__(self, request, raw: bytes):
        self.status = request.code
        self.headers = {k.decode().lower(): v[0].decode() for k, v in request.responseHeaders.getAllRawHeaders()}
        body = raw.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in raw else b""
        self.body = _unchunk(body)

    def json(self):
        return json.loads(self.body)


def _unchunk(data: bytes) -> bytes:
    out = b""
    while data:
        size, _, rest = data.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            break
        out, data = out + rest[:n], rest[n + 2 :]
    return out


def call(app, method, path, *, authorization=None, body=b"", headers=None) -> Answer:
    site = server.Site(app.resource())
    channel = DummyChannel()
    channel.site = site
    request = server.Request(channel, False)
    request.site = site
    if authorization:
        request.requestHeaders.setRawHeaders(b"authorization", [authorization.encode()])
    for name, value in (headers or {}).items():
        request.requestHeaders.setRawHeaders(name.encode(), [value.encode()])
    if body:
        request.requestHeaders.setRawHeaders(b"content-length", [str(len(body)).encode()])
    request.gotLength(len(body))
    request.content.write(body)
    request.content.seek(0)
    request.requestReceived(method.encode(), path.encode(), b"HTTP/1.1")
    assert request.finished, "the answer was not finished"
    return Answer(request, channel.transport.written.getvalue())


# Authentication and scopes.


def test_bearer_basic_and_auth_token_all_authenticate(app):
    """A personal token as Bearer or ?auth_token=, or Basic, reach the handler as the token's or account's user."""
    assert call(app, "GET", "/room/5", authorization="Bearer personal").json()["who"] == "alice"
    assert call(app, "GET", "/room/5?auth_token=personal").json()["who"] == "alice"
    answer = call(app, "GET", "/room/5", authorization=basic("bob"))
    assert answer.status == 200 and answer.json() == {
        "id": "5",
        "who": "bob",
        "links": {"self": "https://chat.example.com/v2/room/5"},
    }


def test_missing_bad_and_expired_credentials_are_401_with_www_authenticate_and_rate_headers(app):
    """No credentials, an unknown token, an expired token, a wrong password: 401, HipChat's error body, the headers."""
    for kwargs in ({}, {"authorization": "Bearer nope"}, {"authorization": "Bearer expired"}, {"authorization": basic("bob", "wrong")}):
        answer = call(app, "GET", "/room/5", **kwargs)
        assert answer.status == 401, kwargs
        assert answer.json()["error"]["code"] == 401 and answer.json()["error"]["type"] == "Unauthorized"
        assert "bearer" in answer.headers["www-authenticate"].lower()
        assert answer.headers["x-ratelimit-limit"] == "5"
    assert "expired" in call(app, "GET", "/room/5", authorization="Bearer expired").json()["error"]["message"]


def test_a_missing_scope_is_403_naming_it(app):
    """A token without the route's scope gets 403 with HipChat's message; a room token is limited to notifications."""
    answer = call(app, "DELETE", "/room/5", authorization="Bearer personal")
    assert answer.status == 403
    assert answer.json()["error"] == {"code": 403, "type": "Forbidden", "message": "This endpoint requires the scope admin_room"}
    assert call(app, "GET", "/room/3", authorization="Bearer room").status == 403
    assert "x-ratelimit-remaining" in answer.headers


def test_basic_callers_hold_every_scope_their_account_allows():
    """An admin holds admin_group; anyone else every other scope."""
    authenticator = Authenticator(FakeCredentials(), accounts=lambda u: (1, u == "root"))
    assert authenticator.caller(basic("root")).scopes == frozenset(SCOPES)
    assert authenticator.caller(basic("bob")).scopes == frozenset(SCOPES) - {"admin_group"}
    assert authenticator.caller(basic("bob")).rate_key == "user:bob"


def test_a_basic_callers_account_is_read_once_per_token_cache_period():
    """A script calling with Basic credentials costs one account query per 10 s, and a demotion shows after that."""
    reads, admin, now = [], {"root": True}, [100.0]

    def accounts(username):
        reads.append(username)
        return 1, admin[username]

    authenticator = Authenticator(FakeCredentials(), accounts=accounts, clock=lambda: now[0])
    for _ in range(3):
        assert authenticator.caller(basic("root")).is_admin
    assert reads == ["root"]
    admin["root"] = False
    now[0] += 10.5
    assert not authenticator.caller(basic("root")).is_admin and reads == ["root", "root"]


def test_tokens_never_hold_more_than_their_user_may_and_room_tokens_only_send_notification(tokens):
    """A non-admin's token listing admin_group does not get it; a room token is send_notification for its room."""
    tokens.add("grand", scopes=("admin_group", "view_group"))
    tokens.add("room-wide", user_id=None, username=None, room_id=9, scopes=("send_notification", "admin_room"))
    tokens.add("gone", user_is_deleted=True)
    authenticator = Authenticator(FakeCredentials(), tokens)
    assert authenticator.caller("Bearer grand").scopes == {"view_group"}
    room = authenticator.caller("Bearer room-wide")
    assert room.scopes == {"send_notification"} and room.room_id == 9 and room.username is None
    assert room.rate_key.startswith("token:")
    with pytest.raises(AuthenticationFailed):
        authenticator.caller("Bearer gone")


def test_tokens_are_remembered_briefly_and_forgotten_on_revocation(tokens):
    """A busy token costs one lookup per TOKEN_CACHE_TTL; forget_token makes the next request look again."""
    now = [0.0]
    authenticator = Authenticator(FakeCredentials(), tokens, clock=lambda: now[0])
    for _ in range(3):
        authenticator.caller("Bearer personal")
    assert tokens.finds == 1
    authenticator.forget_token()
    authenticator.caller("Bearer personal")
    assert tokens.finds == 2
    now[0] += 60
    authenticator.caller("Bearer personal")
    assert tokens.finds == 3


def test_anonymous_routes_take_no_credentials_but_check_the_ones_sent(app):
    """scope=None: anonymous is fine; credentials that are sent are still checked."""
    assert call(app, "GET", "/capabilities").json() == {"caller": None, "authenticated": False}
    assert call(app, "GET", "/capabilities", authorization="Bearer personal").json()["caller"] == "alice"
    assert call(app, "GET", "/capabilities", authorization="Bearer nope").status == 401


def test_repeated_failed_logins_for_one_account_are_429(app):
    """After the failure limiter's count, that address and account gets 429 (with rate headers) until a minute passed."""
    for _ in range(3):
        call(app, "GET", "/room/5", authorization=basic("bob", "guess"))
    answer = call(app, "GET", "/room/5", authorization=basic("bob"))
    assert answer.status == 429 and "x-ratelimit-limit" in answer.headers
    assert call(app, "GET", "/room/5", authorization=basic("carol")).status == 200


# Rate limits.


def test_every_answer_counts_down_and_past_the_limit_is_429(app, redis):
    """Each request takes one from the caller's window; the sixth of five is 429 with Retry-After; others are unaffected."""
    remaining = [call(app, "GET", "/room/5", authorization="Bearer personal").headers["x-ratelimit-remaining"] for _ in range(5)]
    assert remaining == ["4", "3", "2", "1", "0"]
    answer = call(app, "GET", "/room/5", authorization="Bearer personal")
    assert answer.status == 429 and answer.json()["error"]["code"] == 429
    assert int(answer.headers["x-ratelimit-reset"]) == (int(NOW // 300) + 1) * 300
    assert int(answer.headers["retry-after"]) >= 1
    assert call(app, "GET", "/room/5", authorization=basic("bob")).status == 200, "Basic callers count per user"
    key = f"api:ratelimit:token:1:{int(NOW // 300)}"
    assert redis.values[key] == 6 and redis.expiries[key] == 301


def test_errors_count_per_address_when_no_one_is_authenticated(app, redis):
    """401s count against the client address, and carry the headers too."""
    call(app, "GET", "/room/5")
    assert any(key.startswith("api:ratelimit:address:") for key in redis.values)


def test_redis_down_serves_without_the_limit_and_shows_the_configured_one(app, redis):
    """When Redis fails the API still answers, with the configured limit in the headers, and waits before asking again."""
    redis.down = True
    answer = call(app, "GET", "/room/5", authorization="Bearer personal")
    assert answer.status == 200 and answer.headers["x-ratelimit-limit"] == "5" and answer.headers["x-ratelimit-remaining"] == "5"
    calls = redis.calls
    call(app, "GET", "/room/5", authorization="Bearer personal")
    assert redis.calls == calls, "Redis is left alone for a few seconds after a failure"


def test_flood_control_headers_and_429_per_room(app):
    """Messages into one room count against its flood limit (X-FloodControl-*), another room has its own."""
    send = lambda room: call(  # noqa: E731
        app, "POST", f"/room/{room}/message", authorization=basic("bob"), body=b'{"message": "hi"}'
    )
    first = send(1)
    assert first.status == 201 and first.headers["x-floodcontrol-limit"] == "2"
    assert first.headers["x-floodcontrol-remaining"] == "1" and "x-floodcontrol-reset" in first.headers
    assert send(1).status == 201
    third = send(1)
    assert third.status == 429 and third.headers["x-floodcontrol-remaining"] == "0"
    assert "flood" in third.json()["error"]["message"]
    assert send(2).status == 201


# Bodies, errors, collections.


@pytest.mark.parametrize(
    "body, message",
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (b"{}", "message: required"),
        (b'{"message": 5}', "message: expected a string"),
        (b'{"message": "hi", "notify": "yes"}', "notify: expected true or false"),
        (b'{"message": "' + b"x" * 21 + b'"}', "message: longer than 20"),
    ],
)
def test_bad_json_bodies_are_400_saying_what_is_wrong(app, body, message):
    answer = call(app, "POST", "/room/1/message", authorization=basic("bob"), body=body)
    assert answer.status == 400 and message in answer.json()["error"]["message"]


def test_json_bodies_fill_in_defaults_and_ignore_unknown_fields(app):
    answer = call(app, "POST", "/room/1/message", authorization=basic("bob"), body=b'{"message": "hi", "color": "red"}')
    assert answer.json() == {"echo": {"message": "hi", "notify": False}}


def test_bodies_over_a_mebibyte_are_413(app):
    body = b'{"message": "' + b"x" * api.MAX_BODY_BYTES + b'"}'
    answer = call(app, "POST", "/room/1/message", authorization=basic("bob"), body=body)
    assert answer.status == 413 and answer.json()["error"]["code"] == 413


def test_unknown_paths_and_methods_and_crashes_have_hipchats_error_body_and_rate_headers(app):
    """404, 405 and a handler's bug (500, logged) all answer {"error": ...} with the rate-limit headers."""
    for method, path, status in (("GET", "/nowhere", 404), ("PUT", "/room/5", 405), ("GET", "/boom", 500)):
        answer = call(app, method, path, authorization=basic("bob"))
        assert answer.status == status and answer.json()["error"]["code"] == status
        assert "x-ratelimit-reset" in answer.headers
    assert "a bug" not in call(app, "GET", "/boom").body.decode()


def test_none_is_204_without_a_body(app):
    answer = call(app, "DELETE", "/room/5", authorization=basic("root"))
    assert answer.status == 204 and answer.body == b""


def test_collections_page_with_links_and_expand(app):
    """start-index/max-results page the items; prev/next only when they exist; ?expand=items gives full objects."""
    first = call(app, "GET", "/rooms?max-results=3", authorization=basic("bob")).json()
    assert [r["id"] for r in first["items"]] == [0, 1, 2]
    assert first["startIndex"] == 0 and first["maxResults"] == 3
    assert first["links"]["self"] == "https://chat.example.com/rooms?start-index=0&max-results=3"
    assert "prev" not in first["links"] and "start-index=3" in first["links"]["next"]
    last = call(app, "GET", "/rooms?start-index=6&max-results=3&expand=items", authorization=basic("bob")).json()
    assert last["items"] == [{"id": 6, "full": True}]
    assert "next" not in last["links"] and "start-index=3" in last["links"]["prev"]
    assert "expand=items" in last["links"]["self"]


@pytest.mark.parametrize(
    "query", ["max-results=1001", "max-results=-1", "start-index=-5", "start-index=abc", "start-index=", "start-index=66940376561078239232"]
)
def test_paging_out_of_range_is_400(app, query):
    answer = call(app, "GET", f"/rooms?{query}", authorization=basic("bob"))
    assert answer.status == 400


def test_links_are_absolute_and_escape_their_parts(context):
    assert api.link(context, "room", 17) == "https://chat.example.com/v2/room/17"
    assert api.link(context, "room", "a b/c", "webhook", 3) == "https://chat.example.com/v2/room/a%20b%2Fc/webhook/3"


def test_the_caller_of_a_room_token_is_not_an_admin(tokens):
    tokens.add("admins-room", user_is_admin=True, room_id=4, scopes=("send_notification",))
    caller = Authenticator(FakeCredentials(), tokens).caller("Bearer admins-room")
    assert isinstance(caller, Caller) and not caller.is_admin


def test_the_api_config_section_is_optional_and_errors_name_the_key():
    """Without an ``api`` section the defaults hold (HipChat's 500 per 5 minutes, 30 per minute); bad values name the key."""
    from hipchat_server.config import ApiConfig, ConfigError

    assert ApiConfig.load({}) == ApiConfig(500, 300, 30, 60, 3600)
    assert ApiConfig.load({"api": {"rate_limit_requests": 10}}).rate_limit_requests == 10
    with pytest.raises(ConfigError, match="api.flood_seconds"):
        ApiConfig.load({"api": {"flood_seconds": 0}})


def test_failed_tokens_never_lock_out_other_tokens_from_the_same_address(app):
    """Bad Bearer tokens are not counted as failed logins: a stale bot token does not block its neighbours."""
    for _ in range(10):
        assert call(app, "GET", "/room/5", authorization="Bearer stale").status == 401
    assert call(app, "GET", "/room/5", authorization="Bearer personal").status == 200
