"""The installed appliance: every service up under supervisor, status healthy, MariaDB schema at head."""

from __future__ import annotations

import json
import os
import ssl
import stat
import urllib.request

import pymysql

from tests.conftest import SECRETS_DIR, read_secret, run_appliance_cli, supervisorctl

EXPECTED_PROGRAMS = {
    "mariadb",
    "redis:redis-primary",
    "redis:redis-replica",
    "redis-sentinel:redis-sentinel-1",
    "redis-sentinel:redis-sentinel-2",
    "redis-sentinel:redis-sentinel-3",
    "opensearch:opensearch-cm-1",
    "opensearch:opensearch-cm-2",
    "opensearch:opensearch-cm-3",
    "opensearch:opensearch-data-1",
    "opensearch:opensearch-data-2",
    "chat-core:web",
    # One XMPP front end per CPU (chat_core_xmpp_processes defaults to the vCPU count).
    *(f"chat-core:xmpp-{n}" for n in range(os.cpu_count() or 1)),
}


def test_every_service_runs_under_supervisor():
    """supervisor runs every data service and the chat core, each RUNNING."""
    lines = supervisorctl("status").stdout.splitlines()
    states = {line.split()[0]: line.split()[1] for line in lines if line.strip()}
    assert EXPECTED_PROGRAMS <= set(states), f"missing programs: {EXPECTED_PROGRAMS - set(states)}"
    assert {name: state for name, state in states.items() if state != "RUNNING"} == {}


def test_status_reports_healthy_and_exits_zero():
    """`hipchat-appliance status` exits 0 and its JSON names the cluster manager, the Redis primary and the schema."""
    result = run_appliance_cli("status", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["healthy"] is True
    sections = report["sections"]
    assert sections["opensearch"]["details"]["cluster"]["status"] == "green"
    assert len(sections["opensearch"]["details"]["nodes"]) == 5
    assert sections["opensearch"]["details"]["elected_cluster_manager"].startswith("cm-")
    assert sections["redis"]["details"]["quorum"] is True
    assert any(r["state"] == "online" for r in sections["redis"]["details"]["replicas"])
    assert sections["mariadb"]["details"]["schema_revision"] == sections["mariadb"]["details"]["code_revision"]
    assert {d["name"] for d in sections["disk"]["details"]["directories"]} >= {"mariadb", "redis", "opensearch"}


def test_status_screen_is_readable():
    """The human status screen shows each part by name and ends with the verdict."""
    result = run_appliance_cli("status")
    assert result.returncode == 0
    for text in ("Processes", "OpenSearch", "Redis: primary", "MariaDB", "Disk use", "healthy"):
        assert text in result.stdout


def test_health_endpoint_answers_over_https_with_the_local_ca(config):
    """GET /health over HTTPS, verified against the installer's CA, reports every dependency ok."""
    context = ssl.create_default_context(cafile=config.tls.ca_certificate)
    with urllib.request.urlopen(f"https://localhost:{config.http.https_port}/health", context=context, timeout=10) as response:
        body = json.load(response)
    assert response.status == 200
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"mariadb", "redis", "opensearch"}


def test_mariadb_answers_with_generated_credentials_and_schema_is_at_head(config):
    """The generated password logs in over TCP; the schema revision is Alembic's head; the tables exist."""
    from hipchat_server.storage.migrations import head_revision

    connection = pymysql.connect(
        host=config.database.host,
        port=config.database.port,
        user=config.database.user,
        password=read_secret("mariadb_password"),
        database=config.database.name,
    )
    with connection, connection.cursor() as cursor:
        cursor.execute("SELECT version_num FROM alembic_version")
        assert cursor.fetchone()[0] == head_revision()
        cursor.execute("SHOW TABLES")
        tables = {row[0] for row in cursor.fetchall()}
        cursor.execute("SELECT is_admin FROM users WHERE username = 'admin'")
        admin = cursor.fetchone()
    assert {"users", "groups", "rooms", "room_members", "api_tokens", "feature_flags", "group_flags", "audit_log"} <= tables
    assert admin == (1,)


def test_mariadb_refuses_a_wrong_password(config):
    """A wrong password is refused: the account is not open."""
    try:
        pymysql.connect(host=config.database.host, port=config.database.port, user=config.database.user, password="wrong")
    except pymysql.err.OperationalError as e:
        assert e.args[0] == 1045  # access denied
    else:
        raise AssertionError("MariaDB accepted a wrong password")


def test_secrets_are_root_only_files():
    """Each generated secret is a root-owned file of mode 0600."""
    names = os.listdir(SECRETS_DIR)
    assert {"mariadb_password", "redis_password", "admin_password"} <= set(names)
    for name in names:
        st = os.stat(os.path.join(SECRETS_DIR, name))
        assert stat.S_IMODE(st.st_mode) == 0o600, name
        assert st.st_uid == 0, name
