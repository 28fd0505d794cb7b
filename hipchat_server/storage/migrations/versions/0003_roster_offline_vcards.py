"""XMPP user state kept in MariaDB: rosters, offline messages and vCards.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TABLE_OPTIONS = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_unicode_ci", "mysql_engine": "InnoDB"}
USER_FK = dict(ondelete="CASCADE")


def upgrade() -> None:
    # RFC 6121 roster items: the owner's view of one contact and their subscription state.
    op.create_table(
        "roster_items",
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", **USER_FK), primary_key=True),
        sa.Column("contact_jid", sa.String(512), primary_key=True),
        sa.Column("name", sa.String(255), nullable=True),
        # none | to | from | both (RFC 6121 2.1.2.5)
        sa.Column("subscription", sa.String(8), nullable=False, server_default="none"),
        # The owner asked the contact for a subscription that is not answered yet.
        sa.Column("ask_out", sa.Boolean, nullable=False, server_default="0"),
        # The contact asked the owner; the request stanza is kept to be shown again at next login.
        sa.Column("ask_in", sa.Boolean, nullable=False, server_default="0"),
        sa.Column("ask_in_stanza", sa.Text, nullable=True),
        sa.Column("groups", sa.JSON, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False, server_default=sa.func.now()),
        **TABLE_OPTIONS,
    )
    # XEP-0160: messages for a user with no available resource, in arrival order (id).
    op.create_table(
        "offline_messages",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", **USER_FK), nullable=False),
        sa.Column("sender", sa.String(3071), nullable=False),
        sa.Column("stanza", sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql"), nullable=False),
        sa.Column("stored_at", sa.DateTime(timezone=False).with_variant(mysql.DATETIME(fsp=6), "mysql"), nullable=False),
        **TABLE_OPTIONS,
    )
    op.create_index("ix_offline_messages_user_id", "offline_messages", ["user_id", "id"])
    # XEP-0054 vcard-temp, one document per user, kept as the XML the user set.
    op.create_table(
        "vcards",
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", **USER_FK), primary_key=True),
        sa.Column("vcard", sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql"), nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False, server_default=sa.func.now()),
        **TABLE_OPTIONS,
    )


def downgrade() -> None:
    op.drop_table("vcards")
    op.drop_index("ix_offline_messages_user_id", table_name="offline_messages")
    op.drop_table("offline_messages")
    op.drop_table("roster_items")
