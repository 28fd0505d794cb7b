"""Rooms as XEP-0045 rooms: a JID localpart per room, the subject and the room configuration form's settings.

HipChat's ``name`` stays the display name (unique, as in HipChat); the room's
address is ``<jid_node>@<rooms service>.<domain>``. Rooms that exist already
get a ``jid_node`` derived from their name (lower case, spaces as dashes,
characters a JID localpart may not hold removed; the id appended on a clash).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

import re

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# A binary collation: room addresses compare exactly as the JID code prepared them
# (the table's utf8mb4_unicode_ci would call "café" and "cafe" the same room).
JID_NODE = sa.String(255).with_variant(mysql.VARCHAR(255, collation="utf8mb4_bin"), "mysql")
# Characters RFC 7622 forbids in a localpart, and whitespace.
_FORBIDDEN = re.compile(r"[\"&'/:<>@\s]+")


def jid_node_of(name: str, room_id: int) -> str:
    """The localpart an existing room gets from its display name."""
    node = _FORBIDDEN.sub("-", name.strip().lower()).strip("-")[:200]
    return node or f"room-{room_id}"


def upgrade() -> None:
    with op.batch_alter_table("rooms") as batch:
        batch.add_column(sa.Column("jid_node", JID_NODE, nullable=True))
        # The room subject (XEP-0045 8.1) and the nickname of whoever set it; `topic` is HipChat's copy.
        batch.add_column(sa.Column("subject", sa.Text, nullable=True))
        batch.add_column(sa.Column("subject_by", sa.String(255), nullable=True))
        # muc#roomconfig settings; `privacy` stays the members-only switch ("private").
        batch.add_column(sa.Column("description", sa.String(255), nullable=False, server_default=""))
        batch.add_column(sa.Column("is_listed", sa.Boolean, nullable=False, server_default="1"))
        batch.add_column(sa.Column("is_persistent", sa.Boolean, nullable=False, server_default="1"))
        batch.add_column(sa.Column("is_moderated", sa.Boolean, nullable=False, server_default="0"))
        # Who sees occupants' real JIDs: "anyone" (non-anonymous) or "moderators" (semi-anonymous).
        batch.add_column(sa.Column("whois", sa.String(16), nullable=False, server_default="anyone"))
        batch.add_column(sa.Column("max_occupants", sa.Integer, nullable=True))  # NULL: no limit
        batch.add_column(sa.Column("occupants_change_subject", sa.Boolean, nullable=False, server_default="1"))
        batch.add_column(sa.Column("occupants_invite", sa.Boolean, nullable=False, server_default="1"))
        # A room created by a join stays locked until its owner configures it (XEP-0045 10.1).
        batch.add_column(sa.Column("is_locked", sa.Boolean, nullable=False, server_default="0"))
    rooms = sa.table("rooms", sa.column("id", sa.Integer), sa.column("name", sa.String), sa.column("jid_node", JID_NODE))
    connection = op.get_bind()
    taken: set[str] = set()
    for room_id, name in connection.execute(sa.select(rooms.c.id, rooms.c.name).order_by(rooms.c.id)).all():
        node = jid_node_of(name, room_id)
        if node in taken:
            node = f"{node}-{room_id}"
        taken.add(node)
        connection.execute(rooms.update().where(rooms.c.id == room_id).values(jid_node=node))
    with op.batch_alter_table("rooms") as batch:
        batch.alter_column("jid_node", existing_type=JID_NODE, nullable=False)
        batch.create_unique_constraint("uq_rooms_jid_node", ["jid_node"])


def downgrade() -> None:
    with op.batch_alter_table("rooms") as batch:
        batch.drop_constraint("uq_rooms_jid_node", type_="unique")
        for column in (
            "is_locked",
            "occupants_invite",
            "occupants_change_subject",
            "max_occupants",
            "whois",
            "is_moderated",
            "is_persistent",
            "is_listed",
            "description",
            "subject_by",
            "subject",
            "jid_node",
        ):
            batch.drop_column(column)
