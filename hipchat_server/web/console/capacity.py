"""Capacity: message rate and its weekly growth, index sizes per month, disk and heap, and the projected
date each limit is reached at the current growth rate (`hipchat_server.capacity`)."""

from __future__ import annotations

import time

from twisted.internet import defer

from hipchat_server import capacity
from hipchat_server.web.console.dashboard import chart

#: Seconds a computed report is shown before it is computed again (it aggregates every month index).
REFRESH_SECONDS = 60.0


def register(console) -> None:
    from appliance.lib.status import check_disk
    from hipchat_server.storage.message_stats import MessageStatsStore

    chat_server = console.chat_server
    config = chat_server.get_config()
    stats = MessageStatsStore(chat_server.get_opensearch_client(), config.archive.index_prefix)
    kept: dict = {}

    def compute():
        disk = check_disk({k: v for k, v in config.appliance.data_dirs.items() if k == "opensearch"} or config.appliance.data_dirs)
        return capacity.report(stats, disk.details.get("directories", []))

    @console.page("/capacity")
    @defer.inlineCallbacks
    def page(request, admin):
        if kept.get("at", 0) < time.time() - REFRESH_SECONDS:
            try:
                kept["report"] = yield console.run_blocking(compute)
                kept["at"], kept["error"] = time.time(), None
            except Exception as e:  # OpenSearch down: say so on the page
                kept["error"] = f"{type(e).__name__}: {e}"
                kept.setdefault("report", None)
        report = kept.get("report")
        daily = [(d, n) for d, n in report.daily] if report else []
        return "capacity.html", {
            "section": "capacity", "report": report, "error": kept.get("error"), "chart": chart(daily),
            "age": int(time.time() - kept.get("at", time.time())), "max_month": max((i["bytes"] for i in report.indices), default=1) if report else 1,
        }
