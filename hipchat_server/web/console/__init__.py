"""The admin console at ``https://<host>/admin``: server-rendered pages for administrators only.

`console_root` builds the `app.Console` and lets each section module in
`SECTIONS` register its pages and actions (``register(console)``).
"""

from __future__ import annotations

import importlib

#: Section modules of this package, in the navigation's order.
SECTIONS = ("dashboard", "users", "rooms", "flags", "integrations", "backups", "capacity", "audit_log")


def build_console(chat_server):
    """The `app.Console` over ``chat_server``'s services, every section registered."""
    from hipchat_server import audit, feature_flags
    from hipchat_server.web.console.app import Console
    from hipchat_server.web.sessions import web_sessions

    audit.for_server(chat_server)
    feature_flags.for_server(chat_server)
    console = Console(chat_server, web_sessions(chat_server))
    for name in SECTIONS:
        importlib.import_module(f"{__name__}.{name}").register(console)
    return console


def console_root(chat_server):
    """The ``/admin`` resource (mounted by `app.web.build_site`)."""
    return build_console(chat_server).resource()
