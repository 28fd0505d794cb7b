"""The durable spool on a real filesystem: group commit, torn-tail recovery, rotation, write failures."""

from __future__ import annotations

import os
import queue

import pytest

from hipchat_server.storage import spool as spool_module
from hipchat_server.storage.spool import FRAME_HEADER, Spool, SpoolError, read_frames


class ThreadHandoff:
    """Stands in for the reactor: what the writer thread hands over runs when the test calls `run`."""

    def __init__(self):
        self.calls: queue.SimpleQueue = queue.SimpleQueue()

    def callFromThread(self, f, *args):
        self.calls.put((f, args))

    def run(self, count: int, timeout: float = 10.0) -> None:
        """Run handed-over calls until ``count`` Deferreds' worth of batches fired."""
        for _ in range(count):
            f, args = self.calls.get(timeout=timeout)
            f(*args)


def fired(deferreds) -> list:
    results = []
    for d in deferreds:
        d.addBoth(results.append)
    return results


def append_all(sp: Spool, handoff: ThreadHandoff, records: list[dict]) -> list:
    deferreds = [sp.append(r) for r in records]
    results = fired(deferreds)
    while len(results) < len(deferreds):
        handoff.run(1)
    return results


@pytest.fixture
def handoff():
    return ThreadHandoff()


def test_appended_records_are_on_disk_in_order_when_their_deferreds_fire(tmp_path, handoff):
    sp = Spool(str(tmp_path), handoff)
    sp.open()
    records = [{"id": f"m{n}", "body": f"message {n} é"} for n in range(50)]
    results = append_all(sp, handoff, records)
    assert results == [None] * 50
    sp.close()
    [segment] = sp.segments()
    assert list(Spool.read_segment(segment)) == records


def test_many_appends_share_fsyncs(tmp_path, handoff):
    """Group commit: records queued while an fsync runs go to disk with the next one."""
    sp = Spool(str(tmp_path), handoff)
    sp.open()
    results = append_all(sp, handoff, [{"n": n} for n in range(2000)])
    sp.close()
    assert results == [None] * 2000
    assert 1 <= sp.commits < 2000


def test_a_torn_last_frame_is_cut_at_open_and_nothing_complete_is_lost(tmp_path, handoff):
    sp = Spool(str(tmp_path), handoff)
    sp.open()
    append_all(sp, handoff, [{"n": n} for n in range(10)])
    sp.close()
    [segment] = sp.segments()
    with open(segment.path, "ab") as f:  # a crash in the middle of the next frame
        f.write(FRAME_HEADER.pack(100, 0) + b'{"n": 10, "bo')
    reopened = Spool(str(tmp_path), handoff)
    reopened.open()
    assert reopened.recovered_bytes_cut == FRAME_HEADER.size + 13
    assert [r["n"] for r in Spool.read_segment(segment)] == list(range(10))
    append_all(reopened, handoff, [{"n": 11}])
    reopened.close()
    assert [s.number for s in reopened.segments()] == [1, 2]  # new records go to a new segment
    assert [s.number for s in reopened.closed_segments()] == [1, 2]


def test_a_damaged_frame_ends_what_is_trusted(tmp_path, handoff):
    sp = Spool(str(tmp_path), handoff)
    sp.open()
    append_all(sp, handoff, [{"n": n} for n in range(3)])
    sp.close()
    [segment] = sp.segments()
    data = bytearray(open(segment.path, "rb").read())
    data[-2] ^= 0xFF  # flip a byte inside the last record
    open(segment.path, "wb").write(bytes(data))
    records, _ = read_frames(segment.path)
    assert [r["n"] for r in records] == [0, 1]


def test_segments_rotate_and_only_closed_ones_are_offered_and_removable(tmp_path, handoff):
    sp = Spool(str(tmp_path), handoff, segment_bytes=2048)
    sp.open()
    for n in range(20):  # one record per commit, ~200 bytes each
        append_all(sp, handoff, [{"n": n, "pad": "x" * 180}])
    closed = sp.closed_segments()
    assert len(closed) >= 1 and len(sp.segments()) == len(closed) + 1
    in_closed = [r["n"] for s in closed for r in Spool.read_segment(s)]
    assert in_closed == list(range(len(in_closed)))  # the oldest records, in order
    active = sp.segments()[-1]
    with pytest.raises(SpoolError):
        sp.remove_segment(active)
    sp.remove_segment(closed[0])
    assert closed[0] not in sp.segments()
    sp.close()


def test_a_failed_write_fails_every_record_of_the_batch_and_leaves_no_partial_frame(tmp_path, handoff, monkeypatch):
    sp = Spool(str(tmp_path), handoff)
    sp.open()
    append_all(sp, handoff, [{"n": 0}])

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(spool_module.os, "fsync", full_disk)
    results = append_all(sp, handoff, [{"n": 1}])
    assert len(results) == 1 and results[0].check(SpoolError)
    assert "No space left" in str(results[0].value)
    monkeypatch.undo()
    sp.close()
    [segment] = sp.segments()
    assert [r["n"] for r in Spool.read_segment(segment)] == [0]
    assert os.path.getsize(segment.path) == read_frames(segment.path)[1]


def test_a_record_over_the_limit_is_refused_at_once(tmp_path, handoff):
    sp = Spool(str(tmp_path), handoff)
    sp.open()
    results = fired([sp.append({"body": "x" * (spool_module.MAX_RECORD_BYTES + 1)})])
    sp.close()
    assert results[0].check(SpoolError)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can create files for another owner")
def test_a_spool_opened_by_root_belongs_to_the_spool_directorys_owner(tmp_path, handoff):
    """Root (a process before it drops privileges, a CLI, a restore) must not leave segments the indexer cannot read."""
    service_uid, service_gid = 65534, 65534  # nobody/nogroup: any owner other than root
    os.chown(tmp_path, service_uid, service_gid)
    spool = Spool(str(tmp_path / "web"), handoff, segment_bytes=1024)
    spool.open()
    try:
        # The second record rotates: its segment is created after open, by the writer thread.
        for n in range(3):
            assert append_all(spool, handoff, [{"id": f"0{n}", "body": "x" * 900}]) == [None]
    finally:
        spool.close()
    assert (os.stat(tmp_path / "web").st_uid, os.stat(tmp_path / "web").st_gid) == (service_uid, service_gid)
    owners = {(os.stat(segment.path).st_uid, os.stat(segment.path).st_gid) for segment in spool.segments()}
    assert len(spool.segments()) >= 2 and owners == {(service_uid, service_gid)}
