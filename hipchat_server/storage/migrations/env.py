"""Alembic environment: runs migrations on the engine the caller passed in."""

from alembic import context

from hipchat_server.storage.schema import metadata

engine = context.config.attributes["engine"]

with engine.begin() as connection:
    context.configure(connection=connection, target_metadata=metadata, compare_type=True)
    context.run_migrations()
