"""Guest access: a guest-accessible room's link token, and the guests let in through it.

``rooms.guest_token``: the random part of the room's guest link
(``https://<host>/guest/<token>``), set while guest access is on, cleared when
it goes off (turning it on again makes a new link). ``guests``: one row per
guest account (a ``users`` row with ``is_guest``), the room it may chat in,
when it logged in (once: a guest link gives one session) and when it ended.
A guest's row goes with its room; its ``users`` row stays, so what it said
keeps its author.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

TABLE_OPTIONS = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_unicode_ci", "mysql_engine": "InnoDB"}


def upgrade() -> None:
    with op.batch_alter_table("rooms") as batch:
        batch.add_column(sa.Column("guest_token", sa.String(64), nullable=True))
        batch.create_unique_constraint("uq_rooms_guest_token", ["guest_token"])
    op.create_table(
        "guests",
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE", name="fk_guests_user_id_users"), primary_key=True),
        sa.Column("room_id", sa.Integer, sa.ForeignKey("rooms.id", ondelete="CASCADE", name="fk_guests_room_id_rooms"), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False, server_default=sa.func.now()),
        sa.Column("logged_in_at", sa.DateTime, nullable=True),
        sa.Column("ended_at", sa.DateTime, nullable=True),
        **TABLE_OPTIONS,
    )
    op.create_index("ix_guests_room_id", "guests", ["room_id"])


def downgrade() -> None:
    op.drop_index("ix_guests_room_id", table_name="guests")
    op.drop_table("guests")
    with op.batch_alter_table("rooms") as batch:
        batch.drop_constraint("uq_rooms_guest_token", type_="unique")
        batch.drop_column("guest_token")
