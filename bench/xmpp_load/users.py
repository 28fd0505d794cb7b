"""Bench users ``<prefix><n>`` (n from 1) with one known password on each server; created when missing.

- The appliance: through its Python API (``hipchat_server.users`` validators and the
  ``UserStore``). ``create_user`` computes an argon2 hash (about 0.1 s) and two SCRAM keys per
  user, so 10,000 users would take about 20 minutes; here the argon2 hash of the one password is
  computed once and shared (argon2 hashes carry their own salt, so that is a valid hash for each
  account), while the SCRAM keys get a fresh salt per user as ``create_user`` makes them, and the
  rows are written with ``UserStore.insert``, one transaction each.
- Prosody: ``prosodyctl shell`` running usermanager.create_user in chunks (one process per chunk).
- ejabberd: its HTTP API (``register``) on the loopback-only listener of bench/peers/ejabberd.yml.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

BENCH_DIR = os.environ.get("BENCH_DIR", "/var/lib/hipchat-bench")


def ensure_hipchat_users(count: int, prefix: str, password: str, config_path: str | None = None, threads: int = 4) -> dict:
    from hipchat_server.config import load_config
    from hipchat_server.server import ChatServer
    from hipchat_server.storage.users import UserStore
    from hipchat_server.users import (
        SCRAM_MECHANISMS,
        hash_password,
        make_scram_credentials,
        validate_email,
        validate_name,
        validate_password,
        validate_username,
    )

    store = UserStore(ChatServer(load_config(config_path)).get_database_engine())
    existing = {row["username"] for row in store.list_all()}
    missing = [n for n in range(1, count + 1) if f"{prefix}{n}" not in existing]
    if not missing:
        return {"created": 0, "existing": count}
    password = validate_password(password)
    password_hash = hash_password(password)

    def credentials(n: int) -> list[dict]:  # PBKDF2 releases the GIL: threads compute in parallel
        return [asdict(make_scram_credentials(password, m)) for m in SCRAM_MECHANISMS]

    # Rows are written one transaction at a time: concurrent inserts deadlock on the
    # user_credentials index (the store deletes a user's old keys before inserting).
    with ThreadPoolExecutor(threads) as pool:
        for n, keys in zip(missing, pool.map(credentials, missing)):
            username = validate_username(f"{prefix}{n}")
            store.insert(
                credentials=keys,
                username=username,
                name=validate_name(f"Bench user {n}"),
                mention_name=username,
                email=validate_email(f"{username}@bench.invalid"),
                password_hash=password_hash,
                is_admin=False,
            )
    return {"created": len(missing), "existing": count - len(missing)}


def ensure_prosody_users(count: int, prefix: str, password: str, domain: str = "localhost", chunk: int = 500) -> dict:
    config = f"{BENCH_DIR}/prosody/prosody.cfg.lua"
    created = 0
    for start in range(1, count + 1, chunk):
        end = min(start + chunk - 1, count)
        lua = (
            f"> local um = require 'core.usermanager'; local n = 0; for i = {start}, {end} do "
            f"local u = '{prefix}' .. i; if not um.user_exists(u, '{domain}') then "
            f"assert(um.create_user(u, '{password}', '{domain}')); n = n + 1 end end; return n"
        )
        out = subprocess.run(["prosodyctl", "--config", config, "shell"], input=lua + "\n", capture_output=True,
                             text=True, timeout=600)
        if "Result:" not in out.stdout and "OK" not in out.stdout:
            raise RuntimeError(f"prosodyctl shell failed for users {start}-{end}: {out.stdout}{out.stderr}")
        for token in out.stdout.replace(":", " ").split():
            if token.isdigit():
                created += int(token)
                break
    return {"created": created, "existing": count - created}


def _ejabberd_api(api: str, command: str, args: dict) -> tuple[int, str]:
    request = urllib.request.Request(f"{api}/{command}", data=json.dumps(args).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def ensure_ejabberd_users(count: int, prefix: str, password: str, domain: str = "localhost",
                          api: str = "http://127.0.0.1:25285/api", threads: int = 8) -> dict:
    status, body = _ejabberd_api(api, "registered_users", {"host": domain})
    if status != 200:
        raise RuntimeError(f"ejabberd API registered_users: {status} {body}")
    existing = set(json.loads(body))
    missing = [n for n in range(1, count + 1) if f"{prefix}{n}" not in existing]

    def create(n: int) -> None:
        status, body = _ejabberd_api(api, "register", {"user": f"{prefix}{n}", "host": domain, "password": password})
        if status != 200 and "already" not in body:
            raise RuntimeError(f"ejabberd API register {prefix}{n}: {status} {body}")

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(create, missing))
    return {"created": len(missing), "existing": count - len(missing)}


def ensure_users(server: str, count: int, prefix: str, password: str, domain: str) -> dict:
    if server == "hipchat":
        return ensure_hipchat_users(count, prefix, password)
    if server == "prosody":
        return ensure_prosody_users(count, prefix, password, domain)
    if server == "ejabberd":
        return ensure_ejabberd_users(count, prefix, password, domain)
    raise ValueError(f"no way to create users on {server!r}")
