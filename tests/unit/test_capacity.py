"""Capacity projections (`capacity`): weekly totals, the fitted weekly growth, the day a limit is reached."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from hipchat_server import capacity


def days(counts, start=date(2026, 1, 1)):
    return [(start + timedelta(days=i), n) for i, n in enumerate(counts)]


def test_weekly_totals_take_whole_weeks_ending_on_the_last_day():
    """Only whole 7-day runs count, the newest ending on the last day; a leading partial week is dropped."""
    weekly = capacity.weekly_totals(days([1] * 3 + [2] * 7 + [3] * 7))
    assert [n for _, n in weekly] == [14, 21]
    assert weekly[0][0] == date(2026, 1, 4)


def test_growth_rate_fits_steady_percentage_growth():
    """Totals growing 10 % a week give +10 %; flat gives 0; fewer than two non-empty weeks give 0."""
    growing = [(date(2026, 1, 1) + timedelta(weeks=i), round(1000 * 1.1**i)) for i in range(8)]
    assert capacity.growth_rate(growing) == pytest.approx(0.10, abs=0.002)
    assert capacity.growth_rate([(date(2026, 1, 1), 5), (date(2026, 1, 8), 5)]) == pytest.approx(0.0)
    assert capacity.growth_rate([(date(2026, 1, 1), 0), (date(2026, 1, 8), 9)]) == 0.0


def test_day_reached_with_and_without_growth():
    """Flat 100 a day fills 1,000 on day 10; growth reaches it sooner; no messages never reach it; no room is today."""
    start = date(2026, 3, 1)
    assert capacity.day_reached(start, 100, 0.0, 1000) == start + timedelta(days=9)
    assert capacity.day_reached(start, 100, 0.5, 1000) < start + timedelta(days=9)
    assert capacity.day_reached(start, 0, 0.5, 1000) is None
    assert capacity.day_reached(start, 100, 0.0, 0) == start
    assert capacity.day_reached(start, 1, 0.0, 10**9) is None  # beyond the 5-year horizon


class FakeStats:
    def histogram(self, interval, since):
        from datetime import datetime, timezone

        return [(datetime(2026, 3, 1, tzinfo=timezone.utc) + timedelta(days=i), 1000) for i in range(29)]

    def indices(self):
        return [{"index": "m-2026.02", "month": "2026.02", "documents": 28000, "bytes": 28_000_000, "primary_bytes": 14_000_000, "shards": 2, "replicas": 1}]

    def heap_per_node(self):
        return [{"name": "data-1", "roles": "d", "heap_percent": 80, "heap_max": 2**30}, {"name": "cm-1", "roles": "m", "heap_percent": 10, "heap_max": 2**28}]

    def shards_per_node(self):
        return {"data-1": 10}


def test_report_projects_disk_shards_and_flags_heap():
    """1,000 messages a day at 1,000 bytes each: 100 MB free minus the largest month (28 MB) lasts 72 days; heap above 75 % is flagged."""
    disk = [{"name": "opensearch", "filesystem_free_bytes": 100_000_000, "filesystem_used_percent": 50.0}]
    report = capacity.report(FakeStats(), disk, today=date(2026, 3, 30))
    assert report.messages_per_day == 1000 and report.weekly_growth == pytest.approx(0.0)
    limits = {limit.name: limit for limit in report.limits}
    assert limits["Disk (search data)"].reached_on == date(2026, 3, 30) + timedelta(days=71)
    shards = limits["Shards per data node"]
    assert shards.limit.startswith("20 ") and shards.reached_on == date(2026, 3, 30) + timedelta(days=int(10 / 4 * 30.4))
    assert limits["Heap (data nodes)"].reached_on == date(2026, 3, 30)
    assert report.heap[0]["warning"] and not report.heap[1]["warning"]
