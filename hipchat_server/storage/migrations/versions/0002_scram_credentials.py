"""SCRAM credentials: the salted keys XMPP logins check, one row per user and mechanism.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TABLE_OPTIONS = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_unicode_ci", "mysql_engine": "InnoDB"}


def upgrade() -> None:
    # Salt and keys are base64 text (44 characters for 32 bytes), readable in a dump;
    # the password itself is never stored (users.password_hash keeps its argon2 hash).
    op.create_table(
        "user_credentials",
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("mechanism", sa.String(32), primary_key=True),
        sa.Column("salt", sa.String(128), nullable=False),
        sa.Column("iterations", sa.Integer, nullable=False),
        sa.Column("stored_key", sa.String(128), nullable=False),
        sa.Column("server_key", sa.String(128), nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False, server_default=sa.func.now()),
        **TABLE_OPTIONS,
    )


def downgrade() -> None:
    op.drop_table("user_credentials")
