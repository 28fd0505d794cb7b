"""Capacity planning from the growth rate (the seed's hardest lesson): how fast messages grow, what each
limit is, and the date each one is reached if the growth goes on as it is.

- Message rate: messages per day over the last `WEEKS` weeks (a daily
  histogram of the monthly indices), summed per week; the weekly growth rate
  is the least-squares slope of the logarithm of the weekly totals (steady
  percentage growth), so one quiet week does not swing it much.
- Disk: each message costs the bytes its index holds per document (all
  copies); the data filesystem must keep free space for a month's index to be
  merged (a merge or reindex writes a second copy before the first goes).
- Shards: OpenSearch's guidance, at most `SHARDS_PER_HEAP_GB` shards per GB of
  a data node's heap; every month adds its index's shards.
- Heap: the data nodes' heap use now, with a warning above `HEAP_WARNING_PERCENT`.

Blocking: call `report` from a thread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

WEEKS = 8
SHARDS_PER_HEAP_GB = 20
HEAP_WARNING_PERCENT = 75
#: How far a projection looks ahead; beyond, "not within 5 years".
HORIZON_DAYS = 5 * 365


@dataclass
class Limit:
    name: str
    now: str  # the current use, as text
    limit: str  # the ceiling, as text
    reached_on: date | None  # None: not within the horizon
    note: str = ""


@dataclass
class CapacityReport:
    daily: list[tuple[date, int]]
    weekly: list[tuple[date, int]]
    weekly_growth: float  # e.g. 0.05 = +5 % a week
    messages_per_day: float  # the last full week's average
    indices: list[dict]
    limits: list[Limit] = field(default_factory=list)
    heap: list[dict] = field(default_factory=list)


def weekly_totals(daily: list[tuple[date, int]]) -> list[tuple[date, int]]:
    """Sums of whole 7-day runs, newest run ending on the last full day; oldest first."""
    days = list(daily)
    weeks = []
    while len(days) >= 7:
        run, days = days[-7:], days[:-7]
        weeks.append((run[0][0], sum(n for _, n in run)))
    return list(reversed(weeks))


def growth_rate(weekly: list[tuple[date, int]]) -> float:
    """Steady weekly growth fitting the totals (slope of log totals); 0 with fewer than two non-empty weeks."""
    points = [(i, math.log(n)) for i, (_, n) in enumerate(weekly) if n > 0]
    if len(points) < 2:
        return 0.0
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / spread
    return math.exp(slope) - 1


def day_reached(start: date, per_day: float, growth: float, room: float, cost=lambda messages: messages) -> date | None:
    """The first day on which what ``cost`` adds up for the messages from ``start`` on reaches ``room``.

    Messages per day start at ``per_day`` and grow by ``growth`` a week. None
    when it is not reached within `HORIZON_DAYS` (or nothing grows).
    """
    if room <= 0:
        return start
    if per_day <= 0:
        return None
    daily_factor = (1 + growth) ** (1 / 7) if growth > -1 else 0
    used, rate = 0.0, per_day
    for day in range(HORIZON_DAYS):
        used += cost(rate)
        if used >= room:
            return start + timedelta(days=day)
        rate *= daily_factor
    return None


def report(stats, data_dirs_status: list[dict], today: date | None = None) -> CapacityReport:
    """The capacity page's figures. ``stats`` is a `storage.message_stats.MessageStatsStore`;
    ``data_dirs_status`` the disk rows of `appliance.lib.status.check_disk` (one must be ``opensearch``).
    """
    today = today or datetime.now(timezone.utc).date()
    histogram = stats.histogram("1d", f"now-{WEEKS * 7 + 1}d/d")
    daily = [(moment.date(), n) for moment, n in histogram if moment.date() < today]  # whole days only
    weekly = weekly_totals(daily)
    growth = growth_rate(weekly)
    per_day = weekly[-1][1] / 7 if weekly else 0.0
    indices = stats.indices()
    result = CapacityReport(daily, weekly, growth, per_day, indices)

    documents = sum(i["documents"] for i in indices)
    stored = sum(i["bytes"] for i in indices)
    bytes_per_message = stored / documents if documents else 0.0
    largest_month = max((i["bytes"] for i in indices), default=0)
    disk = next((d for d in data_dirs_status if d["name"] == "opensearch"), None) or (data_dirs_status[0] if data_dirs_status else None)
    if disk is not None:
        # A month's merge writes a second copy before the first goes: keep the largest month's size free.
        room = disk["filesystem_free_bytes"] - largest_month
        reached = day_reached(today, per_day, growth, room, lambda m: m * bytes_per_message)
        result.limits.append(Limit(
            "Disk (search data)",
            f"{disk['filesystem_used_percent']}% used, {disk['filesystem_free_bytes'] / 2**30:.1f} GiB free",
            f"free space minus the largest month ({largest_month / 2**30:.1f} GiB) kept for its merge",
            reached,
            f"{bytes_per_message:.0f} bytes per message on disk (all copies)",
        ))

    nodes = stats.heap_per_node()
    result.heap = [dict(n, warning=n["heap_percent"] > HEAP_WARNING_PERCENT) for n in nodes]
    data_nodes = [n for n in nodes if "d" in n["roles"]]
    shards_now = stats.shards_per_node()
    if data_nodes:
        heap_gb = min(n["heap_max"] for n in data_nodes) / 2**30
        ceiling = int(heap_gb * SHARDS_PER_HEAP_GB)
        busiest = max((shards_now.get(n["name"], 0) for n in data_nodes), default=0)
        month_shards = indices[-1]["shards"] * (1 + indices[-1]["replicas"]) if indices else 0
        per_node_month = month_shards / len(data_nodes)
        if per_node_month:
            months_left = (ceiling - busiest) / per_node_month
            reached = today + timedelta(days=int(months_left * 30.4)) if months_left < HORIZON_DAYS / 30.4 else None
        else:
            reached = None
        result.limits.append(Limit(
            "Shards per data node",
            f"{busiest} on the busiest data node",
            f"{ceiling} ({SHARDS_PER_HEAP_GB} per GB of a {heap_gb:.1f} GB heap)",
            reached if ceiling > busiest else today,
            f"each month adds {per_node_month:.1f} shards per data node, whatever the message rate; deleting expired months gives them back",
        ))
        hottest = max(data_nodes, key=lambda n: n["heap_percent"])
        result.limits.append(Limit(
            "Heap (data nodes)",
            f"{hottest['heap_percent']}% on {hottest['name']}",
            f"{HEAP_WARNING_PERCENT}% sustained",
            today if hottest["heap_percent"] > HEAP_WARNING_PERCENT else None,
            "heap use is not projected (it follows shards and queries more than messages): watch it here and in the metrics",
        ))
    return result
