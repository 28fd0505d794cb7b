"""``hipchat-appliance upgrade rollback``: go back to the ``previous`` release.

1. the schema goes back to the revision the previous release knows: ``alembic downgrade``
   with the code still installed (the newer one, which has the downgrade steps), so no message
   written since the upgrade is lost, as a restore of the pre-upgrade backup would lose them;
2. the previous release is reinstalled offline: its own installer with ``hipchat_offline_dir``
   when it came from a bundle; a release adopted from an online install (no installer of its
   own) gets its wheel reinstalled and the chat processes restarted one at a time. In that case
   what the newer installer changed outside the chat core's code (configuration, index
   template) stays, and the summary says so;
3. ``current`` points at the previous release again and ``previous`` is cleared;
4. the health check runs and the history records the rollback.
"""

from __future__ import annotations

import os
import subprocess
import time

from appliance.upgrade import history, releases
from appliance.upgrade.apply import Progress, UpgradeFailed, run_installer
from appliance.upgrade.health import check_health
from appliance.upgrade.restart import rolling_restart

VENV_DIR = "/opt/hipchat/venv"
SOURCE_CHECKSUM_FILE = os.path.join(VENV_DIR, ".hipchat-source.sha256")

_DOWNGRADE = """
import sys
from alembic import command
from hipchat_server.config import load_config
from hipchat_server.server import ChatServer
from hipchat_server.storage.migrations import _alembic_config, current_revision
engine = ChatServer(load_config(sys.argv[1])).get_database_engine()
command.downgrade(_alembic_config(engine), sys.argv[2])
print(current_revision(engine))
"""


class RollbackRefused(Exception):
    """There is nothing to roll back to; nothing was changed."""


def schema_target_of(current_release: str) -> str | None:
    """The schema revision before the last upgrade to ``current_release`` (from the history).

    Whatever that upgrade's outcome: one whose automatic rollback failed left its migrations in.
    """
    version = releases.release_version(current_release)
    for entry in reversed(history.read_history()):
        if entry.get("action") == "apply" and entry.get("to_version") == version and entry.get("schema_before"):
            return entry.get("schema_before")
    return None


def downgrade_schema(config_path: str, revision: str, progress: Progress) -> None:
    """Downgrade the schema to ``revision`` with the code installed now (it knows the newer revisions)."""
    # -I and cwd /: the installed package, never a source tree in the caller's working directory.
    done = subprocess.run([f"{VENV_DIR}/bin/python", "-I", "-c", _DOWNGRADE, config_path, revision],
                          capture_output=True, text=True, timeout=600, cwd="/")
    progress.say(done.stdout.strip() + done.stderr.strip(), terminal=False)
    if done.returncode != 0:
        raise UpgradeFailed(f"schema downgrade to {revision} failed: {done.stderr.strip().splitlines()[-1:]}")
    progress.say(f"schema downgraded to {revision}")


def reinstall_adopted(release_dir: str, chat_server, progress: Progress) -> None:
    """Reinstall an adopted release's wheel offline and restart the chat processes one at a time."""
    info = releases.release_info(release_dir)
    wheels = os.path.join(release_dir, "wheels")
    argv = [f"{VENV_DIR}/bin/pip", "install", "--quiet", "--disable-pip-version-check", "--no-index", "--no-deps",
            "--force-reinstall", "--find-links", wheels, f"{releases.DISTRIBUTION}=={info['version']}"]
    progress.say(f"reinstalling {info['version']}: {' '.join(argv)}")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    progress.say(done.stdout + done.stderr, terminal=False)
    if done.returncode != 0:
        raise UpgradeFailed(f"pip could not reinstall {info['version']}: {done.stderr.strip()[-500:]}")
    if info.get("source_checksum"):
        with open(SOURCE_CHECKSUM_FILE, "w") as f:
            f.write(info["source_checksum"] + "\n")
    from appliance.lib.status import supervisor_rpc

    config = chat_server.get_config()
    rolling_restart(supervisor_rpc(config.appliance.supervisor_config), config.xmpp.c2s_port, say=progress.say)


def roll_back(chat_server, progress: Progress, schema_target: str | None = None, record_history: bool = True,
              config_path: str = "/etc/hipchat/hipchat.yml", check_ports: bool = True) -> dict:
    """Return to the ``previous`` release; returns the history entry. Raises RollbackRefused or UpgradeFailed."""
    from appliance.upgrade.apply import schema_revision

    t0 = time.monotonic()
    current, previous = releases.linked_release("current"), releases.linked_release("previous")
    if previous is None or not os.path.isdir(previous):
        raise RollbackRefused("there is no previous release to roll back to")
    if schema_target is None:
        schema_target = schema_target_of(current)
    entry = {
        "action": "rollback",
        "from_version": releases.installed_version(),
        "to_version": releases.release_version(previous),
        "started_at": history.now_iso(),
        "log": progress.log_path,
        "schema_before": schema_revision(chat_server),
        "notes": [],
    }
    if schema_target and entry["schema_before"] != schema_target:
        downgrade_schema(config_path, schema_target, progress)
    if releases.release_info(previous).get("adopted"):
        reinstall_adopted(previous, chat_server, progress)
        entry["notes"].append(
            f"{entry['to_version']} was installed without a bundle: its code is back, but configuration and index "
            "templates the newer installer wrote stay; re-run that version's installer to restore them"
        )
    else:
        run_installer(previous, progress, check_ports=check_ports)
    releases.set_links(previous, None)
    progress.say(f"current -> {previous}; previous cleared")
    entry["schema_after"] = schema_revision(chat_server)
    results = check_health(chat_server, say=progress.say)
    entry["health"] = {r.name: {"ok": r.ok, "detail": r.detail} for r in results}
    entry["outcome"] = "succeeded" if all(r.ok for r in results) else "unhealthy"
    entry["finished_at"] = history.now_iso()
    entry["seconds"] = round(time.monotonic() - t0, 1)
    if record_history:
        history.record(entry)
    return entry
