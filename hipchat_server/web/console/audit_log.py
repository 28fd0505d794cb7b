"""The audit log: every change made in the console (and by the CLI commands that share its domain calls), filterable."""

from __future__ import annotations

from datetime import datetime

from twisted.internet import defer

from hipchat_server import audit
from hipchat_server.web.console.app import int_arg

PAGE_SIZE = 100


def _date(text: str):
    try:
        return datetime.strptime(text, "%Y-%m-%d") if text else None
    except ValueError:
        return None


def register(console) -> None:
    run = console.run_blocking

    @console.page("/audit")
    @defer.inlineCallbacks
    def page(request, admin):
        filters = {name: console.arg(request, name).strip() for name in ("actor", "action", "target", "since", "until")}
        start = int_arg(request, "start", 0)
        until = _date(filters["until"])
        entries, total = yield run(
            audit.entries, actor=filters["actor"] or None, action=filters["action"] or None, target=filters["target"] or None,
            since=_date(filters["since"]), until=until.replace(hour=23, minute=59, second=59) if until else None, start=start, limit=PAGE_SIZE,
        )
        actions = yield run(audit.actions)
        return "audit.html", {"section": "audit", "entries": entries, "total": total, "filters": filters, "actions": actions, "start": start, "page_size": PAGE_SIZE}
