"""The REST API v2 framework: authentication, scopes, rate limits, HipChat's error and collection shapes.

Usage (an area module, e.g. ``rest/rooms.py``; ``rest/__init__.py`` imports
every area in `AREAS` and calls its ``register(app, context)``)::

    from hipchat_server.rest import api

    def register(app, context: api.ApiContext) -> None:
        rooms = RoomsApi(context.chat_server)          # the domain layer, never storage

        @api.route(app, "GET", "/room", scope="view_group")
        def list_rooms(request, caller: api.Caller):
            start, count = api.paging(request)          # start-index / max-results, 400 when out of range
            d = context.run_blocking(rooms.list, caller.username, start, count)
            return d.addCallback(lambda page: api.collection(
                request, [compact(r) for r in page.rooms], page.total, expand_item=full))

        @api.route(app, "POST", "/room/<room_id>/notification", scope="send_notification")
        @defer.inlineCallbacks
        def notify(request, caller, room_id):
            body = api.json_body(request, {"message": api.field(str, max_length=10000),
                                           "notify": api.field(bool, required=False, default=False)})
            yield api.flood_control(request, context, f"room:{room_id}")   # X-FloodControl-*, 429 past it
            ...
            return None                                  # 204; a dict is 200, (201, dict) is 201

        # api.link(context, "room", room_id) -> "https://chat.example.com/v2/room/17"

A handler is ``handler(request, caller, **path_args)`` returning a dict (200),
``(status, dict)``, ``(status, None)`` or None (204), or a Deferred of one;
raising `ApiError(status, message)` answers HipChat's error body
``{"error": {"code", "type", "message"}}``; any other exception is logged and
answered 500. Before the handler runs the wrapper authenticates (Bearer,
``?auth_token=`` or Basic; 401 with ``WWW-Authenticate``), checks the route's
scope (403), counts the request against the caller's rate limit (429 past
it) and sets ``X-Ratelimit-Limit/-Remaining/-Reset`` on every answer,
errors and 401 included. ``scope=None`` routes take anonymous callers (and
still authenticate credentials that are sent); ``public=True`` routes never
look at credentials (the handler does its own, e.g. OAuth client auth).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field as dataclass_field
from http import HTTPStatus
from typing import Any, Callable
from urllib.parse import quote, urlencode

from klein import Klein
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server
from werkzeug.exceptions import MethodNotAllowed, NotFound

from hipchat_server.authentication import AuthenticationFailed, Caller, claimed_username
from hipchat_server.config import ApiConfig

__all__ = [
    "ApiApp",
    "ApiContext",
    "ApiError",
    "ApiResource",
    "Caller",
    "collection",
    "error_body",
    "field",
    "flood_control",
    "int_argument",
    "json_body",
    "link",
    "paging",
    "query_argument",
    "route",
    "write_json",
]

log = Logger()

#: Largest request body the API reads (HipChat's messages are at most 10,000 characters).
MAX_BODY_BYTES = 1024 * 1024
DEFAULT_MAX_RESULTS = 100
MAX_MAX_RESULTS = 1000
#: Largest start-index taken (a signed 32-bit integer): beyond it a database OFFSET overflows.
MAX_START_INDEX = 2**31 - 1
NO_CREDENTIALS = "send Authorization: Bearer <token>, ?auth_token=<token>, or Basic (username and password)"


class ApiError(Exception):
    """Answer the request with ``status`` and ``message`` (HipChat's error body)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class ApiContext:
    """What the resources need: the authenticator, the limits, a thread runner, the server's names.

    ``rate_limit`` and ``flood_limit`` are `rate_limits.Limit`\\ s (None: not
    counted, the headers show ``config``'s numbers); ``chat_server`` gives
    area modules the domain services (``get_database_engine`` and so on).
    """

    authenticator: object
    limiter: object  # failed Basic logins per address and account (xmpp.auth_limits.AuthFailureLimiter)
    run_blocking: Callable[..., defer.Deferred]
    domain: str
    public_url: str
    rate_limit: object = None
    flood_limit: object = None
    chat_server: object = None
    config: ApiConfig = dataclass_field(default_factory=ApiConfig)
    clock: Callable[[], float] | None = None

    def bare_jid(self, username: str) -> str:
        return f"{username}@{self.domain}"


# ---------------------------------------------------------------- answers


def write_json(request, status: int, body: dict | None) -> None:
    if request.finished or getattr(request, "_disconnected", False):
        return
    request.setResponseCode(status)
    request.setHeader(b"cache-control", b"no-store")  # people's messages: never in a shared cache
    if body is not None:
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        request.write(_encode(body))
    request.finish()


def _encode(body) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode("utf-8")


def error_body(status: int, message: str) -> dict:
    return {"error": {"code": status, "type": HTTPStatus(status).phrase, "message": message}}


def _set_limit_headers(request, prefix: bytes, state) -> None:
    request.setHeader(prefix + b"-limit", str(state.limit).encode())
    request.setHeader(prefix + b"-remaining", str(state.remaining).encode())
    request.setHeader(prefix + b"-reset", str(state.reset).encode())


def _default_state(context: ApiContext):
    from hipchat_server.rate_limits import LimitState

    now = _now(context)
    seconds = context.config.rate_limit_seconds
    limit = context.config.rate_limit_requests
    return LimitState(limit, limit, (int(now // seconds) + 1) * seconds, counted=False)


# ---------------------------------------------------------------- authentication and limits


def _authorization(request) -> str | None:
    header = request.getHeader(b"authorization")
    header = header.decode("latin-1") if isinstance(header, bytes) else header
    if header:
        return header
    token = request.args.get(b"auth_token")
    if token and token[0]:
        return "Bearer " + token[0].decode("utf-8", "replace")
    return None


def _address(request) -> str:
    return getattr(request.getClientAddress(), "host", "") or "unknown"


def _identify(context: ApiContext, authorization: str | None, address: str, anonymous_ok: bool):
    """In a thread: (caller or None, AuthenticationFailed or None, rate-limit state or None)."""
    caller, error = None, None
    if authorization:
        try:
            caller = context.authenticator.caller(authorization)
        except AuthenticationFailed as e:
            error = e
    elif not anonymous_ok:
        error = AuthenticationFailed(NO_CREDENTIALS)
    key = caller.rate_key if caller is not None else f"address:{address}"
    state = context.rate_limit.hit(key) if context.rate_limit is not None else None
    return caller, error, state


def authenticate(request, context: ApiContext, *, scope: str | None, public: bool = False) -> defer.Deferred:
    """Who is calling (a `Caller`), with the rate-limit headers set; fails with `ApiError` 401/403/429."""
    request.api_context = context
    address = _address(request)
    authorization = None if public else _authorization(request)
    # Failed logins count per address and claimed account, for Basic only: guessing one account's
    # password is slowed down without locking out everyone else behind the same address (an office's
    # NAT). Tokens are 238 random bits: nothing to slow down, and one bot's stale token must not
    # lock out every other token from its address.
    claimed = claimed_username(authorization)
    failure_key = f"{address}|{claimed}" if claimed else None
    if failure_key and context.limiter is not None and context.limiter.blocked(failure_key):
        _set_limit_headers(request, b"x-ratelimit", _default_state(context))
        return defer.fail(ApiError(429, "too many failed logins; wait a minute"))
    d = context.run_blocking(_identify, context, authorization, address, scope is None)

    def identified(result):
        caller, error, state = result
        _set_limit_headers(request, b"x-ratelimit", state or _default_state(context))
        if error is not None:
            if failure_key and context.limiter is not None:
                context.limiter.record_failure(failure_key)  # on the reactor thread: the limiter is not thread-safe
            raise ApiError(401, str(error))
        if state is not None and state.exceeded:
            request.setHeader(b"retry-after", str(max(1, math.ceil(state.reset - _now(context)))).encode())
            raise ApiError(
                429, f"rate limit exceeded: {state.limit} requests per {context.config.rate_limit_seconds} seconds"
            )
        caller = caller or Caller.anonymous(address)
        if scope is not None and scope not in caller.scopes:
            raise ApiError(403, f"This endpoint requires the scope {scope}")
        return caller

    return d.addCallback(identified)


def _now(context: ApiContext) -> float:
    return (context.clock or time.time)()


def flood_control(request, context: ApiContext, key: str) -> defer.Deferred:
    """Count one message sent to ``key`` (``room:<id>``, ``user:<id>``): ``X-FloodControl-*`` headers, ApiError 429 past it."""
    limit = context.flood_limit
    if limit is None:
        return defer.succeed(None)

    def counted(state):
        _set_limit_headers(request, b"x-floodcontrol", state)
        if state.exceeded:
            request.setHeader(b"retry-after", str(max(1, math.ceil(state.reset - _now(context)))).encode())
            raise ApiError(
                429,
                f"flood control: at most {state.limit} messages per {context.config.flood_seconds} seconds here",
            )

    return context.run_blocking(limit.hit, key).addCallback(counted)


# ---------------------------------------------------------------- routing


class ApiApp(Klein):
    """The ``/v2`` Klein app with its `ApiContext`; unknown paths and methods answer HipChat's error body."""

    def __init__(self, context: ApiContext):
        super().__init__()
        self.context = context
        self.handle_errors(NotFound, MethodNotAllowed)(self._routing_error)

    def _routing_error(self, request, failure):
        status = 405 if failure.check(MethodNotAllowed) else 404
        message = "method not allowed here" if status == 405 else "no such resource"
        if status == 405 and failure.value.valid_methods:
            request.setHeader(b"allow", ", ".join(sorted(set(failure.value.valid_methods))).encode())

        def answer(_):
            raise ApiError(status, message)

        d = authenticate(request, self.context, scope=None).addCallback(answer)
        return d.addErrback(_error_answer, request)


def route(app: ApiApp, method: str, path: str, *, scope: str | None, handler=None, public: bool = False):
    """Serve ``method path`` (a werkzeug rule under ``/v2``, e.g. ``/room/<room_id>``) with ``handler``.

    Without ``handler`` it is a decorator. See the module docstring for what the wrapper does.
    """

    def register(function):
        def serve(request, **path_args):
            return _serve(request, app.context, scope, public, lambda caller: function(request, caller, **path_args))

        serve.__name__ = f"{method.lower()}_{function.__name__}"
        app.route(path, methods=[method], endpoint=f"{method} {path}")(serve)
        return function

    return register if handler is None else register(handler)


def _serve(request, context: ApiContext, scope: str | None, public: bool, call) -> defer.Deferred:
    d = authenticate(request, context, scope=scope, public=public)
    d.addCallback(lambda caller: defer.maybeDeferred(call, caller))
    d.addCallback(_answer, request)
    d.addErrback(_error_answer, request)
    return d


def _answer(result, request) -> bytes:
    status, body = 200, result
    if result is None:
        status = 204
    elif isinstance(result, tuple):
        status, body = result
    request.setResponseCode(status)
    request.setHeader(b"cache-control", b"no-store")
    if body is None or status == 204:
        return b""
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    return _encode(body)


def _error_answer(failure, request) -> bytes:
    if failure.check(defer.CancelledError):  # the client went away
        return b""
    if failure.check(ApiError):
        error = failure.value
        if error.status == 401:
            request.setHeader(b"www-authenticate", b'Bearer realm="HipChat", Basic realm="HipChat"')
        status, message = error.status, error.message
    else:
        log.failure("{method} {uri} failed", failure, method=request.method, uri=request.uri)
        status, message = 500, "the server failed to answer; try again"
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return _encode(error_body(status, message))


class ApiResource(resource.Resource):
    """A leaf JSON resource (the older style): subclasses implement ``get(request, username)``.

    It goes through the same authentication, ``scope`` check, rate limit and
    error answers as `route`'s handlers.
    """

    isLeaf = True
    scope = "view_messages"

    def __init__(self, context: ApiContext):
        super().__init__()
        self.context = context

    def render_GET(self, request):
        d = _serve(request, self.context, self.scope, False, lambda caller: self.get(request, caller.username))
        d.addCallback(self._write, request)
        return server.NOT_DONE_YET

    @staticmethod
    def _write(body: bytes, request) -> None:
        if request.finished or getattr(request, "_disconnected", False):
            return
        if body:
            request.write(body)
        request.finish()

    def get(self, request, username: str):
        raise NotImplementedError


# ---------------------------------------------------------------- arguments and bodies


def query_argument(request, name: str, default: str | None = None) -> str | None:
    """One query-string argument as text (the first, when repeated)."""
    values = request.args.get(name.encode())
    if not values:
        return default
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, f"{name}: not UTF-8") from None


def int_argument(request, name: str, default: int) -> int:
    """A whole-number query argument; absent: ``default``; anything else (an empty value too) is 400."""
    text = query_argument(request, name)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise ApiError(400, f"{name}: expected a whole number, found {text!r}") from None


def bool_argument(request, name: str, default: bool) -> bool:
    """A HipChat boolean query argument: ``true``/``false`` (also 1/0)."""
    text = query_argument(request, name)
    if text is None:
        return default
    if text.lower() in ("true", "1"):
        return True
    if text.lower() in ("false", "0"):
        return False
    raise ApiError(400, f"{name}: expected true or false, found {text!r}")


@dataclass(frozen=True)
class Field:
    """One field of a JSON body: its type, whether it must be there, its default, allowed values, longest length."""

    type: type | tuple
    required: bool = True
    default: Any = None
    choices: tuple | None = None
    max_length: int | None = None


def field(type_, *, required: bool = True, default=None, choices=None, max_length: int | None = None) -> Field:
    return Field(type_, required, default, tuple(choices) if choices else None, max_length)


_TYPE_NAMES = {str: "a string", int: "a whole number", float: "a number", bool: "true or false", list: "a list", dict: "an object"}


def _type_matches(value, type_) -> bool:
    types = type_ if isinstance(type_, tuple) else (type_,)
    for t in types:
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if t not in (int, float) and isinstance(value, t):
            return True
    return False


def _type_name(type_) -> str:
    types = type_ if isinstance(type_, tuple) else (type_,)
    return " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)


def read_body(request) -> bytes:
    """The request body; ApiError 413 when it is over `MAX_BODY_BYTES`."""
    if getattr(request, "body_too_large", False):  # past body_limit.MAX_KEPT_BYTES: not kept at all
        raise ApiError(413, f"the request body is over {MAX_BODY_BYTES} bytes (the rest of it was not read)")
    length = request.getHeader(b"content-length")
    if length and length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise ApiError(413, f"the request body is over {MAX_BODY_BYTES} bytes")
    content = request.content
    if content is None:
        return b""
    content.seek(0)
    data = content.read(MAX_BODY_BYTES + 1)
    if len(data) > MAX_BODY_BYTES:
        raise ApiError(413, f"the request body is over {MAX_BODY_BYTES} bytes")
    return data


def json_body(request, schema: dict[str, Field | type] | None = None) -> dict:
    """The JSON object in the body, checked against ``schema`` (field name -> `field(...)` or a type, meaning required).

    Answers the declared fields (defaults filled in for missing optional ones;
    undeclared fields are ignored, as HipChat does). ApiError 400 names the
    field that is missing or of the wrong type; 413 for a body over 1 MiB.
    """
    data = read_body(request)
    if not data.strip():
        if schema and any((spec if isinstance(spec, Field) else Field(spec)).required for spec in schema.values()):
            raise ApiError(400, "expected a JSON object in the request body")
        parsed: Any = {}
    else:
        try:
            parsed = json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(400, f"the request body is not valid JSON: {e}") from None
    if not isinstance(parsed, dict):
        raise ApiError(400, "expected a JSON object in the request body")
    if schema is None:
        return parsed
    result = {}
    for name, spec in schema.items():
        spec = spec if isinstance(spec, Field) else Field(spec)
        if name not in parsed or parsed[name] is None:
            if spec.required:
                raise ApiError(400, f"{name}: required")
            result[name] = spec.default
            continue
        value = parsed[name]
        if not _type_matches(value, spec.type):
            raise ApiError(400, f"{name}: expected {_type_name(spec.type)}")
        if spec.choices is not None and value not in spec.choices:
            raise ApiError(400, f"{name}: expected one of {', '.join(map(str, spec.choices))}")
        if spec.max_length is not None and hasattr(value, "__len__") and len(value) > spec.max_length:
            raise ApiError(400, f"{name}: longer than {spec.max_length}")
        result[name] = value
    return result


# ---------------------------------------------------------------- collections and links


def paging(request) -> tuple[int, int]:
    """``(start-index, max-results)`` from the query: defaults 0 and 100; 400 when out of range (max-results > 1000)."""
    start = int_argument(request, "start-index", 0)
    count = int_argument(request, "max-results", DEFAULT_MAX_RESULTS)
    if not 0 <= start <= MAX_START_INDEX:
        raise ApiError(400, f"start-index: expected 0 to {MAX_START_INDEX}")
    if not 0 <= count <= MAX_MAX_RESULTS:
        raise ApiError(400, f"max-results: expected 0 to {MAX_MAX_RESULTS}")
    return start, count


def expanded(request, what: str = "items") -> bool:
    """Whether ``?expand=`` asks for ``what`` (comma-separated, HipChat's ``items`` or ``items.<field>``)."""
    values = query_argument(request, "expand", "") or ""
    return any(part == what or part.startswith(what + ".") for part in values.split(","))


def collection(request, items: list, total: int | None, *, expand_item: Callable[[Any], dict] | None = None) -> dict:
    """HipChat's collection for this page of ``items`` (their compact forms).

    ``total`` decides whether there is a ``next`` page (None: next while the page is full).
    With ``?expand=items`` each item is ``expand_item(item)`` instead.
    """
    start, count = paging(request)
    if expand_item is not None and expanded(request):
        items = [expand_item(item) for item in items]
    links = {"self": _page_link(request, start, count)}
    if start > 0:
        links["prev"] = _page_link(request, max(0, start - count), count)
    more = (start + len(items) < total) if total is not None else (count > 0 and len(items) >= count)
    if more and count > 0:
        links["next"] = _page_link(request, start + count, count)
    return {"items": list(items), "startIndex": start, "maxResults": count, "links": links}


def _page_link(request, start: int, count: int) -> str:
    context = getattr(request, "api_context", None)
    base = context.public_url if context is not None else ""
    args = [(k.decode(), v.decode("utf-8", "replace")) for k, vs in request.args.items() for v in vs[:1]]
    args = [(k, v) for k, v in args if k not in ("start-index", "max-results", "auth_token")]
    args += [("start-index", str(start)), ("max-results", str(count))]
    return f"{base}{request.path.decode('utf-8', 'replace')}?{urlencode(args)}"


def link(context: ApiContext, kind: str, *ids) -> str:
    """The absolute URL of an object: ``link(context, "room", 17)`` -> ``<public_url>/v2/room/17``."""
    path = "/".join([kind] + [quote(str(i), safe="") for i in ids])
    return f"{context.public_url}/v2/{path}"
