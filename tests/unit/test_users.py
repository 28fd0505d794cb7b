"""Users' domain logic on an in-memory store: validation, passwords and SCRAM keys, enabling, the first admin."""

from __future__ import annotations

import pytest
from argon2 import PasswordHasher
from scramp import ScramMechanism
from sqlalchemy.exc import IntegrityError

from hipchat_server import users
from hipchat_server.storage.users import DuplicateKeyError, _duplicate_column
from hipchat_server.users import (
    SCRAM_ITERATIONS,
    SCRAM_MECHANISMS,
    AdminOutcome,
    ScramCredentials,
    UnknownUserError,
    UserCredentials,
    UserError,
    create_user,
    disable_user,
    enable_user,
    ensure_admin,
    list_users,
    set_password,
    verify_password,
)

PASSWORD = "correct horse battery"


class FakeUserStore:
    """The methods of ``storage.users.UserStore`` the domain uses, on dicts; unique columns enforced."""

    def __init__(self):
        self.rows: dict[int, dict] = {}
        self.credentials: dict[int, dict[str, dict]] = {}
        self.next_id = 1
        self.race_column: str | None = None  # make the next insert fail as if another writer won

    def get_by_username(self, username):
        return next((dict(r) for r in self.rows.values() if r["username"] == username), None)

    def get_by_email(self, email):
        return next((dict(r) for r in self.rows.values() if r["email"] == email), None)

    def insert(self, *, credentials=(), **values):
        if self.race_column:
            raise DuplicateKeyError(self.race_column)
        for column in ("username", "email", "mention_name"):
            if any(r[column] == values[column] for r in self.rows.values()):
                raise DuplicateKeyError(column)
        user_id, self.next_id = self.next_id, self.next_id + 1
        self.rows[user_id] = {"id": user_id, "is_active": True, "deleted_at": None, **values}
        self.credentials[user_id] = {c["mechanism"]: dict(c) for c in credentials}
        return user_id

    def update_password(self, user_id, password_hash, credentials):
        self.rows[user_id]["password_hash"] = password_hash
        self.add_credentials(user_id, credentials)

    def add_credentials(self, user_id, credentials):
        self.credentials[user_id] = {c["mechanism"]: dict(c) for c in credentials}

    def set_active(self, user_id, active):
        self.rows[user_id]["is_active"] = active

    def list_all(self):
        return sorted((dict(r) for r in self.rows.values() if r["deleted_at"] is None), key=lambda r: r["username"])

    def credential_mechanisms(self, user_id):
        return set(self.credentials.get(user_id, {}))

    def get_scram_credentials(self, username, mechanism):
        row = self.get_by_username(username)
        return self.credentials.get(row["id"], {}).get(mechanism) if row else None


@pytest.fixture(autouse=True)
def fast_argon2(monkeypatch):
    """Cheap argon2 parameters: the tests check behaviour, not hashing cost."""
    monkeypatch.setattr(users, "_hasher", PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))


@pytest.fixture
def store():
    return FakeUserStore()


def add_alice(store, **overrides):
    args = {"username": "alice", "name": "Alice Liddell", "email": "alice@example.com", "password": PASSWORD}
    return create_user(store, **{**args, **overrides})


def keys_match(credential: dict, password: str) -> bool:
    """Whether a stored SCRAM credential was derived from ``password`` (recomputed with its salt and count)."""
    _, stored_key, server_key, _ = ScramMechanism(credential["mechanism"]).make_auth_info(
        password, iteration_count=credential["iterations"], salt=credential["salt"]
    )
    return (stored_key, server_key) == (credential["stored_key"], credential["server_key"])


def test_create_user_stores_a_hash_and_scram_keys_never_the_password(store):
    """A new user has an argon2 hash and keys for both SCRAM mechanisms; the password appears nowhere."""
    user = add_alice(store)
    row = store.rows[user.id]
    assert row["password_hash"].startswith("$argon2")
    assert PASSWORD not in repr(row) and PASSWORD not in repr(store.credentials)
    assert set(store.credentials[user.id]) == {"SCRAM-SHA-256", "SCRAM-SHA-1"}
    for mechanism, credential in store.credentials[user.id].items():
        assert credential["iterations"] == SCRAM_ITERATIONS[mechanism] >= 4096
        assert len(credential["salt"]) >= 16
        assert keys_match(credential, PASSWORD)


def test_create_user_returns_an_active_user_with_its_fields(store):
    """create_user returns the user as stored: active, not admin unless asked, mention name = username."""
    user = add_alice(store, is_admin=True)
    assert (user.username, user.name, user.email, user.is_admin, user.is_active) == (
        "alice", "Alice Liddell", "alice@example.com", True, True
    )
    assert store.rows[user.id]["mention_name"] == "alice"


def test_scram_mechanisms_strongest_first():
    """The mechanisms with stored keys are SCRAM-SHA-256 then SCRAM-SHA-1, each at least 4096 iterations."""
    assert SCRAM_MECHANISMS == ("SCRAM-SHA-256", "SCRAM-SHA-1")
    assert all(count >= 4096 for count in SCRAM_ITERATIONS.values())


@pytest.mark.parametrize("username", ["a", "alice.smith", "bob_2", "x-y", "0", "a" * 64])
def test_valid_localparts_are_accepted(store, username):
    """Lowercase letters, digits, '.', '_' and '-', 1 to 64 characters, make a username."""
    assert add_alice(store, username=username).username == username


@pytest.mark.parametrize("username", ["", "Alice", "a" * 65, "a@b", "a b", "a/b", "zoë", "a:b"])
def test_invalid_usernames_are_refused_naming_them(store, username):
    """A username that is not a plain lowercase XMPP localpart is refused with a message quoting it."""
    with pytest.raises(UserError, match="username") as e:
        add_alice(store, username=username)
    assert repr(username) in str(e.value)
    assert store.rows == {}


@pytest.mark.parametrize("email", ["", "alice", "alice@", "@example.com", "a b@example.com", "a@exa mple.com", "a@@b"])
def test_invalid_emails_are_refused_naming_them(store, email):
    """An email without the shape name@domain is refused with a message naming the field."""
    with pytest.raises(UserError, match="email"):
        add_alice(store, email=email)


def test_email_and_name_are_trimmed(store):
    """Spaces around the name and the email are dropped before storing."""
    user = add_alice(store, name="  Alice  ", email=" alice@corp ")
    assert (user.name, user.email) == ("Alice", "alice@corp")


@pytest.mark.parametrize("name", ["", "   ", "x" * 101, "tab\there"])
def test_invalid_names_are_refused(store, name):
    """A display name must be 1 to 100 printable characters."""
    with pytest.raises(UserError, match="name"):
        add_alice(store, name=name)


@pytest.mark.parametrize(
    "password, reason",
    [("short", "at least 8"), ("x" * 1025, "at most"), ("bell\x07bell", "not usable"), ("tab\ttab\x00", "not usable")],
)
def test_unusable_passwords_are_refused(store, password, reason):
    """Passwords too short, too long, or with characters SASLprep forbids are refused, saying why."""
    with pytest.raises(UserError, match=reason):
        add_alice(store, password=password)


def test_duplicate_username_is_refused_naming_it(store):
    """A second user with a taken username is refused; the message names the username."""
    add_alice(store)
    with pytest.raises(UserError, match="username 'alice' is taken"):
        add_alice(store, email="other@example.com")
    assert len(store.rows) == 1


def test_duplicate_email_is_refused_naming_it_and_its_owner(store):
    """A second user with a taken email is refused; the message names the email and who has it."""
    add_alice(store)
    with pytest.raises(UserError, match="email 'alice@example.com' is already used by user 'alice'"):
        add_alice(store, username="alice2")


def test_duplicate_found_only_by_the_database_is_refused_naming_it(store):
    """When another writer inserts the same email between check and insert, the store's error becomes a UserError."""
    store.race_column = "email"
    with pytest.raises(UserError, match="email 'alice@example.com' is taken"):
        add_alice(store)


@pytest.mark.parametrize(
    "message, column",
    [
        ("(1062, \"Duplicate entry 'bob' for key 'uq_users_username'\")", "username"),
        ("(1062, \"Duplicate entry 'b@x' for key 'uq_users_email'\")", "email"),
        ("UNIQUE constraint failed: users.mention_name", "mention_name"),
        ("(1452, 'Cannot add or update a child row: a foreign key constraint fails')", None),
    ],
)
def test_store_names_the_duplicate_column_from_the_database_error(message, column):
    """The store reads which unique column a MariaDB (or SQLite) integrity error is about."""
    assert _duplicate_column(IntegrityError("INSERT ...", {}, Exception(message))) == column


def test_verify_password_checks_the_argon2_hash(store):
    """verify_password accepts the password and refuses others, unknown users and deleted users."""
    user = add_alice(store)
    assert verify_password(store, "alice", PASSWORD)
    assert not verify_password(store, "alice", PASSWORD + "!")
    assert not verify_password(store, "nobody", PASSWORD)
    store.rows[user.id]["deleted_at"] = "2026-11-26"
    assert not verify_password(store, "alice", PASSWORD)


def test_set_password_rewrites_the_hash_and_every_scram_key(store):
    """After set_password the old password fails everywhere and the new one works, with fresh salts."""
    user = add_alice(store)
    old = {m: dict(c) for m, c in store.credentials[user.id].items()}
    set_password(store, "alice", "a new passphrase")
    assert verify_password(store, "alice", "a new passphrase")
    assert not verify_password(store, "alice", PASSWORD)
    new = store.credentials[user.id]
    assert set(new) == set(SCRAM_MECHANISMS)
    for mechanism, credential in new.items():
        assert keys_match(credential, "a new passphrase")
        assert not keys_match(credential, PASSWORD)
        assert credential["salt"] != old[mechanism]["salt"]


def test_set_password_of_an_unknown_user_names_it(store):
    """Changing the password of a user that does not exist raises UnknownUserError naming the user."""
    with pytest.raises(UnknownUserError, match="no user named 'ghost'"):
        set_password(store, "ghost", "a new passphrase")


def test_set_password_refuses_a_short_password_and_keeps_the_old_one(store):
    """A refused new password leaves the old one working."""
    add_alice(store)
    with pytest.raises(UserError, match="at least 8"):
        set_password(store, "alice", "short")
    assert verify_password(store, "alice", PASSWORD)


def test_disable_and_enable_switch_is_active_and_say_whether_they_changed_it(store):
    """disable_user then enable_user flip is_active; repeating either reports no change."""
    add_alice(store)
    assert disable_user(store, "alice") is True
    assert disable_user(store, "alice") is False
    assert list_users(store)[0].is_active is False
    assert enable_user(store, "alice") is True
    assert enable_user(store, "alice") is False
    assert list_users(store)[0].is_active is True


def test_disable_of_an_unknown_user_names_it(store):
    """Disabling or enabling a user that does not exist raises UnknownUserError."""
    with pytest.raises(UnknownUserError, match="ghost"):
        disable_user(store, "ghost")
    with pytest.raises(UnknownUserError, match="ghost"):
        enable_user(store, "ghost")


def test_list_users_is_sorted_and_skips_deleted_users(store):
    """list_users returns undeleted users ordered by username, as User objects with plain dicts."""
    add_alice(store, username="zed", email="zed@example.com")
    add_alice(store)
    gone = add_alice(store, username="gone", email="gone@example.com")
    store.rows[gone.id]["deleted_at"] = "2026-11-26"
    listed = list_users(store)
    assert [u.username for u in listed] == ["alice", "zed"]
    assert listed[0].to_dict() == {
        "id": listed[0].id, "username": "alice", "name": "Alice Liddell",
        "email": "alice@example.com", "is_admin": False, "is_active": True,
    }


def test_ensure_admin_creates_an_admin_with_scram_keys_once(store):
    """ensure_admin creates the admin with SCRAM keys; a second run with another password changes nothing."""
    assert ensure_admin(store, "admin", "admin@example.com", PASSWORD) is AdminOutcome.CREATED
    row = dict(store.get_by_username("admin"))
    assert row["is_admin"] is True
    assert set(store.credential_mechanisms(row["id"])) == set(SCRAM_MECHANISMS)
    assert ensure_admin(store, "admin", "admin@example.com", "another password") is AdminOutcome.UNCHANGED
    assert store.get_by_username("admin")["password_hash"] == row["password_hash"]


def test_ensure_admin_adds_scram_keys_to_an_admin_made_before_them(store):
    """An admin created before SCRAM keys existed gets them when the installer's password still is its password."""
    user_id = store.insert(
        username="admin", name="Administrator", mention_name="admin", email="admin@example.com",
        password_hash=users.hash_password(PASSWORD), is_admin=True,
    )
    assert ensure_admin(store, "admin", "admin@example.com", PASSWORD) is AdminOutcome.CREDENTIALS_ADDED
    assert all(keys_match(c, PASSWORD) for c in store.credentials[user_id].values())
    assert ensure_admin(store, "admin", "admin@example.com", PASSWORD) is AdminOutcome.UNCHANGED


def test_ensure_admin_leaves_an_admin_whose_password_changed_without_keys(store):
    """When the admin's password is no longer the installer's, ensure_admin cannot make keys and changes nothing."""
    user_id = store.insert(
        username="admin", name="Administrator", mention_name="admin", email="admin@example.com",
        password_hash=users.hash_password("changed since"), is_admin=True,
    )
    assert ensure_admin(store, "admin", "admin@example.com", PASSWORD) is AdminOutcome.UNCHANGED
    assert store.credentials[user_id] == {}


def test_user_credentials_serve_sasl_lookups(store):
    """UserCredentials gives SASL the stored keys, the argon2 check and whether the account may log in."""
    add_alice(store)
    credentials = UserCredentials(store)
    sha256 = credentials.get_scram_credentials("alice", "SCRAM-SHA-256")
    assert isinstance(sha256, ScramCredentials) and sha256.mechanism == "SCRAM-SHA-256"
    assert credentials.get_scram_credentials("nobody", "SCRAM-SHA-256") is None
    assert credentials.check_password("alice", PASSWORD) and not credentials.check_password("alice", "wrong one")
    assert credentials.is_active("alice") and not credentials.is_active("nobody")
    disable_user(store, "alice")
    assert not credentials.is_active("alice")
