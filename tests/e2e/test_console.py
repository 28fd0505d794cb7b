"""The admin console at https://127.0.0.1/admin in a real browser (Playwright driving Debian's chromium, headless).

An admin logs in; creates a user who then logs in over XMPP; deactivates
them and sees that session closed at once (and a new login refused);
creates a room; puts one user in a group, turns API message sending on for
that group only and sees the API accept that user's message and refuse the
other's; creates tokens in the console and uses them against the REST API;
sees every archive of the root-only backup directory listed (through the
console's root agent) and the processes' health on the dashboard; finds
every change in the audit log. The Backups page and `status` show the running version and the
upgrade history: a history written in a temporary directory (no upgrade is run) that a
console process and `status` are pointed at appears on the page and in the Upgrades line. A non-admin is
refused every /admin page, and a form posted without the session's CSRF
token (or with another's) changes nothing. Screenshots of each page are
saved under /var/tmp/hipchat-console-screenshots/<run>/ (printed).
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest

from tests.conftest import VENV_DIR, run_appliance_cli, wait_for
from tests.e2e.xmpp_client import PASSWORD, Endpoint, login

BASE = "https://127.0.0.1"
PAGES = ("/admin/", "/admin/users", "/admin/rooms", "/admin/flags", "/admin/integrations", "/admin/backups", "/admin/capacity", "/admin/audit")
SCREENSHOTS = "/var/tmp/hipchat-console-screenshots"

sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def prefix(chat_server):
    """A unique username/room prefix; the users, rooms and groups made under it are deleted at the end."""
    from hipchat_server.storage.database import run_in_transaction
    from hipchat_server.storage.schema import groups, rooms, users

    prefix = f"e2e-console-{uuid.uuid4().hex[:6]}-"
    yield prefix

    def clean(c):
        c.execute(rooms.delete().where(rooms.c.name.like(f"{prefix}%")))
        c.execute(groups.delete().where(groups.c.name.like(f"{prefix}%")))
        c.execute(users.delete().where(users.c.username.like(f"{prefix}%")))

    run_in_transaction(chat_server.get_database_engine(), "delete_e2e_console_data", clean)


@pytest.fixture(scope="module")
def accounts(prefix, tmp_path_factory):
    """An admin and two ordinary users made through the CLI (password `PASSWORD`)."""
    password_file = tmp_path_factory.mktemp("console") / "password"
    password_file.write_text(PASSWORD + "\n")
    made = {}
    for role in ("admin", "carol", "dave"):
        username = f"{prefix}{role}"
        extra = ["--admin"] if role == "admin" else []
        result = run_appliance_cli("user", "add", username, "--name", f"Console {role}", "--email", f"{username}@e2e.example.com",
                                   "--password-file", str(password_file), *extra)
        assert result.returncode == 0, result.stdout + result.stderr
        made[role] = username
    return made


@pytest.fixture(scope="module")
def flags_restored(chat_server):
    """Put every flag this module changes back to on for everyone (other tests send API messages)."""
    yield
    from hipchat_server import feature_flags
    from hipchat_server.storage.feature_flags import FeatureFlagStore

    flags = feature_flags.FeatureFlags(FeatureFlagStore(chat_server.get_database_engine()))
    flags.set(feature_flags.API_MESSAGE_SENDING, "on")
    flags.set(feature_flags.FILE_SHARING, "on")


@pytest.fixture(scope="module")
def screenshots():
    folder = os.path.join(SCREENSHOTS, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{os.getpid()}")
    os.makedirs(folder, exist_ok=True)
    print(f"\nconsole screenshots: {folder}")
    return folder


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


def log_in(browser, username: str, password: str = PASSWORD, base: str = BASE):
    """A fresh browser context logged in to the console at ``base`` as ``username``; its page."""
    context = browser.new_context(ignore_https_errors=True)
    page = context.new_page()
    page.goto(f"{base}/admin/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_load_state()
    return page


@pytest.fixture(scope="module")
def admin_page(browser, accounts):
    page = log_in(browser, accounts["admin"])
    assert page.url.rstrip("/").endswith("/admin"), page.url
    yield page
    page.context.close()


def api(method: str, path: str, token: str, body: dict | None = None) -> tuple[int, dict]:
    """A REST API v2 call on loopback with a Bearer token; (status, JSON body or {})."""
    request = urllib.request.Request(f"{BASE}/v2{path}", method=method, data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with urllib.request.urlopen(request, context=context, timeout=20) as reply:
            data = reply.read()
            return reply.status, json.loads(data) if data else {}
    except urllib.error.HTTPError as e:
        data = e.read()
        return e.code, json.loads(data) if data else {}


def secret_of(page) -> str:
    return page.inner_text("#secret").strip()


def create_token(page, username: str, scopes: tuple[str, ...]) -> str:
    """Create a personal token in the console; the token shown once."""
    page.goto(f"{BASE}/admin/integrations")
    form = page.locator("form[action='/admin/integrations/tokens']")
    form.locator("input[name=username]").fill(username)
    form.locator("input[name=label]").fill(f"console test {username}")
    for scope in scopes:
        form.locator(f"input[name=scope-{scope}]").check()
    form.locator("button[type=submit]").click()
    page.wait_for_load_state()
    return secret_of(page)


class XmppSession:
    """A slixmpp client in its own thread and event loop (the browser's sync API owns the main thread's)."""

    def __init__(self, endpoint, username, password):
        self.endpoint, self.username, self.password = endpoint, username, password
        self.logged_in = threading.Event()
        self.ended = threading.Event()
        self.ok = None
        self._stop = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self):
        client, self.ok = await login(self.endpoint, self.username, self.password, mechanism="SCRAM-SHA-256")
        loop = asyncio.get_running_loop()
        self._stop = loop.create_future()
        client.add_event_handler("disconnected", lambda _: self.ended.set())
        self.logged_in.set()
        if not self.ok:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._stop), 120)
        except asyncio.TimeoutError:
            pass
        await client.close()

    def start(self) -> "XmppSession":
        self._thread.start()
        assert self.logged_in.wait(30), "the XMPP login did not finish"
        return self

    def stop(self):
        if self._stop is not None and self._thread.is_alive():
            try:
                self._stop.get_loop().call_soon_threadsafe(lambda: self._stop.done() or self._stop.set_result(None))
            except RuntimeError:  # the loop ended meanwhile (a refused login returns at once)
                pass
        self._thread.join(10)


def test_anonymous_is_sent_to_login_and_a_non_admin_is_refused_every_page(browser, accounts, prefix, chat_server):
    """No session: every page redirects to the login form. A non-admin's session: every page and action answers 403."""
    context = browser.new_context(ignore_https_errors=True)
    page = context.new_page()
    for path in PAGES:
        page.goto(BASE + path)
        assert "/admin/login" in page.url, path
    context.close()

    page = log_in(browser, accounts["carol"])
    try:
        for path in PAGES + ("/admin/users/" + accounts["dave"], "/admin/users-import", "/admin/rooms/1", "/admin/groups/1"):
            reply = page.goto(BASE + path)
            assert reply.status == 403, (path, reply.status)
            assert "not an administrator" in page.content()
        reply = page.context.request.post(f"{BASE}/admin/users/{accounts['dave']}/deactivate", form={"csrf_token": "x"})
        assert reply.status == 403
    finally:
        page.context.close()
    assert _user(chat_server, accounts["dave"])["is_active"]  # the refused deactivation changed nothing


def _user(chat_server, username):
    from hipchat_server.storage.users import UserStore

    return UserStore(chat_server.get_database_engine()).get_by_username(username)


def test_post_without_the_sessions_csrf_token_is_refused(admin_page, browser, accounts, prefix, chat_server):
    """A POST without the CSRF token, or with another session's, is refused (403) and creates nothing."""
    request = admin_page.context.request
    fields = {"username": f"{prefix}csrf", "name": "No CSRF", "email": f"{prefix}csrf@e2e.example.com"}
    assert request.post(f"{BASE}/admin/users/create", form=fields).status == 403
    other = log_in(browser, accounts["admin"])
    other_token = other.locator("input[name=csrf_token]").first.get_attribute("value")
    other.context.close()
    assert request.post(f"{BASE}/admin/users/create", form=dict(fields, csrf_token=other_token)).status == 403
    assert _user(chat_server, f"{prefix}csrf") is None


def web_client_log_in(browser, username: str, password: str):
    """Log in to the web client at / (Converse.js) in a fresh browser context; its page once the contacts show, or None without a web client."""
    context = browser.new_context(ignore_https_errors=True)
    page = context.new_page()
    page.goto(f"{BASE}/")
    if page.locator("#converse-login-jid").count() == 0:
        page.wait_for_timeout(3000)  # the form is drawn by the client's script
    if page.locator("#converse-login-jid").count() == 0:
        context.close()
        return None
    page.fill("#converse-login-jid", username)
    page.fill("#converse-login-password", password)
    page.click("converse-login-form [type=submit]")
    page.wait_for_selector("converse-roster", timeout=30_000)
    return page


def bound_resources(config, username: str) -> dict:
    from hipchat_server.storage.redis import primary_client

    return primary_client(config.redis).hgetall(f"xmpp:sessions:{username}@{config.server.domain}")


def test_created_user_logs_in_and_deactivating_closes_the_session(admin_page, browser, accounts, prefix, config, chat_server, screenshots):
    """A user created in the console logs in to the web client and over XMPP; deactivating them ends both streams at once and refuses a new login."""
    page = admin_page
    username = f"{prefix}erin"
    page.goto(f"{BASE}/admin/users")
    form = page.locator("form[action='/admin/users/create']")
    form.locator("input[name=username]").fill(username)
    form.locator("input[name=name]").fill("Erin Console")
    form.locator("input[name=email]").fill(f"{username}@e2e.example.com")
    form.locator("button[type=submit]").click()
    page.wait_for_load_state()
    password = secret_of(page)
    assert len(password) >= 12
    page.screenshot(path=os.path.join(screenshots, "user-created.png"), full_page=True)

    web_client = web_client_log_in(browser, username, password)
    if web_client is None:
        print("no web client at / on this appliance: only the XMPP login is checked")
    else:
        web_client.screenshot(path=os.path.join(screenshots, "web-client-new-user.png"))
    endpoint = Endpoint(config)
    session = XmppSession(endpoint, username, password).start()
    try:
        assert session.ok, "the new user could not log in"
        streams = 1 + (web_client is not None)
        # The session directory is written just after the bind is answered (in order, off the reactor).
        wait_for(lambda: len(bound_resources(config, username)) == streams, 10, what=f"{streams} sessions in the directory")
        page.goto(f"{BASE}/admin/users/{username}")
        page.screenshot(path=os.path.join(screenshots, "user.png"), full_page=True)
        started = time.monotonic()
        page.click("#deactivate")
        page.wait_for_load_state()
        assert f"is deactivated: {streams} chat sessions" in page.inner_text(".notice")
        assert session.ended.wait(10), "the deactivated user's XMPP session stayed open"
        print(f"session closed {time.monotonic() - started:.2f} s after the click")
        while bound_resources(config, username):  # the web client's WebSocket stream too
            assert time.monotonic() - started < 10, f"still bound: {bound_resources(config, username)}"
            time.sleep(0.2)
    finally:
        session.stop()
        if web_client is not None:
            web_client.context.close()
    again = XmppSession(endpoint, username, password).start()
    again.stop()
    assert again.ok is False, "a deactivated user logged in again"
    assert not _user(chat_server, username)["is_active"]


def test_create_room(admin_page, prefix, chat_server, screenshots):
    """A room created in the console exists for XMPP and the API, with the owner and privacy chosen."""
    page = admin_page
    name = f"{prefix}room"
    page.goto(f"{BASE}/admin/rooms")
    form = page.locator("form[action='/admin/rooms/create']")
    form.locator("input[name=name]").fill(name)
    form.locator("select[name=privacy]").select_option("private")
    form.locator("input[name=topic]").fill("made in the console")
    form.locator("button[type=submit]").click()
    page.wait_for_load_state()
    assert f"Room {name} created" in page.inner_text(".notice")
    page.screenshot(path=os.path.join(screenshots, "room.png"), full_page=True)
    from hipchat_server.storage.database import run_in_transaction
    from hipchat_server.storage.schema import rooms

    row = run_in_transaction(chat_server.get_database_engine(), "e2e_room", lambda c: c.execute(rooms.select().where(rooms.c.name == name)).mappings().first())
    assert row is not None and row["privacy"] in ("private", "public")
    page.goto(f"{BASE}/admin/rooms/{row['id']}/delete")
    page.screenshot(path=os.path.join(screenshots, "room-delete-confirmation.png"), full_page=True)


def test_group_flag_changes_the_feature_for_that_group_only(admin_page, accounts, prefix, flags_restored, screenshots):
    """API message sending on for one group only: its member's token posts (201), the other user's is refused (403).

    The tokens are made in the console (shown once) and used against the REST API.
    """
    page = admin_page
    group = f"{prefix}sales"
    page.goto(f"{BASE}/admin/users")
    form = page.locator("form[action='/admin/groups/create']")
    form.locator("input[name=name]").fill(group)
    form.locator("button[type=submit]").click()
    page.wait_for_load_state()
    page.click(f"#groups-table a:text-is(\"{group}\")")
    page.wait_for_load_state()
    page.fill("input[name=username]", accounts["carol"])
    page.click("form[action$='/add'] button")
    page.wait_for_load_state()
    assert accounts["carol"] in page.inner_text("#members")
    page.screenshot(path=os.path.join(screenshots, "group.png"), full_page=True)

    carol_token = create_token(page, accounts["carol"], ("send_message", "view_group", "manage_rooms"))
    dave_token = create_token(page, accounts["dave"], ("send_message", "view_group"))
    room = f"{prefix}flagroom"
    status, created = api("POST", "/room", carol_token, {"name": room})
    assert status == 201, created

    def post(token):
        return api("POST", f"/room/{created['id']}/message", token, {"message": "flag test"})[0]

    assert post(carol_token) == 201 and post(dave_token) == 201

    page.goto(f"{BASE}/admin/flags")
    form = page.locator("#flag-api_message_sending")
    form.locator("input[value=groups]").check()
    form.locator("label", has_text=group).locator("input").check()
    form.locator("button[type=submit]").click()
    page.wait_for_load_state()
    assert "api_message_sending: groups" in page.inner_text(".notice")
    page.screenshot(path=os.path.join(screenshots, "flags.png"), full_page=True)
    assert post(carol_token) == 201
    assert post(dave_token) == 403

    form = page.locator("#flag-api_message_sending")
    form.locator("input[value=on]").check()
    form.locator("button[type=submit]").click()
    page.wait_for_load_state()
    assert post(dave_token) == 201


def test_flag_set_from_the_cli_reaches_the_api_within_seconds(accounts, admin_page, flags_restored):
    """`hipchat-appliance flag set file_sharing off` (another process) makes uploads 403 within the 5 s cache, no restart; on again: 501 (no file store)."""
    token = create_token(admin_page, accounts["dave"], ("send_message", "manage_rooms"))
    status, room = api("POST", "/room", token, {"name": f"{accounts['dave']}-files"})
    assert status == 201, room

    def upload():
        return api("POST", f"/room/{room['id']}/share/file", token, {})[0]

    assert upload() == 501
    assert run_appliance_cli("flag", "set", "file_sharing", "off").returncode == 0
    started = time.monotonic()
    while upload() != 403:
        assert time.monotonic() - started < 8, "the flag set by the CLI did not reach the HTTPS process"
        time.sleep(0.5)
    print(f"the CLI's change reached the API after {time.monotonic() - started:.1f} s")
    assert run_appliance_cli("flag", "set", "file_sharing", "on").returncode == 0
    started = time.monotonic()
    while upload() != 501:
        assert time.monotonic() - started < 8
        time.sleep(0.5)


def test_backups_page_lists_every_archive(admin_page, config, screenshots):
    """Every archive of the (root-only) backup directory is listed, through the root agent; the page says how to restore."""
    page = admin_page
    page.goto(f"{BASE}/admin/backups")
    page.screenshot(path=os.path.join(screenshots, "backups.png"), full_page=True)
    text = page.inner_text("main")
    assert "hipchat-appliance restore" in text
    assert "cannot be listed" not in text, text
    running = json.loads(run_appliance_cli("upgrade", "status", "--json").stdout)["installed_version"]
    assert f"Running version {running};" in page.inner_text("#versions")
    directory = config.backup.dir
    names = sorted(n for n in os.listdir(directory) if n.startswith("hipchat-backup-") and n.endswith((".tar", ".tar.enc")))
    if not names:
        pytest.skip(f"no backup in {directory} to see listed")
    for name in names:
        assert name in page.inner_text("#backups")


@pytest.fixture(scope="module")
def upgrade_history(tmp_path_factory):
    """An upgrade history and release links in a temporary directory (an upgrade to the running
    version that succeeded, then one from it that was rolled back); the environment pointing the
    appliance's code at them. Nothing is upgraded."""
    from appliance.upgrade import history, releases

    running = releases.installed_version()
    root = tmp_path_factory.mktemp("upgrades")
    for version in ("0.0.1", running):
        (root / "opt" / "releases" / version).mkdir(parents=True)
    (root / "opt" / "current").symlink_to(root / "opt" / "releases" / running)
    (root / "opt" / "previous").symlink_to(root / "opt" / "releases" / "0.0.1")
    history.record({"action": "apply", "from_version": "0.0.1", "to_version": running, "started_at": "2026-11-20T10:00:00Z",
                    "finished_at": "2026-11-20T10:04:45Z", "seconds": 285.2, "outcome": "succeeded",
                    "log": "/var/log/hipchat/upgrade-20261120-100000.log"}, directory=str(root / "upgrades"))
    history.record({"action": "apply", "from_version": running, "to_version": "99.0.0", "started_at": "2026-11-25T09:00:00Z",
                    "finished_at": "2026-11-25T09:03:10Z", "seconds": 190.0, "outcome": "rolled back",
                    "failure": "health check failed: rest: the e2e test's made-up failure",
                    "log": "/var/log/hipchat/upgrade-20261125-090000.log"}, directory=str(root / "upgrades"))
    env = dict(os.environ, HIPCHAT_UPGRADES_DIR=str(root / "upgrades"), HIPCHAT_BASE_DIR=str(root / "opt"), COLUMNS="400")
    return {"running": running, "env": env}


def test_status_has_an_upgrades_line_and_warns_of_a_rolled_back_upgrade(upgrade_history):
    """`status` pointed at the history: an Upgrades line (running, current, previous, when the last upgrade ran, its
    result) and a warning naming the rolled-back upgrade and why; the appliance stays healthy for it."""
    running, env = upgrade_history["running"], upgrade_history["env"]
    screen = subprocess.run([f"{VENV_DIR}/bin/hipchat-appliance", "status"], capture_output=True, text=True, timeout=120, env=env).stdout
    line = next((l for l in screen.splitlines() if l.startswith("Upgrades:")), None)
    assert line is not None, screen
    assert f"running {running} (current release {running}, previous 0.0.1)" in line, line
    assert f"last: apply {running} -> 99.0.0 ran at 2026-11-25T09:00:00Z, took 190 s: rolled back (2 in" in line, line
    warning = f"warning upgrades: the upgrade from {running} to 99.0.0 failed at 2026-11-25T09:03:10Z and was rolled back to {running}: " \
              "health check failed: rest: the e2e test's made-up failure"
    assert warning in screen, screen
    as_json = subprocess.run([f"{VENV_DIR}/bin/hipchat-appliance", "status", "--json"], capture_output=True, text=True, timeout=120, env=env)
    upgrades = json.loads(as_json.stdout)["sections"]["upgrades"]
    assert upgrades["healthy"] and upgrades["details"]["previous"] == "0.0.1" and upgrades["details"]["last"]["outcome"] == "rolled back"


@pytest.fixture
def pointed_console(upgrade_history):
    """The installed console's Backups page in a process started with ``upgrade_history``'s environment; its base URL."""
    script = os.path.join(os.path.dirname(__file__), "console_process.py")
    process = subprocess.Popen([f"{VENV_DIR}/bin/python", script], stdout=subprocess.PIPE, text=True, env=upgrade_history["env"])
    try:
        line = process.stdout.readline()  # "listening <port>", or nothing when it failed (its error is on stderr)
        assert line.startswith("listening "), f"the console process did not start: {line!r}"
        yield f"https://127.0.0.1:{int(line.split()[1])}"
    finally:
        process.terminate()
        process.wait(10)


def test_backups_page_shows_versions_and_the_upgrade_history(browser, accounts, pointed_console, upgrade_history, screenshots):
    """The Backups page of a console pointed at the history: running, current and previous versions, the warning
    about the rolled-back upgrade, and both entries newest first with their outcomes."""
    running = upgrade_history["running"]
    page = log_in(browser, accounts["admin"], base=pointed_console)
    try:
        page.goto(f"{pointed_console}/admin/backups")
        page.screenshot(path=os.path.join(screenshots, "backups-upgrades.png"), full_page=True)
        assert page.inner_text("#versions") == f"Running version {running}; current release {running}; previous release 0.0.1."
        assert f"the upgrade from {running} to 99.0.0 failed at 2026-11-25T09:03:10Z and was rolled back" in page.inner_text("#upgrade-warning")
        rows = page.locator("#upgrade-history tr").all_inner_texts()[1:]
        assert len(rows) == 2, rows
        assert "2026-11-25T09:00:00Z" in rows[0] and "rolled back" in rows[0] and "the e2e test's made-up failure" in rows[0]
        assert "2026-11-20T10:00:00Z" in rows[1] and "succeeded" in rows[1] and "285.2 s" in rows[1]
    finally:
        page.context.close()


def test_every_page_renders_and_the_audit_log_has_every_change(admin_page, accounts, prefix, screenshots):
    """Each section renders (200, its heading); the audit log, filtered on the admin, lists each change made above."""
    page = admin_page
    for path in PAGES:
        reply = page.goto(BASE + path)
        assert reply.status == 200, path
        assert page.locator("h1").count() == 1
        name = path.strip("/").replace("admin", "").strip("/") or "dashboard"
        page.screenshot(path=os.path.join(screenshots, f"{name}.png"), full_page=True)
    page.goto(f"{BASE}/admin/")
    services = page.inner_text("#services")
    # Root's checks, through the agent: the processes are known (healthy or not: other tests stop some), never "unknown".
    assert "processes" in services and "unknown" not in services, services
    page.goto(f"{BASE}/admin/audit?actor={accounts['admin']}")
    actions = page.inner_text("#audit")
    for action in ("user.create", "user.deactivate", "room.create", "group.create", "group.add_member", "flag.set", "token.create"):
        assert action in actions, action
    page.screenshot(path=os.path.join(screenshots, "audit-filtered.png"), full_page=True)
