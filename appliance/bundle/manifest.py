"""A bundle's manifest: what it holds, which versions may upgrade to it, and its Ed25519 signature.

A bundle is an uncompressed tar whose first two members are ``manifest.json`` and ``manifest.sig``
(the raw 64-byte Ed25519 signature of manifest.json's exact bytes), followed by every file the
manifest lists under ``files`` with its SHA-256 and size. Verification refuses, with the reason:
a signature by a key this appliance does not trust (``unknown key``), a signature that does not
match (``bad signature``), a member whose bytes differ (``checksum mismatch: <path>``), a listed
file that is absent (``missing file``), a member the manifest does not list (``extra file``), and
any member that is not a plain file or directory inside the bundle (links, absolute paths, ``..``).

Keys are raw 32-byte Ed25519 keys in base64, one per file: ``<key-id>.pub`` (public, shipped in
``appliance/bundle/keys/``) and ``<key-id>.key`` (private, kept off the appliance, mode 0600). The
key id is the file's stem; a bundle names the key that signed it, so several keys can be trusted at
once while one is rotated out.

When the ``cryptography`` package is absent (a fresh host's system Python before the appliance's
virtualenv exists) signatures are checked with ``openssl pkeyutl`` instead.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import IO, Iterable

FORMAT = 1
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
# The keys shipped with this version of the appliance.
SHIPPED_KEYS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "keys")
KEY_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_CHUNK = 1024 * 1024
# DER prefix of an Ed25519 SubjectPublicKeyInfo; the raw 32-byte key follows (for openssl).
_ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")


class BundleRefused(Exception):
    """The bundle cannot be trusted or used; ``str()`` says why, naming the file when one is at fault."""


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle whose signature and every checksum were checked."""

    path: str
    manifest: dict

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def key_id(self) -> str:
        return self.manifest["key_id"]


# -- keys -----------------------------------------------------------------------------------------


def _check_key_id(key_id: str) -> str:
    if not KEY_ID_PATTERN.match(key_id):
        raise ValueError(f"invalid key id {key_id!r}: letters, digits, '.', '_' and '-' only, at most 64")
    return key_id


def generate_key_pair(out_dir: str, key_id: str | None = None) -> tuple[str, str]:
    """Write ``<key-id>.key`` (mode 0600) and ``<key-id>.pub`` into ``out_dir``; return both paths.

    Without ``key_id`` the id is ``hipchat-<YYYYmmdd>-<first 8 hex of the public key's SHA-256>``.
    Existing files are never overwritten.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Ed25519PrivateKey.generate()
    raw_private = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    raw_public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if key_id is None:
        key_id = f"hipchat-{datetime.now(timezone.utc):%Y%m%d}-{hashlib.sha256(raw_public).hexdigest()[:8]}"
    _check_key_id(key_id)
    os.makedirs(out_dir, exist_ok=True)
    key_path = os.path.join(out_dir, f"{key_id}.key")
    pub_path = os.path.join(out_dir, f"{key_id}.pub")
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(base64.b64encode(raw_private).decode() + "\n")
    with open(pub_path, "x") as f:
        f.write(base64.b64encode(raw_public).decode() + "\n")
    return key_path, pub_path


def _read_raw_key(path: str) -> bytes:
    with open(path) as f:
        try:
            raw = base64.b64decode(f.read().strip(), validate=True)
        except ValueError:
            raise ValueError(f"{path}: not a base64 Ed25519 key") from None
    if len(raw) != 32:
        raise ValueError(f"{path}: an Ed25519 key is 32 bytes, this one is {len(raw)}")
    return raw


def key_id_of(path: str) -> str:
    """The key id of a ``.key`` or ``.pub`` file: its name without the extension."""
    return _check_key_id(os.path.splitext(os.path.basename(path))[0])


def load_trusted_keys(dirs: Iterable[str] | None = None) -> dict[str, bytes]:
    """``{key_id: raw public key}`` from every ``*.pub`` in ``dirs`` (default: the shipped keys).

    Directories that do not exist are skipped; a later directory cannot replace a key id already
    trusted with different bytes (that is refused, not silently resolved).
    """
    keys: dict[str, bytes] = {}
    for directory in dirs if dirs is not None else [SHIPPED_KEYS_DIR]:
        if not directory or not os.path.isdir(directory):
            continue
        for name in sorted(os.listdir(directory)):
            if not name.endswith(".pub"):
                continue
            path = os.path.join(directory, name)
            key_id, raw = key_id_of(path), _read_raw_key(path)
            if keys.get(key_id, raw) != raw:
                raise ValueError(f"{path}: key id {key_id} is already trusted with a different key")
            keys[key_id] = raw
    return keys


def trusted_key_dirs(extra: str | None = None) -> list[str]:
    """The shipped keys plus ``extra`` (``--trusted-keys-dir`` / ``upgrade.trusted_keys_dir``)."""
    return [SHIPPED_KEYS_DIR] + ([extra] if extra else [])


# -- signing --------------------------------------------------------------------------------------


def manifest_bytes(manifest: dict) -> bytes:
    """The exact bytes written as manifest.json and signed (sorted keys, two-space indent)."""
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()


def sign(data: bytes, private_key_path: str) -> bytes:
    """The Ed25519 signature (64 bytes) of ``data`` with the raw private key in ``private_key_path``."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.from_private_bytes(_read_raw_key(private_key_path)).sign(data)


def public_key_of(private_key_path: str) -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Ed25519PrivateKey.from_private_bytes(_read_raw_key(private_key_path))
    return private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def signature_valid(public_key: bytes, signature: bytes, data: bytes) -> bool:
    """Whether ``signature`` is ``public_key``'s Ed25519 signature of ``data``."""
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    except ImportError:
        return _openssl_signature_valid(public_key, signature, data)
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, data)
    except InvalidSignature:
        return False
    return True


def _openssl_signature_valid(public_key: bytes, signature: bytes, data: bytes) -> bool:
    if shutil.which("openssl") is None:
        raise BundleRefused("cannot check the signature: neither Python's cryptography package nor openssl is installed")
    der = base64.b64encode(_ED25519_SPKI_PREFIX + public_key).decode()
    with tempfile.TemporaryDirectory() as tmp:
        paths = {n: os.path.join(tmp, n) for n in ("key.pem", "data", "sig")}
        with open(paths["key.pem"], "w") as f:
            f.write(f"-----BEGIN PUBLIC KEY-----\n{der}\n-----END PUBLIC KEY-----\n")
        for name, content in (("data", data), ("sig", signature)):
            with open(paths[name], "wb") as f:
                f.write(content)
        done = subprocess.run(
            ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", paths["key.pem"], "-rawin",
             "-in", paths["data"], "-sigfile", paths["sig"]],
            capture_output=True,
        )
    return done.returncode == 0


# -- the manifest ---------------------------------------------------------------------------------


def file_entry(path: str) -> dict:
    """``{"sha256", "bytes"}`` of a file on disk."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return {"sha256": digest.hexdigest(), "bytes": size}


def build_manifest(
    *,
    version: str,
    upgrades_from: list[str],
    key_id: str,
    files: dict[str, dict],
    created_at: datetime | None = None,
    extra: dict | None = None,
) -> dict:
    """A format-1 manifest; ``files`` maps each member path (relative, '/'-separated) to its entry."""
    from packaging.specifiers import SpecifierSet

    for spec in upgrades_from:
        SpecifierSet(spec)  # InvalidSpecifier names the bad one
    manifest = {
        "format": FORMAT,
        "version": version,
        "upgrades_from": list(upgrades_from),
        "key_id": _check_key_id(key_id),
        "created_at": (created_at or datetime.now(timezone.utc)).astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "files": {path: files[path] for path in sorted(files)},
    }
    manifest.update(extra or {})
    return manifest


def may_upgrade_from(manifest: dict, running_version: str) -> bool:
    """Whether ``running_version`` matches one of the manifest's ``upgrades_from`` specifiers."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    try:
        running = Version(running_version)
    except InvalidVersion:
        return False
    return any(running in SpecifierSet(spec, prereleases=True) for spec in manifest.get("upgrades_from", []))


def write_bundle(out_path: str, manifest: dict, private_key_path: str, source_dir: str) -> None:
    """Write the signed tar: manifest.json, manifest.sig, then every listed file from ``source_dir``.

    The tar is written to ``<out_path>.partial`` and renamed, so a bundle that exists is complete.
    """
    data = manifest_bytes(manifest)
    signature = sign(data, private_key_path)
    partial = out_path + ".partial"
    with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in ((MANIFEST_NAME, data), (SIGNATURE_NAME, signature)):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(content), 0o644, int(datetime.now(timezone.utc).timestamp())
            tar.addfile(info, _BytesReader(content))
        for path in manifest["files"]:
            info = tar.gettarinfo(os.path.join(source_dir, path), arcname=path)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            with open(os.path.join(source_dir, path), "rb") as f:
                tar.addfile(info, f)
    os.replace(partial, out_path)


class _BytesReader:
    def __init__(self, content: bytes) -> None:
        self._content, self._at = content, 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._content) if size < 0 else self._at + size
        chunk, self._at = self._content[self._at:end], min(end, len(self._content))
        return chunk


# -- verification ---------------------------------------------------------------------------------


def _safe_member_name(name: str) -> bool:
    parts = name.split("/")
    return bool(name) and not name.startswith("/") and ".." not in parts and "" not in parts[:-1]


def _read_header(tar: tarfile.TarFile, trusted: dict[str, bytes]) -> tuple[dict, bytes, bytes]:
    """Read and check manifest.json and manifest.sig (the first two members).

    Returns the manifest, its exact bytes and the signature.
    """
    members = []
    for expected in (MANIFEST_NAME, SIGNATURE_NAME):
        member = tar.next()
        if member is None or member.name != expected or not member.isfile():
            raise BundleRefused(f"not a bundle: {expected} must be member {len(members) + 1} of the tar")
        if member.size > 64 * 1024 * 1024:
            raise BundleRefused(f"not a bundle: {expected} is {member.size} bytes")
        members.append(tar.extractfile(member).read())
    data, signature = members
    try:
        manifest = json.loads(data)
    except ValueError as e:
        raise BundleRefused(f"manifest.json is not JSON: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleRefused(f"unsupported manifest format {manifest.get('format') if isinstance(manifest, dict) else None!r} (this appliance reads format {FORMAT})")
    key_id = manifest.get("key_id")
    if key_id not in trusted:
        known = ", ".join(sorted(trusted)) or "none"
        raise BundleRefused(f"unknown key: the bundle is signed by key {key_id!r}, which this appliance does not trust (trusted: {known})")
    if not signature_valid(trusted[key_id], signature, data):
        raise BundleRefused(f"bad signature: manifest.sig is not key {key_id}'s signature of manifest.json")
    files = manifest.get("files")
    if not isinstance(files, dict) or not isinstance(manifest.get("version"), str):
        raise BundleRefused("manifest.json lacks version or files")
    for path in files:
        if not _safe_member_name(path) or path in (MANIFEST_NAME, SIGNATURE_NAME):
            raise BundleRefused(f"manifest lists an unsafe path: {path!r}")
    return manifest, data, signature


def _check_members(tar: tarfile.TarFile, manifest: dict, dest: str | None) -> None:
    """Hash every remaining member against the manifest, writing it under ``dest`` when given."""
    files = manifest["files"]
    seen: set[str] = set()
    for index, member in enumerate(tar):
        if index < 2:  # manifest.json and manifest.sig, read and checked by _read_header
            continue
        name = member.name.rstrip("/") if member.isdir() else member.name
        if not _safe_member_name(name):
            raise BundleRefused(f"unsafe member in bundle: {member.name!r}")
        if member.isdir():
            continue
        if not member.isfile():
            raise BundleRefused(f"unsupported member type in bundle (only plain files): {name}")
        if name not in files:
            raise BundleRefused(f"extra file: {name} is in the bundle but not in its manifest")
        if name in seen:
            raise BundleRefused(f"extra file: {name} appears twice in the bundle")
        seen.add(name)
        expected = files[name]
        digest, size = hashlib.sha256(), 0
        source = tar.extractfile(member)
        out: IO[bytes] | None = None
        if dest is not None:
            target = os.path.join(dest, *name.split("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            out = open(target, "wb")
        try:
            while chunk := source.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
                if out is not None:
                    out.write(chunk)
        finally:
            if out is not None:
                out.close()
                os.chmod(target, 0o755 if member.mode & 0o111 else 0o644)
        if size != expected.get("bytes") or digest.hexdigest() != expected.get("sha256"):
            raise BundleRefused(f"checksum mismatch: {name} (manifest sha256 {expected.get('sha256')}, {expected.get('bytes')} bytes; "
                                f"bundle sha256 {digest.hexdigest()}, {size} bytes)")
    missing = sorted(set(files) - seen)
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise BundleRefused(f"missing file: {missing[0]}{more} listed in the manifest is not in the bundle")


def _open(path: str) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:")
    except (OSError, tarfile.TarError) as e:
        raise BundleRefused(f"not a bundle: {path}: {e}") from None


def verify_bundle(path: str, trusted_keys_dirs: Iterable[str] | None = None) -> VerifiedBundle:
    """Check ``path``'s signature and every member's checksum without writing anything.

    Raises ``BundleRefused`` with the reason. ``trusted_keys_dirs`` defaults to the shipped keys.
    """
    trusted = load_trusted_keys(trusted_keys_dirs)
    with _open(path) as tar:
        try:
            manifest, _, _ = _read_header(tar, trusted)
            _check_members(tar, manifest, None)
        except (tarfile.TarError, EOFError) as e:
            raise BundleRefused(f"damaged bundle: {e}") from None
    return VerifiedBundle(path=path, manifest=manifest)


def unpack_bundle(path: str, dest: str, trusted_keys_dirs: Iterable[str] | None = None) -> VerifiedBundle:
    """Verify ``path`` while unpacking it into ``dest`` (which must not exist); return the manifest.

    Unpacks into ``<dest>.partial`` and renames it only when every check passed, so a refused
    bundle leaves nothing at ``dest`` (and removes the partial directory). Checking and writing
    in one pass means the bytes written are the bytes checked. manifest.json and manifest.sig are
    kept in ``dest`` so the release can be verified again later (``verify_directory``).
    """
    if os.path.exists(dest):
        raise BundleRefused(f"{dest} exists already")
    trusted = load_trusted_keys(trusted_keys_dirs)
    partial = dest.rstrip("/") + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    try:
        with _open(path) as tar:
            try:
                manifest, data, signature = _read_header(tar, trusted)
                _check_members(tar, manifest, partial)
            except (tarfile.TarError, EOFError) as e:
                raise BundleRefused(f"damaged bundle: {e}") from None
        for name, content in ((MANIFEST_NAME, data), (SIGNATURE_NAME, signature)):
            with open(os.path.join(partial, name), "wb") as f:
                f.write(content)
        os.replace(partial, dest)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return VerifiedBundle(path=dest, manifest=manifest)


def verify_directory(directory: str, trusted_keys_dirs: Iterable[str] | None = None) -> dict:
    """Check an unpacked release (``unpack_bundle``'s output) again: signature, checksums, no extra file.

    Returns the manifest; raises ``BundleRefused`` with the reason.
    """
    trusted = load_trusted_keys(trusted_keys_dirs)
    try:
        with open(os.path.join(directory, MANIFEST_NAME), "rb") as f:
            data = f.read()
        with open(os.path.join(directory, SIGNATURE_NAME), "rb") as f:
            signature = f.read()
    except FileNotFoundError as e:
        raise BundleRefused(f"not an unpacked bundle: {e.filename} is missing") from None
    manifest = json.loads(data)
    key_id = manifest.get("key_id")
    if key_id not in trusted:
        raise BundleRefused(f"unknown key: the release is signed by key {key_id!r}, which this appliance does not trust")
    if not signature_valid(trusted[key_id], signature, data):
        raise BundleRefused(f"bad signature: manifest.sig is not key {key_id}'s signature of manifest.json")
    files = manifest["files"]
    for path, expected in files.items():
        full = os.path.join(directory, *path.split("/"))
        if not os.path.isfile(full):
            raise BundleRefused(f"missing file: {path} listed in the manifest is not in {directory}")
        if file_entry(full) != {"sha256": expected.get("sha256"), "bytes": expected.get("bytes")}:
            raise BundleRefused(f"checksum mismatch: {path}")
    for root, _, names in os.walk(directory):
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), directory).replace(os.sep, "/")
            if rel not in files and rel not in (MANIFEST_NAME, SIGNATURE_NAME):
                raise BundleRefused(f"extra file: {rel} is in {directory} but not in its manifest")
    return manifest


def make_bundle(
    out_path: str,
    *,
    source_dir: str,
    version: str,
    upgrades_from: list[str],
    private_key_path: str,
    extra: dict | None = None,
) -> dict:
    """Sign every file under ``source_dir`` into the bundle ``out_path``; return its manifest.

    The key id is the private key file's stem. Links and other non-regular files are refused.
    """
    files: dict[str, dict] = {}
    for root, dirs, names in os.walk(source_dir):
        dirs.sort()
        for name in sorted(names):
            full = os.path.join(root, name)
            rel = os.path.relpath(full, source_dir).replace(os.sep, "/")
            if os.path.islink(full) or not os.path.isfile(full):
                raise ValueError(f"{full}: only plain files can go into a bundle")
            files[rel] = file_entry(full)
    for reserved in (MANIFEST_NAME, SIGNATURE_NAME):
        if reserved in files:
            raise ValueError(f"{source_dir} holds {reserved}: that name is the bundle's own")
    manifest = build_manifest(
        version=version, upgrades_from=upgrades_from, key_id=key_id_of(private_key_path), files=files, extra=extra
    )
    write_bundle(out_path, manifest, private_key_path, source_dir)
    return manifest


def key_fingerprint(public_key: bytes) -> str:
    """SHA-256 of the raw public key, as hex: what an operator compares with the published one."""
    return hashlib.sha256(public_key).hexdigest()


def unpack_release(path: str, releases_dir: str, trusted_keys_dirs: Iterable[str] | None = None) -> VerifiedBundle:
    """Verify and unpack ``path`` into ``<releases_dir>/<version>``; return it (``.path`` is the release).

    A release directory that exists already is reused when it holds this very bundle (same
    manifest bytes, every file intact) and refused otherwise.
    """
    os.makedirs(releases_dir, exist_ok=True)
    staging = os.path.join(releases_dir, f".unpacking-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    verified = unpack_bundle(path, staging, trusted_keys_dirs)
    version = verified.version
    if not _safe_member_name(version) or "/" in version:
        shutil.rmtree(staging, ignore_errors=True)
        raise BundleRefused(f"the bundle's version {version!r} cannot name a directory")
    dest = os.path.join(releases_dir, version)
    if os.path.exists(dest):
        with open(os.path.join(staging, MANIFEST_NAME), "rb") as f:
            new = f.read()
        shutil.rmtree(staging, ignore_errors=True)
        try:
            with open(os.path.join(dest, MANIFEST_NAME), "rb") as f:
                same = f.read() == new
        except OSError:
            same = False
        if not same:
            raise BundleRefused(f"{dest} exists already and holds another build of {version}: move it away first")
        verify_directory(dest, trusted_keys_dirs)
        return VerifiedBundle(path=dest, manifest=verified.manifest)
    os.replace(staging, dest)
    return VerifiedBundle(path=dest, manifest=verified.manifest)


def main(argv: list[str] | None = None) -> int:
    """``python -m appliance.bundle.manifest verify|unpack``: what install.sh runs before any venv exists.

    Needs only the standard library plus either ``cryptography`` or ``openssl``. Messages go to
    stderr; ``unpack`` prints the release directory on stdout. Exit 3 when the bundle is refused.
    """
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m appliance.bundle.manifest")
    parser.add_argument("action", choices=["verify", "unpack"])
    parser.add_argument("bundle")
    parser.add_argument("--releases-dir", default="/opt/hipchat/releases")
    parser.add_argument("--trusted-keys-dir")
    args = parser.parse_args(argv)
    dirs = trusted_key_dirs(args.trusted_keys_dir)
    try:
        if args.action == "verify":
            verified = verify_bundle(args.bundle, dirs)
        else:
            verified = unpack_release(args.bundle, args.releases_dir, dirs)
    except (BundleRefused, ValueError) as e:
        print(f"Refused: {e}", file=sys.stderr)
        return 3
    key = load_trusted_keys(dirs)[verified.key_id]
    print(
        f"Verified: version {verified.version}, {len(verified.manifest['files'])} files, signed by key "
        f"{verified.key_id} (fingerprint {key_fingerprint(key)})",
        file=sys.stderr,
    )
    if args.action == "unpack":
        print(verified.path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
