"""The admin console's framework: one Klein app, the admin-only and CSRF guard, page rendering.

Every page is registered with `Console.page` (``GET``) or `Console.action`
(``POST``); the guard runs before the handler:

- no live session: a GET is sent to ``/admin/login?next=<path>``, a POST is
  refused (403);
- a session of a user who is not (or no longer) an active admin: 403, on
  every page and action;
- a POST whose CSRF token is not the session's: 403, nothing is changed.

A page handler is ``handler(request, admin)`` (``admin`` a `ConsoleAdmin`)
returning ``(template, context)`` or a Deferred of it; an action handler is
``handler(request, admin, form)`` returning the path to redirect to (the
post/redirect/get pattern, so a reload never repeats a change). Blocking
calls (MariaDB, Redis, OpenSearch) go through ``console.run_blocking``.
"""

from __future__ import annotations

import functools
import secrets
import time
from dataclasses import dataclass
from urllib.parse import quote, urlencode

import jinja2
from klein import Klein
from twisted.internet import defer, threads
from twisted.logger import Logger

from hipchat_server.web import sessions as web_sessions

log = Logger()

#: Seconds an admin's account (still active, still an admin) is taken as read before asking MariaDB again.
ADMIN_CHECK_SECONDS = 5.0
LOGIN_CSRF_COOKIE = b"hipchat_login_csrf"

SECTIONS = (
    ("dashboard", "/admin/", "Dashboard"),
    ("users", "/admin/users", "Users and groups"),
    ("rooms", "/admin/rooms", "Rooms"),
    ("flags", "/admin/flags", "Feature flags"),
    ("integrations", "/admin/integrations", "Integrations"),
    ("backups", "/admin/backups", "Backups"),
    ("capacity", "/admin/capacity", "Capacity"),
    ("audit", "/admin/audit", "Audit log"),
)


@dataclass(frozen=True)
class ConsoleAdmin:
    """The administrator using the console: username and live session (its CSRF token goes in every form)."""

    username: str
    session: web_sessions.WebSession


class Refused(Exception):
    """An action the domain refused; the message is shown to the admin on the page redirected to."""


def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("hipchat_server.web.console", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a misspelt variable fails the page instead of showing nothing
    )
    environment.filters["bytes"] = human_bytes
    environment.filters["when"] = lambda moment: "" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S")
    environment.filters["epoch"] = lambda seconds: time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds)) if seconds else ""
    environment.globals["urlencode"] = lambda values: urlencode({k: v for k, v in values.items() if v not in (None, "")})
    return environment


def human_bytes(value) -> str:
    if value is None:
        return "?"
    value = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(value)


def _arg(request, name: str, default: str = "") -> str:
    values = request.args.get(name.encode())
    return values[0].decode("utf-8", "replace") if values else default


def int_arg(request, name: str, default: int, *, low: int = 0, high: int = 1_000_000) -> int:
    try:
        return min(high, max(low, int(_arg(request, name, str(default)))))
    except ValueError:
        return default


class Console:
    """The ``/admin`` app over a `ChatServer`'s services. ``run_blocking`` runs a blocking call off the reactor."""

    def __init__(self, chat_server, sessions: web_sessions.WebSessions, *, run_blocking=threads.deferToThread, admin_check=None):
        self.chat_server, self.sessions, self.run_blocking = chat_server, sessions, run_blocking
        self.app = Klein()
        self.templates = _environment()
        self._admin_check = admin_check or self._account_is_admin
        self._checked: dict[str, float] = {}
        self._register_login()

    arg = staticmethod(_arg)

    # Rendering.
    def render(self, request, template: str, context: dict, admin: ConsoleAdmin | None = None, status: int = 200) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-frame-options", b"DENY")
        # Nothing from another host, no inline script: the pages have none.
        request.setHeader(b"content-security-policy", b"default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; script-src 'self'; frame-ancestors 'none'")
        context = dict(
            context,
            admin=admin,
            csrf_token=admin.session.csrf_token if admin else "",
            sections=SECTIONS,
            notice=_arg(request, "notice"),
            problem=_arg(request, "problem"),
        )
        context.setdefault("section", "")
        return self.templates.get_template(template).render(**context).encode("utf-8")

    def refuse(self, request, status: int, message: str, admin=None) -> bytes:
        return self.render(request, "refused.html", {"status": status, "message": message}, admin, status=status)

    @staticmethod
    def redirect(request, path: str, **message) -> bytes:
        query = urlencode({k: v for k, v in message.items() if v})
        request.redirect((path + (("&" if "?" in path else "?") + query if query else "")).encode())
        return b""

    # The guard.
    def _account_is_admin(self, username: str) -> bool:
        from hipchat_server.storage.users import UserStore
        from hipchat_server.users import UnknownUserError, get_user

        try:
            user = get_user(UserStore(self.chat_server.get_database_engine()), username)
        except UnknownUserError:
            return False
        return user.is_admin and user.is_active

    def _still_admin(self, username: str) -> bool:
        """The account is an active admin now (remembered `ADMIN_CHECK_SECONDS`, so a demotion by CLI counts soon)."""
        if self._checked.get(username, 0.0) > time.monotonic():
            return True
        if not self._admin_check(username):
            return False
        if len(self._checked) > 1000:
            self._checked.clear()
        self._checked[username] = time.monotonic() + ADMIN_CHECK_SECONDS
        return True

    def forget_admin(self, username: str) -> None:
        self._checked.pop(username, None)

    @defer.inlineCallbacks
    def _guard(self, request):
        """The `ConsoleAdmin` of the request, or None after answering it (redirect to login, or 403)."""
        session = yield web_sessions.session_of(request, self.sessions, self.run_blocking)
        if session is None:
            if request.method == b"GET":
                self.redirect(request, "/admin/login?next=" + quote(request.uri.decode("utf-8", "replace"), safe=""))
                return None, b""
            return None, self.refuse(request, 403, "Your session has ended: log in again.")
        if not session.is_admin or not (yield self.run_blocking(self._still_admin, session.username)):
            return None, self.refuse(request, 403, f"{session.username} is not an administrator. The console is for administrators only.")
        return ConsoleAdmin(session.username, session), None

    def page(self, path: str):
        """Register a GET page at ``/admin<path>``: ``handler(request, admin)`` -> ``(template, context)``."""

        def register(handler):
            @self.app.route(path, methods=["GET", "HEAD"], endpoint=f"page:{path}")
            @functools.wraps(handler)
            @defer.inlineCallbacks
            def guarded(request, **kwargs):
                admin, refused = yield self._guard(request)
                if admin is None:
                    return refused
                try:
                    template, context = yield defer.maybeDeferred(handler, request, admin, **kwargs)
                except Refused as e:
                    return self.refuse(request, 404, str(e), admin)
                if template is None:  # the handler wrote the answer itself (a download)
                    return context
                return self.render(request, template, context, admin)

            return handler

        return register

    def action(self, path: str):
        """Register a POST action at ``/admin<path>``: ``handler(request, admin, form)`` -> path to redirect to."""

        def register(handler):
            @self.app.route(path, methods=["POST"], endpoint=f"action:{path}")
            @functools.wraps(handler)
            @defer.inlineCallbacks
            def guarded(request, **kwargs):
                admin, refused = yield self._guard(request)
                if admin is None:
                    return refused
                try:
                    form = web_sessions.read_form(request)
                except ValueError as e:
                    return self.refuse(request, 413, str(e), admin)
                if not web_sessions.csrf_ok(admin.session, web_sessions.posted_csrf_token(request, form)):
                    return self.refuse(request, 403, "The form's CSRF token is missing or wrong: reload the page and try again.", admin)
                back = request.getHeader(b"referer")
                try:
                    where = yield defer.maybeDeferred(handler, request, admin, form, **kwargs)
                except Refused as e:
                    fallback = form.get("back") or "/admin/"
                    return self.redirect(request, fallback if fallback.startswith("/admin") else "/admin/", problem=str(e))
                if isinstance(where, tuple):  # (path, notice)
                    return self.redirect(request, where[0], notice=where[1])
                if where is None:  # the handler rendered the answer itself
                    return b""
                if isinstance(where, bytes):
                    return where
                return self.redirect(request, where or (back.decode() if back else "/admin/"))

            return handler

        return register

    # Logging in and out.
    def _register_login(self) -> None:
        app = self.app

        @app.route("/login", methods=["GET"])
        def login_form(request):
            # No session yet, so the form's CSRF token is a random value also set as a cookie (double submit).
            token = secrets.token_urlsafe(24)
            request.addCookie(LOGIN_CSRF_COOKIE, token.encode(), path=b"/admin/login", secure=True, httpOnly=True, sameSite="strict")
            return self.render(request, "login.html", {"next": _safe_next(_arg(request, "next")), "login_token": token, "error": _arg(request, "error")})

        @app.route("/login", methods=["POST"])
        @defer.inlineCallbacks
        def login(request):
            form = web_sessions.read_form(request)
            cookie = request.getCookie(LOGIN_CSRF_COOKIE) or b""
            if not cookie or not secrets.compare_digest(cookie.decode(), form.get(web_sessions.CSRF_FIELD, "")):
                return self.refuse(request, 403, "The login form's CSRF token is missing or wrong: reload the page and try again.")
            next_path = _safe_next(form.get("next", ""))
            try:
                session = yield self.run_blocking(
                    self.sessions.login, form.get("username", "").strip(), form.get("password", ""), web_sessions.client_address(request)
                )
            except web_sessions.LoginRefused as e:
                return self.redirect(request, "/admin/login?" + urlencode({"next": next_path, "error": str(e)}))
            web_sessions.set_cookie(request, self.sessions, session)
            return self.redirect(request, next_path)

        @app.route("/logout", methods=["POST"])
        @defer.inlineCallbacks
        def logout(request):
            session = yield web_sessions.session_of(request, self.sessions, self.run_blocking)
            form = web_sessions.read_form(request)
            if session is None or not web_sessions.csrf_ok(session, web_sessions.posted_csrf_token(request, form)):
                return self.refuse(request, 403, "The form's CSRF token is missing or wrong.")
            yield self.run_blocking(self.sessions.end, session)
            web_sessions.clear_cookie(request)
            return self.redirect(request, "/admin/login")

        @app.handle_errors
        def failed(request, failure):
            from werkzeug.exceptions import MethodNotAllowed, NotFound

            if failure.check(NotFound):
                return self.refuse(request, 404, "There is no such console page.")
            if failure.check(MethodNotAllowed):
                return self.refuse(request, 405, "That page does not take this method.")
            log.failure("console page {uri} failed", failure, uri=request.uri)
            return self.refuse(request, 500, "The page failed; the HTTPS process's log says why.")

    def resource(self):
        return self.app.resource()


def _safe_next(path: str) -> str:
    """Where to go after logging in: a path on this host (never another host: no open redirect)."""
    if path.startswith("/") and not path.startswith("//") and "\\" not in path:
        return path
    return "/admin/"
