"""Build an offline bundle: everything an appliance needs to install or upgrade with no network.

Runs on a machine that reaches the package registries (Debian 12 on the appliance's architecture,
with the appliance's Python, so the wheels fit). It assembles a staging tree

    installer/ roles/ hipchat_server/ appliance/ setup.cfg pyproject.toml README.md   (this version)
    wheels/      the project's wheel, every dependency, ansible-core, and the build backend
                 (setuptools, wheel) that the chat_core role needs to install the tree offline
    debs/        every Debian package the roles install with its dependencies, resolved by apt
                 against an empty package status (a fresh host) and indexed (Packages)
    opensearch/  lib/*.jar fetched by Maven with the opensearch role's pom.xml, or the official
                 tarball given with --opensearch-tarball
    webclient/   npm-cache/: npm's cache holding the Converse.js release the chat_core role vendors

and signs it into ``hipchat-appliance-<version>.bundle`` (see ``manifest``). The Alembic
migrations are inside the project (hipchat_server/storage/migrations) and so in its wheel.
"""

from __future__ import annotations

import glob
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable

import yaml

from appliance.bundle import manifest as bundle_manifest

# What the chat_core role's checksum covers (roles/chat_core/tasks/install.yml) plus the installer.
TREE_ENTRIES = ("installer", "roles", "hipchat_server", "appliance", "setup.cfg", "pyproject.toml", "README.md")
# Debian packages named in tasks rather than in a role's *_packages default: install.sh's
# python3/python3-venv, the web client's Node.js and npm (roles/chat_core/tasks/webclient.yml),
# and python3-apt, which Ansible's apt module needs on the host.
EXTRA_DEBS = ("python3", "python3-venv", "python3-apt", "nodejs", "npm")
# pyproject.toml's build backend: pip needs it to install the tree with --no-index.
BUILD_BACKEND = ("setuptools>=68", "wheel")


class BuildError(Exception):
    """The bundle could not be built; ``str()`` says which step failed and why."""


@dataclass
class BuildReport:
    path: str
    version: str
    bytes: int
    seconds: float
    files: int
    parts: dict[str, dict] = field(default_factory=dict)  # name -> {"files", "bytes", "seconds"}

    def to_dict(self) -> dict:
        return {"path": self.path, "version": self.version, "bytes": self.bytes, "seconds": round(self.seconds, 1),
                "files": self.files, "parts": self.parts}


def tree_version(source_dir: str) -> str:
    with open(os.path.join(source_dir, "hipchat_server", "__init__.py")) as f:
        match = re.search(r'^__version__\s*=\s*"([^"]+)"', f.read(), re.M)
    if not match:
        raise BuildError(f"{source_dir}/hipchat_server/__init__.py has no __version__")
    return match.group(1)


def _run(step: str, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise BuildError(f"{step}: `{' '.join(argv[:4])} ...` exited {done.returncode}:\n{tail}")
    return done


def _copy_tree(source_dir: str, staging: str) -> None:
    """The files of this version, as the chat_core role checksums them (no __pycache__, no .pyc)."""
    for entry in TREE_ENTRIES:
        src = os.path.join(source_dir, entry)
        if os.path.isfile(src):
            shutil.copy2(src, os.path.join(staging, entry))
            continue
        for root, dirs, names in os.walk(src):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(names):
                full = os.path.join(root, name)
                if name.endswith(".pyc") or os.path.islink(full) or not os.path.isfile(full):
                    continue
                if name.endswith(".key") and os.path.basename(root) == "keys":
                    raise BuildError(f"{full} looks like a private signing key: keep private keys outside the tree")
                rel = os.path.relpath(full, source_dir)
                os.makedirs(os.path.dirname(os.path.join(staging, rel)), exist_ok=True)
                shutil.copy2(full, os.path.join(staging, rel))


def _wheels(staging: str, work: str) -> None:
    wheels = os.path.join(staging, "wheels")
    # Build from a copy: pip builds in the tree (build/, *.egg-info), which must not land in the bundle.
    src = os.path.join(work, "src")
    os.makedirs(src)
    for entry in ("hipchat_server", "appliance", "setup.cfg", "pyproject.toml", "README.md"):
        path = os.path.join(staging, entry)
        (shutil.copytree if os.path.isdir(path) else shutil.copy2)(path, os.path.join(src, entry))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    _run("wheels", pip + ["wheel", "--wheel-dir", wheels, src, "-r", os.path.join(staging, "installer", "requirements.txt")])
    _run("build backend", pip + ["download", "--only-binary", ":all:", "--dest", wheels, *BUILD_BACKEND])


def _role_packages(staging: str) -> list[str]:
    packages = set(EXTRA_DEBS)
    for path in glob.glob(os.path.join(staging, "roles", "*", "defaults", "main.yml")):
        with open(path) as f:
            defaults = yaml.safe_load(f) or {}
        for name, value in defaults.items():
            if name.endswith("_packages") and isinstance(value, list):
                packages.update(v for v in value if isinstance(v, str) and "{{" not in v)
    return sorted(packages)


def _debs(staging: str, work: str) -> list[str]:
    """Download the roles' packages and their whole dependency closure, as a fresh host needs them."""
    debs = os.path.join(staging, "debs")
    archives = os.path.join(work, "apt-archives")
    os.makedirs(os.path.join(archives, "partial"))
    status = os.path.join(work, "dpkg-status-empty")
    open(status, "w").close()
    packages = _role_packages(staging)
    _run("debs", [
        "apt-get", "--quiet", "--yes", "--no-install-recommends", "--download-only",
        "-o", f"Dir::State::status={status}", "-o", f"Dir::Cache::archives={archives}",
        "install", *packages,
    ], env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    os.makedirs(debs)
    for name in os.listdir(archives):
        if name.endswith(".deb"):
            os.replace(os.path.join(archives, name), os.path.join(debs, name))
    index = _run("debs index", ["dpkg-scanpackages", "--multiversion", "."], cwd=debs)
    with open(os.path.join(debs, "Packages"), "w") as f:
        f.write(index.stdout)
    return packages


def _opensearch(staging: str, work: str, tarball: str | None) -> dict:
    target = os.path.join(staging, "opensearch")
    os.makedirs(target)
    with open(os.path.join(staging, "roles", "opensearch", "defaults", "main.yml")) as f:
        defaults = yaml.safe_load(f)
    version = defaults["opensearch_version"]
    if tarball:
        name = os.path.basename(tarball)
        if not re.match(rf"^opensearch-{re.escape(version)}-linux-[a-z0-9_]+\.tar\.gz$", name):
            raise BuildError(f"{name}: expected opensearch-{version}-linux-<arch>.tar.gz (the roles' opensearch_version)")
        shutil.copy2(tarball, os.path.join(target, name))
        return {"version": version, "source": "tarball", "file": name}
    pom_dir = os.path.join(work, "opensearch-pom")
    os.makedirs(pom_dir)
    shutil.copy2(os.path.join(staging, "roles", "opensearch", "files", "pom.xml"), pom_dir)
    _run("opensearch jars", [
        "mvn", "--batch-mode", "--quiet", "--file", os.path.join(pom_dir, "pom.xml"),
        f"-Dopensearch.version={version}", f"-Dlog4j.version={defaults['opensearch_log4j_version']}",
        *defaults.get("opensearch_maven_options", []),
        "dependency:copy-dependencies", "-DincludeScope=runtime", f"-DoutputDirectory={os.path.join(target, 'lib')}",
    ], cwd=pom_dir)
    return {"version": version, "source": "maven", "jars": len(os.listdir(os.path.join(target, "lib")))}


def _webclient(staging: str) -> dict | None:
    with open(os.path.join(staging, "roles", "chat_core", "defaults", "main.yml")) as f:
        version = (yaml.safe_load(f) or {}).get("chat_core_webclient_version")
    if not version:
        return None
    cache = os.path.join(staging, "webclient", "npm-cache")
    os.makedirs(cache)
    _run("web client", ["npm", "cache", "add", f"converse.js@{version}", "--cache", cache, "--silent"])
    for stale in ("_logs", "_update-notifier-last-checked"):
        path = os.path.join(cache, stale)
        shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else (os.path.exists(path) and os.remove(path))
    return {"package": "converse.js", "version": version}


def _measure(path: str) -> dict:
    files, size = 0, 0
    for root, _, names in os.walk(path):
        for name in names:
            files += 1
            size += os.path.getsize(os.path.join(root, name))
    return {"files": files, "bytes": size}


def build_bundle(
    *,
    source_dir: str,
    version: str,
    signing_key: str,
    out_dir: str,
    upgrades_from: list[str] | None = None,
    opensearch_tarball: str | None = None,
    progress: Callable[[str], None] = lambda message: None,
) -> BuildReport:
    """Build ``<out_dir>/hipchat-appliance-<version>.bundle`` from the tree in ``source_dir``."""
    started = time.monotonic()
    source_dir = os.path.abspath(source_dir)
    here = tree_version(source_dir)
    if here != version:
        raise BuildError(f"the tree in {source_dir} is version {here} (hipchat_server/__init__.py), not {version}: "
                         "set __version__ there first, so the installed appliance reports the bundle's version")
    if not os.path.isfile(signing_key):
        raise BuildError(f"no signing key at {signing_key}")
    bundle_manifest.key_id_of(signing_key)
    os.makedirs(out_dir, exist_ok=True)
    out_path = os.path.join(os.path.abspath(out_dir), f"hipchat-appliance-{version}.bundle")
    parts: dict[str, dict] = {}
    work = tempfile.mkdtemp(prefix=".bundle-build-", dir=out_dir)
    staging = os.path.join(work, "staging")
    os.makedirs(staging)
    try:
        extra: dict = {
            "migrations": "inside the project's wheel and tree: hipchat_server/storage/migrations (Alembic)",
            "python": f"{sys.version_info.major}.{sys.version_info.minor}",
            "architecture": platform.machine(),
        }

        def part(name: str, what: str, step: Callable[[], object]) -> object:
            progress(f"{what}...")
            t = time.monotonic()
            result = step()
            figures = _measure(os.path.join(staging if name == "tree" else os.path.join(staging, name)))
            parts[name] = {**figures, "seconds": round(time.monotonic() - t, 1)}
            return result

        part("tree", "Copying the installer, roles and project tree", lambda: _copy_tree(source_dir, staging))
        part("wheels", "Building the project's wheel and fetching every Python dependency", lambda: _wheels(staging, work))
        extra["debs"] = part("debs", "Fetching the Debian packages and their dependencies", lambda: _debs(staging, work))
        extra["opensearch"] = part("opensearch", "Fetching OpenSearch", lambda: _opensearch(staging, work, opensearch_tarball))
        webclient = part("webclient", "Fetching the web client (Converse.js)", lambda: _webclient(staging))
        if webclient:
            extra["webclient"] = webclient
        else:
            shutil.rmtree(os.path.join(staging, "webclient"), ignore_errors=True)
            parts.pop("webclient", None)
        progress("Signing and writing the bundle...")
        t = time.monotonic()
        manifest = bundle_manifest.make_bundle(
            out_path, source_dir=staging, version=version, upgrades_from=upgrades_from or [f"<{version}"],
            private_key_path=signing_key, extra=extra,
        )
        parts["sign"] = {"seconds": round(time.monotonic() - t, 1)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return BuildReport(path=out_path, version=version, bytes=os.path.getsize(out_path),
                       seconds=time.monotonic() - started, files=len(manifest["files"]), parts=parts)
