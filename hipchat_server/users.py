"""Users: creating accounts, setting and checking passwords, enabling and disabling (domain logic over the users store).

A password is never stored. Each account keeps an argon2 hash of it (web
login and SASL PLAIN check it) and, for each SCRAM mechanism XMPP offers, a
salt, an iteration count and the StoredKey and ServerKey of RFC 5802, from
which the server checks a SCRAM login without knowing the password.
"""

from __future__ import annotations

import enum
import logging
import re
from dataclasses import asdict, dataclass
from typing import Mapping

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from scramp import ScramException, ScramMechanism

from hipchat_server.storage.users import DuplicateKeyError, UserStore

log = logging.getLogger(__name__)

_hasher = PasswordHasher()

# Iteration counts of the SCRAM keys, strongest mechanism first (the order SASL offers them).
# 4096 is the minimum of RFC 5802 (SHA-1) and RFC 7677 (SHA-256) and what ejabberd uses.
# A higher count for SHA-256 alone would buy nothing: both keys of an account sit in the
# same table, so a stolen dump is only as strong as its SHA-1 keys. And the count costs
# nothing on the server at login (it keeps StoredKey and ServerKey) but costs every
# client one PBKDF2 of this many rounds per login: a phone in a reconnect storm, and the
# load generator that logs in 500 clients a second on the same 2 cores as the server.
# Raising a count here applies to each account at its next password change; keys made
# with the old count keep working because each row carries its own count.
SCRAM_ITERATIONS: Mapping[str, int] = {
    "SCRAM-SHA-256": 4096,
    "SCRAM-SHA-1": 4096,
}
SCRAM_MECHANISMS: tuple[str, ...] = tuple(SCRAM_ITERATIONS)

# An XMPP localpart we can put in a JID without escaping, and that every client accepts.
USERNAME_PATTERN = re.compile(r"[a-z0-9._-]{1,64}")
EMAIL_PATTERN = re.compile(r"[^@\s]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*")
NAME_MAX_LENGTH = 100
EMAIL_MAX_LENGTH = 255
PASSWORD_MIN_LENGTH = 8
PASSWORD_MAX_LENGTH = 1024


class UserError(ValueError):
    """A user cannot be created or changed as asked; the message says why, naming the value."""


class UnknownUserError(UserError):
    """No (undeleted) user has this username."""


@dataclass(frozen=True)
class User:
    id: int
    username: str
    name: str
    email: str
    is_admin: bool
    is_active: bool

    @classmethod
    def from_row(cls, row: Mapping) -> "User":
        return cls(
            id=row["id"],
            username=row["username"],
            name=row["name"],
            email=row["email"],
            is_admin=bool(row["is_admin"]),
            is_active=bool(row["is_active"]),
        )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ScramCredentials:
    """What the server keeps to check one SCRAM mechanism (RFC 5802 section 3)."""

    mechanism: str
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes


class AdminOutcome(enum.Enum):
    """What ``ensure_admin`` did."""

    CREATED = "created"
    CREDENTIALS_ADDED = "credentials added"
    UNCHANGED = "unchanged"


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def make_scram_credentials(password: str, mechanism: str) -> ScramCredentials:
    """Fresh salt and keys of ``password`` for ``mechanism``, at that mechanism's iteration count."""
    salt, stored_key, server_key, iterations = ScramMechanism(mechanism).make_auth_info(
        password, iteration_count=SCRAM_ITERATIONS[mechanism]
    )
    return ScramCredentials(mechanism, salt, iterations, stored_key, server_key)


def _all_scram_credentials(password: str) -> list[dict]:
    return [asdict(make_scram_credentials(password, mechanism)) for mechanism in SCRAM_MECHANISMS]


def validate_username(username: str) -> str:
    if not isinstance(username, str) or not USERNAME_PATTERN.fullmatch(username):
        raise UserError(
            f"username {username!r}: use 1 to 64 lowercase letters, digits, '.', '_' or '-' (it becomes the XMPP address)"
        )
    return username


def validate_email(email: str) -> str:
    email = email.strip()
    if len(email) > EMAIL_MAX_LENGTH or not EMAIL_PATTERN.fullmatch(email):
        raise UserError(f"email {email!r}: expected an address like name@example.com")
    return email


def validate_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > NAME_MAX_LENGTH or any(not c.isprintable() for c in name):
        raise UserError(f"name {name!r}: expected 1 to {NAME_MAX_LENGTH} printable characters")
    return name


def validate_password(password: str) -> str:
    if len(password) < PASSWORD_MIN_LENGTH:
        raise UserError(f"password: must be at least {PASSWORD_MIN_LENGTH} characters")
    if len(password) > PASSWORD_MAX_LENGTH:
        raise UserError(f"password: must be at most {PASSWORD_MAX_LENGTH} characters")
    try:
        # SCRAM runs the password through SASLprep (RFC 4013), which refuses control
        # and unassigned characters; refuse them here so every mechanism can log in.
        make_scram_credentials(password, SCRAM_MECHANISMS[-1])
    except ScramException as e:
        raise UserError(f"password: not usable for XMPP login ({e.args[0]})") from None
    return password


def _get_user_row(store: UserStore, username: str) -> dict:
    row = store.get_by_username(username)
    if row is None or row.get("deleted_at") is not None:
        raise UnknownUserError(f"no user named {username!r}")
    return row


def get_user(store: UserStore, username: str) -> User:
    """The user ``username``; raises UnknownUserError when there is none."""
    return User.from_row(_get_user_row(store, username))


def create_user(
    store: UserStore, username: str, name: str, email: str, password: str, is_admin: bool = False, *, is_guest: bool = False
) -> User:
    """Create an active user with its argon2 hash and SCRAM credentials; return it.

    ``is_guest`` makes a guest account (`guests.Guests`), which `UserCredentials`
    never lets log in. Raises UserError naming the value that is invalid or already taken.
    """
    username = validate_username(username)
    name = validate_name(name)
    email = validate_email(email)
    password = validate_password(password)
    if store.get_by_username(username) is not None:
        raise UserError(f"username {username!r} is taken by another user")
    other = store.get_by_email(email)
    if other is not None:
        raise UserError(f"email {email!r} is already used by user {other['username']!r}")
    try:
        user_id = store.insert(
            credentials=_all_scram_credentials(password),
            username=username,
            name=name,
            mention_name=username,
            email=email,
            password_hash=hash_password(password),
            is_admin=is_admin,
            is_guest=is_guest,
        )
    except DuplicateKeyError as e:  # another administrator created the same user a moment ago
        value = {"username": username, "email": email, "mention_name": username}[e.column]
        raise UserError(f"{e.column.replace('_', ' ')} {value!r} is taken by another user") from None
    log.info("created user %s (admin: %s)", username, is_admin)
    return User(user_id, username, name, email, bool(is_admin), True)


def set_password(store: UserStore, username: str, password: str) -> None:
    """Replace the password of ``username``: its argon2 hash and the SCRAM credentials of every mechanism."""
    row = _get_user_row(store, username)
    password = validate_password(password)
    store.update_password(row["id"], hash_password(password), _all_scram_credentials(password))
    log.info("changed the password of user %s", username)


def _set_active(store: UserStore, username: str, active: bool) -> bool:
    row = _get_user_row(store, username)
    if bool(row["is_active"]) == active:
        return False
    store.set_active(row["id"], active)
    log.info("%s user %s", "enabled" if active else "disabled", username)
    return True


def disable_user(store: UserStore, username: str) -> bool:
    """Stop ``username`` from logging in; False when it already was disabled.

    Sessions already open are not closed here.
    """
    return _set_active(store, username, False)


def enable_user(store: UserStore, username: str) -> bool:
    """Let ``username`` log in again; False when it already was enabled."""
    return _set_active(store, username, True)


def list_users(store: UserStore) -> list[User]:
    """Every user not deleted, ordered by username."""
    return [User.from_row(row) for row in store.list_all()]


_dummy_hash: str | None = None


def _check_hash(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def account_of(store: UserStore, username: str) -> tuple[int | None, bool]:
    """``(user id, is admin)`` of ``username``; ``(None, False)`` when there is no such user (the Authenticator's ``accounts``)."""
    try:
        user = get_user(store, username)
    except UnknownUserError:
        return None, False
    return user.id, user.is_admin


def verify_password(store: UserStore, username: str, password: str) -> bool:
    """True when ``password`` matches the argon2 hash of ``username`` (active or not)."""
    global _dummy_hash
    row = store.get_by_username(username)
    if row is None or row.get("deleted_at") is not None or not row["password_hash"]:
        # Spend the same time as for a real user, so timing does not tell who exists.
        if _dummy_hash is None:
            _dummy_hash = hash_password("not a password")
        _check_hash(_dummy_hash, password)
        return False
    return _check_hash(row["password_hash"], password)


def _active_row(row: Mapping | None) -> bool:
    return row is not None and row.get("deleted_at") is None and bool(row["is_active"])


def is_active(store: UserStore, username: str) -> bool:
    """True when ``username`` exists, is not deleted and is not disabled."""
    return _active_row(store.get_by_username(username))


def ensure_admin(store: UserStore, username: str, email: str, password: str) -> AdminOutcome:
    """Create the administrator ``username`` unless it exists; say what was done.

    An existing account keeps its password: re-running the installer must not
    reset a password the administrator has changed since. An account made
    before SCRAM credentials existed gets them when ``password`` still is its
    password (the installer's one); otherwise it logs in by SCRAM after its
    next password change.
    """
    row = store.get_by_username(username)
    if row is None:
        store.insert(
            credentials=_all_scram_credentials(password),
            username=username,
            name="Administrator",
            mention_name=username,
            email=email,
            password_hash=hash_password(password),
            is_admin=True,
        )
        return AdminOutcome.CREATED
    if set(SCRAM_MECHANISMS) <= store.credential_mechanisms(row["id"]):
        return AdminOutcome.UNCHANGED
    if not _check_hash(row["password_hash"], password):
        return AdminOutcome.UNCHANGED
    store.add_credentials(row["id"], _all_scram_credentials(password))
    return AdminOutcome.CREDENTIALS_ADDED


class UserCredentials:
    """The users' credentials as SASL reads them (``hipchat_server.xmpp.sasl.CredentialsStore``).

    Every method blocks on MariaDB (and ``check_password`` on argon2): the
    protocol layer calls the SASL session from a thread.
    """

    def __init__(self, store: UserStore):
        self.store = store

    def get_scram_credentials(self, username: str, mechanism: str) -> ScramCredentials | None:
        row = self.store.get_scram_credentials(username, mechanism)
        if row is None:
            return None
        return ScramCredentials(row["mechanism"], row["salt"], row["iterations"], row["stored_key"], row["server_key"])

    def check_password(self, username: str, password: str) -> bool:
        return verify_password(self.store, username, password)

    def is_active(self, username: str) -> bool:
        """Active and not a guest: a guest logs in only over the WebSocket of its room's guest page (`xmpp.guests`)."""
        row = self.store.get_by_username(username)
        return _active_row(row) and not row.get("is_guest")
