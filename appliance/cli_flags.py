"""`hipchat-appliance flag`, `group`, `user deactivate` (and `user disable`), `user import` and `audit`: the console's feature
flags, groups, deactivation, CSV import and audit log from the command line, through the same domain
calls (and the same audit log).

Changes are recorded in the audit log as made by ``cli:<unix user>``.
Registered on the ``cli`` group by one import in `appliance.cli`.
"""

from __future__ import annotations

import getpass
import json
import sys

import click
from rich.markup import escape
from rich.table import Table

from appliance.cli import EXIT_REFUSED, _chat_server, cli, console, error_console, user


def _actor() -> str:
    return f"cli:{getpass.getuser()}"


def _refused(message: str) -> None:
    error_console.print(f"[red]Error:[/red] {escape(message)}", soft_wrap=True)
    sys.exit(EXIT_REFUSED)


def _flags(ctx: click.Context):
    from hipchat_server import audit, feature_flags

    chat_server = _chat_server(ctx)
    audit.for_server(chat_server)
    return feature_flags.for_server(chat_server)


def _users_admin(ctx: click.Context):
    from hipchat_server.users_admin import users_admin
    from hipchat_server.web.sessions import WebSessions

    chat_server = _chat_server(ctx)
    return users_admin(chat_server, WebSessions(chat_server.get_redis_primary))


def _group_ids(admin, names) -> list[int]:
    known = {g["name"]: g["id"] for g in admin.all_groups()}
    missing = [n for n in names if n not in known]
    if missing:
        _refused(f"no group {missing[0]!r}; the groups are: {', '.join(sorted(known)) or 'none'}")
    return [known[n] for n in names]


@cli.group()
def flag() -> None:
    """Feature flags: turn a feature on for everyone, off, or on for chosen groups (effective within 5 s)."""


@flag.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the flags as JSON.")
@click.pass_context
def flag_list(ctx: click.Context, as_json: bool) -> None:
    """Every flag with its mode and the groups it is on for."""
    flags = _flags(ctx)
    names = {g["id"]: g["name"] for g in _users_admin(ctx).all_groups()}
    states = flags.states()
    rows = [{"name": s.name, "mode": s.mode, "groups": sorted(names.get(g, str(g)) for g, on in s.groups.items() if on),
             "default": s.is_default, "description": s.description} for s in states]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="Feature flags")
    for column in ("flag", "mode", "groups", "what it turns on"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["name"], row["mode"] + (" (default)" if row["default"] else ""), ", ".join(row["groups"]), row["description"])
    console.print(table)


@flag.command("set")
@click.argument("name")
@click.argument("mode", type=click.Choice(["on", "off", "groups"]))
@click.option("--group", "groups", multiple=True, help="A group the feature is on for (mode groups; repeat for several).")
@click.pass_context
def flag_set(ctx: click.Context, name: str, mode: str, groups: tuple[str, ...]) -> None:
    """Set flag NAME: on (everyone), off, or groups (only the --group groups)."""
    from hipchat_server import audit

    flags = _flags(ctx)
    try:
        state = flags.set(name, mode, _group_ids(_users_admin(ctx), groups))
    except ValueError as e:
        _refused(str(e))
    audit.record(_actor(), "flag.set", name, {"mode": state.mode, "groups": sorted(state.groups)})
    console.print(f"{name}: {state.mode}" + (f" for {', '.join(groups)}" if state.mode == "groups" else ""))


@cli.group()
def group() -> None:
    """Groups of users (what feature flags can be turned on for)."""


@group.command("list")
@click.pass_context
def group_list(ctx: click.Context) -> None:
    table = Table(title="Groups")
    table.add_column("group")
    table.add_column("members", justify="right")
    for row in _users_admin(ctx).all_groups():
        table.add_row(escape(row["name"]), str(row["members"]))
    console.print(table)


def _change(call, *args):
    from hipchat_server.users_admin import AdminError

    try:
        return call(*args)
    except AdminError as e:
        _refused(str(e))


@group.command("create")
@click.argument("name")
@click.pass_context
def group_create(ctx: click.Context, name: str) -> None:
    _change(_users_admin(ctx).create_group, _actor(), name)
    console.print(f"Group {escape(name)} created.")


@group.command("delete")
@click.argument("name")
@click.pass_context
def group_delete(ctx: click.Context, name: str) -> None:
    admin = _users_admin(ctx)
    _change(admin.delete_group, _actor(), _group_ids(admin, [name])[0])
    console.print(f"Group {escape(name)} deleted.")


@group.command("add")
@click.argument("name")
@click.argument("usernames", nargs=-1, required=True)
@click.pass_context
def group_add(ctx: click.Context, name: str, usernames: tuple[str, ...]) -> None:
    """Add USERNAMES to group NAME."""
    admin = _users_admin(ctx)
    group_id = _group_ids(admin, [name])[0]
    for username in usernames:
        _change(admin.add_to_group, _actor(), group_id, username)
    console.print(f"Added {len(usernames)} to {escape(name)}.")


@group.command("remove")
@click.argument("name")
@click.argument("usernames", nargs=-1, required=True)
@click.pass_context
def group_remove(ctx: click.Context, name: str, usernames: tuple[str, ...]) -> None:
    """Remove USERNAMES from group NAME."""
    admin = _users_admin(ctx)
    group_id = _group_ids(admin, [name])[0]
    for username in usernames:
        _change(admin.remove_from_group, _actor(), group_id, username)
    console.print(f"Removed {len(usernames)} from {escape(name)}.")


def _sessions_ended(ended: dict) -> str:
    return f"{ended['xmpp_streams']} chat sessions and {ended['web_sessions']} browser sessions ended"


@user.command("deactivate")
@click.argument("username")
@click.pass_context
def user_deactivate(ctx: click.Context, username: str) -> None:
    """Stop USERNAME from logging in and end every chat and browser session they have now (as the console does)."""
    ended = _change(_users_admin(ctx).deactivate, _actor(), username)
    console.print(f"{escape(username)} is deactivated: {_sessions_ended(ended)}.")


@user.command("disable")
@click.argument("username")
@click.pass_context
def user_disable(ctx: click.Context, username: str) -> None:
    """Stop USERNAME from logging in and end their open sessions: `user deactivate` under its older name."""
    ended = _change(_users_admin(ctx).deactivate, _actor(), username)
    state = "disabled" if ended["changed"] else "was already disabled"
    console.print(f"User {escape(username)} {state}. {_sessions_ended(ended).capitalize()}.", soft_wrap=True)


@user.command("import")
@click.argument("csv_file", type=click.File("r", encoding="utf-8-sig"))
@click.option("--dry-run", is_flag=True, help="Only check the file: print each row's problems, create nobody.")
@click.pass_context
def user_import(ctx: click.Context, csv_file, dry_run: bool) -> None:
    """Create users from CSV_FILE (columns username,name,email[,password,groups,admin]); rows with errors are skipped.

    A row without a password gets a generated one, printed once.
    """
    admin = _users_admin(ctx)
    text = csv_file.read()
    rows = _change(admin.preview_import, text) if dry_run else _change(admin.run_import, _actor(), text)
    table = Table(title="Import preview" if dry_run else "Import")
    for column in ("line", "username", "email", "outcome", "generated password"):
        table.add_column(column)
    for row in rows:
        outcome = ("; ".join(row.errors) or "ok") if dry_run else row.outcome
        table.add_row(str(row.line), escape(row.username), escape(row.email), escape(outcome), row.generated_password)
    console.print(table)
    failed = [r for r in rows if r.errors or (not dry_run and r.outcome != "created")]
    if failed:
        sys.exit(EXIT_REFUSED)


@cli.command("audit")
@click.option("--actor", help="Only changes made by this admin (cli:<user> for the CLI).")
@click.option("--action", help="Only this action, e.g. user.deactivate, flag.set.")
@click.option("--target", help="Only targets containing this text.")
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the entries as JSON.")
@click.pass_context
def audit_log(ctx: click.Context, actor, action, target, limit: int, as_json: bool) -> None:
    """The audit log of administrative changes (console and CLI), newest first."""
    from hipchat_server import audit

    audit.for_server(_chat_server(ctx))
    entries, total = audit.entries(actor=actor, action=action, target=target, limit=limit)
    if as_json:
        click.echo(json.dumps({"total": total, "entries": [e.__dict__ for e in entries]}, indent=2, default=str))
        return
    table = Table(title=f"Audit log ({len(entries)} of {total})")
    for column in ("when (UTC)", "who", "action", "target", "details"):
        table.add_column(column)
    for e in entries:
        table.add_row(e.at.strftime("%Y-%m-%d %H:%M:%S"), escape(e.actor), e.action, escape(e.target), escape(e.details or ""))
    console.print(table)
