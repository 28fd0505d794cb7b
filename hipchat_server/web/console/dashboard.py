"""The dashboard page: health of every service, connected users, messages per minute, spool and
indexing, OpenSearch heap per node (a warning above 75 %), Redis primary and replica, disk per data directory."""

from __future__ import annotations

import os
import time

from twisted.internet import defer

from hipchat_server.capacity import HEAP_WARNING_PERCENT
from hipchat_server.dashboard import DashboardFigures, gather, sections_of
from hipchat_server.web.console import agent

CHART_WIDTH, CHART_HEIGHT = 600, 140


def chart(series, width: int = CHART_WIDTH, height: int = CHART_HEIGHT) -> dict:
    """An inline SVG polyline of ``(moment, value)`` pairs: its points, the largest value and the time span."""
    if not series:
        return {"points": "", "peak": 0, "first": None, "last": None, "width": width, "height": height}
    peak = max(v for _, v in series) or 1
    step = width / max(1, len(series) - 1)
    points = " ".join(f"{i * step:.1f},{height - (v / peak) * (height - 10):.1f}" for i, (_, v) in enumerate(series))
    return {"points": points, "peak": peak, "first": series[0][0], "last": series[-1][0], "width": width, "height": height}


def register(console) -> None:
    agent_socket = agent.socket_path(agent.RUN_DIR)

    def from_agent():
        """The status as root sees it (supervisor's processes, the backups), from the console's agent."""
        reply, _ = agent.ask(agent_socket, {"op": "status"}, timeout=60)
        if not reply.get("ok"):
            raise RuntimeError(reply.get("error"))
        return sections_of(reply["status"])

    # Without the agent (not installed yet) the checks run here, as the service user: some show "unknown".
    figures = DashboardFigures(lambda: gather(console.chat_server, from_agent if os.path.exists(agent_socket) else None))

    @console.page("/")
    @defer.inlineCallbacks
    def dashboard(request, admin):
        latest = yield figures.get()
        if latest is None:
            return "dashboard.html", {"section": "dashboard", "figures": None, "age": 0, "chart": chart([]), "heap_warning": HEAP_WARNING_PERCENT}
        per_minute = latest.per_minute[:-1] if len(latest.per_minute) > 1 else latest.per_minute  # the running minute is partial
        return "dashboard.html", {
            "section": "dashboard",
            "figures": latest,
            "age": int(time.time() - latest.gathered_at),
            "chart": chart(per_minute),
            "last_minute": per_minute[-1][1] if per_minute else 0,
            "heap_warning": HEAP_WARNING_PERCENT,
        }
