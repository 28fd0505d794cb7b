"""The console's root agent (`web.console.agent`): the process the HTTPS process asks over a UNIX socket.

It lists the archives with their manifests' figures, opens one for a
download by passing its file descriptor, runs create and verify through the
CLI one at a time, and takes archive names only from its listing (never a path).
"""

from __future__ import annotations

import os
import pwd
import sys
import threading
import time

import pytest

from appliance.backup.archive import ArchiveWriter
from hipchat_server.web.console import agent


@pytest.fixture
def backup_dir(tmp_path):
    directory = tmp_path / "backups"
    directory.mkdir(mode=0o700)
    writer = ArchiveWriter(str(directory / "hipchat-backup-20261126T010000Z-0.1.0.tar"), None)
    writer.add_bytes("mariadb/dump.sql", b"-- a dump\n")
    writer.close({"cutoff": "2026-11-26T01:00:00Z", "counts": {"users": 3, "messages": {"messages-2026.11": 5, "messages-2026.10": 2}}})
    (directory / "hipchat-backup-20261126T020000Z-0.1.0.tar.enc").write_bytes(b"HCBAK1\n" + b"\0" * 64)
    (directory / "notes.txt").write_text("not an archive")
    return directory


@pytest.fixture
def fake_cli(tmp_path):
    """A stand-in for hipchat-appliance: prints its arguments, sleeps a little, exits 0."""
    script = tmp_path / "hipchat-appliance"
    script.write_text(f"#!{sys.executable}\nimport sys, time\ntime.sleep(0.3)\nprint('ran', *sys.argv[1:])\n")
    script.chmod(0o755)
    return str(script)


@pytest.fixture
def agent_socket(tmp_path, backup_dir, fake_cli):
    console_agent = agent.ConsoleAgent(str(backup_dir), cli=fake_cli)
    path = str(tmp_path / agent.SOCKET_NAME)
    server = agent.serve(console_agent, path, pwd.getpwuid(os.geteuid()).pw_name)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield path
    server.shutdown()
    server.server_close()


def test_list_shows_archives_newest_first_with_manifest_figures(agent_socket):
    """Only archives are listed, newest first; a plain one carries its cut-off and counts, an encrypted one does not."""
    reply, fd = agent.ask(agent_socket, {"op": "list"})
    assert fd is None and reply["ok"]
    names = [a["name"] for a in reply["archives"]]
    assert names == ["hipchat-backup-20261126T020000Z-0.1.0.tar.enc", "hipchat-backup-20261126T010000Z-0.1.0.tar"]
    plain = reply["archives"][1]
    assert plain["cutoff"] == "2026-11-26T01:00:00Z" and plain["users"] == 3 and plain["messages"] == 7
    assert reply["archives"][0]["encrypted"] and "cutoff" not in reply["archives"][0]


def test_socket_is_for_the_service_group_only(agent_socket):
    assert oct(os.stat(agent_socket).st_mode & 0o777) == "0o660"


def test_open_passes_the_archive_for_a_download(agent_socket, backup_dir):
    """`open` answers the size and passes a read-only descriptor of that archive."""
    name = "hipchat-backup-20261126T010000Z-0.1.0.tar"
    reply, fd = agent.ask(agent_socket, {"op": "open", "name": name})
    assert reply["ok"] and fd is not None
    with os.fdopen(fd, "rb") as received:
        assert received.read() == (backup_dir / name).read_bytes()
    assert reply["bytes"] == (backup_dir / name).stat().st_size


@pytest.mark.parametrize("name", ["../../etc/shadow", "/etc/shadow", "notes.txt", "", None, 7])
def test_names_outside_the_listing_are_refused(agent_socket, name):
    """Paths, files that are not archives and non-strings: refused, nothing opened or run."""
    for op in ("open", "verify"):
        reply, fd = agent.ask(agent_socket, {"op": op, "name": name})
        assert fd is None and not reply["ok"] and reply["error"] == "no such archive"


def test_create_and_verify_run_the_cli_once_at_a_time(agent_socket, backup_dir):
    """Create runs `backup create` (a second one while it runs is refused); verify runs on the archive's path; outcomes are listed."""
    assert agent.ask(agent_socket, {"op": "create", "by": "root"})[0]["ok"]
    again = agent.ask(agent_socket, {"op": "create", "by": "other"})[0]
    assert not again["ok"] and "running already" in again["error"]
    name = "hipchat-backup-20261126T010000Z-0.1.0.tar"
    assert agent.ask(agent_socket, {"op": "verify", "name": name, "by": "root"})[0]["ok"]
    deadline = time.monotonic() + 10
    while True:
        runs = agent.ask(agent_socket, {"op": "list"})[0]["runs"]
        if all(r["finished"] for r in runs.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert runs["create"]["code"] == 0 and runs["create"]["output"].strip() == "ran backup create"
    assert runs[f"verify {name}"]["output"].strip() == f"ran backup verify {backup_dir / name}"


def test_unknown_and_malformed_requests_are_answered(agent_socket):
    assert agent.ask(agent_socket, {"op": "rm -rf"})[0] == {"ok": False, "error": "unknown request"}
    import socket

    with socket.socket(socket.AF_UNIX) as connection:
        connection.connect(agent_socket)
        connection.sendall(b"not json\n")
        assert b'"ok": false' in connection.recv(4096)


def test_status_is_gathered_as_root_at_most_every_few_seconds(tmp_path, backup_dir, monkeypatch):
    """`status` answers collect_status's sections as a dict, gathered again only once it is STATUS_SECONDS old."""
    from appliance.lib import status

    calls = []

    def collect(chat_server):
        calls.append(chat_server)
        return status.StatusReport([status.Section("processes", details={"processes": []})])

    monkeypatch.setattr(status, "collect_status", collect)
    console_agent = agent.ConsoleAgent(str(backup_dir), chat_server="server")
    first, _ = console_agent.handle({"op": "status"})
    assert first["ok"] and first["status"]["sections"]["processes"]["healthy"] is True
    console_agent.handle({"op": "status"})
    assert calls == ["server"]
    assert agent.ConsoleAgent(str(backup_dir)).handle({"op": "status"})[0]["ok"] is False
