"""`hipchat-appliance upgrade apply|rollback|status` (logic in `appliance.upgrade`).

Registered on the ``cli`` group by one import in `appliance.cli`. Exit codes: 0 done, 1 the
bundle was refused or the upgrade failed and was rolled back (the message says which), 3 the
rollback after a failed upgrade failed too (restore the backup it names).
"""

from __future__ import annotations

import json
import os
import sys

import click
import yaml
from rich.markup import escape
from rich.table import Table

from appliance.cli import EXIT_REFUSED, _chat_server, cli, console, error_console

EXIT_ROLLBACK_FAILED = 3


def _trusted_keys_dir(ctx: click.Context, given: str | None) -> str | None:
    """``--trusted-keys-dir``, else ``upgrade.trusted_keys_dir`` of the configuration file."""
    if given:
        return given
    try:
        with open(ctx.obj.get("config") or "/etc/hipchat/hipchat.yml") as f:
            raw = yaml.safe_load(f) or {}
    except OSError:
        return None
    return ((raw.get("upgrade") or {}).get("trusted_keys_dir")) or None


def _say(text: str) -> None:
    console.print(escape(text), soft_wrap=True, highlight=False)


@cli.group()
def upgrade() -> None:
    """Upgrade from a signed offline bundle, roll back, show versions and history."""


@upgrade.command("apply")
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False))
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--trusted-keys-dir", type=click.Path(file_okay=False), help="Also trust the public keys (*.pub) in this directory.")
@click.option(
    "--skip-port-check", is_flag=True,
    help="Do not check that no other program holds the appliance's ports (only for an upgrade run in a network "
    "namespace whose ports are carried in from outside, where preflight cannot tell the carriers apart).",
)
@click.pass_context
def apply(ctx: click.Context, bundle: str, yes: bool, trusted_keys_dir: str | None, skip_port_check: bool) -> None:
    """Verify BUNDLE, back up, install it offline, restart one process at a time, check health.

    A bundle that is damaged, signed by an unknown key, or not meant for the running version is
    refused with nothing changed. A failed health check rolls back to the previous release.
    """
    from appliance.upgrade.apply import Progress, UpgradeFailed, UpgradeRefused, apply_bundle, new_log_path

    progress = Progress(new_log_path(), echo=_say)
    progress.say(f"log: {progress.log_path}")

    def confirm(question: str) -> bool:
        return yes or click.confirm(question, default=False)

    try:
        entry = apply_bundle(
            _chat_server(ctx), bundle, progress, _trusted_keys_dir(ctx, trusted_keys_dir), confirm, check_ports=not skip_port_check
        )
    except UpgradeRefused as e:
        progress.say(f"refused: {e}", terminal=False)
        error_console.print(f"[red]Refused:[/red] {escape(str(e))} (nothing was changed)", soft_wrap=True)
        sys.exit(EXIT_REFUSED)
    except UpgradeFailed as e:
        progress.say(f"failed: {e}", terminal=False)
        error_console.print(f"[red]Upgrade failed:[/red] {escape(str(e))}", soft_wrap=True)
        sys.exit(EXIT_ROLLBACK_FAILED)
    finally:
        progress.close()
    _summary(entry)
    if entry["outcome"] != "succeeded":
        error_console.print(f"[red]The upgrade to {entry['to_version']} failed and was rolled back to {entry['from_version']}:[/red] {escape(entry.get('failure', ''))}", soft_wrap=True)
        sys.exit(EXIT_REFUSED)


@upgrade.command("rollback")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def rollback(ctx: click.Context, yes: bool) -> None:
    """Return to the previous release (schema downgraded, previous code reinstalled offline)."""
    from appliance.upgrade import releases
    from appliance.upgrade.apply import Progress, UpgradeFailed, new_log_path
    from appliance.upgrade.rollback import RollbackRefused, roll_back

    previous = releases.linked_release("previous")
    if previous is None:
        error_console.print("[red]Refused:[/red] there is no previous release to roll back to", soft_wrap=True)
        sys.exit(EXIT_REFUSED)
    if not yes and not click.confirm(f"Roll back from {releases.installed_version()} to {releases.release_version(previous)}?", default=False):
        sys.exit(EXIT_REFUSED)
    progress = Progress(new_log_path("rollback"), echo=_say)
    progress.say(f"log: {progress.log_path}")
    try:
        entry = roll_back(_chat_server(ctx), progress, config_path=ctx.obj.get("config") or "/etc/hipchat/hipchat.yml")
    except RollbackRefused as e:
        error_console.print(f"[red]Refused:[/red] {escape(str(e))}", soft_wrap=True)
        sys.exit(EXIT_REFUSED)
    except UpgradeFailed as e:
        error_console.print(f"[red]Rollback failed:[/red] {escape(str(e))}", soft_wrap=True)
        sys.exit(EXIT_ROLLBACK_FAILED)
    finally:
        progress.close()
    _summary(entry)
    if entry["outcome"] != "succeeded":
        sys.exit(EXIT_REFUSED)


def _summary(entry: dict) -> None:
    table = Table(title=f"{entry['action'].capitalize()} {entry['from_version']} -> {entry['to_version']}: {entry['outcome']}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("took", f"{entry['seconds']} s" + (" (" + ", ".join(f"{k} {v} s" for k, v in entry.get("steps", {}).items()) + ")" if entry.get("steps") else ""))
    if entry.get("backup"):
        table.add_row("backup", escape(entry["backup"]))
    table.add_row("schema", f"{entry.get('schema_before')} -> {entry.get('schema_after')}")
    for name, result in (entry.get("health") or {}).items():
        table.add_row(f"health {name}", ("ok: " if result["ok"] else "[red]FAILED[/red]: ") + escape(result["detail"]))
    for note in entry.get("notes", []):
        table.add_row("note", escape(note))
    table.add_row("log", escape(entry["log"]))
    console.print(table)


@upgrade.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def status(as_json: bool) -> None:
    """The running version, the current and previous releases, and every upgrade and rollback."""
    from appliance.upgrade.report import upgrade_report

    report = upgrade_report()
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    console.print(f"Running version {report['installed_version']}; current release {report['current'] or '(none: installed without a bundle)'}; previous {report['previous'] or '(none)'}")
    for text in filter(None, (report["error"], report["warning"])):
        console.print(f"[yellow]warning[/yellow] {escape(text)}", soft_wrap=True)
    table = Table(title=f"Upgrade history ({len(report['history'])})")
    for column in ("started", "action", "from", "to", "outcome", "took", "log"):
        table.add_column(column, overflow="fold")
    for e in reversed(report["history"]):
        table.add_row(e.get("started_at", ""), e["action"], e.get("from_version", ""), e.get("to_version", ""),
                      e.get("outcome", ""), f"{e.get('seconds', '')} s", escape(os.path.basename(e.get("log", ""))))
    console.print(table)
