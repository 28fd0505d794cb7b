"""OAuth 2.0 (HipChat's): ``POST /v2/oauth/token`` (client-credentials grant), ``GET``/``DELETE /v2/oauth/token/<token>``.

The grant takes the client's id and secret as HTTP Basic (or as
``client_id``/``client_secret`` in the body), ``grant_type=client_credentials``
and an optional space-separated ``scope`` within the client's, form-encoded
(RFC 6749) or as JSON, and answers HipChat's token document. Reading or
revoking a token is for whoever holds it, its user, or an administrator;
anyone else gets 404, as for a token that does not exist.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from urllib.parse import parse_qs

from hipchat_server.api_tokens import ClientAuthenticationFailed, TokenError, hash_secret
from hipchat_server.rest import api

GROUP_ID = 1  # one appliance is one HipChat group


def register(app, context: api.ApiContext) -> None:
    from hipchat_server.api_tokens import ApiTokens
    from hipchat_server.storage.api_tokens import ApiTokenStore
    from hipchat_server.storage.oauth_clients import OAuthClientStore
    from hipchat_server.storage.users import UserStore

    engine = context.chat_server.get_database_engine()
    tokens = ApiTokens(
        ApiTokenStore(engine), OAuthClientStore(engine), UserStore(engine), oauth_token_seconds=context.config.oauth_token_seconds
    )
    register_with(app, context, tokens)


def register_with(app, context: api.ApiContext, tokens) -> None:
    """The routes over ``tokens`` (an `api_tokens.ApiTokens`)."""

    @api.route(app, "POST", "/oauth/token", scope=None, public=True)
    def grant(request, caller):
        form = _form(request)
        grant_type = form.get("grant_type")
        if grant_type != "client_credentials":
            raise api.ApiError(400, f"grant_type: only client_credentials is supported, found {grant_type!r}")
        client_id, secret = _client_credentials(request, form)

        def issue():
            try:
                return tokens.grant_client_credentials(client_id, secret, form.get("scope"))
            except ClientAuthenticationFailed as e:
                raise api.ApiError(401, str(e)) from None
            except TokenError as e:
                raise api.ApiError(400, str(e)) from None

        def answer(result):
            issued, _client = result
            return {
                "access_token": issued.token,
                "expires_in": context.config.oauth_token_seconds,
                "token_type": "bearer",
                "scope": " ".join(issued.scopes),
                "group_id": GROUP_ID,
                "group_name": context.domain,
            }

        return context.run_blocking(issue).addCallback(answer)

    @api.route(app, "GET", "/oauth/token/<token>", scope=None)
    def info(request, caller, token):
        return context.run_blocking(_visible_token, tokens, caller, token).addCallback(lambda row: _token_info(context, row, token))

    @api.route(app, "DELETE", "/oauth/token/<token>", scope=None)
    def revoke(request, caller, token):
        def work():
            row = _visible_token(tokens, caller, token)
            tokens.revoke(row.id)

        def revoked(_):
            context.authenticator.forget_token(hash_secret(token))  # this process stops taking it at once
            return None

        return context.run_blocking(work).addCallback(revoked)


def _visible_token(tokens, caller: api.Caller, token: str):
    """The token's row when the caller may see it (holds it, is its user, or an admin); ApiError 401/404 otherwise."""
    if not caller.authenticated:
        raise api.ApiError(401, api.NO_CREDENTIALS)
    row = tokens.find(token)
    if row is None or not (row.id == caller.token_id or (row.user_id is not None and row.user_id == caller.user_id) or caller.is_admin):
        raise api.ApiError(404, "no such token")
    return row


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.replace(microsecond=0).isoformat() + "+00:00"


def _token_info(context: api.ApiContext, row, token: str) -> dict:
    return {
        "id": row.id,
        "scopes": list(row.scopes),
        "label": row.label,
        "created": _iso(row.created_at),
        "expires": _iso(row.expires_at),
        "client": {"id": row.client_id} if row.client_id else None,
        "owner": (
            {"id": row.user_id, "name": row.username, "links": {"self": api.link(context, "user", row.user_id)}}
            if row.user_id is not None
            else None
        ),
        "room": (
            {"id": row.room_id, "name": row.room_name, "links": {"self": api.link(context, "room", row.room_id)}}
            if row.room_id is not None
            else None
        ),
        "group": {"id": GROUP_ID, "name": context.domain},
        "links": {"self": api.link(context, "oauth/token", token)},
    }


def _form(request) -> dict[str, str]:
    """The grant's parameters: a JSON object, or form fields (RFC 6749's encoding) over the query's arguments."""
    content_type = (request.getHeader(b"content-type") or b"").decode("latin-1").lower()
    if content_type.startswith("application/json"):
        body = api.json_body(request)
        return {k: v for k, v in body.items() if isinstance(v, str)}
    form = {}
    try:
        for key, values in request.args.items():
            form[key.decode("utf-8")] = values[0].decode("utf-8")
        if content_type.startswith("application/x-www-form-urlencoded"):
            # Parsed here rather than taken from request.args: Twisted parses a form only when
            # it came with a Content-Length, and the fields must be UTF-8 text.
            for key, values in parse_qs(api.read_body(request).decode("utf-8"), keep_blank_values=True).items():
                form[key] = values[0]
    except UnicodeDecodeError:
        raise api.ApiError(400, "the form is not UTF-8") from None
    return form


def _client_credentials(request, form: dict) -> tuple[str, str]:
    header = (request.getHeader(b"authorization") or b"").decode("latin-1").strip()
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "basic":
        try:
            client_id, colon, secret = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            client_id, colon, secret = "", "", ""
        if colon:
            return client_id, secret
    elif form.get("client_id"):
        return form["client_id"], form.get("client_secret", "")
    request.setHeader(b"www-authenticate", b'Basic realm="HipChat OAuth"')
    raise api.ApiError(401, "send the client id and secret as HTTP Basic credentials")


__all__ = ["register", "register_with"]
