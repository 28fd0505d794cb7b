"""The REST API v2 (HipChat's shape) on the HTTPS process: resources that call the domain layer, never storage.

`api_root` builds the ``/v2`` Klein app (`api.ApiApp`) and mounts it in
`app.web.build_site`. Each area registers its routes from its own module:
every module named in `AREAS` that exists has ``register(app, context)``
called, so no two areas edit the same routing file. Search (``/v2/search``)
and permalinks (``/v2/messages/<id>``) are Twisted resources mounted as
branches.
"""

from __future__ import annotations

import functools
import importlib

from twisted.web import resource

#: Modules of ``hipchat_server.rest`` that register routes, in order (missing ones are skipped).
AREAS = (
    "capabilities",
    "oauth",
    "openapi",
    "rooms",
    "room_messages",
    "room_members",
    "users",
    "emoticons",
    "webhooks",
    "commit_hooks",
)


def api_context(chat_server):
    """The `api.ApiContext` over ``chat_server``'s services (once per process)."""
    from twisted.internet import reactor, threads

    from hipchat_server.authentication import Authenticator
    from hipchat_server.rate_limits import Limit, WindowCounter
    from hipchat_server.rest.api import ApiContext
    from hipchat_server.storage.api_tokens import ApiTokenStore
    from hipchat_server.storage.users import UserStore
    from hipchat_server.users import UserCredentials, account_of
    from hipchat_server.xmpp.auth_limits import AuthFailureLimiter

    config = chat_server.get_config()
    engine = chat_server.get_database_engine()
    user_store = UserStore(engine)

    account = functools.partial(account_of, user_store)

    counter = WindowCounter(chat_server.get_redis_primary, "api:ratelimit")
    flood_counter = WindowCounter(chat_server.get_redis_primary, "api:flood")
    return ApiContext(
        authenticator=Authenticator(UserCredentials(user_store), ApiTokenStore(engine), accounts=account),
        limiter=AuthFailureLimiter(config.xmpp.auth_failures_per_minute, 60.0, clock=reactor),
        run_blocking=threads.deferToThread,
        domain=config.server.domain,
        public_url=config.server.public_url.rstrip("/"),
        rate_limit=Limit(counter, config.api.rate_limit_requests, config.api.rate_limit_seconds),
        flood_limit=Limit(flood_counter, config.api.flood_messages, config.api.flood_seconds),
        chat_server=chat_server,
        config=config.api,
    )


def api_app(context, chat_server=None):
    """The ``/v2`` `api.ApiApp`: search and messages, then every area's routes."""
    from hipchat_server.rest.api import ApiApp

    app = ApiApp(context)
    if chat_server is not None:
        _mount_search(app, context, chat_server)
    for name in AREAS:
        module_name = f"{__name__}.{name}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name != module_name:  # a missing dependency inside the module is a bug, not an absent area
                raise
            continue
        module.register(app, context)
    return app


def _mount_search(app, context, chat_server) -> None:
    from hipchat_server.history import history_for
    from hipchat_server.rest.messages import MessagesResource
    from hipchat_server.rest.search import SearchResource
    from hipchat_server.search import search_for

    history = history_for(chat_server)
    search = SearchResource(context, search_for(chat_server, history))
    messages = MessagesResource(context, history)
    app.route("/search", branch=True, methods=["GET"], endpoint="search")(lambda request: search)
    app.route("/messages", branch=True, methods=["GET"], endpoint="messages")(lambda request: messages)


def api_root(chat_server) -> resource.Resource:
    """The ``/v2`` resource over ``chat_server``'s services (built here, once per process)."""
    return api_app(api_context(chat_server), chat_server).resource()
