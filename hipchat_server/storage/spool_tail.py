"""Reading a spool from a position, while its writer may still be appending: what the indexer does.

A chat process appends only to the newest segment of its spool directory
(storage/spool.py); a segment with a newer one beside it never changes
again. A reader keeps a `Position` (segment, byte offset) per directory and
takes the complete frames from there on, the newest segment included: a
frame still being written is simply not there yet, so a message can be
indexed moments after it was spooled instead of after a rotation.
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from dataclasses import dataclass
from typing import Callable

from hipchat_server.storage.spool import FRAME_HEADER, MAX_RECORD_BYTES, SEGMENT_SUFFIX, Segment

log = logging.getLogger("hipchat.indexer")

MAX_FRAME_BYTES = FRAME_HEADER.size + MAX_RECORD_BYTES


@dataclass(frozen=True, order=True)
class Position:
    """Where reading a spool directory stands: everything before ``offset`` of ``segment`` is handled."""

    segment: int
    offset: int


@dataclass
class FrameRead:
    payloads: list[bytes]
    end: int  # offset after the last complete frame read
    size: int  # the file's size when it was read
    limited: bool  # stopped because the caller's budget was used up, not at the end of what is there

    @property
    def at_end(self) -> bool:
        return self.end == self.size


def read_frames_from(path: str, offset: int, max_records: int, max_bytes: int) -> FrameRead:
    """The complete, intact frames' payloads of a segment from ``offset`` on, within the budgets.

    Reading stops at the first frame that is incomplete (still being
    written, or torn by a crash) or damaged (CRC mismatch): nothing after it
    is trusted. At least one frame is read if one is there, whatever ``max_bytes``.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if offset >= size:
            return FrameRead([], offset, size, False)
        f.seek(offset)
        data = f.read(min(size - offset, max(max_bytes, MAX_FRAME_BYTES)))
    payloads, position, limited = [], 0, False
    cut = offset + len(data) < size  # the buffer ends before the file does
    while True:
        if len(payloads) >= max_records:
            limited = True
            break
        if position + FRAME_HEADER.size > len(data):
            limited = cut
            break
        length, crc = FRAME_HEADER.unpack_from(data, position)
        end = position + FRAME_HEADER.size + length
        if length > MAX_RECORD_BYTES:
            break  # damaged
        if end > len(data):
            limited = cut  # otherwise still being written, or torn
            break
        payload = data[position + FRAME_HEADER.size : end]
        if zlib.crc32(payload) != crc:
            break  # damaged
        payloads.append(payload)
        position = end
    return FrameRead(payloads, offset + position, size, limited and offset + position < size)


def segments_in(directory: str) -> list[Segment]:
    """The segments of one spool directory, oldest first (the newest may be being written)."""
    found = []
    for name in os.listdir(directory):
        number = name[: -len(SEGMENT_SUFFIX)]
        if name.endswith(SEGMENT_SUFFIX) and number.isdigit():
            found.append(Segment(int(number), os.path.join(directory, name)))
    return sorted(found, key=lambda s: s.number)


def backlog_bytes(directory: str, position: Position | None) -> int:
    """Spooled bytes of ``directory`` at or after ``position`` (all of them without one): not yet indexed."""
    total = 0
    for segment in segments_in(directory):
        try:
            size = os.path.getsize(segment.path)
        except FileNotFoundError:
            continue  # removed while we looked
        if position is None or segment.number > position.segment:
            total += size
        elif segment.number == position.segment:
            total += max(0, size - position.offset)
    return total


def first_unindexed(directory: str, position: Position | None) -> dict | None:
    """The oldest record of ``directory`` at or after ``position``, or None when there is none."""
    for segment in segments_in(directory):
        if position is not None and segment.number < position.segment:
            continue
        offset = position.offset if position is not None and segment.number == position.segment else 0
        read = read_frames_from(segment.path, offset, 1, 0)
        if read.payloads:
            try:
                return json.loads(read.payloads[0])
            except ValueError:
                return None
    return None


class SpoolTail:
    """One chat process's spool directory, read in order from `position`, the segment being written included."""

    def __init__(self, directory: str, position: Position | None = None, set_aside: Callable[[str, str], None] | None = None):
        self.directory = directory
        self.name = os.path.basename(directory)
        self.position = position
        self.set_aside = set_aside  # (spool name, segment path): keeps a damaged segment out of the way
        self._damaged: set[int] = set()  # closed segments whose end could not be read

    def read(self, max_records: int, max_bytes: int) -> tuple[list[bytes], Position | None]:
        """Payloads from the position on, and the position after them (to pass to `advance` once handled)."""
        # Listed before reading: a segment that has a newer one beside it in this listing was
        # complete before we read it, so whatever we cannot read at its end is damage, not a writer.
        segments = segments_in(self.directory)
        if not segments:
            return [], self.position
        position = self._start(segments)
        payloads: list[bytes] = []
        newest = segments[-1].number
        for index, segment in enumerate(segments):
            if segment.number < position.segment:
                continue
            offset = position.offset if segment.number == position.segment else 0
            read = read_frames_from(segment.path, offset, max_records - len(payloads), max_bytes)
            if read.size < offset:
                # The writer cut back a batch whose fsync failed (spool.py); read that segment again.
                log.warning("spool %s: segment %d shrank below %d bytes; reading it again", self.name, segment.number, offset)
                read = read_frames_from(segment.path, 0, max_records - len(payloads), max_bytes)
            payloads.extend(read.payloads)
            max_bytes -= sum(len(p) for p in read.payloads)
            position = Position(segment.number, read.end)
            if segment.number == newest or read.limited:
                break
            if not read.at_end and segment.number not in self._damaged:
                self._damaged.add(segment.number)
                log.error(
                    "spool %s: segment %d is damaged after byte %d of %d; what follows cannot be read and the "
                    "segment is set aside once the rest is indexed", self.name, segment.number, read.end, read.size,
                )
            position = Position(segments[index + 1].number, 0)
            if len(payloads) >= max_records or max_bytes <= 0:
                break
        return payloads, position

    def _start(self, segments: list[Segment]) -> Position:
        numbers = [s.number for s in segments]
        if self.position is not None and self.position.segment in numbers:
            return self.position
        later = [n for n in numbers if self.position is not None and n > self.position.segment]
        if self.position is not None and not later:
            # Every segment is older than where we were: the spool was emptied and its writer started over.
            log.warning("spool %s: segments restart at %d, below position %s; reading them all", self.name, numbers[0], self.position)
        return Position((later or numbers)[0], 0)

    def advance(self, position: Position | None) -> None:
        """Everything before ``position`` is handled: move there and remove the segments wholly behind it."""
        moved_on = position is not None and (self.position is None or position.segment != self.position.segment)
        self.position = position
        if moved_on:
            self.remove_handled()

    def remove_handled(self) -> None:
        """Delete (or, damaged, set aside) every segment older than the position's segment."""
        if self.position is None:
            return
        segments = segments_in(self.directory)
        if self.position.segment not in {s.number for s in segments}:
            return  # the writer started over below our position: nothing here is known to be handled
        for segment in segments:
            if segment.number >= self.position.segment:
                break
            try:
                if segment.number in self._damaged and self.set_aside is not None:
                    self.set_aside(self.name, segment.path)
                    self._damaged.discard(segment.number)
                else:
                    os.unlink(segment.path)
            except FileNotFoundError:
                pass

    def backlog_bytes(self) -> int:
        return backlog_bytes(self.directory, self.position)
