"""The HTTPS process: the health endpoint and XMPP over WebSocket; REST API v2 later.

Started by supervisor as root so it can bind port 443, it drops to the
appliance's service user before it serves a single request.

It is also an XMPP front end: browser clients' streams (``/xmpp-websocket``,
RFC 7395) are sessions in the same session directory as those of the XMPP
processes, under this process's own front-end id, and its `DeliveryListener`
brings it the stanzas other front ends publish for them.
"""

from __future__ import annotations

import json
import logging
import sys

from autobahn.twisted.resource import WebSocketResource
from twisted.internet import defer, reactor, ssl, threads
from twisted.web import resource, server

from hipchat_server import __version__, feature_flags, health, metrics
from hipchat_server.app.process import GarbageCollectionWatch, drop_privileges, start_process, tune_garbage_collection
from hipchat_server.app.xmpp import open_session_directory, start_frontend
from hipchat_server.rest import api_context, api_root
from hipchat_server.rest.body_limit import BodyLimitedRequest
from hipchat_server.server import ChatServer
from hipchat_server.web.console import console_root
from hipchat_server.search import search_for
from hipchat_server.web import webclient
from hipchat_server.web.search_page import SearchPage
from hipchat_server.web.guest_page import GuestPage
from hipchat_server.guests import guests_for
from hipchat_server.web.sessions import web_sessions
from hipchat_server.xmpp import websocket

log = logging.getLogger("hipchat.web")

#: Seconds between attempts to join the session directory while Redis cannot be reached.
JOIN_RETRY_SECONDS = 5.0


class HealthResource(resource.Resource):
    """GET /health: 200 when MariaDB, Redis and OpenSearch answer, 503 naming the one that does not."""

    isLeaf = True

    def __init__(self, chat_server: ChatServer):
        super().__init__()
        self.chat_server = chat_server

    def render_GET(self, request):
        d = self._probe_all()
        d.addCallback(self._respond, request)
        d.addErrback(self._fail, request)
        return server.NOT_DONE_YET

    @defer.inlineCallbacks
    def _probe_all(self):
        cs = self.chat_server
        # The probes use blocking clients; run them off the reactor thread.
        results = yield defer.gatherResults(
            [
                threads.deferToThread(lambda: health.probe_database(cs.get_database_engine())),
                threads.deferToThread(lambda: health.probe_redis(cs.get_redis_primary())),
                threads.deferToThread(lambda: health.probe_opensearch(cs.get_opensearch_client())),
            ]
        )
        return results

    def _respond(self, results, request):
        ok = all(r.ok for r in results)
        body = {
            "status": "ok" if ok else "unhealthy",
            "version": __version__,
            "checks": {r.name: {"ok": r.ok, "detail": r.detail} for r in results},
        }
        request.setResponseCode(200 if ok else 503)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        request.write(json.dumps(body).encode())
        request.finish()

    def _fail(self, failure, request):
        log.error("health probe crashed: %s", failure.getTraceback())
        request.setResponseCode(500)
        request.finish()


def build_site(chat_server: ChatServer, websocket_factory: websocket.XmppWebSocketFactory | None = None) -> server.Site:
    root = resource.Resource()
    root.putChild(b"health", HealthResource(chat_server))
    root.putChild(b"v2", api_root(chat_server))  # REST API v2: search, messages
    root.putChild(b"admin", console_root(chat_server))  # the admin console (hipchat_server.web.console)
    config = chat_server.get_config()
    root.putChild(
        b"",
        webclient.WebClientPage(
            config.server.domain, config.rooms.service, config.web_client.assets_dir,
            flags=feature_flags.for_server(chat_server), sessions=web_sessions(chat_server),
        ),
    )  # the web client (Converse.js), gated by the web_client feature flag
    root.putChild(b"webclient", webclient.assets(config.web_client.assets_dir))  # Converse.js, /webclient/<version>/
    root.putChild(b"static", webclient.package_static())
    root.putChild(b"guest", GuestPage(guests_for(chat_server), config.server.domain, config.rooms.service, config.web_client.assets_dir))  # guest links
    root.putChild(b"search", SearchPage(web_sessions(chat_server), search_for(chat_server), config.server.domain))
    root.putChild(b"metrics", metrics.MetricsResource(api_context(chat_server).authenticator.caller))  # 127.0.0.1 or an admin token
    if websocket_factory is not None:
        root.putChild(websocket.PATH, WebSocketResource(websocket_factory))
    # Bodies are parsed by the resources that take them (JSON; the OAuth grant's form): Twisted's own
    # form parsing reads the Content-Type through the email package on every POST (a tenth of the
    # HTTPS process's time per API notification) and would hold a large multipart upload in memory.
    # Bodies are bounded while they arrive (rest.body_limit), not after Twisted has kept them whole.
    return metrics.MeasuredSite(root, requestFactory=BodyLimitedRequest, parsePOSTFormSubmission=False)


def join_frontends(chat_server: ChatServer, websocket_factory: websocket.XmppWebSocketFactory) -> defer.Deferred:
    """Become an XMPP front end, then let WebSocket clients in (until then their handshakes get 503).

    While Redis cannot be reached this retries every `JOIN_RETRY_SECONDS`, and
    the process keeps serving HTTPS meanwhile, so /health can say what is wrong.
    """

    def joined(directory):
        # The streams are inside HTTPS already: nothing here starts TLS, so no TLS options.
        starttls, direct_tls = start_frontend(chat_server, None, directory)
        metrics.register(metrics.ConnectionsCollector(starttls.sessions, (starttls, direct_tls)))
        websocket_factory.client_factory = direct_tls
        log.info("serving XMPP over WebSocket at /%s as front end %s", websocket.PATH.decode(), directory.frontend_id)

    def failed(failure):
        log.error("cannot join the session directory (%s); retrying in %ds", failure.getErrorMessage(), JOIN_RETRY_SECONDS)
        reactor.callLater(JOIN_RETRY_SECONDS, join_frontends, chat_server, websocket_factory)

    d = threads.deferToThread(open_session_directory, chat_server)
    d.addCallbacks(joined, failed)
    d.addErrback(lambda f: log.error("starting the WebSocket front end failed: %s", f.getTraceback()))
    return d


def main(argv: list[str] | None = None) -> int:
    config = start_process("hipchat-web", "HipChat Server HTTPS process", argv)
    if config is None:
        return 2
    GarbageCollectionWatch().install()
    chat_server = ChatServer(config)
    tls = ssl.DefaultOpenSSLContextFactory(config.tls.private_key, config.tls.certificate)
    # A WebSocket login is a web client login: the web_client flag decides per user.
    websocket_factory = websocket.XmppWebSocketFactory(
        login_allowed=webclient.login_allowed(feature_flags.for_server(chat_server)), guests=guests_for(chat_server)  # guests log in only here
    )
    site = build_site(chat_server, websocket_factory)
    reactor.listenSSL(config.http.https_port, site, tls, interface=config.http.bind_address)
    # Bound (and key read) as root; from here on run as the service user.
    drop_privileges(config.server.user)
    join_frontends(chat_server, websocket_factory)
    # As in the XMPP front ends: an API answer or a WebSocket stanza leaves young garbage; with Python's
    # default thresholds full collections walked every start-up object often enough to show in p99.
    tune_garbage_collection()
    log.info("serving HTTPS on %s:%d", config.http.bind_address, config.http.https_port)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
