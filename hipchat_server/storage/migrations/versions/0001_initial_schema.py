"""The initial schema: users, groups, rooms, memberships, API tokens, flags, audit log.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# utf8mb4 so names and topics hold any Unicode, including emoji.
TABLE_OPTIONS = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_unicode_ci", "mysql_engine": "InnoDB"}


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("mention_name", sa.String(100), nullable=False),
        sa.Column("email", sa.String(255), nullable=False),
        sa.Column("username", sa.String(100), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=True),
        sa.Column("title", sa.String(100), nullable=False, server_default=""),
        sa.Column("timezone", sa.String(64), nullable=False, server_default="UTC"),
        sa.Column("is_admin", sa.Boolean, nullable=False, server_default="0"),
        sa.Column("is_guest", sa.Boolean, nullable=False, server_default="0"),
        sa.Column("is_active", sa.Boolean, nullable=False, server_default="1"),
        sa.Column("created_at", sa.DateTime, nullable=False, server_default=sa.func.now()),
        sa.Column("deleted_at", sa.DateTime, nullable=True),
        sa.UniqueConstraint("mention_name", name="uq_users_mention_name"),
        sa.UniqueConstraint("email", name="uq_users_email"),
        sa.UniqueConstraint("username", name="uq_users_username"),
        **TABLE_OPTIONS,
    )
    op.create_table(
        "groups",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False, server_default=sa.func.now()),
        sa.UniqueConstraint("name", name="uq_groups_name"),
        **TABLE_OPTIONS,
    )
    op.create_table(
        "group_members",
        sa.Column("group_id", sa.Integer, sa.ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
        **TABLE_OPTIONS,
    )
    op.create_table(
        "rooms",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("topic", sa.String(250), nullable=False, server_default=""),
        sa.Column("privacy", sa.String(16), nullable=False, server_default="public"),
        sa.Column("is_archived", sa.Boolean, nullable=False, server_default="0"),
        sa.Column("is_guest_accessible", sa.Boolean, nullable=False, server_default="0"),
        sa.Column("owner_id", sa.Integer, sa.ForeignKey("users.id", ondelete="SET NULL"), nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False, server_default=sa.func.now()),
        sa.UniqueConstraint("name", name="uq_rooms_name"),
        **TABLE_OPTIONS,
    )
    op.create_table(
        "room_members",
        sa.Column("room_id", sa.Integer, sa.ForeignKey("rooms.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("affiliation", sa.String(16), nullable=False, server_default="member"),
        **TABLE_OPTIONS,
    )
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("label", sa.String(100), nullable=False, server_default=""),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=True),
        sa.Column("room_id", sa.Integer, sa.ForeignKey("rooms.id", ondelete="CASCADE"), nullable=True),
        sa.Column("scopes", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False, server_default=sa.func.now()),
        sa.Column("expires_at", sa.DateTime, nullable=True),
        sa.UniqueConstraint("token_hash", name="uq_api_tokens_token_hash"),
        **TABLE_OPTIONS,
    )
    op.create_table(
        "feature_flags",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("description", sa.String(255), nullable=False, server_default=""),
        sa.Column("enabled", sa.Boolean, nullable=False, server_default="0"),
        **TABLE_OPTIONS,
    )
    op.create_table(
        "group_flags",
        sa.Column("flag_name", sa.String(64), sa.ForeignKey("feature_flags.name", ondelete="CASCADE"), primary_key=True),
        sa.Column("group_id", sa.Integer, sa.ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("enabled", sa.Boolean, nullable=False),
        **TABLE_OPTIONS,
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("at", sa.DateTime, nullable=False, server_default=sa.func.now()),
        sa.Column("actor", sa.String(100), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(255), nullable=False, server_default=""),
        sa.Column("details", sa.Text, nullable=True),
        **TABLE_OPTIONS,
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"])
    # The features an admin can switch per group (issue: admin console); on by default
    # except guest access, which an enterprise turns on deliberately.
    flags = sa.table(
        "feature_flags", sa.column("name", sa.String), sa.column("description", sa.String), sa.column("enabled", sa.Boolean)
    )
    op.bulk_insert(
        flags,
        [
            {"name": "file_sharing", "description": "Share files in rooms and chats", "enabled": True},
            {"name": "guest_access", "description": "Guests may join guest-accessible rooms", "enabled": False},
            {"name": "web_client", "description": "Chat from the built-in web client", "enabled": True},
            {"name": "api_message_sending", "description": "Bots send messages through REST API v2", "enabled": True},
            {"name": "webhooks", "description": "Rooms call webhooks for their events", "enabled": True},
        ],
    )


def downgrade() -> None:
    for table in ("audit_log", "group_flags", "feature_flags", "api_tokens", "room_members", "rooms", "group_members", "groups", "users"):
        op.drop_table(table)
