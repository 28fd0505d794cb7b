"""`hipchat-appliance restore ARCHIVE`: put a backup back onto this appliance (logic in `appliance.backup.restore`).

Registered on the ``cli`` group by one import in `appliance.cli`.
"""

from __future__ import annotations

import sys

import click
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from appliance.cli import EXIT_REFUSED, _chat_server, cli, console, error_console

# What each step is called on the terminal, in the order they run.
STEP_TITLES = {
    "verify": "Verifying the archive",
    "extract": "Extracting",
    "stop": "Stopping the chat processes",
    "mariadb": "Loading the MariaDB dump",
    "opensearch": "Restoring the message indices (shard copies)",
    "redis": "Loading the job streams",
    "spool": "Indexing the restored spool",
    "caches": "Rebuilding the recent-message lists",
    "start": "Starting the chat processes",
}


class RichSteps:
    """`appliance.backup.restore.Steps` drawn as one rich.progress bar per step."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.tasks: dict[str, int] = {}

    def start(self, name: str, total: float | None = None) -> None:
        if name not in self.tasks:
            self.tasks[name] = self.progress.add_task(STEP_TITLES.get(name, name), total=total)
        else:
            self.progress.update(self.tasks[name], total=total)

    def update(self, name: str, completed: float, total: float | None = None) -> None:
        if name not in self.tasks:
            self.start(name, total)
        if total is not None:
            self.progress.update(self.tasks[name], completed=completed, total=total)
        else:
            self.progress.update(self.tasks[name], completed=completed)

    def finish(self, name: str, detail: str = "") -> None:
        task = self.tasks.get(name)
        if task is None:
            return
        total = self.progress.tasks[task].total or 1
        self.progress.update(task, total=total, completed=total)


def _passphrase(passphrase_file) -> bytes | None:
    if passphrase_file is None:
        return None
    return passphrase_file.readline().rstrip(b"\r\n")


@cli.command()
@click.argument("archive", type=click.Path(exists=True, dir_okay=False))
@click.option("--passphrase-file", type=click.File("rb"), help="File whose first line is the archive's passphrase (encrypted archives).")
@click.option("--yes", is_flag=True, help="Replace the appliance's data without asking, even when it holds users or messages.")
@click.pass_context
def restore(ctx: click.Context, archive: str, passphrase_file, yes: bool) -> None:
    """Replace this appliance's data by the backup ARCHIVE, then compare the counts with its manifest.

    Refuses (exit 1, nothing changed) a damaged archive, one from a newer
    database schema or another OpenSearch major version. Exits 1 when a count
    differs after the restore.
    """
    from appliance.backup.archive import ArchiveError, open_archive
    from appliance.backup.restore import RestoreFailed, RestoreRefused, restore_archive

    server = _chat_server(ctx)
    try:
        reader = open_archive(archive, _passphrase(passphrase_file))
    except ArchiveError as e:
        error_console.print(f"[red]Refused:[/red] {escape(str(e))}", soft_wrap=True)
        sys.exit(EXIT_REFUSED)
    manifest = reader.manifest
    console.print(
        f"Archive {escape(archive)}: made {manifest.get('created_at')} by version {manifest.get('appliance_version')}, "
        f"cut-off {manifest.get('cutoff')}, schema {manifest.get('schema_revision')}"
    )

    def confirm(holding: dict) -> bool:
        if yes:
            return True
        if not sys.stdin.isatty():
            error_console.print("[red]Refused:[/red] this appliance holds data; run again with --yes to replace it")
            return False
        return click.confirm(
            f"This appliance holds {holding['users']} users, {holding['rooms']} rooms and {holding['messages']} messages. "
            "Replace all of it by the backup?",
            default=False,
        )

    columns = [TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn()]
    try:
        with Progress(*columns, console=console) as progress:
            report = restore_archive(server, reader, archive, confirm=confirm, steps=RichSteps(progress))
    except RestoreRefused as e:
        error_console.print(f"[red]Refused:[/red] {escape(str(e))}; nothing was changed.", soft_wrap=True)
        sys.exit(EXIT_REFUSED)
    except RestoreFailed as e:
        error_console.print(
            f"[red]Restore failed:[/red] {escape(str(e))}. Fix that and run the same restore again: it starts over from the archive.",
            soft_wrap=True,
        )
        sys.exit(EXIT_REFUSED)
    finally:
        reader.close()

    table = Table(title="Restored: manifest against this appliance")
    table.add_column("What")
    table.add_column("Manifest", justify="right")
    table.add_column("Here now", justify="right")
    table.add_column("", justify="center")
    for row in report.comparisons:
        table.add_row(row.what, f"{row.expected:,}", f"{row.found:,}", "[green]ok[/green]" if row.ok else "[red]differs[/red]")
    console.print(table)
    timing = Table(title=f"Time: {report.total_seconds:.0f} s")
    timing.add_column("Step")
    timing.add_column("Seconds", justify="right")
    for step, seconds in report.seconds.items():
        timing.add_row(step, f"{seconds:.1f}")
    console.print(timing)
    if report.schema_upgraded:
        console.print(f"Schema upgraded from {report.schema_upgraded[0]} to {report.schema_upgraded[1]}.")
    console.print(f"{report.rebuilt_lists:,} recent-message lists rebuilt.")
    for note in report.notes:
        error_console.print(f"[yellow]Note:[/yellow] {escape(note)}", soft_wrap=True)
    if report.missing_spool_ids:
        error_console.print(f"[red]{len(report.missing_spool_ids)} spooled messages are not in the indices[/red], e.g. {', '.join(report.missing_spool_ids[:5])}")
    if not report.ok:
        error_console.print("[red]Some counts differ from the manifest[/red]: see the table; the indexer's dead letters "
                            "(/var/lib/hipchat/spool-rejected) and `hipchat-appliance status` may say why.")
        sys.exit(EXIT_REFUSED)
    console.print("[green]Restore complete: every count matches the manifest.[/green]")
