"""The MariaDB part of a backup: one consistent dump (a single transaction), gzip-compressed, with row counts.

``mariadb-dump --single-transaction`` reads every InnoDB table from one snapshot without
locking the chat processes out. Rows are dumped one INSERT per line (``--skip-extended-insert``)
so that the counts in the manifest are read from the dump itself, the same snapshot, not from a
second query that could see a user added in between; the tables are small (users, rooms,
memberships), so the larger dump costs little. Each table's INSERTs run in one transaction on
load (``--no-autocommit``). The dump names no database: restore loads it into the one it creates.
"""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

_INSERT = re.compile(rb"^INSERT INTO `([^`]+)` VALUES ")


class DumpError(Exception):
    """mariadb-dump failed; the message says why."""


@dataclass
class DumpResult:
    path: str
    rows: dict[str, int]  # rows dumped per table
    bytes: int  # compressed size


def _credentials_file(database, directory: str) -> str:
    """A 0600 option file with the appliance's credentials (never on the command line, where ps shows it)."""
    fd, path = tempfile.mkstemp(prefix="mariadb-", suffix=".cnf", dir=directory)
    with os.fdopen(fd, "w") as f:
        f.write(f"[client]\nuser={database.user}\npassword={database.password}\nhost={database.host}\nport={database.port}\n")
    return path


def dump_command(options_file: str, database_name: str) -> list[str]:
    return [
        "mariadb-dump",
        f"--defaults-extra-file={options_file}",
        "--single-transaction",
        "--routines",
        "--triggers",
        "--skip-extended-insert",
        "--no-autocommit",
        "--hex-blob",
        "--default-character-set=utf8mb4",
        database_name,
    ]


def dump_database(database, target: str, staging_dir: str, compresslevel: int = 6) -> DumpResult:
    """Dump ``database`` (a DatabaseConfig) gzip-compressed into ``target``; counts the rows of each table."""
    options = _credentials_file(database, staging_dir)
    rows: dict[str, int] = {}
    try:
        with open(target, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=compresslevel, mtime=0) as out:
            process = subprocess.Popen(dump_command(options, database.name), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for line in process.stdout:
                match = _INSERT.match(line)
                if match:
                    table = match.group(1).decode()
                    rows[table] = rows.get(table, 0) + 1
                out.write(line)
            stderr = process.stderr.read().decode(errors="replace").strip()
            if process.wait() != 0:
                raise DumpError(f"mariadb-dump exited with {process.returncode}: {stderr or 'no message'}")
            os.fsync(raw.fileno())
    finally:
        os.unlink(options)
    return DumpResult(target, rows, os.path.getsize(target))


def server_version(engine) -> str:
    from sqlalchemy import text

    with engine.connect() as connection:
        return connection.execute(text("SELECT VERSION()")).scalar_one()
