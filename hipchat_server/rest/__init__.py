"""The REST API v2 (HipChat's shape) on the HTTPS process: resources that call the domain layer, never storage.

`api_root` is mounted at ``/v2`` by `app.web.build_site`. So far: message
search (``/v2/search``) and one message by id (``/v2/messages/<id>``).
"""

from __future__ import annotations

from twisted.web import resource


def api_root(chat_server) -> resource.Resource:
    """The ``/v2`` resource over ``chat_server``'s services (built here, once per process)."""
    from twisted.internet import reactor, threads

    from hipchat_server.authentication import Authenticator
    from hipchat_server.history import history_for
    from hipchat_server.rest.api import ApiContext
    from hipchat_server.rest.messages import MessagesResource
    from hipchat_server.rest.search import SearchResource
    from hipchat_server.search import Search
    from hipchat_server.storage.api_tokens import ApiTokenStore
    from hipchat_server.storage.users import UserStore
    from hipchat_server.users import UserCredentials
    from hipchat_server.xmpp.auth_limits import AuthFailureLimiter

    config = chat_server.get_config()
    engine = chat_server.get_database_engine()
    history = history_for(chat_server)
    context = ApiContext(
        authenticator=Authenticator(UserCredentials(UserStore(engine)), ApiTokenStore(engine)),
        limiter=AuthFailureLimiter(config.xmpp.auth_failures_per_minute, 60.0, clock=reactor),
        run_blocking=threads.deferToThread,
        domain=config.server.domain,
        public_url=config.server.public_url.rstrip("/"),
    )
    search = Search(
        history.store,
        history.rooms,
        run_search=history.run_search,
        run_database=history.run_database,
        domain=config.server.domain,
        rooms_service=f"{config.rooms.service}.{config.server.domain}",
    )
    root = resource.Resource()
    root.putChild(b"search", SearchResource(context, search))
    root.putChild(b"messages", MessagesResource(context, history))
    return root
