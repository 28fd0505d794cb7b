"""Room webhooks and incoming commit hooks.

``webhooks``: one row per room webhook (event, URL, optional regex pattern for
room_message, optional secret the worker signs a JWT with). ``commit_hooks``:
one row per incoming commit hook of a room, found by the SHA-256 of the token
in its URL (the token is shown once). Both go with their room.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TABLE_OPTIONS = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_unicode_ci", "mysql_engine": "InnoDB"}


def upgrade() -> None:
    op.create_table(
        "webhooks",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("room_id", sa.Integer, sa.ForeignKey("rooms.id", ondelete="CASCADE", name="fk_webhooks_room_id_rooms"), nullable=False),
        sa.Column("name", sa.String(100), nullable=False, server_default=""),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("pattern", sa.String(512), nullable=True),
        sa.Column("secret", sa.String(255), nullable=True),
        sa.Column("oauth_client_id", sa.String(64), nullable=True),
        sa.Column("created_by", sa.Integer, sa.ForeignKey("users.id", ondelete="SET NULL", name="fk_webhooks_created_by_users"), nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False, server_default=sa.func.now()),
        **TABLE_OPTIONS,
    )
    op.create_index("ix_webhooks_room_id", "webhooks", ["room_id"])
    op.create_table(
        "commit_hooks",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("room_id", sa.Integer, sa.ForeignKey("rooms.id", ondelete="CASCADE", name="fk_commit_hooks_room_id_rooms"), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("label", sa.String(100), nullable=False, server_default=""),
        sa.Column("secret", sa.String(255), nullable=True),
        sa.Column("created_by", sa.Integer, sa.ForeignKey("users.id", ondelete="SET NULL", name="fk_commit_hooks_created_by_users"), nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False, server_default=sa.func.now()),
        sa.UniqueConstraint("token_hash", name="uq_commit_hooks_token_hash"),
        **TABLE_OPTIONS,
    )


def downgrade() -> None:
    op.drop_table("commit_hooks")
    op.drop_index("ix_webhooks_room_id", table_name="webhooks")
    op.drop_table("webhooks")
