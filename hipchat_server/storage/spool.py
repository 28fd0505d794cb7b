"""The durable spool: every message is appended to a local file and fsynced before anything else sees it.

A spool is a directory of numbered segment files. Each record is a frame:
4 bytes of length, 4 bytes of CRC-32 (both big-endian), then the record as
UTF-8 JSON. A crash can leave at most the last frame of the newest segment
torn; opening the spool cuts it off, so every complete frame is a message
that was (or could have been) acknowledged, and nothing else.

Appends are group-committed: one writer thread takes every record queued
while the previous fsync ran, writes them in one go and fsyncs once, then
fires their Deferreds on the reactor thread. Under load many messages share
one fsync; an idle spool commits a lone message at once.

Segments rotate at ``segment_bytes``. A closed segment never changes again;
a reader (the indexer) takes closed segments in order with `closed_segments`
and `read_segment`, and calls `remove_segment` once every record in it is
stored elsewhere.
"""

from __future__ import annotations

import json
import os
import queue
import struct
import threading
import zlib
from dataclasses import dataclass
from typing import Iterator

from twisted.internet import defer
from twisted.python.failure import Failure

FRAME_HEADER = struct.Struct(">II")  # length, CRC-32 of the payload
SEGMENT_SUFFIX = ".seg"
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
MAX_RECORD_BYTES = 1024 * 1024  # a stanza is at most 256 KiB; its record stays well below this


class SpoolError(Exception):
    """The spool cannot take records (disk full, permissions); the message is not durable."""


@dataclass(frozen=True)
class Segment:
    number: int
    path: str


def _segment_name(number: int) -> str:
    return f"{number:012d}{SEGMENT_SUFFIX}"


def encode_frame(record: dict, encoded: str | None = None) -> bytes:
    """The frame of ``record``; ``encoded`` is its compact JSON when the caller made it already."""
    if encoded is None:
        encoded = json.dumps(record, separators=(",", ":"), ensure_ascii=False)
    payload = encoded.encode("utf-8")
    if len(payload) > MAX_RECORD_BYTES:
        raise SpoolError(f"a record of {len(payload)} bytes is over the {MAX_RECORD_BYTES}-byte limit")
    return FRAME_HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def read_frames(path: str) -> tuple[list[dict], int]:
    """The complete, intact records of a segment, and the byte offset where they end."""
    records, offset = [], 0
    with open(path, "rb") as f:
        data = f.read()
    while offset + FRAME_HEADER.size <= len(data):
        length, crc = FRAME_HEADER.unpack_from(data, offset)
        start, end = offset + FRAME_HEADER.size, offset + FRAME_HEADER.size + length
        if length > MAX_RECORD_BYTES or end > len(data):
            break  # torn at the end
        payload = data[start:end]
        if zlib.crc32(payload) != crc:
            break  # torn (or damaged): nothing after it is trusted
        records.append(json.loads(payload))
        offset = end
    return records, offset


def _give_to_parent_owner(path: str) -> None:
    """Make ``path`` belong to the owner of its directory, when root created it.

    The indexer runs as the service user and must read every segment. A
    process writing as root (the HTTPS process before it drops privileges,
    an administrator's command, a restore) would otherwise leave a segment
    the indexer cannot open: its messages durable but never indexed.
    """
    if os.geteuid() != 0:
        return
    parent = os.stat(os.path.dirname(os.path.abspath(path)))
    os.chown(path, parent.st_uid, parent.st_gid)


class Spool:
    """A group-committing, append-only spool in ``directory``. `open` it, `append`, `close` it."""

    def __init__(self, directory: str, reactor=None, segment_bytes: int = DEFAULT_SEGMENT_BYTES):
        if reactor is None:
            from twisted.internet import reactor
        self.directory = directory
        self.reactor = reactor
        self.segment_bytes = segment_bytes
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._file = None
        self._segment: Segment | None = None
        self._size = 0
        self._thread: threading.Thread | None = None
        self._rotation = threading.Lock()  # which segment is active, as seen by writer and readers
        self.commits = 0  # fsyncs done: fewer than records appended under load (group commit)
        self.recovered_bytes_cut = 0  # bytes of a torn last frame cut off at open

    # Life cycle.
    def open(self) -> None:
        """Recover the newest segment (cut a torn last frame) and start the writer thread."""
        if not os.path.isdir(self.directory):
            os.makedirs(self.directory, mode=0o750, exist_ok=True)
            _give_to_parent_owner(self.directory)
        segments = self.segments()
        if segments:
            newest = segments[-1]
            _, end = read_frames(newest.path)
            size = os.path.getsize(newest.path)
            if end < size:
                self.recovered_bytes_cut = size - end
                with open(newest.path, "r+b") as f:
                    f.truncate(end)
                    f.flush()
                    os.fsync(f.fileno())
            self._start_segment(newest.number + 1)  # a recovered segment is closed: readers may take it
        else:
            self._start_segment(1)
        self._thread = threading.Thread(target=self._write_loop, name="spool-writer", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Commit what is queued, then stop the writer and close the active segment."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        with self._rotation:
            if self._file is not None:
                self._file.close()
                self._file = None
            self._segment = None  # closed: every segment may now be read and removed

    # Appending.
    def append(self, record: dict, encoded: str | None = None) -> defer.Deferred:
        """Fires (on the reactor thread) once ``record`` is on disk and fsynced; fails with SpoolError if not.

        ``encoded`` is the record's compact JSON when the caller has it already.
        """
        d = defer.Deferred()
        try:
            frame = encode_frame(record, encoded)
        except (SpoolError, TypeError, ValueError) as e:
            d.errback(Failure(SpoolError(str(e))))
            return d
        self._queue.put((frame, d))
        return d

    def _write_loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stopping = [first], False
            while True:  # everything queued while the last fsync ran goes into this one
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            try:
                self._commit(b"".join(frame for frame, _ in batch))
            except OSError as e:
                failure = Failure(SpoolError(f"the spool could not write to {self.directory}: {e}"))
                self.reactor.callFromThread(self._fail, [d for _, d in batch], failure)
            else:
                self.reactor.callFromThread(self._succeed, [d for _, d in batch])
            if stopping:
                return

    def _commit(self, data: bytes) -> None:
        if self._size and self._size + len(data) > self.segment_bytes:
            with self._rotation:
                self._file.close()
                self._start_segment(self._segment.number + 1)
        start = self._file.tell()
        try:
            self._file.write(data)
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError:
            # Leave no partial batch behind: those records were not acknowledged.
            self._file.truncate(start)
            self._file.seek(start)
            raise
        self._size += len(data)
        self.commits += 1

    @staticmethod
    def _succeed(deferreds) -> None:
        for d in deferreds:
            d.callback(None)

    @staticmethod
    def _fail(deferreds, failure: Failure) -> None:
        for d in deferreds:
            d.errback(failure)

    def _start_segment(self, number: int) -> None:
        self._segment = Segment(number, os.path.join(self.directory, _segment_name(number)))
        self._file = open(self._segment.path, "ab")
        _give_to_parent_owner(self._segment.path)
        self._size = self._file.tell()
        # The new file's directory entry must be durable too, or a crash could lose the whole segment.
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # Reading, for the indexer.
    def segments(self) -> list[Segment]:
        """Every segment on disk, oldest first (the last one may be the active one)."""
        found = []
        for name in os.listdir(self.directory):
            if name.endswith(SEGMENT_SUFFIX) and name[: -len(SEGMENT_SUFFIX)].isdigit():
                found.append(Segment(int(name[: -len(SEGMENT_SUFFIX)]), os.path.join(self.directory, name)))
        return sorted(found, key=lambda s: s.number)

    def closed_segments(self) -> list[Segment]:
        """The segments no writer appends to any more, oldest first."""
        with self._rotation:
            active = self._segment.number if self._segment is not None else None
            return [s for s in self.segments() if s.number != active]

    @staticmethod
    def read_segment(segment: Segment) -> Iterator[dict]:
        records, _ = read_frames(segment.path)
        return iter(records)

    def remove_segment(self, segment: Segment) -> None:
        """Delete a closed segment whose every record is stored elsewhere."""
        with self._rotation:
            if self._segment is not None and segment.number >= self._segment.number:
                raise SpoolError("the active segment cannot be removed")
            os.unlink(segment.path)

    def pending_bytes(self) -> int:
        """Bytes on disk not yet removed: how far behind the reader is (for status and the disk guard)."""
        return sum(os.path.getsize(s.path) for s in self.segments())
