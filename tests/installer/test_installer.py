"""The installer: re-runs change nothing, --check changes nothing, preflight stops early, lint and packer pass."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess

import pytest

from tests.conftest import REPO_DIR, SECRETS_DIR, VENV_DIR, recap_counts, run_installer

pytestmark = pytest.mark.installer


def _secrets_digest() -> str:
    digest = hashlib.sha256()
    for name in sorted(os.listdir(SECRETS_DIR)):
        with open(os.path.join(SECRETS_DIR, name), "rb") as f:
            digest.update(name.encode() + b"\0" + f.read())
    return digest.hexdigest()


def test_rerun_changes_nothing_and_keeps_secrets():
    """A second install on an installed host reports changed=0 and leaves every secret as it was."""
    before = _secrets_digest()
    result = run_installer()
    assert result.returncode == 0, result.stdout[-4000:]
    counts = recap_counts(result.stdout)
    assert counts["failed"] == 0
    assert counts["changed"] == 0, [l for l in result.stdout.splitlines() if l.startswith("changed:")]
    assert _secrets_digest() == before
    assert "What runs where" in result.stdout  # the closing summary


def test_check_mode_reports_no_change():
    """`install.sh --check` on an installed host is a dry run that finds nothing to change."""
    result = run_installer("--check")
    assert result.returncode == 0, result.stdout[-4000:]
    assert recap_counts(result.stdout)["changed"] == 0
    assert "nothing was changed" in result.stdout


def test_preflight_stops_on_a_taken_port():
    """A port the appliance needs, held by another process, stops the installer with a message naming it."""
    with socket.socket() as holder:
        holder.bind(("0.0.0.0", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run_installer("-e", f"chat_core_https_port={port}")
    assert result.returncode != 0
    assert f"port: {port}" in result.stdout
    assert "is taken by" in result.stdout
    # Stopped before any change: the configured port is still the real one.
    assert f"https_port: {port}" not in open("/etc/hipchat/hipchat.yml").read()


def test_preflight_stops_on_too_little_memory():
    """A host with less memory than the profile needs is refused, naming memory and the amounts."""
    result = run_installer("-e", "preflight_min_memory_mb=100000000")
    assert result.returncode != 0
    assert "memory: this host has" in result.stdout
    assert "100000000 MiB" in result.stdout


def test_unknown_profile_is_refused_with_the_choices():
    """An unknown --profile names the profiles that exist."""
    result = run_installer("--profile", "huge")
    assert result.returncode == 2
    assert "single-host" in result.stderr and "large" in result.stderr


def test_ansible_lint_passes():
    """ansible-lint finds nothing in the playbook and roles."""
    lint = shutil.which("ansible-lint", path=f"{VENV_DIR}/bin")
    result = subprocess.run(
        [lint, "installer/site.yml", "roles"],
        cwd=REPO_DIR,
        capture_output=True,
        text=True,
        env={**os.environ, "ANSIBLE_CONFIG": os.path.join(REPO_DIR, "installer", "ansible.cfg"), "PATH": f"{VENV_DIR}/bin:{os.environ['PATH']}"},
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]


def test_packer_template_validates():
    """`packer validate` accepts packer.json with an image URL and checksum given as variables."""
    result = subprocess.run(
        [
            "packer", "validate",
            "-var", "image_url=file:///srv/images/debian-12-netinst.iso",
            "-var", "image_checksum=sha256:" + "0" * 64,
            "packer.json",
        ],
        cwd=REPO_DIR,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_packer_template_requires_an_image():
    """Without an image URL the template is refused, so a build cannot silently pick one."""
    result = subprocess.run(["packer", "validate", "packer.json"], cwd=REPO_DIR, capture_output=True, text=True)
    assert result.returncode != 0


def test_large_profile_is_sized_beyond_this_host():
    """The large profile's memory floor reaches the preflight: on this 24 GB host it is refused, naming 28672 MiB.

    Run with --check, so that on a host big enough for it nothing would change either.
    """
    result = run_installer("--profile", "large", "--check")
    with open("/proc/meminfo") as f:
        memory_mb = int(f.readline().split()[1]) // 1024
    if memory_mb < 28672:
        assert result.returncode != 0
        assert "the profile needs 28672 MiB" in result.stdout
    else:
        assert result.returncode == 0, result.stdout[-4000:]


def test_writeback_is_flushed_early_and_kept_across_reboots():
    """The kernel starts flushing at 32 MiB of written data, so a backup's writes never stall the spool's fsyncs."""
    with open("/proc/sys/vm/dirty_background_bytes") as f:
        assert int(f.read()) == 32 * 1024 * 1024
    with open("/proc/sys/vm/dirty_bytes") as f:
        assert int(f.read()) == 256 * 1024 * 1024
    with open("/etc/sysctl.d/60-hipchat-writeback.conf") as f:
        text = f.read()
    assert "vm.dirty_background_bytes = 33554432" in text and "vm.dirty_bytes = 268435456" in text
