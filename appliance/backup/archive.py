"""The backup archive: one tar file, optionally encrypted, with a manifest written last.

Layout (fixed; restore and the HipChat export read it)::

    <member>...                every member but the manifest, each with a SHA-256 in the manifest
    manifest.json              written last; ``files`` maps every other member to {"sha256", "bytes"}

An encrypted archive (``.tar.enc``) is the same tar stream sealed with AES-256-GCM in 4 MiB
chunks after a clear header::

    HCBAK1\\n | salt (16) | nonce prefix (8) | key check (8) | chunk 0 | chunk 1 | ... | last chunk

Each chunk is its plaintext (4 MiB, the last one 0..4 MiB) plus a 16-byte tag; its nonce is the
prefix and the chunk's counter (4 bytes, big-endian); its associated data is the header and a
flag byte that is 1 only on the last chunk, so a file cut at a chunk boundary fails to decrypt.
The key is scrypt(passphrase, salt, n=2**15, r=8, p=1). The key check (HMAC-SHA256 of a fixed
label under the key, first 8 bytes) tells a wrong passphrase from a damaged file.

The manifest carries ``manifest_sha256``, the SHA-256 of its own canonical JSON without that
field, so a changed byte in the manifest is caught too; tar headers carry their own checksum, and
``verify`` checks that the padding between members and after the last one is zeros: every byte
of a plain archive is covered by some check.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import posixpath
import stat
import struct
import tarfile
import time
from collections.abc import Callable, Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

MANIFEST = "manifest.json"
FORMAT = 1
MAGIC = b"HCBAK1\n"
CHUNK = 4 * 1024 * 1024
TAG = 16
SALT_BYTES = 16
PREFIX_BYTES = 8
KEY_CHECK_BYTES = 8
HEADER_BYTES = len(MAGIC) + SALT_BYTES + PREFIX_BYTES + KEY_CHECK_BYTES
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
_KEY_CHECK_LABEL = b"hipchat-backup key check"
_COPY = 1024 * 1024
SYNC_BYTES = 32 * 1024 * 1024  # written between two syncs (see _PacedFile)
# Only an encrypted archive may hold these (passwords, the TLS key).
SECRET_PREFIX = "secrets/"

Progress = Callable[[str, int], None]


class ArchiveError(Exception):
    """Base of the archive's errors; ``str()`` is meant for the operator."""


class ArchiveRefused(ArchiveError):
    """The archive cannot be used as asked (encrypted without a passphrase, wrong passphrase, ...)."""


class ArchiveDamaged(ArchiveError):
    """A member (or the archive's structure) does not match what the manifest promises."""

    def __init__(self, member: str, reason: str):
        super().__init__(f"archive damaged at {member}: {reason}; use another backup (run `hipchat-appliance backup list`)")
        self.member = member
        self.reason = reason


def derive_key(passphrase: bytes, salt: bytes) -> bytes:
    """The AES-256 key for ``passphrase`` and ``salt`` (scrypt, ~32 MiB of memory, ~0.1 s)."""
    return Scrypt(salt=salt, length=32, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P).derive(passphrase)


def _key_check(key: bytes) -> bytes:
    return hmac.new(key, _KEY_CHECK_LABEL, hashlib.sha256).digest()[:KEY_CHECK_BYTES]


def _nonce(prefix: bytes, counter: int) -> bytes:
    return prefix + struct.pack(">I", counter)


def manifest_checksum(manifest: dict) -> str:
    """SHA-256 of the manifest's canonical JSON, ``manifest_sha256`` left out."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def check_member_name(member: str) -> str:
    """``member`` when it is a relative, normalised POSIX path; raises ``ArchiveDamaged`` otherwise."""
    if not member or member.startswith("/") or posixpath.normpath(member) != member or member.split("/")[0] == "..":
        raise ArchiveDamaged(member or "(empty name)", "unsafe member name")
    return member


# ---------------------------------------------------------------------------------------------
# Encryption: a write-only sealing sink and a seekable opening source.


class _SealingWriter:
    """A write-only file object that seals what it is given in chunks onto ``raw``."""

    def __init__(self, raw, passphrase: bytes):
        salt, prefix = os.urandom(SALT_BYTES), os.urandom(PREFIX_BYTES)
        key = derive_key(passphrase, salt)
        self._aead = AESGCM(key)
        self._header = MAGIC + salt + prefix + _key_check(key)
        self._prefix = prefix
        self._raw = raw
        self._buffer = bytearray()
        self._counter = 0
        self._position = 0
        raw.write(self._header)

    def _seal(self, data: bytes, last: bool) -> None:
        aad = self._header + (b"\x01" if last else b"\x00")
        self._raw.write(self._aead.encrypt(_nonce(self._prefix, self._counter), bytes(data), aad))
        self._counter += 1

    def write(self, data) -> int:
        self._buffer += data
        self._position += len(data)
        # Keep at least one byte back: the last chunk is only known at close.
        while len(self._buffer) > CHUNK:
            self._seal(self._buffer[:CHUNK], last=False)
            del self._buffer[:CHUNK]
        return len(data)

    def tell(self) -> int:
        return self._position

    def finish(self) -> None:
        """Seal what is left as the last chunk (possibly empty)."""
        self._seal(self._buffer, last=True)
        self._buffer = bytearray()


class _OpeningReader(io.RawIOBase):
    """A read-only, seekable view of an encrypted archive's plaintext; every chunk read is authenticated."""

    def __init__(self, raw, passphrase: bytes, path: str):
        self._raw = raw
        self._path = path
        header = raw.read(HEADER_BYTES)
        if len(header) < HEADER_BYTES or not header.startswith(MAGIC):
            raise ArchiveDamaged("(header)", "not an encrypted backup archive or its header is cut short")
        salt = header[len(MAGIC) : len(MAGIC) + SALT_BYTES]
        self._prefix = header[len(MAGIC) + SALT_BYTES : len(MAGIC) + SALT_BYTES + PREFIX_BYTES]
        key = derive_key(passphrase, salt)
        if not hmac.compare_digest(_key_check(key), header[-KEY_CHECK_BYTES:]):
            raise ArchiveRefused(f"wrong passphrase for {path}: check the passphrase file")
        self._aead = AESGCM(key)
        self._header = header
        body = os.fstat(raw.fileno()).st_size - HEADER_BYTES
        self._chunks = max(1, -(-body // (CHUNK + TAG)))
        last = body - (self._chunks - 1) * (CHUNK + TAG)
        if last < TAG:
            raise ArchiveDamaged("(encryption)", "the file is cut short (last chunk incomplete)")
        self._size = (self._chunks - 1) * CHUNK + last - TAG
        self._position = 0
        self._cached: tuple[int, bytes] | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._position, 2: self._size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def chunk(self, index: int) -> bytes:
        """The plaintext of chunk ``index``; raises ``ArchiveDamaged`` when its tag does not match."""
        if self._cached and self._cached[0] == index:
            return self._cached[1]
        self._raw.seek(HEADER_BYTES + index * (CHUNK + TAG))
        sealed = self._raw.read(CHUNK + TAG)
        last = index == self._chunks - 1
        try:
            plain = self._aead.decrypt(_nonce(self._prefix, index), sealed, self._header + (b"\x01" if last else b"\x00"))
        except InvalidTag:
            why = "the file is cut short or" if last else "chunk"
            raise ArchiveDamaged(f"(encrypted chunk {index})", f"{why} fails authentication (changed or truncated)") from None
        self._cached = (index, plain)
        return plain

    def authenticate_all(self) -> None:
        """Decrypt every chunk once, so a change anywhere is caught."""
        for index in range(self._chunks):
            self.chunk(index)

    def readinto(self, buffer) -> int:
        want = min(len(buffer), self._size - self._position)
        done = 0
        while done < want:
            index, offset = divmod(self._position, CHUNK)
            piece = self.chunk(index)[offset : offset + want - done]
            buffer[done : done + len(piece)] = piece
            done += len(piece)
            self._position += len(piece)
        return done


# ---------------------------------------------------------------------------------------------
# Writing.


class _PacedFile:
    """Writes through to ``raw``, syncing every ``SYNC_BYTES`` and dropping what was synced from the page cache.

    A backup writes gigabytes. Left to the kernel, they pile up as dirty pages that an ext4
    journal commit (any fsync, such as the spool's before each acknowledgement) may have to write
    first: chat latency would jump. Syncing in small steps keeps that backlog small, and dropping
    the written pages keeps OpenSearch's index files in the page cache.
    """

    def __init__(self, raw):
        self._raw = raw
        self._synced = 0
        self._pending = 0

    def write(self, data) -> int:
        written = self._raw.write(data)
        self._pending += len(data)
        if self._pending >= SYNC_BYTES:
            self.sync()
        return written

    def tell(self) -> int:
        return self._raw.tell()

    def sync(self) -> None:
        self._raw.flush()
        fd = self._raw.fileno()
        os.fdatasync(fd)
        end = self._raw.tell()
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, self._synced, end - self._synced, os.POSIX_FADV_DONTNEED)
        self._synced, self._pending = end, 0


def _drop_cache(source) -> None:
    """Forget a source file's pages once read (snapshot files are deleted after; segments are small)."""
    if hasattr(os, "posix_fadvise"):
        try:
            os.posix_fadvise(source.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass


class _HashingReader:
    """Reads at most ``limit`` bytes of ``source`` and hashes them on the way."""

    def __init__(self, source, limit: int):
        self._source = source
        self._left = limit
        self.sha256 = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        size = self._left if size < 0 else min(size, self._left)
        data = self._source.read(size)
        self._left -= len(data)
        self.sha256.update(data)
        return data


class ArchiveWriter:
    """Writes one archive at ``path`` (to ``<path>.partial``, renamed by ``close``).

    Every ``add_*`` records the member's SHA-256 and size for the manifest. ``secrets/`` members
    are refused unless a passphrase was given (secrets never go into a clear archive).
    """

    def __init__(self, path: str, passphrase: bytes | None):
        self.path = path
        self.partial_path = path + ".partial"
        self.encrypted = passphrase is not None
        self.files: dict[str, dict] = {}
        self._raw = open(self.partial_path, "xb")
        os.fchmod(self._raw.fileno(), 0o600)
        self._paced = _PacedFile(self._raw)
        self._sink = _SealingWriter(self._paced, passphrase) if passphrase is not None else self._paced
        self._tar = tarfile.open(fileobj=self._sink, mode="w:", format=tarfile.PAX_FORMAT)
        self._closed = False

    def _tarinfo(self, member: str, size: int, mtime: float) -> tarfile.TarInfo:
        check_member_name(member)
        if member == MANIFEST or member in self.files:
            raise ValueError(f"member {member} added twice")
        if member.startswith(SECRET_PREFIX) and not self.encrypted:
            raise ArchiveRefused(f"{member}: secrets go only into an encrypted archive")
        info = tarfile.TarInfo(member)
        info.size, info.mtime, info.mode = size, int(mtime), 0o600
        info.uname = info.gname = "root"
        return info

    def add_file(self, member: str, source_path: str, size: int | None = None, drop_cache: bool = False) -> dict:
        """Add ``source_path`` as ``member``; with ``size``, only its first ``size`` bytes.

        ``drop_cache``: the file is read once and then deleted (a snapshot's): keep it out of the page cache.
        """
        with open(source_path, "rb") as source:
            st = os.fstat(source.fileno())
            length = st.st_size if size is None else size
            if length > st.st_size:
                raise ValueError(f"{source_path} holds {st.st_size} bytes, fewer than the {length} asked for")
            info = self._tarinfo(member, length, st.st_mtime)
            reader = _HashingReader(source, length)
            self._tar.addfile(info, reader)
            if drop_cache:
                _drop_cache(source)
        entry = self.files[member] = {"sha256": reader.sha256.hexdigest(), "bytes": length}
        return entry

    def add_bytes(self, member: str, data: bytes) -> dict:
        """Add ``data`` as ``member``."""
        info = self._tarinfo(member, len(data), time.time())
        self._tar.addfile(info, io.BytesIO(data))
        entry = self.files[member] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        return entry

    def add_tree(self, prefix: str, directory: str, progress: Progress | None = None, drop_cache: bool = False) -> int:
        """Add every regular file below ``directory`` as ``<prefix>/<relative path>``, sorted; returns bytes added."""
        total = 0
        for root, dirs, names in os.walk(directory):
            dirs.sort()
            for name in sorted(names):
                source = os.path.join(root, name)
                if not stat.S_ISREG(os.lstat(source).st_mode):
                    continue
                relative = os.path.relpath(source, directory).replace(os.sep, "/")
                member = f"{prefix.rstrip('/')}/{relative}"
                total += self.add_file(member, source, drop_cache=drop_cache)["bytes"]
                if progress:
                    progress(member, self.files[member]["bytes"])
        return total

    def close(self, manifest: dict) -> dict:
        """Write ``manifest`` (with ``files``, ``format`` and its own checksum) last, fsync, rename; returns it."""
        manifest = dict(manifest)
        manifest.setdefault("format", FORMAT)
        manifest["files"] = dict(sorted(self.files.items()))
        manifest["secrets_included"] = any(m.startswith(SECRET_PREFIX) for m in self.files)
        manifest["manifest_sha256"] = manifest_checksum(manifest)
        data = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
        info = tarfile.TarInfo(MANIFEST)
        info.size, info.mtime, info.mode = len(data), int(time.time()), 0o600
        info.uname = info.gname = "root"
        self._tar.addfile(info, io.BytesIO(data))
        self._tar.close()
        if isinstance(self._sink, _SealingWriter):
            self._sink.finish()
        self._paced.sync()
        os.fsync(self._raw.fileno())
        self._raw.close()
        os.rename(self.partial_path, self.path)
        # The rename itself must survive a power cut.
        directory = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        self._closed = True
        return manifest

    def abort(self) -> None:
        """Drop the unfinished archive (its ``.partial`` file)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._raw.close()
        finally:
            try:
                os.unlink(self.partial_path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> "ArchiveWriter":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is not None:
            self.abort()


# ---------------------------------------------------------------------------------------------
# Reading.


class _VerifyingReader(io.RawIOBase):
    """A member's bytes; at the end, raises ``ArchiveDamaged`` when they differ from the manifest."""

    def __init__(self, member: str, source, expected: dict):
        self._member = member
        self._source = source
        self._expected = expected
        self._sha256 = hashlib.sha256()
        self._seen = 0
        self._checked = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._source.read(len(buffer))
        if not data:
            self._check()
            return 0
        buffer[: len(data)] = data
        self._sha256.update(data)
        self._seen += len(data)
        return len(data)

    def _check(self) -> None:
        if self._checked:
            return
        self._checked = True
        if self._seen != self._expected["bytes"]:
            raise ArchiveDamaged(self._member, f"{self._seen} bytes, the manifest says {self._expected['bytes']}")
        if self._sha256.hexdigest() != self._expected["sha256"]:
            raise ArchiveDamaged(self._member, "SHA-256 differs from the manifest")


class ArchiveReader:
    """An opened archive: its manifest, its members, verify and extract."""

    def __init__(self, path: str, raw, source, encrypted: bool):
        self.path = path
        self.encrypted = encrypted
        self._raw = raw
        self._source = source
        try:
            self._tar = tarfile.open(fileobj=source, mode="r:")
            self._members = {m.name: m for m in self._tar.getmembers()}
        except tarfile.TarError as e:
            raise ArchiveDamaged("(tar)", f"not a readable tar stream ({e})") from None
        if MANIFEST not in self._members:
            raise ArchiveDamaged(MANIFEST, "missing (the archive is incomplete or cut short)")
        try:
            self.manifest = json.loads(self._tar.extractfile(self._members[MANIFEST]).read())
        except ValueError as e:
            raise ArchiveDamaged(MANIFEST, f"not valid JSON ({e})") from None
        if not isinstance(self.manifest, dict) or self.manifest.get("manifest_sha256") != manifest_checksum(self.manifest):
            raise ArchiveDamaged(MANIFEST, "its checksum does not match its content (edited or damaged)")
        if self.manifest.get("format") != FORMAT:
            raise ArchiveRefused(f"archive format {self.manifest.get('format')!r} is not {FORMAT}; use the appliance version that wrote it")

    @property
    def files(self) -> dict[str, dict]:
        return self.manifest.get("files", {})

    def members(self) -> list[str]:
        """Every member's name in archive order (the manifest last)."""
        return list(self._members)

    def open_member(self, member: str) -> io.BufferedReader:
        """A stream of ``member``'s bytes that raises ``ArchiveDamaged`` at its end when they differ from the manifest."""
        if member not in self.files:
            raise ArchiveDamaged(member, "not listed in the manifest")
        if member not in self._members:
            raise ArchiveDamaged(member, "listed in the manifest but missing from the archive")
        source = self._tar.extractfile(self._members[member])
        return io.BufferedReader(_VerifyingReader(member, source, self.files[member]), _COPY)

    def read_member(self, member: str) -> bytes:
        """``member``'s bytes, checked against the manifest."""
        with self.open_member(member) as stream:
            return stream.read()

    def verify(self, progress: Progress | None = None) -> list[str]:
        """Every problem found (empty when sound): checksums, missing or extra members, padding, GCM tags."""
        problems: list[str] = []
        for name in self._members:
            if name != MANIFEST and name not in self.files:
                problems.append(f"{name}: in the archive but not in the manifest")
        for member in self.files:
            if member not in self._members:
                problems.append(f"{member}: in the manifest but missing from the archive")
        for name, info in self._members.items():
            if name == MANIFEST:
                continue
            try:
                if not info.isreg():
                    problems.append(f"{name}: not a regular file")
                    continue
                if name in self.files:
                    with self.open_member(name) as stream:
                        while data := stream.read(_COPY):
                            if progress:
                                progress(name, len(data))
            except ArchiveDamaged as e:
                problems.append(f"{e.member}: {e.reason}")
        try:
            problems.extend(self._check_padding())
            if isinstance(self._source, _OpeningReader):
                self._source.authenticate_all()
        except ArchiveDamaged as e:
            problems.append(f"{e.member}: {e.reason}")
        return problems

    def _check_padding(self) -> list[str]:
        """The bytes that no checksum covers (block padding, the end-of-archive blocks) must be zeros."""
        problems = []
        gaps: list[tuple[int, int, str]] = []
        for info in self._members.values():
            end = info.offset_data + info.size
            gaps.append((end, -(-end // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE, info.name))
        last = max(g[1] for g in gaps)
        self._source.seek(0, 2)
        gaps.append((last, self._source.tell(), "(end of archive)"))
        for start, stop, name in gaps:
            self._source.seek(start)
            left = stop - start
            while left > 0:
                data = self._source.read(min(left, _COPY))
                if not data:
                    break
                if data.count(0) != len(data):
                    problems.append(f"{name}: non-zero bytes in the tar padding after it")
                    break
                left -= len(data)
        return problems

    def extract(self, dest_dir: str, progress: Progress | None = None, prefix: str | None = None) -> list[str]:
        """Write members (those under ``prefix`` when given) below ``dest_dir``, checking each as it is written.

        Raises ``ArchiveDamaged`` on the first member that differs from the manifest (its file is
        removed). Returns the members written. Files are 0600; directories 0700.
        """
        written = []
        for member in self.files:
            if prefix is not None and not (member == prefix or member.startswith(prefix.rstrip("/") + "/")):
                continue
            check_member_name(member)
            target = os.path.join(dest_dir, *member.split("/"))
            os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
            try:
                with self.open_member(member) as stream, open(target, "wb") as out:
                    os.fchmod(out.fileno(), 0o600)
                    while data := stream.read(_COPY):
                        out.write(data)
                        if progress:
                            progress(member, len(data))
            except BaseException:
                try:
                    os.unlink(target)
                except FileNotFoundError:
                    pass
                raise
            written.append(member)
        return written

    def iter_members(self, prefix: str) -> Iterator[str]:
        """Members listed in the manifest whose name starts with ``prefix``."""
        return (m for m in self.files if m.startswith(prefix))

    def close(self) -> None:
        self._tar.close()
        self._raw.close()

    def __enter__(self) -> "ArchiveReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def is_encrypted_file(path: str) -> bool:
    """Whether ``path`` starts with the encrypted archive's magic."""
    with open(path, "rb") as f:
        return f.read(len(MAGIC)) == MAGIC


def open_archive(path: str, passphrase: bytes | None) -> ArchiveReader:
    """Open the archive at ``path`` and read its manifest (checked against its own checksum).

    Raises ``ArchiveRefused`` (encrypted without a passphrase, wrong passphrase, other format)
    or ``ArchiveDamaged`` (unreadable tar, missing or edited manifest, failed GCM tag).
    """
    try:
        raw = open(path, "rb")
    except OSError as e:
        raise ArchiveRefused(f"cannot open {path}: {e.strerror}") from None
    try:
        encrypted = raw.read(len(MAGIC)) == MAGIC
        raw.seek(0)
        if encrypted:
            if passphrase is None:
                raise ArchiveRefused(f"{path} is encrypted: give its passphrase with --passphrase-file")
            source = io.BufferedReader(_OpeningReader(raw, passphrase, path), _COPY)
        else:
            source = raw
        return ArchiveReader(path, raw, source, encrypted)
    except BaseException:
        raw.close()
        raise
