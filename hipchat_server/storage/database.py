"""MariaDB access: one engine per process and named transactions.

Every transaction carries a name (``"add_user"``) so slow-query logs and
errors say which piece of logic ran it, as Synapse does.
"""

from __future__ import annotations

import logging
from typing import Callable, TypeVar

from sqlalchemy import create_engine
from sqlalchemy.engine import Connection, Engine

from hipchat_server.config import DatabaseConfig

log = logging.getLogger(__name__)
T = TypeVar("T")


# Connections kept open per process: at least the reactor's thread pool (10 threads) can use
# at once. With fewer, every login burst closed and reopened connections (SQLAlchemy discards
# overflow connections when they are returned), a MariaDB handshake each time.
POOL_SIZE = 12
MAX_OVERFLOW = 8


def create_database_engine(config: DatabaseConfig) -> Engine:
    """An engine that survives MariaDB restarts (pre-ping) and recycles idle connections."""
    return create_engine(
        config.url, pool_pre_ping=True, pool_recycle=3600, pool_size=POOL_SIZE, max_overflow=MAX_OVERFLOW, future=True
    )


def run_in_transaction(engine: Engine, name: str, work: Callable[[Connection], T]) -> T:
    """Run ``work`` inside one transaction named ``name``; commit on success, roll back on error."""
    try:
        with engine.begin() as connection:
            return work(connection)
    except Exception:
        log.exception("transaction %s failed", name)
        raise
