"""`hipchat-appliance token ...` and `hipchat-appliance oauth-client ...`: REST API credentials for bots and integrations.

A token or client secret is printed once, when it is made; only its SHA-256
is kept. Registered on the ``cli`` group by one import in `appliance.cli`.
"""

from __future__ import annotations

import json
import sys

import click
from rich.markup import escape
from rich.table import Table

from appliance.cli import EXIT_REFUSED, _chat_server, cli, console, error_console


def _api_tokens(ctx: click.Context):
    from hipchat_server.api_tokens import ApiTokens
    from hipchat_server.storage.api_tokens import ApiTokenStore
    from hipchat_server.storage.oauth_clients import OAuthClientStore
    from hipchat_server.storage.users import UserStore

    chat_server = _chat_server(ctx)
    engine = chat_server.get_database_engine()
    return ApiTokens(
        ApiTokenStore(engine),
        OAuthClientStore(engine),
        UserStore(engine),
        oauth_token_seconds=chat_server.get_config().api.oauth_token_seconds,
    )


def _refusable(change, *args, **kwargs):
    """Run a change; a refused one prints why and exits 1."""
    from hipchat_server.api_tokens import TokenError

    try:
        return change(*args, **kwargs)
    except TokenError as e:
        error_console.print(f"[red]Error:[/red] {escape(str(e))}", soft_wrap=True)
        sys.exit(EXIT_REFUSED)


def _when(moment) -> str:
    return "" if moment is None else moment.strftime("%Y-%m-%d %H:%M UTC")


@cli.group()
def token() -> None:
    """REST API tokens: personal (a user's, with scopes) and room notification tokens."""


@token.command("create")
@click.option("--user", "username", help="The user the token acts for (a personal token).")
@click.option("--room", help="A room (id, name or address): make a notification token for it.")
@click.option("--scopes", help="Comma-separated scopes of a personal token, e.g. send_notification,view_group.")
@click.option("--label", default="", help="What the token is for; a room token's notifications show it as the sender.")
@click.option("--expires-days", type=int, help="Days until the token stops working (default: never).")
@click.option("--json", "as_json", is_flag=True, help="Print the token as JSON.")
@click.pass_context
def token_create(ctx, username, room, scopes, label, expires_days, as_json) -> None:
    """Make a token and print it once (it is not kept, only its hash).

    With --user and --scopes a personal token; with --room a room notification token.
    """
    tokens = _api_tokens(ctx)
    if room:
        if scopes:
            raise click.UsageError("a room token's scope is send_notification; leave out --scopes")
        issued = _refusable(tokens.create_room_token, room, label=label, username=username)
    elif username:
        if not scopes:
            raise click.UsageError("a personal token needs --scopes")
        issued = _refusable(tokens.create_personal, username, scopes, label=label, expires_days=expires_days)
    else:
        raise click.UsageError("give --user (a personal token) or --room (a room notification token)")
    if as_json:
        body = {"id": issued.id, "token": issued.token, "scopes": issued.scopes, "expires_at": _when(issued.expires_at) or None}
        click.echo(json.dumps(body))
        return
    click.echo(issued.token)
    click.echo(f"Token {issued.id} ({', '.join(issued.scopes)}; expires {_when(issued.expires_at) or 'never'}). "
               "Keep it now: it is not shown again.", err=True)


@token.command("list")
@click.option("--all", "include_expired", is_flag=True, help="Include expired tokens.")
@click.option("--json", "as_json", is_flag=True, help="Print the tokens as JSON.")
@click.pass_context
def token_list(ctx, include_expired, as_json) -> None:
    """List tokens: id, kind, user or room, scopes, label, expiry (never the tokens themselves)."""
    rows = _api_tokens(ctx).list(include_expired=include_expired)

    def kind(row):
        return "oauth" if row.client_id else "room" if row.room_id else "personal"

    if as_json:
        click.echo(json.dumps([
            {"id": r.id, "kind": kind(r), "user": r.username, "room": r.room_name, "scopes": list(r.scopes),
             "label": r.label, "client_id": r.client_id, "created_at": _when(r.created_at) or None,
             "expires_at": _when(r.expires_at) or None}
            for r in rows
        ], indent=2))
        return
    table = Table(title=f"API tokens ({len(rows)})")
    for column in ("Id", "Kind", "User", "Room", "Scopes", "Label", "Expires"):
        table.add_column(column, overflow="fold")
    for r in rows:
        table.add_row(str(r.id), kind(r), escape(r.username or ""), escape(r.room_name or ""), " ".join(r.scopes),
                      escape(r.label), _when(r.expires_at) or "never")
    console.print(table)


@token.command("revoke")
@click.argument("token_id", type=int)
@click.pass_context
def token_revoke(ctx, token_id) -> None:
    """Revoke token TOKEN_ID (see `token list`); it stops working within seconds."""
    if not _api_tokens(ctx).revoke(token_id):
        error_console.print(f"[red]Error:[/red] no token {token_id}")
        sys.exit(EXIT_REFUSED)
    click.echo(f"Token {token_id} revoked.")


@cli.group("oauth-client")
def oauth_client() -> None:
    """OAuth 2.0 clients: integrations that get expiring tokens from POST /v2/oauth/token."""


@oauth_client.command("create")
@click.option("--user", "username", required=True, help="The user the client's tokens act for.")
@click.option("--scopes", required=True, help="Comma-separated scopes the client may ask for.")
@click.option("--label", default="", help="What the client is.")
@click.option("--json", "as_json", is_flag=True, help="Print the id and secret as JSON.")
@click.pass_context
def oauth_client_create(ctx, username, scopes, label, as_json) -> None:
    """Make an OAuth client and print its id and secret once."""
    client = _refusable(_api_tokens(ctx).create_client, username, scopes, label=label)
    if as_json:
        click.echo(json.dumps({"client_id": client.client_id, "client_secret": client.secret, "scopes": client.scopes}))
        return
    click.echo(f"client_id:     {client.client_id}")
    click.echo(f"client_secret: {client.secret}")
    click.echo("Keep the secret now: it is not shown again.", err=True)


@oauth_client.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the clients as JSON.")
@click.pass_context
def oauth_client_list(ctx, as_json) -> None:
    """List OAuth clients: id, user, scopes, label."""
    rows = _api_tokens(ctx).list_clients()
    if as_json:
        click.echo(json.dumps([
            {"client_id": r.client_id, "user": r.username, "scopes": list(r.scopes), "label": r.label,
             "created_at": _when(r.created_at) or None}
            for r in rows
        ], indent=2))
        return
    table = Table(title=f"OAuth clients ({len(rows)})")
    for column in ("Client id", "User", "Scopes", "Label"):
        table.add_column(column, overflow="fold")
    for r in rows:
        table.add_row(r.client_id, escape(r.username), " ".join(r.scopes), escape(r.label))
    console.print(table)


@oauth_client.command("delete")
@click.argument("client_id")
@click.pass_context
def oauth_client_delete(ctx, client_id) -> None:
    """Delete OAuth client CLIENT_ID and revoke every token issued to it."""
    if not _api_tokens(ctx).delete_client(client_id):
        error_console.print(f"[red]Error:[/red] no OAuth client {escape(client_id)}")
        sys.exit(EXIT_REFUSED)
    click.echo(f"OAuth client {client_id} deleted; its tokens are revoked.")
