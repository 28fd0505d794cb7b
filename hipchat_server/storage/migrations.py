"""Schema migrations with Alembic, driven from code (no alembic.ini needed).

The installer calls ``upgrade_to_head``; ``status`` compares the database's
revision with ``head_revision``.
"""

from __future__ import annotations

import os

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

MIGRATIONS_DIR = os.path.join(os.path.dirname(__file__), "migrations")


def _alembic_config(engine: Engine | None = None) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", MIGRATIONS_DIR)
    if engine is not None:
        config.attributes["engine"] = engine
    return config


def head_revision() -> str:
    """The newest revision the code knows."""
    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None when it has no schema yet."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade_to_head(engine: Engine) -> tuple[str | None, str]:
    """Apply every pending migration; return (revision before, revision after)."""
    before = current_revision(engine)
    command.upgrade(_alembic_config(engine), "head")
    return before, current_revision(engine)
