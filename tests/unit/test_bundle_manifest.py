"""Bundle signing and verification: a good bundle passes; every kind of tampering is refused with its reason."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import tarfile

import pytest

from appliance.bundle import manifest as bundle_manifest
from appliance.bundle.manifest import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    BundleRefused,
    generate_key_pair,
    load_trusted_keys,
    make_bundle,
    may_upgrade_from,
    unpack_bundle,
    verify_bundle,
    verify_directory,
)


@pytest.fixture
def keys(tmp_path):
    """A throwaway signing key pair (``key``, ``pub``) and its trusted-keys directory."""
    key, pub = generate_key_pair(str(tmp_path / "signing"), key_id="test-key")
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    shutil.copy(pub, trusted)
    return {"key": key, "pub": pub, "trusted": [str(trusted)]}


@pytest.fixture
def source(tmp_path):
    """A small release tree to bundle."""
    root = tmp_path / "source"
    (root / "wheels").mkdir(parents=True)
    (root / "wheels" / "a-1.0-py3-none-any.whl").write_bytes(b"wheel bytes" * 100)
    (root / "installer").mkdir()
    (root / "installer" / "install.sh").write_text("#!/bin/bash\necho hi\n")
    os.chmod(root / "installer" / "install.sh", 0o755)
    return root


@pytest.fixture
def bundle(tmp_path, keys, source):
    path = str(tmp_path / "hipchat-appliance-0.2.0.bundle")
    make_bundle(path, source_dir=str(source), version="0.2.0", upgrades_from=[">=0.1.0,<0.2.0"], private_key_path=keys["key"])
    return path


def _members(path):
    """Every member of a tar as (TarInfo, bytes), in order."""
    with tarfile.open(path) as tar:
        return [(m, tar.extractfile(m).read() if m.isfile() else b"") for m in tar.getmembers()]


def _rewrite(path, members):
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, content in members:
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))



def test_generated_key_files(tmp_path):
    """keygen writes ``<id>.key`` with mode 0600 and ``<id>.pub``, both 32 raw bytes in base64, and never overwrites."""
    key, pub = generate_key_pair(str(tmp_path), key_id="k1")
    assert os.path.basename(key) == "k1.key" and os.path.basename(pub) == "k1.pub"
    assert os.stat(key).st_mode & 0o777 == 0o600
    assert len(base64.b64decode(open(pub).read())) == 32
    with pytest.raises(FileExistsError):
        generate_key_pair(str(tmp_path), key_id="k1")


def test_default_key_id_names_date_and_fingerprint(tmp_path):
    """Without an id the key is named hipchat-<date>-<fingerprint>."""
    key, _ = generate_key_pair(str(tmp_path))
    assert os.path.basename(key).startswith("hipchat-") and key.endswith(".key")


def test_good_bundle_verifies(bundle, keys):
    """A bundle signed by a trusted key verifies; the manifest carries format, version, key and every file."""
    verified = verify_bundle(bundle, keys["trusted"])
    assert verified.version == "0.2.0" and verified.key_id == "test-key"
    assert set(verified.manifest["files"]) == {"wheels/a-1.0-py3-none-any.whl", "installer/install.sh"}
    assert verified.manifest["format"] == 1
    names = [m.name for m, _ in _members(bundle)]
    assert names[:2] == [MANIFEST_NAME, SIGNATURE_NAME]


def test_unknown_key_is_refused(bundle, tmp_path):
    """A bundle signed by a key that is not trusted is refused as an unknown key."""
    generate_key_pair(str(tmp_path / "other"), key_id="other-key")
    with pytest.raises(BundleRefused, match="unknown key.*'test-key'"):
        verify_bundle(bundle, [str(tmp_path / "other")])


def test_other_key_under_the_trusted_id_is_a_bad_signature(keys, tmp_path, source):
    """A bundle signed by another private key that claims the trusted key's id fails the signature check."""
    impostor_dir = tmp_path / "impostor"
    key, _ = generate_key_pair(str(impostor_dir), key_id="test-key")
    forged = str(tmp_path / "forged.bundle")
    make_bundle(forged, source_dir=str(source), version="0.2.0", upgrades_from=[], private_key_path=key)
    with pytest.raises(BundleRefused, match="bad signature"):
        verify_bundle(forged, keys["trusted"])


def test_one_changed_byte_in_a_file_names_the_file(bundle, keys):
    """Flipping one byte of a member's content is refused as a checksum mismatch naming that member."""
    with open(bundle, "rb") as f:
        data = bytearray(f.read())
    at = data.index(b"wheel bytes") + 3
    data[at] ^= 0x01
    with open(bundle, "wb") as f:
        f.write(data)
    with pytest.raises(BundleRefused, match="checksum mismatch: wheels/a-1.0-py3-none-any.whl"):
        verify_bundle(bundle, keys["trusted"])


def test_one_changed_byte_in_the_manifest_is_a_bad_signature(bundle, keys):
    """Changing a byte of manifest.json (here the version) breaks the signature."""
    with open(bundle, "rb") as f:
        data = f.read()
    with open(bundle, "wb") as f:
        f.write(data.replace(b'"version": "0.2.0"', b'"version": "0.2.1"', 1))
    with pytest.raises(BundleRefused, match="bad signature"):
        verify_bundle(bundle, keys["trusted"])


def test_missing_file_is_refused(bundle, keys):
    """A member listed in the manifest but absent from the tar is refused, naming it."""
    _rewrite(bundle, [(m, c) for m, c in _members(bundle) if m.name != "installer/install.sh"])
    with pytest.raises(BundleRefused, match="missing file: installer/install.sh"):
        verify_bundle(bundle, keys["trusted"])


def test_extra_file_is_refused(bundle, keys):
    """A member the manifest does not list is refused, naming it."""
    members = _members(bundle)
    members.append((tarfile.TarInfo("roles/evil.yml"), b"- hosts: all\n"))
    _rewrite(bundle, members)
    with pytest.raises(BundleRefused, match="extra file: roles/evil.yml"):
        verify_bundle(bundle, keys["trusted"])


def test_symlink_and_traversal_members_are_refused(bundle, keys):
    """A link or a path leaving the bundle is refused before anything is written."""
    members = _members(bundle)
    link = tarfile.TarInfo("installer/link")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    _rewrite(bundle, members + [(link, b"")])
    with pytest.raises(BundleRefused, match="only plain files"):
        verify_bundle(bundle, keys["trusted"])
    _rewrite(bundle, members + [(tarfile.TarInfo("../escape"), b"x")])
    with pytest.raises(BundleRefused, match="unsafe member"):
        verify_bundle(bundle, keys["trusted"])


def test_not_a_bundle(tmp_path, keys):
    """A file that is not a tar, or a tar without the manifest first, is refused as not a bundle."""
    junk = tmp_path / "junk.bundle"
    junk.write_bytes(b"hello")
    with pytest.raises(BundleRefused, match="not a bundle"):
        verify_bundle(str(junk), keys["trusted"])
    _rewrite(str(junk), [(tarfile.TarInfo("x"), b"y")])
    with pytest.raises(BundleRefused, match="not a bundle"):
        verify_bundle(str(junk), keys["trusted"])


def test_unpack_writes_the_checked_bytes_and_keeps_the_signature(bundle, keys, tmp_path):
    """unpack_bundle writes every file (keeping the executable bit) plus manifest.json/.sig; the result re-verifies."""
    dest = str(tmp_path / "releases" / "0.2.0")
    verified = unpack_bundle(bundle, dest, keys["trusted"])
    assert verified.version == "0.2.0"
    assert os.access(os.path.join(dest, "installer", "install.sh"), os.X_OK)
    assert verify_directory(dest, keys["trusted"])["version"] == "0.2.0"
    with open(os.path.join(dest, "wheels", "a-1.0-py3-none-any.whl"), "ab") as f:
        f.write(b"!")
    with pytest.raises(BundleRefused, match="checksum mismatch: wheels/a-1.0-py3-none-any.whl"):
        verify_directory(dest, keys["trusted"])


def test_refused_unpack_leaves_nothing(bundle, keys, tmp_path):
    """A bundle refused while unpacking leaves neither the release directory nor its partial copy."""
    _rewrite(bundle, [(m, c) for m, c in _members(bundle) if m.name != "installer/install.sh"])
    dest = tmp_path / "releases" / "0.2.0"
    with pytest.raises(BundleRefused, match="missing file"):
        unpack_bundle(bundle, str(dest), keys["trusted"])
    assert not dest.exists() and not (tmp_path / "releases" / "0.2.0.partial").exists()


def test_several_trusted_keys_for_rotation(bundle, keys, tmp_path):
    """During a rotation the old and the new key are both trusted; a clashing key id is refused."""
    generate_key_pair(str(tmp_path / "trusted"), key_id="next-key")
    assert set(load_trusted_keys(keys["trusted"])) == {"test-key", "next-key"}
    verify_bundle(bundle, keys["trusted"])
    clash = tmp_path / "clash"
    generate_key_pair(str(clash), key_id="test-key")
    with pytest.raises(ValueError, match="already trusted"):
        load_trusted_keys(keys["trusted"] + [str(clash)])


def test_upgrades_from(bundle, keys):
    """upgrades_from specifiers decide which running versions may upgrade."""
    manifest = verify_bundle(bundle, keys["trusted"]).manifest
    assert may_upgrade_from(manifest, "0.1.0") and may_upgrade_from(manifest, "0.1.9")
    assert not may_upgrade_from(manifest, "0.2.0") and not may_upgrade_from(manifest, "0.0.9")
    assert not may_upgrade_from(manifest, "not-a-version")


def test_openssl_fallback_checks_signatures(bundle, keys, monkeypatch):
    """Without Python's cryptography the signature is checked with openssl, with the same answers."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    with tarfile.open(bundle) as tar:
        data = tar.extractfile(MANIFEST_NAME).read()
        signature = tar.extractfile(SIGNATURE_NAME).read()
    public = load_trusted_keys(keys["trusted"])["test-key"]
    assert bundle_manifest._openssl_signature_valid(public, signature, data)
    assert not bundle_manifest._openssl_signature_valid(public, signature, data + b" ")
    assert json.loads(data)["version"] == "0.2.0"
