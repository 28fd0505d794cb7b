"""The web client at ``/``: Converse.js, vendored at install time, served from the appliance itself.

The page loads nothing from another host: Converse.js and its assets come
from ``/webclient/<version>/`` (the release the chat_core role unpacked), our
start script from ``/static/``, and it talks XMPP over this host's own
WebSocket endpoint. A Content-Security-Policy of ``'self'`` makes the browser
refuse anything else (the sponsors' logos in Converse's "about" box, a
picture linked in a message).

``/?jid=<room>&message=<id>`` opens that room once logged in and scrolls to
that message (the search page links each hit so).

The feature flag ``web_client`` decides who gets the page
(`feature_flags.enabled("web_client", username)`): on for everyone, it is
served to anyone (Converse's own login checks the password); off, it is
refused; on for chosen groups only, the person logs in with a web session
first (the search page's login) so the page knows whose groups to ask about.
The flag also gates XMPP-over-WebSocket logins (`login_allowed`): a person
it is off for gets a SASL failure saying so, while their desktop client
(TCP) still logs in.
"""

from __future__ import annotations

import os

from twisted.internet import defer, threads
from twisted.web import resource, server, static

from hipchat_server.web.templating import render

WEB_CLIENT_FLAG = "web_client"

PACKAGE_STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")

#: What the browser may load, and from where: this host only.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; media-src 'self' data: blob:; font-src 'self' data:; "
    "connect-src 'self'; worker-src 'self' blob:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


def secure_page_headers(request) -> None:
    """Headers every HTML page of ours carries: this host only, never framed, never cached."""
    request.setHeader(b"content-security-policy", CONTENT_SECURITY_POLICY.encode())
    request.setHeader(b"x-frame-options", b"DENY")
    request.setHeader(b"x-content-type-options", b"nosniff")
    request.setHeader(b"referrer-policy", b"no-referrer")
    request.setHeader(b"cache-control", b"no-store")


def client_settings(domain: str, rooms_service: str, version: str) -> dict:
    """Converse.js settings for this appliance (the WebSocket URL is completed in the browser from its own address)."""
    return {
        "assets_path": f"/webclient/{version}/",
        "websocket_path": "/xmpp-websocket",
        "discover_connection_methods": False,
        "authentication": "login",
        "auto_login": False,
        # No Stream Management in the browser: after a reload Converse 14 resumes the previous
        # stream but then sends from a newly made-up resource, which the server must refuse
        # (RFC 6120 invalid-from), leaving open rooms half-joined. A reload logs in anew instead.
        "enable_smacks": False,
        "default_domain": domain,
        "locked_domain": domain,
        "muc_domain": f"{rooms_service}.{domain}",
        "muc_nickname_from_jid": True,
        # History through MAM (XEP-0313), for one-to-one chats and rooms alike.
        "message_archiving": "always",
        "allow_registration": False,
        "view_mode": "fullscreen",
        # Converse's defaults reach other hosts: an emoji CDN, a list of public XMPP
        # providers, pictures and players for links in messages. None of that here.
        "use_system_emojis": True,
        "xmpp_providers_url": "",
        "autocomplete_providers_url": "",
        "embed_3rd_party_media_players": False,
        "render_media": False,
        "fetch_url_headers": False,
        "show_client_info": False,
        "i18n": "en",
    }


def login_allowed(flags):
    """``allowed(username)`` for XMPP-over-WebSocket logins (`xmpp.websocket.GatedSaslSession`): the ``web_client`` flag, per user. Blocking."""
    return lambda username: flags.enabled(WEB_CLIENT_FLAG, username)


class WebClientPage(resource.Resource):
    """GET ``/``: the Converse.js page configured for this appliance; 503 when no release is installed.

    ``flags`` (a `feature_flags.FeatureFlags`) and ``sessions`` (a
    `web.sessions.WebSessions`) gate it by the ``web_client`` flag; without
    them the page is served to everyone.
    """

    isLeaf = True

    def __init__(self, domain: str, rooms_service: str, assets_dir: str, *, flags=None, sessions=None, run_blocking=threads.deferToThread):
        super().__init__()
        self.assets_dir = assets_dir
        self.version = os.path.basename(assets_dir.rstrip("/")) if assets_dir else ""
        self.settings = client_settings(domain, rooms_service, self.version)
        self.flags, self.sessions, self.run_blocking = flags, sessions, run_blocking

    def installed(self) -> bool:
        return bool(self.assets_dir) and os.path.isfile(os.path.join(self.assets_dir, "converse.min.js"))

    def render_GET(self, request):
        if request.postpath not in ([], [b""]):
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"Not found\n"
        secure_page_headers(request)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        if self.flags is None:
            return self._page(request)
        d = self._allowed(request)

        def answer(allowed):
            if allowed is None:  # sent to the login first
                request.finish()
                return
            if allowed:
                request.write(self._page(request))
            else:
                request.setResponseCode(403)
                request.write(render("webclient_refused.html"))
            request.finish()

        def failed(failure):
            request.setResponseCode(503)
            request.write(b"The web client cannot tell whether it is on for you right now; try again shortly.\n")
            request.finish()

        d.addCallbacks(answer, failed)
        return server.NOT_DONE_YET

    @defer.inlineCallbacks
    def _allowed(self, request):
        """True (serve), False (refuse) or None (redirected to the login: the flag depends on the person's groups)."""
        from hipchat_server.web.sessions import session_of

        state = yield self.run_blocking(self.flags.state, WEB_CLIENT_FLAG)
        if not state.groups:
            return state.enabled
        session = yield session_of(request, self.sessions, self.run_blocking)
        if session is None:
            request.redirect(b"/search/login?next=/")
            return None
        allowed = yield self.run_blocking(self.flags.enabled, WEB_CLIENT_FLAG, session.username)
        return allowed

    def _page(self, request) -> bytes:
        if not self.installed():
            request.setResponseCode(503)
            return render("webclient_missing.html")
        return render("webclient.html", version=self.version, settings=self.settings)


class StaticFiles(static.File):
    """Files of one directory; no directory listings, and never the directory's own name as a page."""

    contentTypes = {**static.File.contentTypes, ".wasm": "application/wasm", ".js": "text/javascript", ".mjs": "text/javascript"}

    #: Seconds a browser may keep a file without asking again; 0: revalidate on each load.
    max_age = 0

    def directoryListing(self):
        return resource.NoResource()

    def createSimilarFile(self, path):
        similar = super().createSimilarFile(path)
        similar.max_age = self.max_age
        return similar

    def render_GET(self, request):
        request.setHeader(b"x-content-type-options", b"nosniff")
        if self.max_age:
            request.setHeader(b"cache-control", f"public, max-age={self.max_age}, immutable".encode())
        else:
            request.setHeader(b"cache-control", b"no-cache")
        return super().render_GET(request)


def assets(assets_dir: str) -> resource.Resource:
    """``/webclient/<version>/``: the unpacked Converse.js release.

    The version is in the path, so a browser may keep these files for a year:
    an upgrade serves a new path.
    """
    root = resource.Resource()
    if assets_dir and os.path.isdir(assets_dir):
        files = StaticFiles(assets_dir)
        files.max_age = 365 * 86400
        root.putChild(os.path.basename(assets_dir.rstrip("/")).encode(), files)
    return root


def package_static() -> resource.Resource:
    """``/static/``: our own scripts and styles (they change with the appliance, so revalidated each load)."""
    return StaticFiles(PACKAGE_STATIC_DIR)
