"""OAuth 2.0 clients (HipChat's client-credentials grant) and the tokens they were issued.

``oauth_clients`` holds a client id, the SHA-256 of its secret (the secret is
shown once), the user it acts for and the scopes it may ask for. A token
issued to a client points at it (``api_tokens.oauth_client_id``), so deleting
the client revokes its tokens.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TABLE_OPTIONS = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_unicode_ci", "mysql_engine": "InnoDB"}


def upgrade() -> None:
    op.create_table(
        "oauth_clients",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("label", sa.String(100), nullable=False, server_default=""),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("scopes", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False, server_default=sa.func.now()),
        sa.UniqueConstraint("client_id", name="uq_oauth_clients_client_id"),
        **TABLE_OPTIONS,
    )
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("oauth_client_id", sa.Integer, nullable=True))
        batch.create_foreign_key(
            "fk_api_tokens_oauth_client_id_oauth_clients", "oauth_clients", ["oauth_client_id"], ["id"], ondelete="CASCADE"
        )
    # Expired client tokens are deleted in batches by expiry.
    op.create_index("ix_api_tokens_expires_at", "api_tokens", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_api_tokens_expires_at", "api_tokens")
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_constraint("fk_api_tokens_oauth_client_id_oauth_clients", type_="foreignkey")
        batch.drop_column("oauth_client_id")
    op.drop_table("oauth_clients")
