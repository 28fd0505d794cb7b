"""Fixtures of the end-to-end tests: users made through the CLI, the appliance's XMPP endpoint."""

from __future__ import annotations

import uuid

import pytest

from tests.conftest import run_appliance_cli
from tests.e2e.xmpp_client import PASSWORD, Endpoint

@pytest.fixture(scope="module")
def prefix(chat_server):
    """A username prefix unique to this run; its users are deleted at the end."""
    from hipchat_server.storage.database import run_in_transaction
    from hipchat_server.storage.schema import users

    prefix = f"e2e-xmpp-{uuid.uuid4().hex[:6]}-"
    yield prefix
    run_in_transaction(
        chat_server.get_database_engine(),
        "delete_e2e_xmpp_users",
        lambda c: c.execute(users.delete().where(users.c.username.like(f"{prefix}%"))),
    )


@pytest.fixture(scope="module")
def new_user(prefix, tmp_path_factory):
    """Add a user through the CLI; return its username."""
    password_file = tmp_path_factory.mktemp("xmpp") / "password"
    password_file.write_text(PASSWORD + "\n")

    def add() -> str:
        username = f"{prefix}{uuid.uuid4().hex[:6]}"
        result = run_appliance_cli(
            "user",
            "add",
            username,
            "--name",
            f"Test {username}",
            "--email",
            f"{username}@e2e.example.com",
            "--password-file",
            str(password_file),
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return username

    return add


@pytest.fixture(scope="module")
def alice(new_user):
    return new_user()


@pytest.fixture(scope="module")
def bob(new_user):
    return new_user()


@pytest.fixture(scope="module")
def endpoint(config):
    return Endpoint(config)
