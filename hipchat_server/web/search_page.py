"""``/search``: the search page of the web client, for people logged in with a web session.

It searches through the very `search.Search` that ``GET /v2/search`` uses, as
the logged-in user (the same permission rules: rooms they may read, their own
one-to-one conversations). Each hit links back into the web client at that
message: ``/?jid=<room or the other person>&message=<id>``.

``/search/login`` (GET the form, POST it) opens a web session
(`web.sessions`); the form carries a double-submit CSRF token like the
console's, and the search itself is a GET that changes nothing.
"""

from __future__ import annotations

import re
import secrets
from urllib.parse import urlencode

from markupsafe import Markup, escape
from twisted.internet import defer, threads
from twisted.web import resource, server

from hipchat_server.search import MAX_START_INDEX, SearchError, SearchQuery, SearchUnavailableError
from hipchat_server.web import sessions as web_sessions
from hipchat_server.web.templating import render
from hipchat_server.web.webclient import secure_page_headers

LOGIN_CSRF_COOKIE = b"hipchat_search_login"
PAGE_SIZE = 20
#: A highlight as the search makes it: escaped text with <em> around the hits, nothing else.
_HIGHLIGHT_TAGS = re.compile(r"</?em>")


def safe_highlight(highlight: str | None, body: str) -> Markup:
    """The hit's highlight as HTML when it is escaped text with only ``<em>`` tags; otherwise the body, escaped."""
    if highlight and "<" not in _HIGHLIGHT_TAGS.sub("", highlight):
        return Markup(highlight)
    return escape(body)


def hit_link(record: dict, reader: str) -> str:
    """Where a hit opens in the web client: its room, or the conversation with the other person, at the message."""
    if record.get("room"):
        jid = record["room"]
    else:
        sender, recipient = (record.get("sender") or "").split("/")[0], (record.get("recipient") or "").split("/")[0]
        jid = recipient if sender == reader else sender
    return "/?" + urlencode({"jid": jid, "message": record["id"]})


class SearchPage(resource.Resource):
    """GET ``/search?q=...&start=N``: the form and a page of hits; ``/search/login``: the session's login."""

    isLeaf = True

    def __init__(self, sessions, search, domain: str, run_blocking=threads.deferToThread):
        super().__init__()
        self.sessions, self.search, self.domain, self.run_blocking = sessions, search, domain, run_blocking

    def render_GET(self, request):
        secure_page_headers(request)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        if request.postpath == [b"login"]:
            return self._login_form(request, next_page=_arg(request, "next"))
        if request.postpath not in ([], [b""]):
            request.setResponseCode(404)
            return render("search.html", session=None, query="", error="No such page.", hits=[], total=0, next_link=None, previous_link=None)
        self._respond(self._search(request), request)
        return server.NOT_DONE_YET

    def render_POST(self, request):
        secure_page_headers(request)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        if request.postpath != [b"login"]:
            request.setResponseCode(405)
            return b"Only the login form is posted here.\n"
        self._respond(self._login(request), request)
        return server.NOT_DONE_YET

    @staticmethod
    def _respond(d: defer.Deferred, request) -> None:
        def write(body):
            if body:
                request.write(body)
            request.finish()

        def failed(failure):
            request.setResponseCode(500)
            request.write(b"The search page failed; the HTTPS process's log says why.\n")
            request.finish()
            return failure

        d.addCallbacks(write, failed)
        d.addErrback(lambda f: None)  # already answered and logged by Twisted

    def _login_form(self, request, error: str | None = None, next_page: str | None = None) -> bytes:
        # No session yet: the form's CSRF token is a random value also set as a cookie (double submit).
        token = secrets.token_urlsafe(24)
        request.addCookie(LOGIN_CSRF_COOKIE, token.encode(), path=b"/search/login", secure=True, httpOnly=True, sameSite="strict")
        return render("search_login.html", login_token=token, error=error, domain=self.domain, next_page=_next_page(next_page))

    @defer.inlineCallbacks
    def _login(self, request):
        form = web_sessions.read_form(request)
        cookie = request.getCookie(LOGIN_CSRF_COOKIE) or b""
        if not cookie or not secrets.compare_digest(cookie.decode(), form.get(web_sessions.CSRF_FIELD, "")):
            request.setResponseCode(403)
            return self._login_form(request, "The form was out of date: please log in again.", form.get("next"))
        try:
            session = yield self.run_blocking(
                self.sessions.login, form.get("username", "").strip(), form.get("password", ""), web_sessions.client_address(request)
            )
        except web_sessions.LoginRefused as e:
            request.setResponseCode(403)
            return self._login_form(request, str(e), form.get("next"))
        web_sessions.set_cookie(request, self.sessions, session)
        request.redirect(_next_page(form.get("next")).encode())
        return b""

    @defer.inlineCallbacks
    def _search(self, request):
        session = yield web_sessions.session_of(request, self.sessions, self.run_blocking)
        if session is None:
            request.redirect(b"/search/login")
            return b""
        text = (_arg(request, "q") or "").strip()
        context = dict(session=session, query=text, error=None, hits=[], total=0, next_link=None, previous_link=None)
        if not text:
            return render("search.html", **context)
        start = _int_arg(request, "start")
        reader = f"{session.username}@{self.domain}"
        try:
            results = yield self.search.search(reader, SearchQuery(text=text, start_index=start, max_results=PAGE_SIZE))
        except SearchError as e:
            context["error"] = str(e)
            request.setResponseCode(400)
            return render("search.html", **context)
        except SearchUnavailableError:
            context["error"] = "Search is not available right now; try again shortly."
            request.setResponseCode(503)
            return render("search.html", **context)
        context["total"] = results.total
        context["hits"] = [
            {
                "id": r["id"],
                "when": r.get("timestamp", ""),
                "where": r.get("room") or "one-to-one",
                "who": r.get("sender_name") or (r.get("sender") or "").split("/")[0],
                "text": safe_highlight(r.get("highlight"), r.get("body", "")),
                "link": hit_link(r, reader),
            }
            for r in results.items
        ]
        following = start + PAGE_SIZE
        if following < results.total and following <= MAX_START_INDEX:
            context["next_link"] = "/search?" + urlencode({"q": text, "start": following})
        if start:
            context["previous_link"] = "/search?" + urlencode({"q": text, "start": max(0, start - PAGE_SIZE)})
        return render("search.html", **context)


def _next_page(value: str | None) -> str:
    """Where a login goes next: the web client (its flag asked for the login) or this page; nowhere else."""
    return "/" if value == "/" else "/search"


def _arg(request, name: str) -> str | None:
    values = request.args.get(name.encode())
    return values[0].decode("utf-8", "replace") if values else None


def _int_arg(request, name: str) -> int:
    text = _arg(request, name) or "0"
    return int(text) if text.isdigit() and int(text) <= MAX_START_INDEX else 0

