"""The parent's handle on the worker processes: send each a command, gather the answers."""

from __future__ import annotations

import multiprocessing
import os

from .client import Options
from .worker import worker_main


class WorkerError(Exception):
    pass


class WorkerPool:
    def __init__(self, count: int, options: Options, prefix: str):
        context = multiprocessing.get_context("fork")
        self.connections, self.processes = [], []
        for _ in range(count):
            parent, child = context.Pipe()
            process = context.Process(target=worker_main, args=(options, prefix, child), daemon=True)
            process.start()
            child.close()
            self.connections.append(parent)
            self.processes.append(process)
        self._next_id = 0
        self._answers: list[dict] = [{} for _ in range(count)]

    def pids(self) -> list[int]:
        """The worker processes' pids (and this process's)."""
        return [p.pid for p in self.processes] + [os.getpid()]

    def __len__(self) -> int:
        return len(self.connections)

    def start(self, worker: int, op: str, **args) -> tuple[int, int]:
        """Send ``op`` to one worker; returns a ticket for `wait`."""
        self._next_id += 1
        self.connections[worker].send((self._next_id, op, args))
        return worker, self._next_id

    def wait(self, ticket: tuple[int, int]):
        worker, command_id = ticket
        answers = self._answers[worker]
        while command_id not in answers:
            got_id, result = self.connections[worker].recv()
            answers[got_id] = result
        status, value = answers.pop(command_id)
        if status != "ok":
            raise WorkerError(f"worker {worker}: {value}")
        return value

    def ready(self, ticket: tuple[int, int]) -> bool:
        """Whether the answer to ``ticket`` has arrived (reads what is there, never blocks)."""
        worker, command_id = ticket
        answers, connection = self._answers[worker], self.connections[worker]
        while command_id not in answers and connection.poll():
            got_id, result = connection.recv()
            answers[got_id] = result
        return command_id in answers

    def call_all(self, op: str, args_per_worker: list[dict]) -> list:
        """Run ``op`` on every worker at once (worker i gets ``args_per_worker[i]``); their answers in order."""
        tickets = [self.start(i, op, **args) for i, args in enumerate(args_per_worker)]
        return [self.wait(t) for t in tickets]

    def close(self) -> None:
        for connection in self.connections:
            try:
                connection.send(None)
            except OSError:
                pass
        for process in self.processes:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()


def split(items: list, parts: int) -> list[list]:
    """``items`` in ``parts`` contiguous, nearly equal slices."""
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        out.append(items[start:end])
        start = end
    return out
