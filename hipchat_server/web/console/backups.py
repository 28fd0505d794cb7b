"""Backups: the archives in the backup directory with what their manifests say, the last scheduled
result, create now, download, verify. Restore stays a CLI action (it stops the chat service); the page
says how.

The backup directory is root's alone (0700: an archive may hold the
configuration), and this process runs as the service user, so the page
reads it only where the operator granted access; otherwise it says so and
gives the CLI commands. "Create now" and "verify" run the CLI
(`hipchat-appliance backup create|verify`) as a child process and show its
output when it ends.
"""

from __future__ import annotations

import json
import os
import time

from twisted.internet import defer, utils
from twisted.web.static import File

from hipchat_server import audit
from hipchat_server.web.console.app import Refused

CLI = "/opt/hipchat/venv/bin/hipchat-appliance"
ARCHIVE_SUFFIXES = (".tar", ".tar.enc")
LAST_RESULT = "last.json"


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
    runs: dict[str, dict] = {}  # "create" / "verify <name>" -> {started, finished, output, code}

    def start(kind: str, args: list[str], admin) -> None:
        if runs.get(kind, {}).get("finished") is None and kind in runs:
            raise Refused(f"{kind} is running already (started {int(time.time() - runs[kind]['started'])} s ago)")
        runs[kind] = {"started": time.time(), "finished": None, "output": "", "code": None}
        d = utils.getProcessOutputAndValue(CLI, args, env=dict(os.environ))

        def ended(result):
            out, err, code = result
            runs[kind].update(finished=time.time(), output=(out + err).decode("utf-8", "replace")[-4000:], code=code)

        def failed(failure):
            runs[kind].update(finished=time.time(), output=str(failure.value), code=-1)

        d.addCallbacks(ended, failed)

    @console.page("/backups")
    @defer.inlineCallbacks
    def page(request, admin):
        listing = yield console.run_blocking(list_backups, directory)
        return "backups.html", dict(listing, section="backups", directory=directory, runs=runs, now=time.time())

    @console.action("/backups/create")
    @defer.inlineCallbacks
    def create(request, admin, form):
        start("create", ["backup", "create"], admin)
        yield console.run_blocking(audit.record, admin.username, "backup.create", directory)
        return "/admin/backups", "A backup was started; this page shows its outcome when it ends (reload)."

    @console.action("/backups/verify")
    @defer.inlineCallbacks
    def verify(request, admin, form):
        name = os.path.basename(form.get("name", ""))
        if not name.endswith(ARCHIVE_SUFFIXES):
            raise Refused("no such archive")
        start(f"verify {name}", ["backup", "verify", os.path.join(directory, name)], admin)
        yield console.run_blocking(audit.record, admin.username, "backup.verify", name)
        return "/admin/backups", f"Verifying {name}; reload for the outcome."

    @console.page("/backups/download/<name>")
    @defer.inlineCallbacks
    def download(request, admin, name):
        name = os.path.basename(name)
        path = os.path.join(directory, name)
        if not name.endswith(ARCHIVE_SUFFIXES) or not os.access(path, os.R_OK):
            raise Refused(f"{name}: no such archive, or this process may not read it")
        yield console.run_blocking(audit.record, admin.username, "backup.download", name)
        request.setHeader(b"content-disposition", f'attachment; filename="{name}"'.encode())
        File(path, defaultType="application/octet-stream").render_GET(request)
        from twisted.web.server import NOT_DONE_YET

        return None, NOT_DONE_YET
