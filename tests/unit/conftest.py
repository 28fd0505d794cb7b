"""Shared fixtures of the unit tests."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest
import redis


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A throwaway redis-server on a UNIX socket (no TCP port), stopped at the end."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    directory = tmp_path_factory.mktemp("redis")
    socket_path = str(directory / "redis.sock")
    process = subprocess.Popen(
        [binary, "--port", "0", "--unixsocket", socket_path, "--save", "", "--appendonly", "no", "--dir", str(directory)],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(unix_socket_path=socket_path)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                process.kill()
                raise
            time.sleep(0.05)
    yield client
    process.terminate()
    process.wait(10)
