"""The backup archive format: members and manifest, encryption, damage and truncation."""

from __future__ import annotations

import json
import os
import tarfile

import pytest

from appliance.backup import archive as archive_module
from appliance.backup.archive import (
    CHUNK,
    HEADER_BYTES,
    MANIFEST,
    ArchiveDamaged,
    ArchiveRefused,
    ArchiveWriter,
    manifest_checksum,
    open_archive,
)

PASSPHRASE = b"correct horse battery staple"


@pytest.fixture(autouse=True)
def cheap_scrypt(monkeypatch):
    """Tests derive keys with a small scrypt cost; the format does not depend on it."""
    monkeypatch.setattr(archive_module, "SCRYPT_N", 2**10)


def write_archive(path, passphrase=None, big=0, tmp=None):
    """An archive with a file, bytes, a tree and optionally a ``big`` member; returns its manifest."""
    source_dir = os.path.join(os.path.dirname(path), "src-" + os.path.basename(path))
    os.makedirs(os.path.join(source_dir, "tree", "indices", "a"), exist_ok=True)
    with open(os.path.join(source_dir, "tree", "index-0"), "wb") as f:
        f.write(b"repository index")
    with open(os.path.join(source_dir, "tree", "indices", "a", "0"), "wb") as f:
        f.write(os.urandom(3000))
    with open(os.path.join(source_dir, "segment.seg"), "wb") as f:
        f.write(b"record-1\nrecord-2\nwritten after the cut\n")
    writer = ArchiveWriter(str(path), passphrase)
    writer.add_bytes("mariadb/hipchat.sql.gz", b"\x1f\x8b fake dump")
    writer.add_file("spool/xmpp-1/00000001.seg", os.path.join(source_dir, "segment.seg"), size=18)
    writer.add_tree("opensearch/repository", os.path.join(source_dir, "tree"))
    if big:
        writer.add_bytes("big/blob", os.urandom(big))
    if passphrase is not None:
        writer.add_bytes("secrets/admin_password", b"s3cret")
    return writer.close({"appliance_version": "1.0", "counts": {"users": 3}})


def test_round_trip_lists_every_member_with_checksums_and_the_manifest_last(tmp_path):
    """A plain archive is a tar whose last member is the manifest listing every other member."""
    path = tmp_path / "a.tar"
    manifest = write_archive(path)
    with tarfile.open(path) as tar:
        names = tar.getnames()
    assert names[-1] == MANIFEST
    assert set(names[:-1]) == set(manifest["files"])
    assert manifest["files"]["spool/xmpp-1/00000001.seg"]["bytes"] == 18
    assert manifest["format"] == 1 and manifest["secrets_included"] is False
    with open_archive(str(path), None) as reader:
        assert not reader.encrypted
        assert reader.manifest == manifest
        assert reader.verify() == []
        assert reader.read_member("spool/xmpp-1/00000001.seg") == b"record-1\nrecord-2\n"
        out = tmp_path / "out"
        written = reader.extract(str(out))
        assert sorted(written) == sorted(manifest["files"])
        assert (out / "opensearch/repository/index-0").read_bytes() == b"repository index"
        assert oct((out / "mariadb/hipchat.sql.gz").stat().st_mode & 0o777) == "0o600"
    assert not os.path.exists(str(path) + ".partial")


def test_extract_with_prefix_writes_only_that_part(tmp_path):
    """``extract(prefix=...)`` writes only the members below that prefix."""
    path = tmp_path / "a.tar"
    write_archive(path)
    with open_archive(str(path), None) as reader:
        written = reader.extract(str(tmp_path / "out"), prefix="opensearch/repository")
    assert written and all(m.startswith("opensearch/repository/") for m in written)
    assert not (tmp_path / "out" / "mariadb").exists()


def test_secrets_are_refused_in_a_clear_archive(tmp_path):
    """A secret never goes into an archive without encryption."""
    writer = ArchiveWriter(str(tmp_path / "a.tar"), None)
    with pytest.raises(ArchiveRefused):
        writer.add_bytes("secrets/admin_password", b"x")
    writer.abort()
    assert not os.listdir(tmp_path)


def test_unsafe_member_names_are_refused(tmp_path):
    """Absolute or climbing member names cannot be written."""
    writer = ArchiveWriter(str(tmp_path / "a.tar"), None)
    for name in ("/etc/passwd", "../x", "a/../../x", "a//b"):
        with pytest.raises(ArchiveDamaged):
            writer.add_bytes(name, b"x")
    writer.abort()


def test_encrypted_round_trip_across_several_chunks(tmp_path):
    """An encrypted archive spanning several 4 MiB chunks opens, verifies and extracts with its passphrase."""
    path = tmp_path / "a.tar.enc"
    manifest = write_archive(path, PASSPHRASE, big=CHUNK * 2 + 12345)
    raw = path.read_bytes()
    assert raw.startswith(b"HCBAK1\n") and b"repository index" not in raw and b"s3cret" not in raw
    assert manifest["secrets_included"] is True
    with open_archive(str(path), PASSPHRASE) as reader:
        assert reader.encrypted
        assert reader.verify() == []
        reader.extract(str(tmp_path / "out"))
    assert (tmp_path / "out" / "secrets" / "admin_password").read_bytes() == b"s3cret"
    assert (tmp_path / "out" / "big" / "blob").stat().st_size == CHUNK * 2 + 12345


def test_encrypted_archive_needs_the_right_passphrase(tmp_path):
    """No passphrase or a wrong one is refused with a message saying so."""
    path = tmp_path / "a.tar.enc"
    write_archive(path, PASSPHRASE)
    with pytest.raises(ArchiveRefused, match="passphrase"):
        open_archive(str(path), None)
    with pytest.raises(ArchiveRefused, match="wrong passphrase"):
        open_archive(str(path), b"not it")


def flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_one_changed_data_byte_is_found_by_verify_and_refused_by_extract(tmp_path):
    """A single changed byte in a member's data fails verify and stops extract at that member."""
    path = tmp_path / "a.tar"
    write_archive(path)
    with tarfile.open(path) as tar:
        info = tar.getmember("opensearch/repository/indices/a/0")
    flip(path, info.offset_data + 100)
    with open_archive(str(path), None) as reader:
        problems = reader.verify()
        assert problems and "opensearch/repository/indices/a/0" in problems[0]
        with pytest.raises(ArchiveDamaged) as caught:
            reader.extract(str(tmp_path / "out"))
    assert caught.value.member == "opensearch/repository/indices/a/0"
    assert not (tmp_path / "out" / "opensearch/repository/indices/a/0").exists()


@pytest.mark.parametrize("where", ["header", "padding", "trailer"])
def test_one_changed_byte_outside_member_data_is_found(tmp_path, where):
    """A changed byte in a tar header, in block padding or in the end blocks is reported too."""
    path = tmp_path / "a.tar"
    write_archive(path)
    with tarfile.open(path) as tar:
        info = tar.getmember("opensearch/repository/indices/a/0")
        manifest_info = tar.getmember(MANIFEST)
    offset = {
        "header": info.offset + 110,  # inside the mode/uid fields
        "padding": info.offset_data + info.size + 10,
        "trailer": manifest_info.offset_data + manifest_info.size + 700,
    }[where]
    flip(path, offset)
    try:
        reader = open_archive(str(path), None)
    except ArchiveDamaged:
        return
    with reader:
        assert reader.verify() != []


def test_an_edited_manifest_is_refused(tmp_path):
    """Changing a count in the manifest (without its checksum) makes the archive unusable."""
    path = tmp_path / "a.tar"
    write_archive(path)
    data = path.read_bytes()
    at = data.index(b'"users": 3')
    path.write_bytes(data[:at] + b'"users": 4' + data[at + 10 :])
    with pytest.raises(ArchiveDamaged) as caught:
        open_archive(str(path), None)
    assert caught.value.member == MANIFEST


def test_manifest_checksum_ignores_key_order():
    """The manifest's self-checksum is over canonical JSON."""
    assert manifest_checksum({"a": 1, "b": [1, 2]}) == manifest_checksum({"b": [1, 2], "a": 1})


def test_missing_and_extra_members_are_reported(tmp_path):
    """A manifest that lists a member the tar lacks, or a tar member it does not list, fails verify."""
    path = tmp_path / "a.tar"
    manifest = write_archive(path)
    rebuilt = tmp_path / "b.tar"
    with tarfile.open(path) as tar, tarfile.open(rebuilt, "w") as out:
        for info in tar.getmembers():
            if info.name == "mariadb/hipchat.sql.gz":
                continue
            out.addfile(info, tar.extractfile(info))
        extra = tarfile.TarInfo("stray/file")
        extra.size = 0
        out.addfile(extra)
    with open_archive(str(rebuilt), None) as reader:
        problems = "\n".join(reader.verify())
    assert "mariadb/hipchat.sql.gz: in the manifest but missing" in problems
    assert "stray/file: in the archive but not in the manifest" in problems
    assert manifest["files"]


def test_one_changed_byte_in_an_encrypted_archive_fails_authentication(tmp_path):
    """A flipped ciphertext byte is caught by the chunk's GCM tag."""
    path = tmp_path / "a.tar.enc"
    write_archive(path, PASSPHRASE, big=CHUNK + 10)
    flip(path, HEADER_BYTES + CHUNK // 2)
    try:
        reader = open_archive(str(path), PASSPHRASE)
    except ArchiveDamaged:
        return
    with reader:
        assert any("authentication" in p for p in reader.verify())


def test_a_changed_header_byte_in_an_encrypted_archive_is_caught(tmp_path):
    """The clear header (salt, nonce prefix) is bound to every chunk: changing it is refused."""
    path = tmp_path / "a.tar.enc"
    write_archive(path, PASSPHRASE)
    flip(path, len(b"HCBAK1\n") + 16 + 3)  # in the nonce prefix
    with pytest.raises(ArchiveDamaged):
        open_archive(str(path), PASSPHRASE)


@pytest.mark.parametrize("cut", ["chunk_boundary", "mid_chunk", "mid_tag"])
def test_truncated_encrypted_archive_is_refused(tmp_path, cut):
    """An encrypted archive cut short anywhere, even exactly at a chunk boundary, is refused."""
    path = tmp_path / "a.tar.enc"
    write_archive(path, PASSPHRASE, big=CHUNK * 2)
    size = path.stat().st_size
    keep = {
        "chunk_boundary": HEADER_BYTES + 2 * (CHUNK + 16),
        "mid_chunk": HEADER_BYTES + CHUNK + 16 + 1000,
        "mid_tag": size - 5,
    }[cut]
    assert keep < size
    with open(path, "r+b") as f:
        f.truncate(keep)
    with pytest.raises(ArchiveDamaged):
        with open_archive(str(path), PASSPHRASE) as reader:
            problems = reader.verify()
            if problems:
                raise ArchiveDamaged("(verify)", "; ".join(problems))


def test_truncated_plain_archive_is_refused(tmp_path):
    """A plain archive cut before its manifest is refused: the manifest is written last."""
    path = tmp_path / "a.tar"
    write_archive(path, big=100000)
    with tarfile.open(path) as tar:
        manifest_info = tar.getmember(MANIFEST)
    with open(path, "r+b") as f:
        f.truncate(manifest_info.offset)
    with pytest.raises(ArchiveDamaged):
        open_archive(str(path), None)


def test_abort_leaves_nothing_behind_and_close_is_atomic(tmp_path):
    """Until ``close`` only ``<path>.partial`` exists; an exception in the ``with`` block removes it."""
    path = tmp_path / "a.tar"
    with pytest.raises(RuntimeError):
        with ArchiveWriter(str(path), None) as writer:
            writer.add_bytes("x", b"1")
            assert os.path.exists(str(path) + ".partial") and not path.exists()
            raise RuntimeError("disk full")
    assert os.listdir(tmp_path) == []


def test_manifest_is_json_readable_without_the_api(tmp_path):
    """An operator can read the manifest with tar and any JSON tool."""
    path = tmp_path / "a.tar"
    write_archive(path)
    with tarfile.open(path) as tar:
        manifest = json.load(tar.extractfile(MANIFEST))
    assert manifest["counts"] == {"users": 3}
