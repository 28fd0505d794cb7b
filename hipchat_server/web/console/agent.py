"""The console's privileged half: a small root process the HTTPS process asks over a UNIX socket.

The backup directory and supervisor's socket are root's alone (0700: an
archive holds the whole database, supervisor can stop anything) and the
HTTPS process runs as the service user. This agent (a supervisor program in
the chat-core group, so a restore stops it too) answers five requests, one
JSON line each, on a socket only the service user's group may open
(``console-agent.sock``, 0660 root:<service group>):

- ``{"op": "status"}``: `appliance.lib.status.collect_status` as root (every
  check of ``hipchat-appliance status``, processes and backups included),
  at most `STATUS_SECONDS` old;
- ``{"op": "list"}``: the archives (name, size, encrypted, and the plain
  ones' manifest figures), ``last.json`` and the outcome of what the console
  started;
- ``{"op": "create", "by": <admin>}``: start ``hipchat-appliance backup create``
  (one at a time);
- ``{"op": "verify", "name": <archive>, "by": <admin>}``: start
  ``hipchat-appliance backup verify`` on an archive of the listing;
- ``{"op": "open", "name": <archive>}``: the archive opened read-only, its
  file descriptor passed with the answer (SCM_RIGHTS) for a download.

Names are taken only from the listing, never as paths. Nothing else is offered.

    python -m hipchat_server.web.console.agent [--config /etc/hipchat/hipchat.yml]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pwd
import socket
import socketserver
import subprocess
import sys
import threading
import time

log = logging.getLogger("hipchat.console.agent")

SOCKET_NAME = "console-agent.sock"
#: Seconds a gathered status is answered again (gathering walks every data directory).
STATUS_SECONDS = 10.0
#: The service user's run directory (beside supervisor's socket).
RUN_DIR = "/var/lib/hipchat/run"
CLI = os.path.join(os.path.dirname(sys.executable), "hipchat-appliance")
MAX_REQUEST = 4096
OUTPUT_KEPT = 4000  # characters of a run's output kept for the page


def socket_path(run_dir: str) -> str:
    return os.path.join(run_dir, SOCKET_NAME)


class ConsoleAgent:
    """What the socket's requests do, over ``directory`` (the backup directory) and the CLI at ``cli``."""

    def __init__(self, directory: str, cli: str = CLI, config_path: str | None = None, chat_server=None):
        self.directory, self.cli, self.config_path, self.chat_server = directory, cli, config_path, chat_server
        self._status: tuple[float, dict] | None = None
        self._status_lock = threading.Lock()
        self.runs: dict[str, dict] = {}
        self._manifests: dict[tuple[str, float], dict] = {}
        self._lock = threading.Lock()

    def archives(self) -> list[dict]:
        from appliance.backup.archive import ArchiveError, open_archive
        from appliance.backup.schedule import list_archives

        rows = []
        for archive in reversed(list_archives(self.directory)):  # newest first
            row = {"name": archive.name, "bytes": archive.bytes, "encrypted": archive.encrypted, "version": archive.version}
            if not archive.encrypted:  # an encrypted manifest needs the passphrase (`backup verify --passphrase-file`)
                key = (archive.path, os.path.getmtime(archive.path))
                if key not in self._manifests:
                    try:
                        with open_archive(archive.path, None) as reader:
                            m = reader.manifest
                        self._manifests[key] = {"cutoff": m.get("cutoff"), "users": (m.get("counts") or {}).get("users"),
                                                "messages": sum(((m.get("counts") or {}).get("messages") or {}).values())}
                    except (ArchiveError, OSError, ValueError, KeyError) as e:
                        self._manifests[key] = {"error": str(e)}
                row.update(self._manifests[key])
            rows.append(row)
        return rows

    def _path_of(self, name) -> str | None:
        if not isinstance(name, str):
            return None
        known = {row["name"] for row in self.archives()}
        return os.path.join(self.directory, name) if name in known else None

    def _start(self, kind: str, args: list[str], by: str) -> dict:
        with self._lock:
            running = self.runs.get(kind)
            if running is not None and running["finished"] is None:
                return {"ok": False, "error": f"{kind} is running already (started by {running['by']})"}
            run = self.runs[kind] = {"started": time.time(), "finished": None, "code": None, "output": "", "by": by}
        config = ["--config", self.config_path] if self.config_path else []

        def work():
            try:
                done = subprocess.run([self.cli, *config, *args], capture_output=True, text=True, timeout=6 * 3600)
                output, code = done.stdout + done.stderr, done.returncode
            except (OSError, subprocess.SubprocessError) as e:
                output, code = str(e), -1
            run.update(finished=time.time(), code=code, output=output[-OUTPUT_KEPT:])
            log.info("%s (asked by %s) ended with exit %s", kind, by, code)

        threading.Thread(target=work, name=f"console-{kind}", daemon=True).start()
        log.info("%s started (asked by %s)", kind, by)
        return {"ok": True}

    def status(self) -> dict:
        """`collect_status` as a dict, gathered at most every `STATUS_SECONDS` (one gathering at a time)."""
        from appliance.lib.status import collect_status

        with self._status_lock:
            if self._status is None or time.monotonic() - self._status[0] > STATUS_SECONDS:
                self._status = (time.monotonic(), collect_status(self.chat_server).to_dict())
            return self._status[1]

    def handle(self, request: dict) -> tuple[dict, int | None]:
        """The answer to one request, and a file descriptor to pass with it (``open``)."""
        op, by = request.get("op"), str(request.get("by") or "?")[:100]
        if op == "status":
            if self.chat_server is None:
                return {"ok": False, "error": "no status here"}, None
            return {"ok": True, "status": self.status()}, None
        if op == "list":
            from appliance.backup.create import read_last_result

            try:
                return {"ok": True, "archives": self.archives(), "last": read_last_result(self.directory), "runs": self.runs}, None
            except OSError as e:
                return {"ok": False, "error": str(e)}, None
        if op == "create":
            return self._start("create", ["backup", "create"], by), None
        if op in ("verify", "open"):
            path = self._path_of(request.get("name"))
            if path is None:
                return {"ok": False, "error": "no such archive"}, None
            if op == "verify":
                return self._start(f"verify {request['name']}", ["backup", "verify", path], by), None
            fd = os.open(path, os.O_RDONLY)
            return {"ok": True, "bytes": os.fstat(fd).st_size}, fd
        return {"ok": False, "error": "unknown request"}, None


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        try:
            request = json.loads(self.rfile.readline(MAX_REQUEST) or b"{}")
            reply, fd = self.server.agent.handle(request if isinstance(request, dict) else {})
        except Exception as e:  # a bad request or a failing listing: answer, never die
            log.exception("a console request failed")
            reply, fd = {"ok": False, "error": f"{type(e).__name__}: {e}"}, None
        data = json.dumps(reply, default=str).encode() + b"\n"
        try:
            if fd is None:
                self.connection.sendall(data)
            else:
                socket.send_fds(self.connection, [data], [fd])
        finally:
            if fd is not None:
                os.close(fd)


class AgentServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def serve(agent: ConsoleAgent, path: str, user: str) -> AgentServer:
    """Bind the socket at ``path`` (0660, root and ``user``'s group) and answer requests in threads."""
    if os.path.exists(path):
        os.unlink(path)  # left by a killed predecessor
    server = AgentServer(path, _Handler)
    server.agent = agent
    os.chown(path, os.geteuid(), pwd.getpwnam(user).pw_gid)
    os.chmod(path, 0o660)
    return server


def ask(path: str, request: dict, timeout: float = 30.0) -> tuple[dict, int | None]:
    """The console's side: send one request, answer its reply and the file descriptor passed with it (if any)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(timeout)
        connection.connect(path)
        connection.sendall(json.dumps(request).encode() + b"\n")
        data, fds, _, _ = socket.recv_fds(connection, 1 << 20, 1)
        while not data.endswith(b"\n"):
            more = connection.recv(1 << 20)
            if not more:
                break
            data += more
    return json.loads(data), (fds[0] if fds else None)


def main(argv: list[str] | None = None) -> int:
    from hipchat_server.config import load_config

    parser = argparse.ArgumentParser(description="The admin console's root agent (status, backups).")
    parser.add_argument("--config", default=None)
    parser.add_argument("--run-dir", default=RUN_DIR, help=f"Directory of the socket (default {RUN_DIR}).")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from hipchat_server.server import ChatServer

    config = load_config(args.config)
    path = socket_path(args.run_dir)
    server = serve(ConsoleAgent(config.backup.dir, config_path=args.config, chat_server=ChatServer(config)), path, config.server.user)
    log.info("answering the console on %s", path)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
