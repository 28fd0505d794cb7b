"""`hipchat-appliance jobs ...`: the background job queue's dead letters, for an operator to look at, retry or drop.

A dead letter is a job (a webhook delivery, a mention e-mail, a push) that
failed every retry, or that its receiver refused. Registered on the ``cli``
group by one import in `appliance.cli`.
"""

from __future__ import annotations

import json
import time

import click
from rich.markup import escape
from rich.table import Table

from appliance.cli import _chat_server, cli, console


def _queue(ctx: click.Context):
    from hipchat_server.jobs import JobQueue

    return JobQueue(_chat_server(ctx).get_redis_primary)


@cli.group()
def jobs() -> None:
    """The background job queue (webhooks, mention e-mail, push)."""


@jobs.command("dead")
@click.option("--limit", default=50, show_default=True, help="Show at most this many, newest first.")
@click.option("--json", "as_json", is_flag=True, help="Print them as JSON (payloads included).")
@click.pass_context
def dead(ctx: click.Context, limit: int, as_json: bool) -> None:
    """List the dead letters: jobs that failed every attempt, with their last error."""
    letters = _queue(ctx).dead_letters(limit)
    if as_json:
        click.echo(json.dumps(letters, indent=2, ensure_ascii=False))
        return
    table = Table(title=f"Dead letters ({len(letters)} shown)")
    for column in ("id", "kind", "attempts", "failed", "error"):
        table.add_column(column)
    for letter in letters:
        failed = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(letter["failed_at"]))
        table.add_row(letter["id"], letter["kind"], str(letter["attempts"]), failed, escape(letter["error"]))
    console.print(table)


@jobs.command("retry")
@click.argument("ids", nargs=-1)
@click.pass_context
def retry(ctx: click.Context, ids: tuple[str, ...]) -> None:
    """Queue dead letters again as new jobs (all of them, or the IDS given)."""
    count = _queue(ctx).retry_dead(list(ids) or None)
    console.print(f"queued {count} dead letter{'s' if count != 1 else ''} again")


@jobs.command("drop")
@click.argument("ids", nargs=-1)
@click.option("--all", "drop_all", is_flag=True, help="Drop every dead letter.")
@click.pass_context
def drop(ctx: click.Context, ids: tuple[str, ...], drop_all: bool) -> None:
    """Delete dead letters (the IDS given, or --all)."""
    if not ids and not drop_all:
        raise click.UsageError("name the dead letters to drop, or pass --all")
    count = _queue(ctx).drop_dead(None if drop_all else list(ids))
    console.print(f"dropped {count} dead letter{'s' if count != 1 else ''}")
