"""The console's dashboard when the full status cannot be collected: every section is still shown."""

from __future__ import annotations

from types import SimpleNamespace


class UnreachableServer:
    """A chat server whose every service is down and whose configuration has none of the sections' settings."""

    def get_config(self):
        return SimpleNamespace()

    def get_opensearch_client(self):
        raise ConnectionError("OpenSearch is down")

    def get_redis_primary(self):
        raise ConnectionError("Redis is down")

    def get_database_engine(self):
        raise ConnectionError("MariaDB is down")


def test_the_fallback_runs_every_check_of_the_status_each_on_its_own():
    """Backups and upgrades included (they were missing); a failing check is a problem of its own section."""
    from appliance.lib import status
    from hipchat_server import dashboard

    def agent_unreachable():
        raise OSError("the console agent does not answer")

    figures = dashboard.gather(UnreachableServer(), collect=agent_unreachable)
    names = list(status.status_checks(UnreachableServer()))
    assert {"backups", "upgrades"} <= set(names)
    assert list(figures.sections) == names + ["status"]
    assert not figures.healthy
    assert "the console agent does not answer" in figures.sections["status"].problems[0]
    assert any("the check failed here" in p for p in figures.sections["redis"].problems)
