"""Redis as installed by the `redis` and `redis_sentinel` roles: a primary, a replica and three Sentinels.

The tests talk to the real services with redis-py. Which instance is the
primary is Sentinel's answer, never an assumption: after the failover test
the supervisor program `redis:redis-primary` runs the replica and
`redis:redis-replica` the primary, which is expected.

Environment override: HIPCHAT_REDIS_PASSWORD_FILE.
"""

from __future__ import annotations

import os
import signal
import time
import uuid

import pytest
import redis

from tests.conftest import program_pid, wait_for

PASSWORD_FILE = os.environ.get("HIPCHAT_REDIS_PASSWORD_FILE", "/etc/hipchat/secrets/redis_password")

# The roles' defaults (roles/redis, roles/redis_sentinel).
SERVICE_NAME = "hipchat"
REDIS_HOST = "127.0.0.1"
PROGRAM_PORTS = {"redis:redis-primary": 6379, "redis:redis-replica": 6380}
SENTINELS = [("127.0.0.1", 26379), ("127.0.0.1", 26380), ("127.0.0.1", 26381)]

# The product promise: a dead primary is replaced by its replica within this.
FAILOVER_DEADLINE_SECONDS = 10
# Time for supervisor to restart the killed instance and Sentinel to turn it
# into a replica of the new primary (Sentinel waits ~8 s before it converts an
# old primary that came back).
REJOIN_DEADLINE_SECONDS = 60


# --- helpers -----------------------------------------------------------------


def password() -> str:
    with open(PASSWORD_FILE) as f:
        return f.read().strip()


def instance(port: int) -> redis.Redis:
    """A client of the Redis instance on ``port``."""
    return redis.Redis(
        host=REDIS_HOST,
        port=port,
        password=password(),
        socket_timeout=2,
        socket_connect_timeout=2,
        decode_responses=True,
    )


def sentinel(host: str, port: int) -> redis.Redis:
    """A client of one Sentinel (Sentinels have no password)."""
    return redis.Redis(host=host, port=port, socket_timeout=2, socket_connect_timeout=2, decode_responses=True)


def sentinel_primaries() -> set[tuple[str, int]]:
    """The primary address each reachable Sentinel names for the service."""
    answers = set()
    for host, port in SENTINELS:
        try:
            address = sentinel(host, port).sentinel_get_master_addr_by_name(SERVICE_NAME)
        except (redis.RedisError, OSError):
            continue
        if address:
            answers.add((address[0], int(address[1])))
    return answers


def agreed_primary() -> tuple[str, int] | None:
    """The primary every Sentinel names, or None while they disagree or none answers."""
    answers = sentinel_primaries()
    return answers.pop() if len(answers) == 1 else None


def replication(port: int) -> dict:
    return instance(port).info("replication")


def is_healthy_pair(primary_port: int) -> bool:
    """The instance on ``primary_port`` is a primary with an online replica whose link to it is up."""
    info = replication(primary_port)
    if info["role"] != "master" or info.get("connected_slaves", 0) < 1:
        return False
    replica_ports = [v["port"] for k, v in info.items() if k.startswith("slave") and v.get("state") == "online"]
    return any(replication(port).get("master_link_status") == "up" for port in replica_ports)


def healthy_primary() -> int:
    """The port of the primary all Sentinels agree on, once it has a synced replica (0 until then)."""
    address = agreed_primary()
    if address and is_healthy_pair(address[1]):
        return address[1]
    return 0


def program_for_port(port: int) -> str:
    return next(name for name, program_port in PROGRAM_PORTS.items() if program_port == port)


# --- tests -------------------------------------------------------------------


@pytest.fixture
def primary_port() -> int:
    """The current primary's port, after waiting for a healthy primary/replica pair."""
    return wait_for(healthy_primary, timeout=REJOIN_DEADLINE_SECONDS, what="a primary with a synced replica")


def test_every_sentinel_names_the_same_primary(primary_port):
    """All three Sentinels answer, name one primary, and that instance reports the primary role."""
    answers = {}
    for host, port in SENTINELS:
        address = sentinel(host, port).sentinel_get_master_addr_by_name(SERVICE_NAME)
        answers[port] = (address[0], int(address[1]))
    assert set(answers.values()) == {(REDIS_HOST, primary_port)}, answers
    assert replication(primary_port)["role"] == "master"


def test_sentinels_have_a_quorum_and_know_the_replica(primary_port):
    """Each Sentinel sees the other two (quorum reachable) and lists the replica as not down."""
    for host, port in SENTINELS:
        client = sentinel(host, port)
        assert client.execute_command("SENTINEL", "CKQUORUM", SERVICE_NAME).startswith("OK 3 usable")
        replicas = client.sentinel_slaves(SERVICE_NAME)
        assert any(not r["is_sdown"] and not r["is_odown"] for r in replicas), replicas


def test_a_replica_is_attached_to_the_primary(primary_port):
    """The primary has an online replica, and that replica's link to the primary is up."""
    info = replication(primary_port)
    replicas = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
    assert [r["state"] for r in replicas] == ["online"]
    replica_port = replicas[0]["port"]
    assert replica_port != primary_port
    replica_info = replication(replica_port)
    assert replica_info["role"] == "slave"
    assert int(replica_info["master_port"]) == primary_port
    assert replica_info["master_link_status"] == "up"


def test_a_write_is_acknowledged_by_the_replica(primary_port):
    """A write on the primary followed by WAIT 1 1000 is acknowledged by one replica and readable there."""
    key = f"test:redis:wait:{uuid.uuid4().hex}"
    client = instance(primary_port)
    client.set(key, "acknowledged", ex=600)
    assert client.wait(1, 1000) == 1
    replica_port = next(p for p in PROGRAM_PORTS.values() if p != primary_port)
    assert instance(replica_port).get(key) == "acknowledged"


def test_the_replica_refuses_writes(primary_port):
    """A client that writes to the replica by mistake is refused instead of diverging from the primary."""
    replica_port = next(p for p in PROGRAM_PORTS.values() if p != primary_port)
    with pytest.raises(redis.ReadOnlyError):
        instance(replica_port).set(f"test:redis:readonly:{uuid.uuid4().hex}", "x")


def test_an_unauthenticated_client_is_refused(primary_port):
    """Without the generated password the primary answers nothing but an authentication error."""
    client = redis.Redis(host=REDIS_HOST, port=primary_port, socket_timeout=2)
    with pytest.raises(redis.AuthenticationError):
        client.ping()


@pytest.mark.disruptive
def test_killing_the_primary_promotes_the_replica_without_losing_acknowledged_writes(primary_port):
    """kill -9 of the primary: Sentinel promotes the replica within 10 s, the acknowledged key is on the
    new primary, and supervisor brings the killed instance back as the new primary's replica."""
    old_primary = (REDIS_HOST, primary_port)
    program = program_for_port(primary_port)
    old_pid = program_pid(program)
    assert old_pid, f"supervisor reports no pid for {program}"

    key = f"test:redis:failover:{uuid.uuid4().hex}"
    client = instance(primary_port)
    client.set(key, "survives", ex=600)
    assert client.wait(1, 1000) == 1

    killed_at = time.monotonic()
    os.kill(old_pid, signal.SIGKILL)

    def promoted_by_every_sentinel():
        address = agreed_primary()
        return address if address and address != old_primary else None

    wait_for(
        lambda: sentinel_primaries() - {old_primary},
        timeout=FAILOVER_DEADLINE_SECONDS,
        interval=0.1,
        what="a Sentinel to promote the replica",
    )
    first_report_seconds = time.monotonic() - killed_at
    new_primary = wait_for(
        promoted_by_every_sentinel,
        timeout=FAILOVER_DEADLINE_SECONDS - first_report_seconds,
        interval=0.1,
        what="every Sentinel to name the promoted replica",
    )
    agreed_seconds = time.monotonic() - killed_at
    print(
        f"kill -9 of {program}: first Sentinel named {new_primary[0]}:{new_primary[1]} after "
        f"{first_report_seconds:.1f} s, all Sentinels after {agreed_seconds:.1f} s"
    )
    assert new_primary[1] in PROGRAM_PORTS.values()

    promoted = instance(new_primary[1])
    assert promoted.info("replication")["role"] == "master"
    assert promoted.get(key) == "survives"

    # supervisor restarts the killed program; Sentinel turns it into a replica
    # of the new primary, and writes (min-replicas-to-write 1) work again.
    wait_for(
        lambda: program_pid(program) not in (0, old_pid),
        timeout=REJOIN_DEADLINE_SECONDS,
        what=f"supervisor to restart {program}",
    )
    wait_for(
        lambda: replication(primary_port)["role"] == "slave"
        and int(replication(primary_port)["master_port"]) == new_primary[1]
        and replication(primary_port)["master_link_status"] == "up",
        timeout=REJOIN_DEADLINE_SECONDS,
        what=f"{program} to rejoin as a replica of {new_primary[1]}",
    )
    assert wait_for(healthy_primary, timeout=REJOIN_DEADLINE_SECONDS, what="a healthy pair") == new_primary[1]
    rejoined_at = time.monotonic() - killed_at
    print(f"{program} rejoined as a replica {rejoined_at:.1f} s after kill -9")

    assert instance(primary_port).get(key) == "survives"
    after = f"test:redis:after-failover:{uuid.uuid4().hex}"
    promoted.set(after, "written", ex=600)
    assert promoted.wait(1, 1000) == 1
