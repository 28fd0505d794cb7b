"""Backups: the archives in the backup directory with what their manifests say, the last scheduled
result, create now, download, verify. Restore stays a CLI action (it stops the chat service); the page
says how. The page also shows the running version, the previous release and the upgrade history
(`appliance.upgrade.report`, what ``hipchat-appliance upgrade status`` shows; world-readable, so
read here, not through the agent).

The backup directory is root's alone (0700: an archive holds the whole
database) and this process runs as the service user, so the page asks the
root agent (`agent`, a supervisor program) over its UNIX socket: the
listing, "create now" and "verify" (the CLI run by the agent; the page shows
each run's outcome) and, for a download, the archive's open file. Without
the agent it reads the directory itself (where the operator made it
readable) and runs the CLI as the service user.
"""

from __future__ import annotations

import json
import os
import time

from twisted.internet import defer, utils
from twisted.protocols.basic import FileSender
from twisted.logger import Logger

from hipchat_server import audit
from hipchat_server.web.console import agent
from hipchat_server.web.console.app import Refused

log = Logger()

CLI = "/opt/hipchat/venv/bin/hipchat-appliance"
ARCHIVE_SUFFIXES = (".tar", ".tar.enc")
LAST_RESULT = "last.json"
#: Upgrade history entries on the page, newest first (`hipchat-appliance upgrade status` lists all).
UPGRADES_SHOWN = 20


def list_backups(directory: str) -> dict:
    """The archives in ``directory`` (newest first) with their manifests' figures, and ``last.json``; ``error`` when unreadable."""
    from appliance.backup.archive import ArchiveError, open_archive

    try:
        names = sorted((n for n in os.listdir(directory) if n.endswith(ARCHIVE_SUFFIXES)), reverse=True)
    except FileNotFoundError:
        return {"archives": [], "last": None, "error": None}
    except PermissionError:
        return {"archives": [], "last": None, "error": f"this process (user {_user()}) may not read {directory}"}
    archives = []
    for name in names:
        path = os.path.join(directory, name)
        row = {"name": name, "bytes": os.path.getsize(path), "encrypted": name.endswith(".enc"), "modified": os.path.getmtime(path)}
        if not row["encrypted"]:
            try:
                with open_archive(path, None) as reader:
                    m = reader.manifest
                row.update(cutoff=m.get("cutoff"), version=m.get("appliance_version"), users=m.get("counts", {}).get("users"),
                           messages=sum((m.get("counts", {}).get("messages") or {}).values()))
            except (ArchiveError, OSError, ValueError, KeyError) as e:
                row["error"] = str(e)
        archives.append(row)
    try:
        with open(os.path.join(directory, LAST_RESULT)) as f:
            last = json.load(f)
    except (OSError, ValueError):
        last = None
    return {"archives": archives, "last": last, "error": None}


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


def register(console) -> None:
    directory = console.chat_server.get_config().backup.dir
    agent_socket = agent.socket_path(agent.RUN_DIR)
    runs: dict[str, dict] = {}  # what this process started itself, when there is no agent

    def via_agent() -> bool:
        return os.path.exists(agent_socket)

    def listing() -> dict:
        """From the agent (root) when it runs; else read here, which works only where the directory is readable."""
        if via_agent():
            try:
                reply, _ = agent.ask(agent_socket, {"op": "list"})
            except OSError as e:
                return {"archives": [], "last": None, "runs": {}, "error": f"the console agent does not answer ({e})"}
            if reply.get("ok"):
                return {"archives": reply["archives"], "last": reply["last"], "runs": reply["runs"], "error": None}
            return {"archives": [], "last": None, "runs": {}, "error": reply.get("error")}
        return dict(list_backups(directory), runs=runs)

    def start_here(kind: str, args: list[str]) -> None:
        if kind in runs and runs[kind]["finished"] is None:
            raise Refused(f"{kind} is running already")
        runs[kind] = {"started": time.time(), "finished": None, "output": "", "code": None}
        d = utils.getProcessOutputAndValue(CLI, args, env=dict(os.environ))

        def ended(result):
            out, err, code = result
            runs[kind].update(finished=time.time(), output=(out + err).decode("utf-8", "replace")[-4000:], code=code)

        d.addCallbacks(ended, lambda failure: runs[kind].update(finished=time.time(), output=str(failure.value), code=-1))

    @defer.inlineCallbacks
    def start(kind: str, request: dict, args: list[str]):
        if not via_agent():
            start_here(kind, args)
            return
        reply, _ = yield console.run_blocking(agent.ask, agent_socket, request)
        if not reply.get("ok"):
            raise Refused(reply.get("error") or "the console agent refused")

    @console.page("/backups")
    @defer.inlineCallbacks
    def page(request, admin):
        from appliance.upgrade.report import newest_first, upgrade_report

        shown = yield console.run_blocking(listing)
        upgrades = yield console.run_blocking(upgrade_report)
        return "backups.html", dict(shown, section="backups", directory=directory, now=time.time(), upgrades=upgrades,
                                    upgrade_rows=newest_first(upgrades["history"], UPGRADES_SHOWN))

    @console.action("/backups/create")
    @defer.inlineCallbacks
    def create(request, admin, form):
        yield start("create", {"op": "create", "by": admin.username}, ["backup", "create"])
        yield console.run_blocking(audit.record, admin.username, "backup.create", directory)
        return "/admin/backups", "A backup was started; reload this page for its outcome."

    @console.action("/backups/verify")
    @defer.inlineCallbacks
    def verify(request, admin, form):
        name = os.path.basename(form.get("name", ""))
        if not name.endswith(ARCHIVE_SUFFIXES):
            raise Refused("no such archive")
        yield start(f"verify {name}", {"op": "verify", "name": name, "by": admin.username}, ["backup", "verify", os.path.join(directory, name)])
        yield console.run_blocking(audit.record, admin.username, "backup.verify", name)
        return "/admin/backups", f"Verifying {name}; reload this page for the outcome."

    @console.page("/backups/download/<name>")
    @defer.inlineCallbacks
    def download(request, admin, name):
        name = os.path.basename(name)
        if not name.endswith(ARCHIVE_SUFFIXES):
            raise Refused("no such archive")
        if via_agent():
            reply, fd = yield console.run_blocking(agent.ask, agent_socket, {"op": "open", "name": name})
            if fd is None:
                raise Refused(reply.get("error") or f"{name}: no such archive")
            archive = os.fdopen(fd, "rb")
        else:
            try:
                archive = open(os.path.join(directory, name), "rb")
            except OSError as e:
                raise Refused(f"{name}: {e.strerror}") from None
        yield console.run_blocking(audit.record, admin.username, "backup.download", name)
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"content-length", str(os.fstat(archive.fileno()).st_size).encode())
        request.setHeader(b"content-disposition", f'attachment; filename="{name}"'.encode())
        try:
            yield FileSender().beginFileTransfer(archive, request)  # Klein finishes the request once this returns
        except Exception:  # the browser went away mid-download: FileSender stopped, still registered
            request.unregisterProducer()
            log.info("download of {name} by {who} ended early", name=name, who=admin.username)
        finally:
            archive.close()
        return None, b""
