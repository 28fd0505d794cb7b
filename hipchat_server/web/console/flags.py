"""Feature flags and group flags: each feature on for everyone, off, or on for chosen groups only.

A change is written at once and every process sees it within
`feature_flags.CACHE_SECONDS` (no restart).
"""

from __future__ import annotations

from twisted.internet import defer

from hipchat_server import audit, feature_flags
from hipchat_server.web.console.app import Refused


def register(console) -> None:
    flags = feature_flags.for_server(console.chat_server)
    from hipchat_server.storage.groups import GroupStore

    groups = GroupStore(console.chat_server.get_database_engine())
    run = console.run_blocking

    @console.page("/flags")
    @defer.inlineCallbacks
    def page(request, admin):
        flags.forget()  # the page shows what is stored now, not the cached copy
        states = yield run(flags.states)
        all_groups = yield run(groups.all)
        return "flags.html", {"section": "flags", "states": states, "groups": all_groups, "cache_seconds": int(feature_flags.CACHE_SECONDS)}

    @console.action("/flags/<name>")
    @defer.inlineCallbacks
    def set_flag(request, admin, form, name):
        mode = form.get("mode", "")
        chosen = [int(k[6:]) for k, v in form.items() if k.startswith("group-") and k[6:].isdigit() and v]
        try:
            state = yield run(flags.set, name, mode, chosen)
        except ValueError as e:
            raise Refused(str(e)) from None
        yield run(audit.record, admin.username, "flag.set", name, {"mode": state.mode, "groups": sorted(state.groups)})
        return "/admin/flags", f"{name}: {state.mode}" + (f" for {len(state.groups)} group(s)" if state.mode == "groups" else "") + "."
