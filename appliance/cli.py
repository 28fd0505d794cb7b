"""`hipchat-appliance`: the administrator's command line.

Each verb is a thin layer over ``appliance.lib`` or the chat core's domain
modules; it prints for people (rich tables) or, with ``--json``, for
machines, and exits non-zero when something needs attention.
"""

from __future__ import annotations

import json
import sys

import click
from rich.console import Console

from hipchat_server.config import ConfigError, load_config
from hipchat_server.server import ChatServer

console = Console()

EXIT_UNHEALTHY = 1
EXIT_CONFIG = 2


def _chat_server(ctx: click.Context) -> ChatServer:
    try:
        return ChatServer(load_config(ctx.obj.get("config")))
    except ConfigError as e:
        console.print(f"[red]Configuration error:[/red] {e}")
        sys.exit(EXIT_CONFIG)


@click.group()
@click.option("--config", envvar="HIPCHAT_CONFIG", help="Configuration file (default /etc/hipchat/hipchat.yml).")
@click.pass_context
def cli(ctx: click.Context, config: str | None) -> None:
    """Operate the HipChat Server appliance."""
    ctx.ensure_object(dict)
    ctx.obj["config"] = config


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Show every process, the OpenSearch cluster, Redis, MariaDB and disk use.

    Exits 1 when any part is unhealthy.
    """
    from appliance.lib.status import collect_status

    report = collect_status(_chat_server(ctx))
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        from appliance.lib.status_view import render_status

        render_status(console, report)
    sys.exit(0 if report.healthy else EXIT_UNHEALTHY)


@cli.group()
def db() -> None:
    """The MariaDB schema."""


@db.command("upgrade")
@click.pass_context
def db_upgrade(ctx: click.Context) -> None:
    """Apply every pending schema migration."""
    from hipchat_server.storage.migrations import upgrade_to_head

    before, after = upgrade_to_head(_chat_server(ctx).get_database_engine())
    if before == after:
        click.echo(f"Schema already at revision {after}.")
    else:
        click.echo(f"Schema upgraded from {before or 'empty'} to {after}.")


@cli.group()
def admin() -> None:
    """Administrator accounts."""


@admin.command("ensure")
@click.option("--username", required=True)
@click.option("--email", required=True)
@click.option("--password-file", required=True, type=click.File("r"), help="File holding the initial password.")
@click.pass_context
def admin_ensure(ctx: click.Context, username: str, email: str, password_file) -> None:
    """Create the administrator account unless it exists (its password is never reset)."""
    from hipchat_server.storage.users import UserStore
    from hipchat_server.users import ensure_admin

    store = UserStore(_chat_server(ctx).get_database_engine())
    if ensure_admin(store, username, email, password_file.read().strip()):
        click.echo(f"Administrator {username} created.")
    else:
        click.echo(f"Administrator {username} exists; left unchanged.")


@cli.command()
@click.pass_context
def summary(ctx: click.Context) -> None:
    """Print what runs where, its ports, and where the admin credentials are."""
    from appliance.lib.summary import render_summary

    render_summary(console, _chat_server(ctx).get_config())


@cli.command()
@click.pass_context
def start(ctx: click.Context) -> None:
    """Start supervisord and every appliance process (after a reboot without systemd)."""
    from appliance.lib.service import start_appliance

    config_path = ctx.obj.get("config")
    sys.exit(start_appliance(console, config_path))


def main() -> None:
    cli(obj={})


if __name__ == "__main__":
    main()
