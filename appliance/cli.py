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
from rich.markup import escape

from hipchat_server.config import ConfigError, load_config
from hipchat_server.server import ChatServer

console = Console()
error_console = Console(stderr=True)

EXIT_UNHEALTHY = 1
# A user command the domain refused (invalid value, duplicate, unknown user).
EXIT_REFUSED = 1
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
    from hipchat_server.users import AdminOutcome, ensure_admin

    outcome = ensure_admin(_user_store(ctx), username, email, password_file.read().strip())
    if outcome is AdminOutcome.CREATED:
        click.echo(f"Administrator {username} created.")
    elif outcome is AdminOutcome.CREDENTIALS_ADDED:
        click.echo(f"Administrator {username} exists; its SCRAM credentials were created from the password file.")
    else:
        click.echo(f"Administrator {username} exists; left unchanged.")


@cli.group()
def user() -> None:
    """Chat users: add, change a password, disable, enable, list."""


def _user_store(ctx: click.Context):
    from hipchat_server.storage.users import UserStore

    return UserStore(_chat_server(ctx).get_database_engine())


def _run_user_change(change, *args):
    """Run a domain change; a refused one prints why and exits 1."""
    from hipchat_server.users import UserError

    try:
        return change(*args)
    except UserError as e:
        error_console.print(f"[red]Error:[/red] {escape(str(e))}", soft_wrap=True)
        sys.exit(EXIT_REFUSED)


def _new_password(password_file) -> str:
    """The password from ``--password-file`` (its first line), or typed twice on a terminal."""
    if password_file is not None:
        return password_file.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        error_console.print("[red]Error:[/red] no terminal to type the password on; give --password-file")
        sys.exit(EXIT_REFUSED)
    return click.prompt("Password", hide_input=True, confirmation_prompt=True)


_PASSWORD_FILE = click.option(
    "--password-file",
    type=click.File("r"),
    help="File whose first line is the password ('-' reads standard input). Without it, the password is asked twice.",
)


@user.command("add")
@click.argument("username")
@click.option("--name", required=True, help="Display name.")
@click.option("--email", required=True)
@click.option("--admin", "is_admin", is_flag=True, help="Make the user an administrator.")
@_PASSWORD_FILE
@click.pass_context
def user_add(ctx: click.Context, username: str, name: str, email: str, is_admin: bool, password_file) -> None:
    """Create USERNAME, who logs in to XMPP as USERNAME@<server domain>."""
    from hipchat_server.users import create_user, validate_email, validate_name, validate_username

    # Check what was typed before asking for a password.
    _run_user_change(lambda: (validate_username(username), validate_name(name), validate_email(email)))
    store = _user_store(ctx)
    created = _run_user_change(create_user, store, username, name, email, _new_password(password_file), is_admin)
    click.echo(f"User {created.username} created{' (administrator)' if created.is_admin else ''}.")


@user.command("passwd")
@click.argument("username")
@_PASSWORD_FILE
@click.pass_context
def user_passwd(ctx: click.Context, username: str, password_file) -> None:
    """Set a new password for USERNAME (open sessions stay open)."""
    from hipchat_server.users import get_user, set_password

    store = _user_store(ctx)
    _run_user_change(get_user, store, username)
    _run_user_change(set_password, store, username, _new_password(password_file))
    click.echo(f"Password of {username} changed.")


@user.command("enable")
@click.argument("username")
@click.pass_context
def user_enable(ctx: click.Context, username: str) -> None:
    """Let USERNAME log in again."""
    from hipchat_server.users import enable_user

    changed = _run_user_change(enable_user, _user_store(ctx), username)
    click.echo(f"User {username} enabled." if changed else f"User {username} was already enabled.")


@user.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the users as JSON.")
@click.pass_context
def user_list(ctx: click.Context, as_json: bool) -> None:
    """List every user: username, name, email, administrator, active."""
    from rich.table import Table

    from hipchat_server.users import list_users

    users = list_users(_user_store(ctx))
    if as_json:
        click.echo(json.dumps([u.to_dict() for u in users], indent=2))
        return
    table = Table(title=f"Users ({len(users)})")
    table.add_column("Username", no_wrap=True)  # the handle an operator copies: never split
    table.add_column("Name", min_width=8)
    table.add_column("Email", overflow="fold", min_width=12)
    table.add_column("Admin", justify="center", no_wrap=True)
    table.add_column("Active", justify="center", no_wrap=True)
    for u in users:
        table.add_row(escape(u.username), escape(u.name), escape(u.email), "yes" if u.is_admin else "", "yes" if u.is_active else "[red]no[/red]")
    console.print(table)


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


import appliance.cli_tokens  # noqa: E402,F401  (registers `token` and `oauth-client` on cli)
import appliance.cli_jobs  # noqa: E402,F401  (registers `jobs` on cli)
import appliance.cli_backup  # noqa: E402,F401  (registers `backup` on cli)
import appliance.cli_export  # noqa: E402,F401  (registers `export` and `import` on cli)
import appliance.cli_restore  # noqa: E402,F401  (registers `restore` on cli)
import appliance.cli_flags  # noqa: E402,F401  (registers `flag`, `group`, `user deactivate|disable` on cli)
import appliance.cli_bundle  # noqa: E402,F401  (registers `bundle` on cli)
import appliance.cli_upgrade  # noqa: E402,F401  (registers `upgrade` on cli)


def main() -> None:
    cli(obj={})


if __name__ == "__main__":
    main()
