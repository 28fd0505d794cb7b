"""The indexer process's stop signal: a prompt stop, and no endless wait on a hanging request."""

from __future__ import annotations

import threading

from hipchat_server.app.indexer import stop_on_signal


class Indexer:
    def __init__(self):
        self.stopping = threading.Event()

    def stop(self):
        self.stopping.set()


def test_the_stop_signal_stops_the_indexer_at_once_and_exits_if_a_request_still_hangs():
    indexer, exited = Indexer(), threading.Event()
    codes = []

    def exit(code):
        codes.append(code)
        exited.set()

    stop_on_signal(indexer, grace=0.05, exit=exit)
    assert indexer.stopping.is_set()
    assert exited.wait(5), "the process was left hanging"
    assert codes == [0]


def test_a_prompt_stop_is_not_cut_short():
    """Within the grace period nothing is forced: the request in flight may finish and its positions be saved."""
    indexer, codes = Indexer(), []
    stop_on_signal(indexer, grace=30, exit=codes.append)
    assert indexer.stopping.is_set() and codes == []
