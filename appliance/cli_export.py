"""`hipchat-appliance export` and `hipchat-appliance import`: HipChat's group export format, out and in.

Thin: the work is in `appliance.backup.hipchat_export` and
`appliance.backup.hipchat_import`. Registered on the ``cli`` group by one
import in `appliance.cli`.
"""

from __future__ import annotations

import os
import sys

import click
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from appliance.cli import EXIT_REFUSED, _chat_server, cli, console, error_console


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=False)


def _names(value: str | None) -> list[str] | None:
    return [n.strip() for n in value.split(",") if n.strip()] if value else None


def _batch_priority() -> None:
    # An export or import is a batch job on the chat host: chat comes first.
    try:
        os.nice(10)
    except OSError:
        pass


@cli.command("export")
@click.option("--to", "destination", required=True, help="New directory, or a file ending in .tar.gz.")
@click.option("--rooms", help="Only these rooms (names, comma-separated), their members and history.")
@click.option("--users", help="Only these users (usernames, comma-separated) and their one-to-one history.")
@click.pass_context
def export_command(ctx: click.Context, destination: str, rooms: str | None, users: str | None) -> None:
    """Export users, rooms and history in HipChat Server's group export layout.

    Everything by default. The export holds e-mail addresses and every message
    it covers: keep it like a backup.
    """
    from appliance.backup.hipchat_export import export_group

    chat_server = _chat_server(ctx)
    _batch_priority()
    try:
        with _progress() as progress:
            result = export_group(chat_server, destination, rooms=_names(rooms), users=_names(users), progress=progress)
    except (LookupError, FileExistsError) as e:
        error_console.print(f"[red]Refused:[/red] {escape(str(e))}", soft_wrap=True)
        sys.exit(EXIT_REFUSED)
    table = Table(title=f"Exported to {escape(result.destination)} in {result.seconds:.1f} s")
    table.add_column("what")
    table.add_column("written", justify="right")
    for what, count in (("users", result.users), ("rooms", result.rooms), ("room messages", result.room_messages),
                        ("room notifications", result.notifications), ("one-to-one messages", result.private_messages)):
        table.add_row(what, f"{count:,}")
    for reason, count in sorted(result.skipped.items()):
        table.add_row(f"[yellow]not written: {escape(reason)}[/yellow]", f"{count:,}")
    console.print(table)
    if result.seconds > 0 and result.messages:
        console.print(f"{result.messages / result.seconds:,.0f} messages/s")


@cli.command("import")
@click.argument("source")
@click.option("--no-wait", is_flag=True, help="Return once the messages are spooled, without waiting for the indexer.")
@click.pass_context
def import_command(ctx: click.Context, source: str, no_wait: bool) -> None:
    """Import a HipChat group export (a directory, or its .tar.gz once decrypted).

    Missing users and rooms are created (users with a random password an
    administrator must replace: `hipchat-appliance user passwd`); messages keep
    their original times. Importing the same export again adds nothing.
    Exits 1 when the export cannot be read or the indexer did not take the messages.
    """
    from appliance.backup.hipchat_import import ImportRefused, import_group

    chat_server = _chat_server(ctx)
    _batch_priority()
    try:
        with _progress() as progress:
            result = import_group(chat_server, source, progress=progress, wait_indexed=not no_wait)
    except ImportRefused as e:
        error_console.print(f"[red]Refused:[/red] {escape(str(e))}", soft_wrap=True)
        sys.exit(EXIT_REFUSED)
    table = Table(title=f"Imported from {escape(source)} in {result.seconds:.1f} s")
    for column in ("what", "created", "already there", "refused"):
        table.add_column(column, justify="left" if column == "what" else "right")
    for what, tally in (("users", result.users), ("rooms", result.rooms), ("memberships", result.memberships), ("messages", result.messages)):
        table.add_row(what, f"{tally.created:,}", f"{tally.existing:,}", f"{tally.refused:,}" if not tally.refused else f"[yellow]{tally.refused:,}[/yellow]")
    console.print(table)
    for what, tally in (("users", result.users), ("rooms", result.rooms), ("messages", result.messages)):
        for reason, count in sorted(tally.reasons.items()):
            console.print(f"[yellow]{what} refused[/yellow] ({count:,}): {escape(reason)}")
    if result.months:
        console.print("Messages per month index: " + ", ".join(f"{m} {n:,}" for m, n in sorted(result.months.items())))
    if result.created_users:
        console.print(f"{len(result.created_users)} users created with a random password: set one with `hipchat-appliance user passwd USERNAME`.")
    if result.messages.created and result.spool_seconds > 0:
        console.print(f"{result.messages.created / result.spool_seconds:,.0f} messages/s spooled; "
                      + (f"{result.messages.created / result.seconds:,.0f} messages/s including indexing" if result.drained else "indexing not waited for"))
    if result.drained is False:
        error_console.print(
            f"[red]The indexer has not taken every imported message yet[/red] ({escape(result.spool_directory)} still holds some). "
            "Check `hipchat-appliance status` (indexer, OpenSearch); the messages are durable and are indexed once it catches up."
        )
        sys.exit(EXIT_REFUSED)
