"""``hipchat-appliance upgrade apply BUNDLE``: upgrade the running appliance from a signed bundle.

The order, and why:

1. verify the bundle (signature, every checksum: ``appliance.bundle.manifest``) and check that
   the running version is one it ``upgrades_from``: a refused bundle changes nothing;
2. take a backup (``appliance.backup.create``), the way back if all else fails;
3. unpack into ``releases/<version>`` (verified again while written), adopting the running
   version as a release first when it was installed without a bundle;
4. switch ``current`` / ``previous``;
5. run the **new** release's installer with the offline switch (``hipchat_offline_dir``): only
   the bundle's files are installed, migrations run (``db upgrade``), the index template is
   updated, OpenSearch nodes whose configuration changed restart one at a time waiting for
   green (the opensearch role), and the chat processes restart one at a time
   (``chat_core_rolling_restart``, ``appliance.upgrade.restart``);
6. health check (``appliance.upgrade.health``); a failure rolls back to ``previous``
   (``appliance.upgrade.rollback``) and says so.

Every step is on the terminal and in ``/var/log/hipchat/upgrade-<time>.log``; the history
(``appliance.upgrade.history``) records the outcome.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

from appliance.upgrade import history, releases
from appliance.upgrade.health import check_health

LOG_DIR = "/var/log/hipchat"
VENV_DIR = "/opt/hipchat/venv"


class UpgradeRefused(Exception):
    """The bundle may not be applied here; nothing was changed."""


class UpgradeFailed(Exception):
    """The upgrade started and failed; ``str()`` says what was done about it."""


@dataclass
class Progress:
    """Says each step on the terminal (``echo``) and in the upgrade's log file."""

    log_path: str
    echo: Callable[[str], None] = print
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
        self._log = open(self.log_path, "a", buffering=1)

    def say(self, text: str, terminal: bool = True) -> None:
        stamp = datetime.now(timezone.utc).strftime("%H:%M:%S")
        self._log.write(f"{stamp} [{time.monotonic() - self.started:6.1f}s] {text}\n")
        if terminal:
            self.echo(text)

    def close(self) -> None:
        self._log.close()


def new_log_path(kind: str = "upgrade") -> str:
    return os.path.join(LOG_DIR, f"{kind}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}.log")


def run_installer(release_dir: str, progress: Progress, extra_vars: tuple[str, ...] = (), check_ports: bool = True) -> None:
    """Run ``release_dir``'s own installer with the offline switch; each line goes to the log.

    Preflight checks that no other program holds the appliance's ports (its own processes, under
    its supervisord, do) unless ``check_ports`` is false. Raises UpgradeFailed when the installer
    exits non-zero (its last lines in the message).
    """
    installer = os.path.join(release_dir, "installer", "install.sh")
    # --offline-dir: pip with --no-index, apt from the bundle's debs/, hipchat_offline_dir for the roles.
    argv = ["bash", installer, "--offline-dir", release_dir, "-e", "chat_core_rolling_restart=true"]
    if not check_ports:
        argv += ["-e", '{"preflight_ports": {}}']
    for var in extra_vars:
        argv += ["-e", var]
    progress.say(f"running {' '.join(argv)}")
    env = dict(os.environ, ANSIBLE_FORCE_COLOR="0", ANSIBLE_NOCOLOR="1")
    tail: list[str] = []
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as process:
        for line in process.stdout:
            line = line.rstrip("\n")
            tail = (tail + [line])[-15:]
            # Task names and the rolling restart on the terminal; everything in the log.
            shown = line.startswith(("TASK [", "==> ", "RUNNING HANDLER")) or "restarting chat-core" in line or "back after" in line
            progress.say(line, terminal=shown)
        status = process.wait()
    if status != 0:
        raise UpgradeFailed(f"the installer of {release_dir} failed (exit {status}):\n" + "\n".join(tail))


def schema_revision(chat_server) -> str | None:
    from hipchat_server.storage.migrations import current_revision

    return current_revision(chat_server.get_database_engine())


def check_bundle(bundle_path: str, trusted_keys_dir: str | None, running: str):
    """Verify ``bundle_path`` and that ``running`` may upgrade to it; returns the VerifiedBundle."""
    from appliance.bundle.manifest import BundleRefused, may_upgrade_from, trusted_key_dirs, verify_bundle

    try:
        verified = verify_bundle(bundle_path, trusted_key_dirs(trusted_keys_dir))
    except BundleRefused as e:
        raise UpgradeRefused(f"bundle refused: {e}") from None
    except OSError as e:
        raise UpgradeRefused(f"cannot read the bundle: {e}") from None
    version = verified.version
    if version == running:
        raise UpgradeRefused(f"the appliance already runs version {running}")
    if not may_upgrade_from(verified.manifest, running):
        specs = " or ".join(verified.manifest.get("upgrades_from", [])) or "nothing"
        raise UpgradeRefused(f"version {version} upgrades from {specs}; this appliance runs {running}")
    return verified


def take_backup(chat_server, progress: Progress) -> str:
    from appliance.backup.create import BackupError, create_backup

    config = chat_server.get_config()
    try:
        result = create_backup(chat_server, config.backup.dir)
    except BackupError as e:
        raise UpgradeFailed(f"the backup before the upgrade failed, nothing was changed: {e}") from None
    progress.say(f"backup {result.path} ({result.bytes / 1e6:.1f} MB, {result.seconds:.1f} s)")
    return result.path


def apply_bundle(
    chat_server,
    bundle_path: str,
    progress: Progress,
    trusted_keys_dir: str | None = None,
    confirm: Callable[[str], bool] = lambda question: True,
    check_ports: bool = True,
) -> dict:
    """Upgrade to ``bundle_path``; returns the history entry (outcome ``succeeded`` or ``rolled back``).

    ``check_ports`` false skips preflight's port check in the install and in a rollback.

    Raises UpgradeRefused (nothing changed) or UpgradeFailed (what was done is in the message).
    """
    from appliance.upgrade.rollback import roll_back

    t0 = time.monotonic()
    running = releases.installed_version()
    progress.say(f"verifying {bundle_path} (signature and every checksum)")
    verified = check_bundle(bundle_path, trusted_keys_dir, running)
    version = verified.version
    progress.say(f"bundle ok: version {version}, signed by {verified.key_id}; this appliance runs {running}")
    if not confirm(f"Upgrade from {running} to {version}? Chat stays up; each process restarts once."):
        raise UpgradeRefused("not confirmed; nothing was changed")
    entry = {
        "action": "apply",
        "from_version": running,
        "to_version": version,
        "bundle": os.path.abspath(bundle_path),
        "started_at": history.now_iso(),
        "log": progress.log_path,
        "steps": {},
    }
    steps = entry["steps"]

    def step(name: str, started: float) -> None:
        steps[name] = round(time.monotonic() - started, 1)

    t = time.monotonic()
    progress.say("taking a backup")
    entry["backup"] = take_backup(chat_server, progress)
    step("backup", t)

    t = time.monotonic()
    current = releases.linked_release("current")
    if current is None or releases.release_info(current).get("adopted"):
        adopted = releases.adopt_running()
        progress.say(f"the running version {running} was installed without a bundle: kept as release {adopted}")
        releases.set_links(adopted, releases.linked_release("previous"))
    target = releases.release_path(version)
    if os.path.isdir(target):
        shutil.rmtree(target)  # an earlier, unfinished attempt at this version (it is not current)
    from appliance.bundle.manifest import BundleRefused, trusted_key_dirs, unpack_bundle

    progress.say(f"unpacking into {target}")
    try:
        unpack_bundle(bundle_path, target, trusted_key_dirs(trusted_keys_dir))
    except BundleRefused as e:
        raise UpgradeFailed(f"the bundle changed after it was verified ({e}); nothing but the backup was changed") from None
    step("unpack", t)

    entry["schema_before"] = schema_revision(chat_server)
    was_current, was_previous = releases.switch_to(target)
    progress.say(f"current -> {target}, previous -> {was_current}")

    t = time.monotonic()
    failure = None
    try:
        run_installer(target, progress, check_ports=check_ports)
    except UpgradeFailed as e:
        failure = str(e)
    step("install", t)
    entry["schema_after"] = _revision_or_none(chat_server)

    if failure is None:
        t = time.monotonic()
        progress.say("checking health: status, an XMPP login, a REST call")
        results = check_health(chat_server, say=progress.say, test_hook=True)
        step("health", t)
        entry["health"] = {r.name: {"ok": r.ok, "detail": r.detail} for r in results}
        bad = [r for r in results if not r.ok]
        if bad:
            failure = "health check failed: " + "; ".join(f"{r.name}: {r.detail}" for r in bad)

    if failure is not None:
        progress.say(f"UPGRADE FAILED: {failure}")
        progress.say(f"rolling back to {releases.release_version(was_current)}")
        entry["failure"] = failure
        t = time.monotonic()
        try:
            roll_back(chat_server, progress, schema_target=entry["schema_before"], record_history=False, check_ports=check_ports)
            entry["outcome"] = "rolled back"
        except Exception as e:  # the rollback itself failed: say so, with the backup to restore
            entry["outcome"] = "failed"
            entry["rollback_failure"] = str(e)
        step("rollback", t)
    else:
        entry["outcome"] = "succeeded"
    entry["finished_at"] = history.now_iso()
    entry["seconds"] = round(time.monotonic() - t0, 1)
    history.record(entry)
    if entry["outcome"] == "failed":
        raise UpgradeFailed(
            f"{failure}; the rollback failed too: {entry['rollback_failure']}. "
            f"Restore the backup taken before the upgrade: hipchat-appliance restore {entry['backup']}"
        )
    return entry


def _revision_or_none(chat_server):
    try:
        return schema_revision(chat_server)
    except Exception:
        return None
