"""`hipchat-appliance user ...` on the installed appliance: accounts in MariaDB with SCRAM keys that log in.

Every user made here has a name unique to this run (``e2e-<hex>``) and is
deleted from MariaDB afterwards (its SCRAM keys go with it, ON DELETE CASCADE).
"""

from __future__ import annotations

import base64
import json
import uuid

import pytest
from scramp import ScramClient
from sqlalchemy import select

from tests.conftest import read_secret, run_appliance_cli


@pytest.fixture(scope="module")
def store(chat_server):
    from hipchat_server.storage.users import UserStore

    return UserStore(chat_server.get_database_engine())


@pytest.fixture(scope="module")
def prefix(store):
    """A username prefix unique to this run; every user with it is deleted at the end."""
    from hipchat_server.storage.database import run_in_transaction
    from hipchat_server.storage.schema import users

    prefix = f"e2e-{uuid.uuid4().hex[:8]}-"
    yield prefix
    run_in_transaction(
        store.engine, "delete_e2e_users", lambda c: c.execute(users.delete().where(users.c.username.like(f"{prefix}%")))
    )


@pytest.fixture
def password_file(tmp_path):
    def write(password: str) -> str:
        path = tmp_path / f"password-{uuid.uuid4().hex[:6]}"
        path.write_text(password + "\n")
        return str(path)

    return write


@pytest.fixture
def new_user(prefix, password_file):
    """Add a user through the CLI; return (username, password)."""

    def add(password: str = "first password", *extra: str) -> tuple[str, str]:
        username = f"{prefix}{uuid.uuid4().hex[:6]}"
        result = run_appliance_cli(
            "user", "add", username, "--name", f"Test {username}", "--email", f"{username}@e2e.example.com",
            "--password-file", password_file(password), *extra,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"User {username} created" in result.stdout
        return username, password

    return add


def listed(username: str) -> dict | None:
    result = run_appliance_cli("user", "list", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    return next((u for u in json.loads(result.stdout) if u["username"] == username), None)


def sasl_login(config, store, mechanism: str, username: str, password: str):
    """Authenticate with the real SASL logic over the real MariaDB credentials; return the outcome."""
    from hipchat_server.users import UserCredentials
    from hipchat_server.xmpp.sasl import Challenge, SaslServer, Success

    session = SaslServer(UserCredentials(store), config.server.domain).session(tls_active=True)
    if mechanism == "PLAIN":
        return session.start("PLAIN", base64.b64encode(f"\0{username}\0{password}".encode()).decode())
    client = ScramClient([mechanism], username, password)
    outcome = session.start(mechanism, base64.b64encode(client.get_client_first().encode()).decode())
    assert isinstance(outcome, Challenge), outcome
    client.set_server_first(outcome.data.decode())
    outcome = session.respond(base64.b64encode(client.get_client_final().encode()).decode())
    if isinstance(outcome, Success):
        client.set_server_final(outcome.data.decode())
    return outcome


def test_added_user_is_listed_with_its_fields(new_user, monkeypatch):
    """`user add` creates an active user that `user list --json` and the table both show."""
    monkeypatch.setenv("COLUMNS", "200")  # rich sizes the table to this when not on a terminal
    username, _ = new_user()
    entry = listed(username)
    assert entry == {
        "id": entry["id"], "username": username, "name": f"Test {username}",
        "email": f"{username}@e2e.example.com", "is_admin": False, "is_active": True,
    }
    table = run_appliance_cli("user", "list")
    assert table.returncode == 0 and username in table.stdout


def test_admin_flag_makes_an_administrator(new_user):
    """`user add --admin` creates an administrator."""
    username, _ = new_user("admin password", "--admin")
    assert listed(username)["is_admin"] is True


def test_added_user_has_scram_keys_and_no_plaintext_password(new_user, store):
    """MariaDB holds an argon2 hash and SCRAM-SHA-256 and SCRAM-SHA-1 keys (4096+ rounds); never the password."""
    from hipchat_server.storage.schema import user_credentials, users

    username, password = new_user("a very findable password")
    with store.engine.connect() as connection:
        user = connection.execute(select(users).where(users.c.username == username)).mappings().one()
        keys = connection.execute(select(user_credentials).where(user_credentials.c.user_id == user["id"])).mappings().all()
    assert user["password_hash"].startswith("$argon2")
    assert {k["mechanism"] for k in keys} == {"SCRAM-SHA-256", "SCRAM-SHA-1"}
    assert all(k["iterations"] >= 4096 for k in keys)
    assert password not in repr(dict(user)) + repr([dict(k) for k in keys])


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"])
def test_added_user_logs_in_with_each_mechanism(new_user, config, store, mechanism):
    """The stored credentials pass a full SASL exchange with each mechanism; a wrong password is not-authorized."""
    username, password = new_user()
    assert sasl_login(config, store, mechanism, username, password).username == username
    assert sasl_login(config, store, mechanism, username, "not the password").condition == "not-authorized"


def test_passwd_replaces_the_password_for_every_mechanism(new_user, config, store, password_file):
    """After `user passwd` the new password logs in and the old one no longer does."""
    username, old = new_user()
    result = run_appliance_cli("user", "passwd", username, "--password-file", password_file("second password"))
    assert result.returncode == 0, result.stdout + result.stderr
    for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"):
        assert sasl_login(config, store, mechanism, username, "second password").username == username
        assert sasl_login(config, store, mechanism, username, old).condition == "not-authorized"


def test_disable_and_enable(new_user, config, store):
    """`user disable` makes the user inactive and its login account-disabled; `user enable` undoes it."""
    username, password = new_user()
    result = run_appliance_cli("user", "disable", username)
    assert result.returncode == 0 and f"User {username} disabled." in result.stdout
    assert listed(username)["is_active"] is False
    assert sasl_login(config, store, "SCRAM-SHA-256", username, password).condition == "account-disabled"
    again = run_appliance_cli("user", "disable", username)
    assert again.returncode == 0 and "already disabled" in again.stdout

    result = run_appliance_cli("user", "enable", username)
    assert result.returncode == 0 and f"User {username} enabled." in result.stdout
    assert listed(username)["is_active"] is True
    assert sasl_login(config, store, "SCRAM-SHA-256", username, password).username == username


def test_duplicate_username_is_refused_naming_it(new_user, password_file):
    """Adding a taken username exits 1 with a message naming the username."""
    username, _ = new_user()
    result = run_appliance_cli(
        "user", "add", username, "--name", "Twin", "--email", f"twin-{username}@e2e.example.com",
        "--password-file", password_file("some password"),
    )
    assert result.returncode == 1
    assert f"username '{username}' is taken" in result.stderr


def test_duplicate_email_is_refused_naming_it(new_user, prefix, password_file):
    """Adding a user with a taken email exits 1 with a message naming the email and its owner."""
    username, _ = new_user()
    other = f"{prefix}{uuid.uuid4().hex[:6]}"
    result = run_appliance_cli(
        "user", "add", other, "--name", "Twin", "--email", f"{username}@e2e.example.com",
        "--password-file", password_file("some password"),
    )
    assert result.returncode == 1
    assert f"email '{username}@e2e.example.com' is already used by user '{username}'" in result.stderr
    assert listed(other) is None


def test_invalid_username_is_refused_before_asking_for_a_password(prefix):
    """An uppercase username exits 1 naming it, without a password file and without prompting."""
    result = run_appliance_cli("user", "add", f"{prefix}Upper", "--name", "X", "--email", "x@e2e.example.com")
    assert result.returncode == 1
    assert f"username '{prefix}Upper'" in result.stderr


@pytest.mark.parametrize("verb", ["passwd", "disable", "enable"])
def test_unknown_user_is_named(verb, prefix, password_file):
    """passwd, disable and enable of a user that does not exist exit 1 saying so."""
    extra = ("--password-file", password_file("some password")) if verb == "passwd" else ()
    result = run_appliance_cli("user", verb, f"{prefix}ghost", *extra)
    assert result.returncode == 1
    assert f"no user named '{prefix}ghost'" in result.stderr


def test_installer_admin_logs_in_with_scram(config, store):
    """The installer's administrator (created, or given keys, by `admin ensure`) logs in with SCRAM-SHA-256."""
    admin = store.get_by_username("admin")
    assert store.credential_mechanisms(admin["id"]) == {"SCRAM-SHA-256", "SCRAM-SHA-1"}
    assert sasl_login(config, store, "SCRAM-SHA-256", "admin", read_secret("admin_password")).username == "admin"
