"""A load-generator process: many clients on one asyncio loop, driven by commands from the parent.

The parent (`pool.WorkerPool`) sends ``(id, op, args)`` over a pipe; each command runs as its own
task, so a storm and the messages sent during it run side by side, and its answer goes back as
``(id, result)``.
"""

from __future__ import annotations

import asyncio
import os
import random
import resource
import time
from collections import Counter

from .client import Client, LoginError, Options, Tally


def raise_fd_limit() -> int:
    """Raise this process's open-file soft limit to its hard limit; return the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def _failure_kind(error: BaseException) -> str:
    if isinstance(error, LoginError):
        return error.kind
    if isinstance(error, asyncio.TimeoutError):
        return "timeout"
    if isinstance(error, OSError):
        return type(error).__name__
    return type(error).__name__


class Worker:
    def __init__(self, options: Options, prefix: str, connection):
        self.options, self.prefix, self.connection = options, prefix, connection
        self.tally = Tally()
        self.clients: dict[int, Client] = {}
        self.context = options.ssl_context()

    def client(self, index: int) -> Client:
        c = self.clients.get(index)
        if c is None:
            c = self.clients[index] = Client(index, f"{self.prefix}{index}", self.options, self.tally)
        return c

    async def _login_once(self, client: Client) -> None:
        try:
            await asyncio.wait_for(client.login(self.context), self.options.login_timeout)
        except BaseException:
            client.abort()
            raise

    # Commands.
    async def op_login(self, ids: list[int], concurrency: int = 100, attempts: int = 3) -> dict:
        """Log ``ids`` in, at most ``concurrency`` at a time; each failed one is retried."""
        semaphore = asyncio.Semaphore(concurrency)
        done_at: list[float] = []
        failures: Counter = Counter()
        gave_up = 0

        async def one(index: int) -> None:
            nonlocal gave_up
            client = self.client(index)
            async with semaphore:
                for _ in range(attempts):
                    try:
                        await self._login_once(client)
                        done_at.append(time.monotonic())
                        return
                    except Exception as e:  # noqa: BLE001 - every failure is counted by kind
                        failures[_failure_kind(e)] += 1
                gave_up += 1

        started = time.monotonic()
        await asyncio.gather(*(one(i) for i in ids))
        return {"started": started, "done_at": done_at, "failures": dict(failures), "gave_up": gave_up,
                "mechanisms": sorted(self.tally.mechanisms), "sm_offered": sorted(self.tally.sm_offered),
                "sm_enabled": sum(1 for i in ids if self.clients[i].sm)}

    async def op_configure(self, id_prefix: str | None = None, sample_every: int | None = None) -> dict:
        """Set the message-id run tag and the stanza-id sampling of this worker's clients."""
        if id_prefix is not None:
            self.options.id_prefix = id_prefix
        if sample_every is not None:
            self.tally.sample_every = sample_every
        return {}

    async def op_join(self, joins: list[tuple[int, str, str]], concurrency: int = 50, maxstanzas: int = 0,
                      timeout: float = 30.0) -> dict:
        """Each (client index, room JID, nick) enters its room; join times, rooms created, failures by kind."""
        semaphore = asyncio.Semaphore(concurrency)
        seconds: list[float] = []
        failures: Counter = Counter()
        details: list[str] = []
        created = 0

        async def one(index: int, room: str, nick: str) -> None:
            nonlocal created
            async with semaphore:
                try:
                    done = await self.client(index).join_room(room, nick, maxstanzas, timeout)
                except Exception as e:  # noqa: BLE001 - counted by kind
                    failures[_failure_kind(e)] += 1
                    if len(details) < 3:
                        details.append(str(e)[:300])
                    return
                seconds.append(done["seconds"])
                created += done["created"]

        await asyncio.gather(*(one(*j) for j in joins))
        return {"seconds": seconds, "created": created, "failures": dict(failures), "details": details}

    async def op_room_count(self, members: dict, sent: dict) -> dict:
        """Exact accounting of the room messages this worker's occupants got.

        ``members``: room JID -> sender indexes; ``sent``: sender index -> (first, last) seq.
        Every occupant should have each message of its room's senders once.
        """
        expected = received = duplicates = 0
        lost_by_room: Counter = Counter()
        for client in self.clients.values():
            if client.room is None:
                continue
            for sender in members.get(client.room, ()):
                first, last = sent.get(sender, (1, 0))
                if last < first:
                    continue
                window = bytes(client.room_seen.get(sender, b"")[first : last + 1])
                got = len(window) - window.count(0)
                expected += last - first + 1
                received += got
                duplicates += sum(window) - got
                lost_by_room[client.room] += last - first + 1 - got
        return {"expected": expected, "received": received, "duplicates": duplicates,
                "lost_by_room": {k: v for k, v in lost_by_room.items() if v}}

    async def op_occupants(self) -> list[int]:
        """Indexes of this worker's clients that are in a room and still connected."""
        return [c.index for c in self.clients.values() if c.room is not None and c.bound]

    async def op_samples(self) -> list:
        """The stanza-ids sampled since the last call (see `Tally.samples`)."""
        samples, self.tally.samples = self.tally.samples, []
        return samples

    async def op_unacked(self) -> dict:
        """Sender index -> seqs its server has not acknowledged yet."""
        return {c.index: c.unacked_seqs() for c in self.clients.values() if c.unacked}

    async def op_send(self, routes: list[tuple[int, str]], rate: float, duration: float, kind: str = "chat") -> dict:
        """Clients send numbered messages along ``routes`` (client index, to) at ``rate`` per second in total."""
        senders = [(self.client(i), to) for i, to in routes]
        first = {c.index: c.seq + 1 for c, _ in senders}
        sent = skipped = 0
        start = time.monotonic()
        k = 0
        while True:
            elapsed = time.monotonic() - start
            if elapsed >= duration:
                break
            due = int(rate * elapsed) - sent - skipped
            for _ in range(due):
                client, to = senders[k % len(senders)]
                k += 1
                if client.send_chat(to, kind):
                    sent += 1
                else:
                    skipped += 1
            await asyncio.sleep(0.005)
        return {"sent": {c.index: (first[c.index], c.seq) for c, _ in senders}, "skipped": skipped,
                "elapsed": time.monotonic() - start}

    async def op_collect(self, reset_since_ns: int | None = None) -> dict:
        """What the clients received (and the acks they got) since the last collect."""
        t = self.tally
        result = {"received": t.received, "latencies_ms": t.latencies_ms, "ack_ms": t.ack_ms,
                  "bounced": {k: sorted(v) for k, v in t.bounced.items()}, "errors_without_body": t.errors_without_body,
                  "unacked": sum(len(c.unacked) for c in self.clients.values()),
                  "room_deliveries": t.room_deliveries, "room_duplicates": t.room_duplicates}
        t.reset(reset_since_ns or 0)
        return result

    async def op_storm(self, ids: list[int], spread: float, deadline: float) -> dict:
        """Drop the connections of ``ids`` at once, then reconnect each within ``spread`` seconds."""
        clients = [self.client(i) for i in ids]
        t0 = time.monotonic()
        for c in clients:
            c.abort()
        back_after: list[float] = []
        failures: Counter = Counter()
        gave_up = 0

        async def reconnect(client: Client) -> None:
            nonlocal gave_up
            await asyncio.sleep(random.uniform(0, spread))
            backoff = 0.5
            while True:
                try:
                    await self._login_once(client)
                    back_after.append(time.monotonic() - t0)
                    return
                except Exception as e:  # noqa: BLE001
                    failures[_failure_kind(e)] += 1
                if time.monotonic() - t0 + backoff > deadline:
                    gave_up += 1
                    return
                await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
                backoff = min(backoff * 2, 8.0)

        await asyncio.gather(*(reconnect(c) for c in clients))
        return {"t0": t0, "back_after": back_after, "failures": dict(failures), "gave_up": gave_up}

    async def op_close(self) -> dict:
        for c in self.clients.values():
            c.close()
        await asyncio.sleep(0.5)
        n = len(self.clients)
        self.clients.clear()
        return {"closed": n}

    async def op_status(self) -> dict:
        return {"bound": sum(1 for c in self.clients.values() if c.bound), "pid": os.getpid()}

    # The command loop.
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        tasks = set()
        while True:
            message = await loop.run_in_executor(None, self.connection.recv)
            if message is None:
                break
            command_id, op, args = message
            task = asyncio.create_task(self._answer(command_id, getattr(self, f"op_{op}"), args))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        for c in self.clients.values():
            c.abort()

    async def _answer(self, command_id, method, args) -> None:
        try:
            result = ("ok", await method(**args))
        except Exception as e:  # noqa: BLE001 - reported to the parent
            result = ("error", f"{type(e).__name__}: {e}")
        self.connection.send((command_id, result))


def worker_main(options: Options, prefix: str, connection) -> None:
    raise_fd_limit()
    asyncio.run(Worker(options, prefix, connection).run())
