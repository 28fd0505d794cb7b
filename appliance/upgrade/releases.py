"""Versioned release directories and the ``current`` / ``previous`` links.

``/opt/hipchat/releases/<version>/`` is an unpacked bundle (its ``manifest.json``,
``wheels/``, ``debs/``, ``installer/``, ``roles/``...). ``/opt/hipchat/current`` and
``/opt/hipchat/previous`` are symbolic links to two of them, each replaced atomically
(a new link renamed over the old one).

An appliance installed online (``install.sh`` from a source tree) has no release
directory yet. Before its first upgrade its running version is *adopted*: the installed
project is packed back into a wheel from its RECORD (the files pip installed, with their
hashes), so a rollback can reinstall it with no network. An adopted release has no
installer of its own; ``release.json`` says so.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import importlib.metadata
import json
import os
import shutil
import sys
import sysconfig
import tarfile
import zipfile

BASE_DIR = os.environ.get("HIPCHAT_BASE_DIR", "/opt/hipchat")
DISTRIBUTION = "hipchat-server"


def releases_dir() -> str:
    return os.path.join(BASE_DIR, "releases")


def link_path(name: str) -> str:
    """``current`` or ``previous``."""
    return os.path.join(BASE_DIR, name)


def release_path(version: str) -> str:
    return os.path.join(releases_dir(), version)


def linked_release(name: str) -> str | None:
    """The release directory ``current`` or ``previous`` points at, None when there is no such link."""
    path = link_path(name)
    if not os.path.islink(path):
        return None
    return os.path.realpath(path)


def release_version(path: str | None) -> str | None:
    return os.path.basename(path) if path else None


def release_info(path: str) -> dict:
    """``release.json`` of a release: how it got there (``adopted`` or from a bundle)."""
    try:
        with open(os.path.join(path, "release.json")) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


def _installed_distribution() -> importlib.metadata.Distribution:
    """The chat core as installed in this virtualenv's site-packages (never a source tree's egg-info)."""
    site = sysconfig.get_paths()["purelib"]
    for dist in importlib.metadata.distributions(path=[site]):
        if dist.metadata["Name"] and dist.metadata["Name"].lower().replace("_", "-") == DISTRIBUTION:
            return dist
    raise importlib.metadata.PackageNotFoundError(DISTRIBUTION)


def installed_version() -> str:
    """The version of the chat core installed in the virtualenv (what runs)."""
    return _installed_distribution().version


def _set_link(name: str, target: str | None) -> None:
    path = link_path(name)
    if target is None:
        if os.path.islink(path):
            os.unlink(path)
        return
    tmp = f"{path}.new"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, path)


def switch_to(new_release: str) -> tuple[str | None, str | None]:
    """``previous`` := old ``current``, ``current`` := ``new_release``; returns the links as they were."""
    was = (linked_release("current"), linked_release("previous"))
    if was[0] and was[0] != new_release:
        _set_link("previous", was[0])
    _set_link("current", new_release)
    return was


def set_links(current: str | None, previous: str | None) -> None:
    """Put both links back as they were (a failed upgrade, a rollback)."""
    _set_link("current", current)
    _set_link("previous", previous)


def unpack(bundle_path: str, version: str) -> str:
    """Unpack a verified bundle into ``releases/<version>`` (replacing an earlier unpack of it)."""
    target = release_path(version)
    staging = os.path.join(releases_dir(), f".unpack-{version}")
    os.makedirs(releases_dir(), mode=0o755, exist_ok=True)
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    with tarfile.open(bundle_path, "r:*") as tar:
        tar.extractall(staging, filter="data")
    with open(os.path.join(staging, "release.json"), "w") as f:
        json.dump({"version": version, "from_bundle": os.path.basename(bundle_path)}, f, indent=2)
    if os.path.isdir(target):
        shutil.rmtree(target)
    os.rename(staging, target)
    return target


def adopt_running() -> str:
    """Make ``releases/<running version>`` for an appliance installed without a bundle; returns its path.

    A release adopted before is made again from what is installed now.

    Its ``wheels/`` holds the installed project packed back into a wheel, enough for a
    rollback to reinstall it offline (the dependencies are the ones already installed).
    """
    version = installed_version()
    target = release_path(version)
    if os.path.isdir(target) and not release_info(target).get("adopted"):
        return target  # this version came from a bundle: that is the release
    # Adopted again at every upgrade: the online installer may have put newer code in since.
    staging = os.path.join(releases_dir(), f".adopt-{version}")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(os.path.join(staging, "wheels"))
    wheel = repack_installed_wheel(os.path.join(staging, "wheels"))
    info = {"version": version, "adopted": True, "wheel": os.path.basename(wheel)}
    # The installer's record of the source it installed: put back on a rollback, so a re-run of
    # that source's installer sees nothing to reinstall.
    checksum_file = os.path.join(sys.prefix, ".hipchat-source.sha256")
    if os.path.isfile(checksum_file):
        with open(checksum_file) as f:
            info["source_checksum"] = f.read().strip()
    with open(os.path.join(staging, "release.json"), "w") as f:
        json.dump(info, f, indent=2)
    if os.path.isdir(target):
        shutil.rmtree(target)
    os.rename(staging, target)
    return target


def repack_installed_wheel(out_dir: str) -> str:
    """Write the installed ``hipchat-server`` back as a wheel into ``out_dir``; returns its path.

    Only the files inside site-packages that the RECORD lists go in (console scripts are
    regenerated by pip from ``entry_points.txt``); the RECORD is rewritten to match.
    """
    dist = _installed_distribution()
    site = str(dist.locate_file(""))
    dist_info = os.path.basename(str(dist._path))  # e.g. hipchat_server-0.1.0.dist-info
    name = dist_info[: -len(".dist-info")]
    wheel_path = os.path.join(out_dir, f"{name}-py3-none-any.whl")
    record_name = f"{dist_info}/RECORD"
    rows = []
    with zipfile.ZipFile(wheel_path, "w", zipfile.ZIP_DEFLATED) as whl:
        for file in dist.files or []:
            rel = str(file)
            if rel.startswith("..") or "__pycache__" in rel or rel == record_name or rel.endswith(("INSTALLER", "REQUESTED", "direct_url.json")):
                continue
            full = os.path.join(site, rel)
            if not os.path.isfile(full):
                continue
            with open(full, "rb") as f:
                data = f.read()
            whl.writestr(rel, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            rows.append((rel, f"sha256={digest}", str(len(data))))
        text = _csv_lines(rows + [(record_name, "", "")])
        whl.writestr(record_name, text)
    return wheel_path


def _csv_lines(rows) -> str:
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerows(rows)
    return buf.getvalue()
