"""Room webhooks through the installed appliance: real HTTPS API, XMPP occupants (slixmpp), Redis job queue, worker processes.

Each test starts its own HTTP receiver on 127.0.0.1 (a random port) that
records every delivery and answers as the test tells it: a bot's reply, an
error, or a stall that holds the worker on the job.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest

from tests.conftest import VENV_DIR, program_pid, run_appliance_cli, wait_for
from tests.e2e.test_api_rooms import Api, in_thread, room_name
from tests.e2e.test_rooms import join, member
from tests.e2e.xmpp_client import TIMEOUT, run

SECRET = "e2e-webhook-secret-" + "x" * 20  # 39 characters: long enough for HS256
WORKER_PROGRAMS = ("chat-core:worker-0", "chat-core:worker-1")


class Receiver:
    """An HTTP receiver on 127.0.0.1: records requests; ``answers`` is a list of (status, body) or "stall", used in order."""

    def __init__(self, answers=None, default=(200, b"")):
        self.answers = list(answers or [])
        self.default = default
        self.requests: list[dict] = []
        self.release = threading.Event()
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.arrived:
                    receiver.requests.append({"headers": dict(self.headers), "body": body, "at": time.monotonic()})
                    answer = receiver.answers.pop(0) if receiver.answers else receiver.default
                    receiver.arrived.notify_all()
                if answer == "stall":
                    receiver.release.wait(90)
                    return
                status, reply = answer
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for_requests(self, count: int, timeout: float) -> list[dict]:
        deadline = time.monotonic() + timeout
        with self.arrived:
            while len(self.requests) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"the receiver got {len(self.requests)} deliveries, expected {count} within {timeout:.0f} s")
                self.arrived.wait(left)
            return list(self.requests)

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made = []

    def make(*args, **kwargs):
        made.append(Receiver(*args, **kwargs))
        return made[-1]

    yield make
    for r in made:
        r.close()


CREATED_WEBHOOKS: list[int] = []


@pytest.fixture(scope="module", autouse=True)
def delete_created_webhooks(chat_server):
    """The webhooks these tests made point at receivers that are gone afterwards: delete them."""
    yield
    from hipchat_server.storage.database import run_in_transaction
    from hipchat_server.storage.schema import webhooks

    if CREATED_WEBHOOKS:
        run_in_transaction(
            chat_server.get_database_engine(),
            "delete_e2e_webhooks",
            lambda c: c.execute(webhooks.delete().where(webhooks.c.id.in_(CREATED_WEBHOOKS))),
        )


def room_with_webhook(config, owner, webhook: dict):
    """A new room of ``owner`` (Basic API caller) with one webhook: (room id, room JID, webhook id)."""
    api = Api(config, owner)
    created = api.ok("POST", "room", {"name": room_name()}, status=201)
    jid = api.ok("GET", f"room/{created['id']}")["xmpp_jid"]
    hook = api.ok("POST", f"room/{created['id']}/webhook", webhook, status=201)
    CREATED_WEBHOOKS.append(hook["id"])
    return created["id"], jid, hook["id"]


async def say(client, room: str, text: str) -> None:
    client.send_message(mto=room, mbody=text, mtype="groupchat")


async def wait_for_body(client, text: str, timeout: float = TIMEOUT):
    """The next groupchat message whose body is ``text`` (others, such as one's own reflections, are passed over)."""
    import asyncio

    deadline = time.monotonic() + timeout
    while True:
        message = await asyncio.wait_for(client.groupchat.get(), max(0.1, deadline - time.monotonic()))
        if message["body"] == text:
            return message


def test_a_pattern_webhook_reaches_the_receiver_signed_and_its_reply_appears_in_the_room(config, endpoint, new_user, receiver):
    """Only the message the pattern finds is delivered, with HipChat's payload and a JWT the receiver verifies;
    the receiver's JSON reply is posted into the room and a slixmpp occupant sees it."""
    alice = new_user()
    bot = receiver(default=(200, json.dumps({"message": "It is sunny in Oslo", "message_format": "text", "color": "green"}).encode()))
    room_id, jid, hook_id = room_with_webhook(
        config, alice, {"url": bot.url, "event": "room_message", "pattern": "^/weather", "name": "Weather", "authentication": "jwt", "secret": SECRET}
    )
    api = Api(config, alice)
    listed = api.ok("GET", f"room/{room_id}/webhook")
    assert [w["id"] for w in listed["items"]] == [hook_id] and listed["items"][0]["pattern"] == "^/weather"
    assert api.ok("GET", f"room/{room_id}/webhook/{hook_id}")["authentication"] == "jwt"

    async def scenario():
        a = await member(endpoint, alice)
        try:
            await join(a, jid, "alice")
            await say(a, jid, "nothing to see here")
            await say(a, jid, "/weather Oslo")
            reply = await wait_for_body(a, "It is sunny in Oslo", timeout=30)
            assert str(reply["from"]) == f"{jid}/Weather"
        finally:
            await a.close()

    run(scenario())
    time.sleep(1)  # a wrongly delivered first message would have arrived by now
    [delivery] = bot.requests
    scheme, token = delivery["headers"]["Authorization"].split(" ", 1)
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert scheme == "JWT" and claims["sub"] == str(hook_id)
    assert claims["body_sha256"] == hashlib.sha256(delivery["body"]).hexdigest()
    payload = json.loads(delivery["body"])
    assert payload["event"] == "room_message" and payload["webhook_id"] == hook_id
    assert payload["item"]["message"]["message"] == "/weather Oslo"
    assert payload["item"]["message"]["from"]["mention_name"] == alice
    assert payload["item"]["room"]["id"] == room_id
    recent = api.ok("GET", f"room/{room_id}/history", date="recent")
    assert any(item.get("message") == "It is sunny in Oslo" for item in recent["items"])
    # Deleting it stops deliveries (this process at once; the others within seconds).
    api.ok("DELETE", f"room/{room_id}/webhook/{hook_id}", status=204)
    assert api.get(f"room/{room_id}/webhook/{hook_id}").status_code == 404


def test_webhooks_are_for_room_admins_only(config, new_user, receiver):
    """Someone who is not the room's owner or admin gets 403; bad patterns and events get 400 naming the field."""
    alice, bob = new_user(), new_user()
    room_id, _, _ = room_with_webhook(config, alice, {"url": receiver().url, "event": "room_enter"})
    assert Api(config, bob).get(f"room/{room_id}/webhook").status_code == 403
    api = Api(config, alice)
    slow = api.post(f"room/{room_id}/webhook", {"url": "http://127.0.0.1:9/x", "event": "room_message", "pattern": "(a+)+$"})
    assert slow.status_code == 400 and "pattern" in slow.json()["error"]["message"]
    wrong = api.post(f"room/{room_id}/webhook", {"url": "http://127.0.0.1:9/x", "event": "room_party"})
    assert wrong.status_code == 400 and "event" in wrong.json()["error"]["message"]


def test_a_failing_receiver_is_retried_with_backoff_until_it_answers(config, endpoint, new_user, receiver):
    """Two 500s, then success: three deliveries of the same event, about 1 s then 2 s apart."""
    alice = new_user()
    bot = receiver(answers=[(500, b"down"), (503, b"still down")], default=(204, b""))
    room_id, jid, _ = room_with_webhook(config, alice, {"url": bot.url, "event": "room_message"})

    async def scenario():
        a = await member(endpoint, alice)
        try:
            await join(a, jid, "alice")
            await say(a, jid, "retry me")
        finally:
            await a.close()

    run(scenario())
    first, second, third = bot.wait_for_requests(3, timeout=30)[:3]
    bodies = [json.loads(r["body"])["item"]["message"] for r in (first, second, third)]
    assert bodies[0]["message"] == "retry me" and bodies[0] == bodies[1] == bodies[2]
    assert 0.8 <= second["at"] - first["at"] < 5
    assert 1.8 <= third["at"] - second["at"] < 8
    time.sleep(2)
    assert len(bot.requests) == 3  # delivered: no more tries


def worker_consumers(config) -> dict[str, int]:
    """Pending webhook jobs per consumer of the job queue's group."""
    from hipchat_server.server import ChatServer

    redis = ChatServer(config).get_redis_primary()
    return {entry["name"].decode() if isinstance(entry["name"], bytes) else entry["name"]: int(entry["pending"])
            for entry in redis.xinfo_consumers("jobs:webhook", "workers")}


@pytest.mark.disruptive
def test_a_killed_workers_job_is_delivered_by_another_worker(config, endpoint, new_user, receiver):
    """The receiver stalls the first delivery; the worker holding it is killed with SIGKILL; the job is not lost:
    another worker takes it over (after jobs.claim_idle_seconds) and delivers it."""
    alice = new_user()
    bot = receiver(answers=["stall"], default=(200, json.dumps({"message": "survived the crash", "message_format": "text"}).encode()))
    room_id, jid, _ = room_with_webhook(config, alice, {"url": bot.url, "event": "room_message"})
    workers = {program_pid(name) for name in WORKER_PROGRAMS}
    assert len(workers) == 2 and 0 not in workers, "both workers must be running"

    async def send():
        a = await member(endpoint, alice)
        try:
            await join(a, jid, "alice")
            await say(a, jid, "do not lose me")
        finally:
            await a.close()

    run(send())
    [stalled] = bot.wait_for_requests(1, timeout=30)
    holders = wait_for(lambda: [c for c, n in worker_consumers(config).items() if n], 10, what="the worker holding the job")
    [holder] = holders
    pid = int(holder.rsplit(":", 1)[1])
    assert pid in workers, f"{holder} is not one of the supervisor's workers {workers}"
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    bot.release.set()  # the stalled connection's worker is gone anyway
    second = bot.wait_for_requests(2, timeout=config.jobs.claim_idle_seconds + 60)[1]
    assert second["at"] > killed_at
    assert json.loads(second["body"]) == json.loads(stalled["body"])
    # Delivered by a live worker (the killed one's consumer holds nothing now), and its reply reached the room.
    wait_for(lambda: not any(n for c, n in worker_consumers(config).items()), 15, what="the job to be acknowledged")
    api = Api(config, alice)
    wait_for(lambda: any(i.get("message") == "survived the crash" for i in api.ok("GET", f"room/{room_id}/history", date="recent")["items"]),
             15, what="the reply in the room")
    wait_for(lambda: all(program_pid(name) for name in WORKER_PROGRAMS), 30, what="supervisor to restart the worker")


def test_a_refused_delivery_becomes_a_dead_letter_shown_by_status(config, endpoint, new_user, receiver):
    """A receiver answering 400 will not take the event however often it is sent: the job is a dead letter at once,
    `hipchat-appliance status` names it, and `jobs drop` removes it."""
    alice = new_user()
    marker = f"dead-{uuid.uuid4().hex[:8]}"
    bot = receiver(default=(400, b'{"error": "no"}'))
    room_id, jid, hook_id = room_with_webhook(config, alice, {"url": bot.url, "event": "room_message"})

    async def send():
        a = await member(endpoint, alice)
        try:
            await join(a, jid, "alice")
            await say(a, jid, marker)
        finally:
            await a.close()

    run(send())
    bot.wait_for_requests(1, timeout=30)

    def our_letter():
        result = run_appliance_cli("jobs", "dead", "--json", "--limit", "500")
        assert result.returncode == 0, result.stderr
        return [d for d in json.loads(result.stdout) if d["payload"].get("webhook_id") == hook_id]

    [letter] = wait_for(our_letter, 15, what="the dead letter")
    assert letter["kind"] == "webhook" and "HTTP 400" in letter["error"] and letter["attempts"] == 1
    status = subprocess.run([f"{VENV_DIR}/bin/hipchat-appliance", "status"], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "COLUMNS": "200"})
    assert "Background jobs" in status.stdout and "dead letter" in status.stdout, status.stdout
    as_json = json.loads(run_appliance_cli("status", "--json").stdout)
    assert as_json["sections"]["jobs"]["details"]["dead"] >= 1
    assert run_appliance_cli("jobs", "drop", letter["id"]).returncode == 0
    assert our_letter() == []
    time.sleep(1)
    assert len(bot.requests) == 1  # never retried
