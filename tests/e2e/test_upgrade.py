"""`hipchat-appliance upgrade apply|rollback` against the live appliance, with no network.

A bundle of version N+1 is built once for the module from this checkout (a test migration that
creates ``upgrade_test_marker`` and an index-template change inside), signed with a throwaway
key the tests trust through ``--trusted-keys-dir``. It is a minimal bundle made with part F's
manifest API (``make_bundle``): the project's wheel, the installer and the roles; every other
dependency is already installed at the pinned version, so the offline installer needs nothing
more (a full ``bundle build`` takes minutes and is part F's test).

Where things run, and why: ``upgrade apply`` runs inside a loopback-only network namespace
(``tests/netns.py``): it reaches the appliance's TCP ports through UNIX-socket bridges and
nothing else, so anything that would need a registry fails. supervisord and the chat
processes it (re)starts stay in the host's namespace, where they always were, and talk to
supervisord over its UNIX socket; so the restarted front ends listen on the host's ports. The
chatting slixmpp clients run on the host: they are the appliance's users, not part of the
upgrade, and connecting through the bridges would only add socat between them and the front
ends (and hide the real reconnects behind socat's accepted-then-closed connections).

Everything here changes the live appliance, so the module holds the deploy lock
(/tmp/hipchat-deploy.lock) from its first test to its last, and leaves the appliance at this
checkout's code: it rolls back what it upgraded and re-runs this checkout's installer for the
roles the bundle changed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import json
import os
import re
import shutil
import subprocess
import time
import uuid

import pytest

from tests.conftest import REPO_DIR, VENV_DIR, run_installer
from tests.e2e.xmpp_client import TIMEOUT, login

pytestmark = pytest.mark.disruptive

LOCK_FILE = "/tmp/hipchat-deploy.lock"
CLI = f"{VENV_DIR}/bin/hipchat-appliance"
APPLY_TIMEOUT = 1800
SEND_INTERVAL = 0.25  # seconds between two messages of one sender
MARKER_TABLE = "upgrade_test_marker"
TEMPLATE_FIELD = "upgrade_test"
SOURCE_ITEMS = ("hipchat_server", "appliance", "setup.cfg", "pyproject.toml", "README.md")
# pyproject.toml's build backend: pip needs it to install the tree with --no-index.
BUILD_BACKEND = ("setuptools>=68", "wheel")
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", ".ansible")


# -- the bundle of version N+1 --------------------------------------------------------------------


def next_version(version: str) -> str:
    """N+1: the patch number plus one (0.1.0 -> 0.1.1)."""
    parts = re.match(r"^(\d+)\.(\d+)\.(\d+)", version)
    major, minor, patch = (int(p) for p in parts.groups())
    return f"{major}.{minor}.{patch + 1}"


def _write_test_migration(source: str, head: str) -> str:
    revision = f"{head}_upgrade_test"
    path = os.path.join(source, "hipchat_server", "storage", "migrations", "versions", f"{revision}.py")
    with open(path, "w") as f:
        f.write(
            f'''"""Test migration of the upgrade e2e test: one table with one row.

Revision ID: {revision}
Revises: {head}
"""

import sqlalchemy as sa
from alembic import op

revision = "{revision}"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table("{MARKER_TABLE}", sa.Column("note", sa.String(64), primary_key=True))
    op.bulk_insert(table, [{{"note": "migrated"}}])


def downgrade() -> None:
    op.drop_table("{MARKER_TABLE}")
'''
        )
    return revision


def _change_index_template(roles: str) -> None:
    path = os.path.join(roles, "opensearch", "templates", "api", "messages-index-template.json.j2")
    with open(path) as f:
        text = f.read()
    changed = text.replace('"id": {"type": "keyword"},', f'"id": {{"type": "keyword"}},\n        "{TEMPLATE_FIELD}": {{"type": "keyword"}},', 1)
    assert changed != text, "the index template no longer has the line the test changes"
    with open(path, "w") as f:
        f.write(changed)


def build_test_tree(work: str, version: str, head: str) -> str:
    """The files of a minimal N+1 bundle in part F's layout under ``work/tree``.

    This version's tree (installer/, roles/, hipchat_server/, appliance/, setup.cfg, ...; the
    chat_core role installs it with pip --no-index), wheels/ holding the build backend pip needs
    for that (setuptools, wheel), and debs/ with an empty Packages index (every package the roles
    name is installed already). No opensearch/ or webclient/: the roles take those from a bundle
    only when they are not installed yet.
    """
    tree = os.path.join(work, "tree")
    os.makedirs(tree)
    for item in ("installer", "roles", *SOURCE_ITEMS):
        src = os.path.join(REPO_DIR, item)
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(tree, item), ignore=_IGNORE)
        else:
            shutil.copy2(src, os.path.join(tree, item))
    init = os.path.join(tree, "hipchat_server", "__init__.py")
    with open(init) as f:
        text = f.read()
    with open(init, "w") as f:
        f.write(re.sub(r'__version__ = "[^"]+"', f'__version__ = "{version}"', text))
    _write_test_migration(tree, head)
    _change_index_template(os.path.join(tree, "roles"))
    subprocess.run(
        [f"{VENV_DIR}/bin/pip", "download", "--quiet", "--disable-pip-version-check", "--only-binary", ":all:",
         "--dest", os.path.join(tree, "wheels"), *BUILD_BACKEND],
        check=True, capture_output=True, text=True, timeout=600,
    )
    os.makedirs(os.path.join(tree, "debs"))
    open(os.path.join(tree, "debs", "Packages"), "w").close()
    return tree


@pytest.fixture(scope="module")
def deploy_lock():
    """The deploy lock, held for the whole module (every test here changes the live appliance)."""
    with open(LOCK_FILE, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield
        fcntl.flock(f, fcntl.LOCK_UN)


@pytest.fixture(scope="module")
def kit(deploy_lock, tmp_path_factory, chat_server):
    """Keys, the N+1 bundle and a bundle for versions this appliance does not run; the figures of the build."""
    from appliance.bundle.manifest import generate_key_pair, make_bundle
    from appliance.upgrade import releases
    from hipchat_server.storage.migrations import head_revision

    work = str(tmp_path_factory.mktemp("upgrade"))
    keys = os.path.join(work, "keys")
    private, _ = generate_key_pair(keys, key_id=f"upgrade-test-{uuid.uuid4().hex[:6]}")
    running = releases.installed_version()
    version = next_version(running)
    started = time.monotonic()
    tree = build_test_tree(work, version, head_revision())
    good = os.path.join(work, f"hipchat-appliance-{version}.bundle")
    make_bundle(good, source_dir=tree, version=version, upgrades_from=[f"=={running}"], private_key_path=private)
    other = os.path.join(work, f"hipchat-appliance-{version}-from-99.bundle")
    make_bundle(other, source_dir=tree, version=version, upgrades_from=[">=99.0"], private_key_path=private)
    kit = {
        "keys": keys, "running": running, "version": version, "good": good, "other": other,
        "build_seconds": round(time.monotonic() - started, 1), "bytes": os.path.getsize(good),
    }
    from appliance.upgrade import history

    entries_before = len(history.read_history())
    yield kit
    try:
        _back_to_this_checkout(running, chat_server)
    finally:
        # The backups the applies took are the size of the whole appliance: remove them.
        for entry in history.read_history()[entries_before:]:
            if entry.get("backup") and os.path.isfile(entry["backup"]):
                os.remove(entry["backup"])


def _back_to_this_checkout(running: str, chat_server) -> None:
    """Roll back whatever is still upgraded, then this checkout's installer for the roles the bundle changed."""
    from appliance.upgrade import releases

    if releases.installed_version() != running:
        done = subprocess.run([CLI, "upgrade", "rollback", "--yes"], capture_output=True, text=True, timeout=APPLY_TIMEOUT)
        print(done.stdout[-3000:], done.stderr[-3000:])
    if not template_has_test_field(chat_server):
        return  # nothing of N+1 is left
    done = run_installer("--tags", "opensearch,chat_core")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


# -- running the upgrade with no network -----------------------------------------------------------


def cli_in_namespace(argv: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``hipchat-appliance ARGV`` inside a fresh loopback-only namespace (after checking it reaches nothing).

    An ``upgrade apply`` there needs ``--skip-port-check``: the bridges hold the appliance's ports.
    """
    from tests.netns import APPLIANCE_PORTS, host_port_open, loopback_only

    ports = [p for p in APPLIANCE_PORTS if host_port_open(p)]
    with loopback_only(ports=ports) as ns:
        assert ns.outside_problems() == [], "the namespace reaches outside loopback"
        return ns.run([CLI, *argv], env={**os.environ, **(env or {})}, timeout=APPLY_TIMEOUT)


def appliance_state(chat_server) -> dict:
    """What an upgrade changes: versions, links, releases, history, schema."""
    from appliance.upgrade import history, releases
    from hipchat_server.storage.migrations import current_revision

    return {
        "version": releases.installed_version(),
        "current": releases.linked_release("current"),
        "previous": releases.linked_release("previous"),
        "releases": sorted(os.listdir(releases.releases_dir())) if os.path.isdir(releases.releases_dir()) else [],
        "history": len(history.read_history()),
        "schema": current_revision(chat_server.get_database_engine()),
    }


def marker_rows(chat_server) -> list[str] | None:
    """The test migration's rows, None when its table does not exist."""
    import sqlalchemy as sa

    with chat_server.get_database_engine().connect() as c:
        if not sa.inspect(c).has_table(MARKER_TABLE):
            return None
        return [row[0] for row in c.execute(sa.text(f"SELECT note FROM {MARKER_TABLE}"))]


def template_has_test_field(chat_server) -> bool:
    template = chat_server.get_opensearch_client().indices.get_index_template(name="messages")
    properties = template["index_templates"][0]["index_template"]["template"]["mappings"]["properties"]
    return TEMPLATE_FIELD in properties


def indexed_bodies(chat_server, senders: list[str], domain: str) -> set[str]:
    client = chat_server.get_opensearch_client()
    client.indices.refresh(index="messages")
    found = client.search(
        index="messages", size=10000, _source=["body"],
        body={"query": {"terms": {"sender": [f"{s}@{domain}" for s in senders]}}},
    )
    return {hit["_source"]["body"] for hit in found["hits"]["hits"]}


def wait_indexed(chat_server, senders, domain, expected: set[str], timeout: float = 120) -> set[str]:
    deadline = time.monotonic() + timeout
    while True:
        found = indexed_bodies(chat_server, senders, domain)
        if expected <= found or time.monotonic() > deadline:
            return found
        time.sleep(1)


# -- the tests ------------------------------------------------------------------------------------


def test_a_bundle_for_other_versions_is_refused_with_nothing_changed(kit, chat_server):
    """A bundle whose upgrades_from does not match the running version is refused; nothing changes."""
    before = appliance_state(chat_server)
    done = cli_in_namespace(["upgrade", "apply", kit["other"], "--yes", "--skip-port-check", "--trusted-keys-dir", kit["keys"]])
    assert done.returncode == 1, done.stdout + done.stderr
    assert "upgrades from >=99.0" in done.stderr and kit["running"] in done.stderr, done.stderr
    assert "nothing was changed" in done.stderr
    assert appliance_state(chat_server) == before


def test_a_failing_health_check_rolls_back_with_data_intact(kit, chat_server, endpoint, new_user):
    """The new release fails its health check (test hook): the appliance is back on N, schema and data intact."""
    from appliance.upgrade import history, releases

    sender, recipient = new_user(), new_user()
    body = f"before the failed upgrade {uuid.uuid4().hex[:8]}"

    async def send_one():
        client, ok = await login(endpoint, sender)
        assert ok
        client.send_message(mto=f"{recipient}@{endpoint.domain}", mbody=body, mtype="chat")
        await asyncio.sleep(1.0)
        await client.close()

    asyncio.run(asyncio.wait_for(send_one(), 4 * TIMEOUT))
    assert body in wait_indexed(chat_server, [sender], endpoint.domain, {body})
    before = appliance_state(chat_server)

    done = cli_in_namespace(
        ["upgrade", "apply", kit["good"], "--yes", "--skip-port-check", "--trusted-keys-dir", kit["keys"]],
        env={"HIPCHAT_UPGRADE_FAIL_CHECK": "rest"},
    )
    print(done.stdout[-4000:], done.stderr[-2000:])
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "failed and was rolled back" in done.stderr
    after = appliance_state(chat_server)
    assert after["version"] == kit["running"]
    assert after["schema"] == before["schema"], "the test migration was not downgraded"
    assert marker_rows(chat_server) is None
    assert releases.release_version(after["current"]) == kit["running"] and after["previous"] is None
    last = history.read_history()[-1]
    assert last["action"] == "apply" and last["outcome"] == "rolled back" and "rest" in last["failure"]
    assert last["schema_after"] != before["schema"], "the failed upgrade never ran its migration"
    assert body in indexed_bodies(chat_server, [sender], endpoint.domain), "a message from before the upgrade is gone"


class Chatter:
    """One slixmpp user that stays connected: resumes its session (XEP-0198) whenever its connection
    drops, and logs in anew only when that fails.

    A sender sends a numbered message every SEND_INTERVAL and, after logging in anew, resends
    what the server had not acknowledged (XEP-0198 acks; a resumed session resends by itself); a
    receiver records when each message first arrived. Both record every moment they were without a stream.
    """

    def __init__(self, endpoint, username: str, to: str | None = None):
        self.endpoint, self.username, self.to = endpoint, username, to
        self.client = None
        self.sent: list[str] = []
        self.acked: set[str] = set()
        self.arrivals: dict[str, float] = {}
        self.events: list[float] = []  # sender: ack times; receiver: arrival times
        self.reconnects = 0
        self.resumed = 0  # reconnections that resumed the session
        self.online = False  # the client's session runs (bound or resumed), not just its TCP connection
        self.running = True

    async def connect(self) -> None:
        while self.running:
            client, ok = await login(self.endpoint, self.username, resource=f"upg-{uuid.uuid4().hex[:4]}", plugins=("xep_0198",))
            if ok:
                client.add_event_handler("stanza_acked", self._acked)
                client.add_event_handler("message", self._message)
                for name, online in (("session_start", True), ("session_resumed", True), ("disconnected", False)):
                    client.add_event_handler(name, lambda _, o=online: setattr(self, "online", o))
                self.client, self.online = client, True
                return
            await asyncio.sleep(0.5)

    def _acked(self, stanza) -> None:
        if stanza.name == "message" and stanza["body"] and stanza["body"] not in self.acked:
            self.acked.add(stanza["body"])
            self.events.append(time.monotonic())

    def _message(self, message) -> None:
        if message["type"] in ("chat", "normal") and message["body"] and message["body"] not in self.arrivals:
            self.arrivals[message["body"]] = time.monotonic()
            self.events.append(time.monotonic())

    def _connected(self) -> bool:
        # Not the TCP connection alone: slixmpp writes an <r/> at once, and before STARTTLS the server refuses it.
        return self.client is not None and self.online and self.client.transport is not None

    async def reconnect(self) -> str:
        """Reconnect the same client: "resumed" (XEP-0198), "bound" (a new session, the resumption failed) or "failed"."""
        if self.client is None or self.client.plugin["xep_0198"].sm_id is None:
            return "failed"
        outcome = asyncio.get_running_loop().create_future()
        for name, result in (("session_resumed", "resumed"), ("session_start", "bound"), ("connection_failed", "failed")):
            self.client.add_event_handler(name, lambda _, r=result: outcome.done() or outcome.set_result(r), disposable=True)
        self.client.connect("127.0.0.1", self.endpoint.c2s_port)
        try:
            return await asyncio.wait_for(outcome, TIMEOUT)
        except asyncio.TimeoutError:
            return "failed"
        finally:
            if not outcome.done() or outcome.result() == "failed":
                self.client.cancel_connection_attempt()
                self.client.abort()

    async def keep_connected(self) -> None:
        while self.running:
            if not self._connected():
                self.reconnects += 1
                how = await self.reconnect()
                if how == "resumed":
                    self.resumed += 1
                    continue
                if how == "failed":
                    await self.connect()
                if self.to:
                    for body in self.sent:
                        if body not in self.acked:
                            self.client.send_message(mto=self.to, mbody=body, mtype="chat")
                    self.client.plugin["xep_0198"].request_ack()
            await asyncio.sleep(0.1)

    async def send_until(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if self._connected():
                body = f"{self.username} {len(self.sent)}"
                self.sent.append(body)
                self.client.send_message(mto=self.to, mbody=body, mtype="chat")
                self.client.plugin["xep_0198"].request_ack()
            await asyncio.sleep(SEND_INTERVAL)

    async def close(self) -> None:
        self.running = False
        if self.client is not None:
            await self.client.close()


def longest_gap(times: list[float], start: float, end: float) -> float:
    """The longest stretch inside [start, end] without an event."""
    points = [start] + sorted(t for t in times if start <= t <= end) + [end]
    return max(b - a for a, b in zip(points, points[1:]))


@dataclasses.dataclass
class ChatThrough:
    """What pairs of chatting clients saw while a CLI command ran (`chat_through`)."""

    done: subprocess.CompletedProcess
    senders: list[Chatter]
    receivers: list[Chatter]
    start: float
    end: float

    @property
    def sent(self) -> set[str]:
        return {b for s in self.senders for b in s.sent}

    @property
    def acked(self) -> set[str]:
        return set().union(*(s.acked for s in self.senders))

    @property
    def received(self) -> set[str]:
        return set().union(*(r.arrivals for r in self.receivers))

    def longest_gap_by_client(self) -> dict[str, float]:
        return {c.username: longest_gap(c.events, self.start, self.end) for c in self.receivers + self.senders}

    def figures(self) -> dict:
        return {
            "apply_seconds": round(self.end - self.start, 1),
            "longest_gap_seconds": round(max(self.longest_gap_by_client().values()), 1),
            "messages_sent": len(self.sent),
            "reconnects": sum(c.reconnects for c in self.receivers + self.senders),
            "resumed": sum(c.resumed for c in self.receivers + self.senders),
        }


async def chat_through(endpoint, pairs: list[tuple[str, str]], argv: list[str]) -> ChatThrough:
    """Each (sender, receiver) pair chats while ``hipchat-appliance argv`` runs in the loopback-only namespace.

    Afterwards it waits (at most 60 s) until everything acknowledged has
    arrived, live or from offline storage at a re-login. The bench
    (bench/upgrade.py) runs the same scenario.
    """
    receivers = [Chatter(endpoint, r) for _, r in pairs]
    senders = [Chatter(endpoint, s, to=f"{r}@{endpoint.domain}") for s, r in pairs]
    everyone = receivers + senders
    for chatter in everyone:
        await chatter.connect()
    keepers = [asyncio.ensure_future(c.keep_connected()) for c in everyone]
    stop = asyncio.Event()
    sending = [asyncio.ensure_future(s.send_until(stop)) for s in senders]
    try:
        await asyncio.sleep(2.0)
        start = time.monotonic()
        done = await asyncio.get_running_loop().run_in_executor(None, cli_in_namespace, argv)
        end = time.monotonic()
        await asyncio.sleep(3.0)
        stop.set()
        await asyncio.gather(*sending)
        outcome = ChatThrough(done, senders, receivers, start, end)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if outcome.acked == outcome.sent and outcome.acked <= outcome.received:
                break
            for s in senders:
                if s._connected():
                    s.client.plugin["xep_0198"].request_ack()
            await asyncio.sleep(0.5)
        return outcome
    finally:
        for task in keepers:
            task.cancel()
        for chatter in everyone:
            await chatter.close()


def test_upgrade_while_clients_chat_loses_nothing(kit, chat_server, endpoint, new_user, record_property):
    """Applied with no network while clients chat: version N+1, migration and template applied, every message in history, gap < 30 s."""
    from appliance.upgrade import history

    pairs = [(new_user(), new_user()) for _ in range(2)]
    argv = ["upgrade", "apply", kit["good"], "--yes", "--skip-port-check", "--trusted-keys-dir", kit["keys"]]
    outcome = asyncio.run(asyncio.wait_for(chat_through(endpoint, pairs, argv), APPLY_TIMEOUT + 300))
    done, figures = outcome.done, outcome.figures()
    sent, acked, received = outcome.sent, outcome.acked, outcome.received
    print(done.stdout[-6000:], done.stderr[-3000:])
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert acked == sent, f"{len(sent - acked)} messages were never acknowledged, e.g. {sorted(sent - acked)[:3]}"
    assert sent <= received, f"{len(sent - received)} messages never reached their recipient, e.g. {sorted(sent - received)[:3]}"
    in_history = wait_indexed(chat_server, [s for s, _ in pairs], endpoint.domain, sent)
    assert sent <= in_history, f"{len(sent - in_history)} messages are not in history, e.g. {sorted(sent - in_history)[:3]}"

    state = appliance_state(chat_server)
    assert state["version"] == kit["version"]
    assert marker_rows(chat_server) == ["migrated"], "the bundle's migration did not run"
    assert template_has_test_field(chat_server), "the bundle's index template was not installed"
    last = history.read_history()[-1]
    assert last["action"] == "apply" and last["outcome"] == "succeeded" and last["to_version"] == kit["version"]
    figures.update(bundle_bytes=kit["bytes"], bundle_build_seconds=kit["build_seconds"], steps=last["steps"])
    print("UPGRADE FIGURES " + json.dumps(figures))
    for name, value in figures.items():
        record_property(name, value)
    assert figures["longest_gap_seconds"] < 30, figures
    # Each front end hands its sessions to the other as it restarts: every client resumes, none binds anew.
    assert figures["reconnects"] and figures["resumed"] == figures["reconnects"], figures

    # Back to N: the rollback command, then the checks it promises.
    done = subprocess.run([CLI, "upgrade", "rollback", "--yes"], capture_output=True, text=True, timeout=APPLY_TIMEOUT)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert appliance_state(chat_server)["version"] == kit["running"]
    assert marker_rows(chat_server) is None
    assert sent <= indexed_bodies(chat_server, [s for s, _ in pairs], endpoint.domain), "the rollback lost messages"
