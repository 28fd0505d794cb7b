"""The spool's part of a backup: every segment as it stood at the cut-off, without stopping the writers.

A chat process acknowledges a message only after its frame is fsynced into the newest segment
of its spool directory (hipchat_server/storage/spool.py), and the indexer removes a segment only
once every record in it is in OpenSearch. So right after the cut-off each message acknowledged
before it is either in a segment that still exists, within the bytes that segment had then, or
already indexed, and then in the OpenSearch snapshot taken after this step. Restore replays the
spool copy; the indexer uses the record id as the document id, so a record found in both is
stored once.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import zlib
from dataclasses import dataclass

from hipchat_server.storage.spool import FRAME_HEADER, MAX_RECORD_BYTES, SEGMENT_SUFFIX

log = logging.getLogger("hipchat.backup")

# Not a process's spool: the indexer's dead letters and anything a human put aside.
_SKIPPED = {"spool-rejected"}


@dataclass(frozen=True)
class SegmentCopy:
    """One segment as it stood at the cut: ``bytes`` complete frames (``records`` of them) of ``path``."""

    process: str
    name: str
    path: str  # the hard link (or copy) in the staging directory
    bytes: int
    records: int
    copied: bool  # True when a hard link was not possible and the bytes were copied

    @property
    def member(self) -> str:
        return f"spool/{self.process}/{self.name}"


def cut_spool(spool_dir: str, staging_dir: str) -> list[SegmentCopy]:
    """Hard-link (or copy) every process's segments into ``staging_dir`` and measure them.

    Each segment keeps only its complete frames as they were at the link: a frame still being
    written (not yet acknowledged) is left for the next backup. A segment the indexer removed
    between listing and linking was indexed: the snapshot that follows holds its records.
    """
    copies: list[SegmentCopy] = []
    for entry in sorted(os.scandir(spool_dir), key=lambda e: e.name):
        if not entry.is_dir(follow_symlinks=False) or entry.name.startswith(".") or entry.name in _SKIPPED:
            continue
        target_dir = os.path.join(staging_dir, entry.name)
        os.makedirs(target_dir, mode=0o700, exist_ok=True)
        for name in sorted(os.listdir(entry.path)):
            if not name.endswith(SEGMENT_SUFFIX) or not name[: -len(SEGMENT_SUFFIX)].isdigit():
                continue
            source, target = os.path.join(entry.path, name), os.path.join(target_dir, name)
            copied = False
            try:
                os.link(source, target)
            except FileNotFoundError:
                continue  # indexed and removed since the listing
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                    raise
                # Another filesystem (or links forbidden): copy now, while the cut is still fresh.
                try:
                    shutil.copyfile(source, target)
                except FileNotFoundError:
                    continue
                copied = True
            size = os.path.getsize(target)
            length, records = complete_frames(target, size)
            copies.append(SegmentCopy(entry.name, name, target, length, records, copied))
    if any(c.copied for c in copies):
        log.warning("the spool is not on the backup directory's filesystem: segments were copied, not linked")
    return copies


def complete_frames(path: str, size: int) -> tuple[int, int]:
    """(bytes, records) of the complete, intact frames among the first ``size`` bytes of a segment."""
    end, payloads = scan_frames(path, size)
    return end, len(payloads)


def scan_frames(path: str, size: int) -> tuple[int, list[bytes]]:
    """The end offset and payloads of the complete, intact frames within the first ``size`` bytes.

    A segment is at most a few MiB (``archive.spool_segment_bytes``): it is read whole.
    """
    with open(path, "rb") as f:
        data = f.read(size)
    payloads, offset = [], 0
    while offset + FRAME_HEADER.size <= len(data):
        length, crc = FRAME_HEADER.unpack_from(data, offset)
        end = offset + FRAME_HEADER.size + length
        if length > MAX_RECORD_BYTES or end > len(data):
            break  # still being written at the cut (not acknowledged yet)
        payload = data[offset + FRAME_HEADER.size : end]
        if zlib.crc32(payload) != crc:
            break  # torn: the spool trusts nothing after it either
        payloads.append(payload)
        offset = end
    return offset, payloads


def message_records(copies: list[SegmentCopy]) -> list[dict]:
    """Id and timestamp of each message record (a string id and timestamp) in the copies' measured bytes."""
    found = []
    for copy in copies:
        for payload in scan_frames(copy.path, copy.bytes)[1]:
            try:
                record = json.loads(payload)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("id"), str) and isinstance(record.get("timestamp"), str):
                # Only what the snapshot lookup needs: a stopped indexer can leave a large backlog.
                found.append({"id": record["id"], "timestamp": record["timestamp"]})
    return found
