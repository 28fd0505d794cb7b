"""The MariaDB schema as SQLAlchemy Core tables.

Alembic migrations under ``migrations/versions`` create and change these
tables; this module is what the code queries against and must agree with
the newest migration (a test compares the two).
"""

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
)
from sqlalchemy.dialects import mysql

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_name)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(100), nullable=False),
    Column("mention_name", String(100), nullable=False, unique=True),
    Column("email", String(255), nullable=False, unique=True),
    # The XMPP localpart; immutable once created so JIDs stay stable.
    Column("username", String(100), nullable=False, unique=True),
    Column("password_hash", String(255), nullable=True),
    Column("title", String(100), nullable=False, server_default=""),
    Column("timezone", String(64), nullable=False, server_default="UTC"),
    Column("is_admin", Boolean, nullable=False, server_default="0"),
    Column("is_guest", Boolean, nullable=False, server_default="0"),
    Column("is_active", Boolean, nullable=False, server_default="1"),
    Column("created_at", DateTime, nullable=False, server_default=func.now()),
    Column("deleted_at", DateTime, nullable=True),
)

# SCRAM (RFC 5802 / RFC 7677) keys per user and mechanism; salt and keys as base64.
# The password is never stored: only these keys and the argon2 hash in users.
user_credentials = Table(
    "user_credentials",
    metadata,
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    # "SCRAM-SHA-256" or "SCRAM-SHA-1".
    Column("mechanism", String(32), primary_key=True),
    Column("salt", String(128), nullable=False),
    Column("iterations", Integer, nullable=False),
    Column("stored_key", String(128), nullable=False),
    Column("server_key", String(128), nullable=False),
    Column("updated_at", DateTime, nullable=False, server_default=func.now()),
)

groups = Table(
    "groups",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("created_at", DateTime, nullable=False, server_default=func.now()),
)

group_members = Table(
    "group_members",
    metadata,
    Column("group_id", Integer, ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
)

rooms = Table(
    "rooms",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("topic", String(250), nullable=False, server_default=""),
    # "public" or "private" (members-only), HipChat's two privacy levels.
    Column("privacy", String(16), nullable=False, server_default="public"),
    Column("is_archived", Boolean, nullable=False, server_default="0"),
    Column("is_guest_accessible", Boolean, nullable=False, server_default="0"),
    Column("owner_id", Integer, ForeignKey("users.id", ondelete="SET NULL"), nullable=True),
    Column("created_at", DateTime, nullable=False, server_default=func.now()),
    # XEP-0045 (migration 0004): the room's JID localpart, exact (binary collation), and its settings.
    Column("jid_node", String(255).with_variant(mysql.VARCHAR(255, collation="utf8mb4_bin"), "mysql"), nullable=False, unique=True),
    Column("subject", Text, nullable=True),
    Column("subject_by", String(255), nullable=True),  # the nickname that set the subject
    Column("description", String(255), nullable=False, server_default=""),
    Column("is_listed", Boolean, nullable=False, server_default="1"),  # muc#roomconfig_publicroom
    Column("is_persistent", Boolean, nullable=False, server_default="1"),
    Column("is_moderated", Boolean, nullable=False, server_default="0"),
    Column("whois", String(16), nullable=False, server_default="anyone"),  # "anyone" or "moderators"
    Column("max_occupants", Integer, nullable=True),  # NULL: no limit
    Column("occupants_change_subject", Boolean, nullable=False, server_default="1"),
    Column("occupants_invite", Boolean, nullable=False, server_default="1"),
    Column("is_locked", Boolean, nullable=False, server_default="0"),  # created, not configured yet
    # Migration 0007: the random part of the guest link while guest access is on (guests.py).
    Column("guest_token", String(64), nullable=True, unique=True),
)

room_members = Table(
    "room_members",
    metadata,
    Column("room_id", Integer, ForeignKey("rooms.id", ondelete="CASCADE"), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    # XEP-0045 affiliation: owner, admin, member or outcast.
    Column("affiliation", String(16), nullable=False, server_default="member"),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", Integer, primary_key=True),
    # SHA-256 of the token; the token itself is shown once and never stored.
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("label", String(100), nullable=False, server_default=""),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=True),
    Column("room_id", Integer, ForeignKey("rooms.id", ondelete="CASCADE"), nullable=True),
    Column("scopes", JSON, nullable=False),
    Column("created_at", DateTime, nullable=False, server_default=func.now()),
    Column("expires_at", DateTime, nullable=True),
    # Migration 0005: the OAuth client a token was issued to (deleting the client revokes it).
    Column("oauth_client_id", Integer, ForeignKey("oauth_clients.id", ondelete="CASCADE"), nullable=True),
    Index("ix_api_tokens_expires_at", "expires_at"),
)

feature_flags = Table(
    "feature_flags",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("description", String(255), nullable=False, server_default=""),
    Column("enabled", Boolean, nullable=False, server_default="0"),
)

group_flags = Table(
    "group_flags",
    metadata,
    Column("flag_name", String(64), ForeignKey("feature_flags.name", ondelete="CASCADE"), primary_key=True),
    Column("group_id", Integer, ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True),
    Column("enabled", Boolean, nullable=False),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("at", DateTime, nullable=False, server_default=func.now()),
    Column("actor", String(100), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(255), nullable=False, server_default=""),
    Column("details", Text, nullable=True),
    Index("ix_audit_log_at", "at"),
)

# OAuth 2.0 clients (migration 0005): the client-credentials grant of POST /v2/oauth/token.
oauth_clients = Table(
    "oauth_clients",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("client_id", String(64), nullable=False, unique=True),
    # SHA-256 of the secret; the secret is shown once and never stored.
    Column("secret_hash", String(64), nullable=False),
    Column("label", String(100), nullable=False, server_default=""),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("scopes", JSON, nullable=False),
    Column("created_at", DateTime, nullable=False, server_default=func.now()),
)

# Guest accounts (migration 0007): a users row with is_guest, let into one room through its guest link.
guests = Table(
    "guests",
    metadata,
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("room_id", Integer, ForeignKey("rooms.id", ondelete="CASCADE"), nullable=False),
    Column("created_at", DateTime, nullable=False, server_default=func.now()),
    Column("logged_in_at", DateTime, nullable=True),  # a guest link gives one session
    Column("ended_at", DateTime, nullable=True),
    Index("ix_guests_room_id", "room_id"),
)

__all__ = [
    "metadata",
    "users",
    "user_credentials",
    "groups",
    "group_members",
    "rooms",
    "room_members",
    "api_tokens",
    "oauth_clients",
    "feature_flags",
    "group_flags",
    "audit_log",
]


# RFC 6121 rosters: one row per (owner, contact); subscription is none, to, from or both.
roster_items = Table(
    "roster_items",
    metadata,
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("contact_jid", String(512), primary_key=True),
    Column("name", String(255), nullable=True),
    Column("subscription", String(8), nullable=False, server_default="none"),
    # The owner's subscription request, not answered yet ("ask='subscribe'" in the roster).
    Column("ask_out", Boolean, nullable=False, server_default="0"),
    # The contact's subscription request, kept so it is shown again at the owner's next login.
    Column("ask_in", Boolean, nullable=False, server_default="0"),
    Column("ask_in_stanza", Text, nullable=True),
    Column("groups", JSON, nullable=False),
    Column("updated_at", DateTime, nullable=False, server_default=func.now()),
)

# XEP-0160 offline storage: stanzas kept, in id order, until the user is next available.
offline_messages = Table(
    "offline_messages",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("sender", String(3071), nullable=False),
    Column("stanza", Text().with_variant(mysql.MEDIUMTEXT(), "mysql"), nullable=False),
    Column("stored_at", DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql"), nullable=False),
    Index("ix_offline_messages_user_id", "user_id", "id"),
)

# XEP-0054 vcard-temp: the XML document each user set.
vcards = Table(
    "vcards",
    metadata,
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("vcard", Text().with_variant(mysql.MEDIUMTEXT(), "mysql"), nullable=False),
    Column("updated_at", DateTime, nullable=False, server_default=func.now()),
)

# Room webhooks (migration 0006): HipChat's room_message (with a regex pattern), room_notification,
# room_enter, ... events POSTed as JSON to a URL; with a secret, signed as a JWT (HS256).
webhooks = Table(
    "webhooks",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("room_id", Integer, ForeignKey("rooms.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(100), nullable=False, server_default=""),
    Column("url", String(2048), nullable=False),
    Column("event", String(32), nullable=False),
    Column("pattern", String(512), nullable=True),
    Column("secret", String(255), nullable=True),
    Column("oauth_client_id", String(64), nullable=True),  # the OAuth client that created it, if one did
    Column("created_by", Integer, ForeignKey("users.id", ondelete="SET NULL"), nullable=True),
    Column("created_at", DateTime, nullable=False, server_default=func.now()),
    Index("ix_webhooks_room_id", "room_id"),
)

# Incoming commit hooks (migration 0006): GitHub and Bitbucket push payloads POSTed to
# /v2/room/<id>/commit-hook/<token> become notifications; the token is kept as its SHA-256.
commit_hooks = Table(
    "commit_hooks",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("room_id", Integer, ForeignKey("rooms.id", ondelete="CASCADE"), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("label", String(100), nullable=False, server_default=""),
    Column("secret", String(255), nullable=True),  # GitHub's webhook secret: X-Hub-Signature-256 is checked with it
    Column("created_by", Integer, ForeignKey("users.id", ondelete="SET NULL"), nullable=True),
    Column("created_at", DateTime, nullable=False, server_default=func.now()),
)
