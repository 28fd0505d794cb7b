"""Health of the services the chat core depends on, as the /health endpoint reports it.

Each probe returns ``(ok, detail)`` and never raises: a service that is down
is a result, not an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from sqlalchemy import text


@dataclass(frozen=True)
class ProbeResult:
    name: str
    ok: bool
    detail: str


def _probe(name: str, check: Callable[[], str]) -> ProbeResult:
    try:
        return ProbeResult(name, True, check())
    except Exception as e:  # any failure of a dependency is reported, not raised
        return ProbeResult(name, False, f"{type(e).__name__}: {e}")


def probe_database(engine) -> ProbeResult:
    def check() -> str:
        with engine.connect() as connection:
            return "version " + connection.execute(text("SELECT VERSION()")).scalar_one()

    return _probe("mariadb", check)


def probe_redis(primary) -> ProbeResult:
    def check() -> str:
        primary.ping()
        return "primary answers"

    return _probe("redis", check)


def probe_opensearch(client) -> ProbeResult:
    def check() -> str:
        status = client.cluster.health(request_timeout=3)["status"]
        if status == "red":
            raise RuntimeError("cluster health is red")
        return f"cluster {status}"

    return _probe("opensearch", check)
