"""`hipchat-appliance backup ...`: create, list and verify backups; the nightly scheduler.

A thin layer over ``appliance.backup``: it reads options, draws progress and a summary, and
turns errors into what the operator should do next. Exit codes: 0 ok, 1 refused or failed,
2 configuration. Registered on the ``cli`` group by one import in `appliance.cli`.
"""

from __future__ import annotations

import json
import logging
import sys

import click
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from appliance.cli import EXIT_CONFIG, EXIT_REFUSED, _chat_server, cli, console, error_console
from appliance.lib.status_view import human_bytes



def _read_passphrase(path: str | None) -> bytes | None:
    """The first line of ``path`` (without its line end); exits 2 when it is unreadable or empty."""
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            passphrase = f.readline().rstrip(b"\r\n")
    except OSError as e:
        error_console.print(f"[red]Error:[/red] cannot read the passphrase file {escape(path)}: {e.strerror}")
        sys.exit(EXIT_CONFIG)
    if len(passphrase) < 8:
        error_console.print(f"[red]Error:[/red] the passphrase in {escape(path)} is shorter than 8 characters; write a longer one")
        sys.exit(EXIT_CONFIG)
    return passphrase


def _backup_dir(ctx: click.Context, to: str | None) -> str:
    return to or _chat_server(ctx).get_config().backup.dir


class _BytesColumn(DownloadColumn):
    """Bytes done / total, only for the steps measured in bytes."""

    def render(self, task):
        return super().render(task) if task.fields.get("in_bytes") else Text("")


class _ProgressReporter:
    """Shows each step of a backup as a line; the archive step as a bar in bytes."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.task = None

    def step(self, name: str, total: int | None = None) -> None:
        self.finish()
        self.task = self.progress.add_task(name, total=total, in_bytes=total is not None)

    def advance(self, amount: int) -> None:
        self.progress.advance(self.task, amount)

    def finish(self) -> None:
        if self.task is not None:
            total = self.progress.tasks[self.task].total or 1
            self.progress.update(self.task, completed=total, total=total)


def _progress(to_stderr: bool = False) -> Progress:
    """Progress bars; on standard error when standard output carries JSON."""
    return Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), _BytesColumn(), TimeElapsedColumn(),
        console=error_console if to_stderr else console, transient=False,
    )


@cli.group()
def backup() -> None:
    """Backups: create, list, verify; the nightly scheduler."""


@backup.command("create")
@click.option("--to", "to", type=click.Path(file_okay=False), help="Directory for the archive (default: backup.dir, /var/lib/hipchat/backups).")
@click.option("--encrypt-with-passphrase-file", "passphrase_file", type=click.Path(dir_okay=False), help="Encrypt the archive (AES-256-GCM) with the first line of this file; the secrets and TLS key are included only then.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON instead of a table.")
@click.pass_context
def create(ctx: click.Context, to: str | None, passphrase_file: str | None, as_json: bool) -> None:
    """Back up the running appliance into one archive (chat keeps running)."""
    from appliance.backup.create import BackupError, create_backup, exit_on_sigterm, lower_priority

    passphrase = _read_passphrase(passphrase_file)
    directory = _backup_dir(ctx, to)
    lower_priority()
    exit_on_sigterm()
    try:
        with _progress(to_stderr=as_json) as progress:
            reporter = _ProgressReporter(progress)
            result = create_backup(_chat_server(ctx), directory, passphrase, reporter)
            reporter.finish()
    except BackupError as e:
        error_console.print(f"[red]Backup failed:[/red] {escape(str(e))}", soft_wrap=True)
        sys.exit(EXIT_REFUSED)
    m = result.manifest
    if as_json:
        click.echo(json.dumps({"path": result.path, "bytes": result.bytes, "seconds": round(result.seconds, 1), "steps": result.steps, "manifest": m}, indent=2))
        return
    table = Table(title="Backup created", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("archive", escape(result.path))
    table.add_row("size", human_bytes(result.bytes))
    table.add_row("took", f"{result.seconds:.1f} s (" + ", ".join(f"{k} {v:.1f} s" for k, v in result.steps.items()) + ")")
    table.add_row("cut-off", m["cutoff"] + "  (every message acknowledged before it is in the archive)")
    table.add_row("encrypted", "yes, secrets and TLS key included" if m["secrets_included"] else "no (secrets left out)")
    c = m["counts"]
    table.add_row("users / rooms / members", f"{c['users']} / {c['rooms']} / {c['room_members']}")
    table.add_row("messages", f"{sum(c['messages'].values()):,} in {len(c['messages'])} month indices ({c['spool_records']} records from the spool)")
    table.add_row("jobs", str(c["job_entries"]))
    table.add_row("versions", f"appliance {m['appliance_version']}, schema {m['schema_revision']}, OpenSearch {m['opensearch_version']}, MariaDB {m['mariadb_version']}")
    console.print(table)
    for note in result.notes:
        console.print(f"[yellow]note[/yellow] {escape(note)}")


@backup.command("list")
@click.option("--dir", "directory", type=click.Path(file_okay=False), help="Directory to list (default: backup.dir).")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
@click.pass_context
def list_(ctx: click.Context, directory: str | None, as_json: bool) -> None:
    """List the archives in the backup directory, oldest first, with what their manifests say."""
    from appliance.backup.archive import ArchiveError, open_archive
    from appliance.backup.create import read_last_result
    from appliance.backup.schedule import list_archives

    directory = _backup_dir(ctx, directory)
    rows = []
    for archive in list_archives(directory):
        row = {"path": archive.path, "name": archive.name, "bytes": archive.bytes, "encrypted": archive.encrypted, "version": archive.version}
        if not archive.encrypted:  # an encrypted manifest needs the passphrase: see `backup verify`
            try:
                with open_archive(archive.path, None) as reader:
                    m = reader.manifest
                    row.update(cutoff=m["cutoff"], messages=sum(m["counts"]["messages"].values()), users=m["counts"]["users"], schema_revision=m["schema_revision"])
            except ArchiveError as e:
                row["error"] = str(e)
        rows.append(row)
    last = read_last_result(directory)
    if as_json:
        click.echo(json.dumps({"directory": directory, "archives": rows, "last": last}, indent=2))
        return
    table = Table(title=f"Backups in {escape(directory)} ({len(rows)}; names without hipchat-backup-)")
    table.add_column("archive", overflow="fold", max_width=26)  # long names fold; the figures never do
    for column in ("size", "encrypted", "cut-off", "users", "messages", "schema"):
        table.add_column(column, no_wrap=True)
    for row in rows:
        table.add_row(
            escape(row["name"].removeprefix("hipchat-backup-")), human_bytes(row["bytes"]), "yes" if row["encrypted"] else "no",
            row["cutoff"][:16].replace("T", " ") if "cutoff" in row else ("[red]unreadable[/red]" if "error" in row else "-"),
            str(row.get("users", "-")), f"{row['messages']:,}" if "messages" in row else "-", str(row.get("schema_revision", "-")),
        )
    console.print(table)
    if last and not last.get("ok"):
        console.print(f"[yellow]The last backup failed[/yellow] at {last.get('finished_at')}: {escape(str(last.get('error')))}")


@backup.command("verify")
@click.argument("archive", type=click.Path(dir_okay=False))
@click.option("--passphrase-file", type=click.Path(dir_okay=False), help="The passphrase of an encrypted archive (first line).")
@click.pass_context
def verify(ctx: click.Context, archive: str, passphrase_file: str | None) -> None:
    """Check ARCHIVE: every checksum, the manifest, encryption tags, and whether this appliance can restore it."""
    from appliance.backup.archive import ArchiveError, open_archive
    from appliance.backup.manifest import restorable_here
    from appliance.backup.opensearch import server_version

    passphrase = _read_passphrase(passphrase_file)
    try:
        reader = open_archive(archive, passphrase)
    except ArchiveError as e:
        error_console.print(f"[red]Refused:[/red] {escape(str(e))}", soft_wrap=True)
        sys.exit(EXIT_REFUSED)
    with reader:
        total = sum(f["bytes"] for f in reader.files.values())
        with _progress() as progress:
            task = progress.add_task("Checking every member", total=total, in_bytes=True)
            problems = reader.verify(progress=lambda _m, n: progress.advance(task, n))
        try:
            here = server_version(_chat_server(ctx).get_opensearch_client())
        except Exception as e:  # the archive is still checked; only this comparison is skipped
            here = None
            console.print(f"[yellow]note[/yellow] OpenSearch does not answer ({type(e).__name__}); its version was not compared")
        not_here = restorable_here(reader.manifest, here)
        m = reader.manifest
    table = Table(title=f"Archive {escape(archive)}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("members", f"{len(m['files'])} ({human_bytes(total)})")
    table.add_row("encrypted", "yes" if reader.encrypted else "no")
    table.add_row("cut-off", m["cutoff"])
    table.add_row("versions", f"appliance {m['appliance_version']}, schema {m['schema_revision']}, OpenSearch {m['opensearch_version']}")
    table.add_row("checksums", "[green]all match[/green]" if not problems else f"[red]{len(problems)} problems[/red]")
    table.add_row("restorable here", "[green]yes[/green]" if not not_here else "[red]no[/red]")
    console.print(table)
    for problem in problems[:50]:
        console.print(f"[red]damaged[/red] {escape(problem)}", soft_wrap=True)
    for reason in not_here:
        console.print(f"[red]cannot restore here[/red] {escape(reason)}", soft_wrap=True)
    if problems:
        error_console.print("[red]Refused:[/red] the archive is damaged; do not restore it. Use another backup (`hipchat-appliance backup list`).")
        sys.exit(EXIT_REFUSED)
    if not_here:
        sys.exit(EXIT_REFUSED)
    console.print("[green]The archive is sound and can be restored on this appliance.[/green]")


@backup.command("scheduler")
@click.option("--once", is_flag=True, help="Take the nightly backup now (then keep the newest N) and exit.")
@click.option("--to", "to", type=click.Path(file_okay=False), help="Directory (default: backup.dir).")
@click.option("--keep", type=click.IntRange(min=1), help="Archives kept (default: backup.keep).")
@click.pass_context
def scheduler(ctx: click.Context, once: bool, to: str | None, keep: int | None) -> None:
    """Run the nightly backup at backup.time, keeping backup.keep archives (supervisor runs this)."""
    from appliance.backup.create import BackupError, create_backup, ensure_backup_dir, exit_on_sigterm, lower_priority
    from appliance.backup.opensearch import lift_leftover_block
    from appliance.backup.schedule import prune, run_scheduler

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("hipchat.backup")
    chat_server = _chat_server(ctx)
    settings = chat_server.get_config().backup
    directory, keep = to or settings.dir, keep or settings.keep
    lower_priority()
    exit_on_sigterm()
    ensure_backup_dir(directory)
    try:  # a backup killed while it blocked writes to the message indices: indexing must not wait a night
        lift_leftover_block(chat_server.get_opensearch_client(), directory)
    except Exception as e:
        log.warning("could not check for a leftover write block (%s); the next backup will", e)

    def take_backup() -> None:
        passphrase = _read_passphrase(settings.passphrase_file) if settings.passphrase_file else None
        result = create_backup(chat_server, directory, passphrase)
        log.info("backup %s written (%d bytes, %.0f s)", result.path, result.bytes, result.seconds)

    if once:
        try:
            take_backup()
        except BackupError as e:
            error_console.print(f"[red]Backup failed:[/red] {escape(str(e))}", soft_wrap=True)
            sys.exit(EXIT_REFUSED)
        for path in prune(directory, keep):
            log.info("deleted %s (keeping the newest %d)", path, keep)
        return
    run_scheduler(take_backup, directory, settings.time, keep)
