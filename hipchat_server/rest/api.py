"""What every REST resource shares: authentication, JSON answers, HipChat's error shape.

A request is authenticated (`authentication.Authenticator`, in a thread)
before the resource's ``get`` runs; failures answer 401 with
``WWW-Authenticate``, and after too many failures in a minute from one
address for one account that pair gets 429 until the minute has passed. Errors have HipChat's body:
``{"error": {"code": 400, "type": "Bad Request", "message": "..."}}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from http import HTTPStatus
from typing import Callable

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server

from hipchat_server.authentication import AuthenticationFailed, claimed_username


class ApiError(Exception):
    """Answer the request with ``status`` and ``message`` (HipChat's error body)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class ApiContext:
    """What the resources need: the authenticator, the failure limiter, a thread runner, the server's names."""

    authenticator: object
    limiter: object
    run_blocking: Callable[..., defer.Deferred]
    domain: str
    public_url: str

    def bare_jid(self, username: str) -> str:
        return f"{username}@{self.domain}"


def write_json(request, status: int, body: dict) -> None:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")  # people's messages: never in a shared cache
    request.write(json.dumps(body, ensure_ascii=False).encode("utf-8"))
    request.finish()


def error_body(status: int, message: str) -> dict:
    return {"error": {"code": status, "type": HTTPStatus(status).phrase, "message": message}}


class ApiResource(resource.Resource):
    """A leaf JSON resource: subclasses implement ``get(request, username)`` returning a dict or a Deferred of one."""

    isLeaf = True
    log = Logger()

    def __init__(self, context: ApiContext):
        super().__init__()
        self.context = context

    def render_GET(self, request):
        d = self._authenticated(request)
        d.addCallback(lambda username: self.get(request, username))
        d.addCallbacks(lambda body: self._finish(request, 200, body), lambda failure: self._failed(request, failure))
        return server.NOT_DONE_YET

    def get(self, request, username: str):
        raise NotImplementedError

    def _authenticated(self, request) -> defer.Deferred:
        header = request.getHeader(b"authorization")
        header = header.decode("latin-1") if isinstance(header, bytes) else header
        if not header:
            return defer.fail(
                ApiError(401, "send Authorization: Basic (username and password) or Bearer (a personal token)")
            )
        # Failures count per address and claimed account: guessing one account's password is slowed
        # down without locking out everyone else behind the same address (an office's NAT).
        key = f"{getattr(request.getClientAddress(), 'host', '')}|{claimed_username(header) or ''}"
        if self.context.limiter.blocked(key):
            return defer.fail(ApiError(429, "too many failed logins; wait a minute"))
        d = self.context.run_blocking(self.context.authenticator.authenticate, header)

        def refused(failure):
            failure.trap(AuthenticationFailed)
            self.context.limiter.record_failure(key)  # on the reactor thread: the limiter is not thread-safe
            raise ApiError(401, failure.getErrorMessage())

        return d.addErrback(refused)

    def _finish(self, request, status: int, body: dict) -> None:
        if not request.finished and not getattr(request, "_disconnected", False):
            write_json(request, status, body)

    def _failed(self, request, failure) -> None:
        if failure.check(ApiError):
            error = failure.value
            if error.status == 401:
                request.setHeader(b"www-authenticate", b'Basic realm="HipChat", Bearer')
            self._finish(request, error.status, error_body(error.status, error.message))
            return
        self.log.failure("{method} {uri} failed", failure, method=request.method, uri=request.uri)
        self._finish(request, 500, error_body(500, "the server failed to answer; try again"))


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
    text = query_argument(request, name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise ApiError(400, f"{name}: expected a whole number, found {text!r}") from None
