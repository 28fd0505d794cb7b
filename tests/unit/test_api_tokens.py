"""API tokens and OAuth clients (`api_tokens.ApiTokens`) on SQLite with the real schema, and the OAuth and capabilities routes.

Tokens are kept as SHA-256 only; scopes never exceed what the account
allows; the client-credentials grant issues expiring tokens within the
client's scopes; deleting a client revokes its tokens.
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import datetime, timedelta

import pytest
from sqlalchemy import create_engine, select

from hipchat_server.api_tokens import ApiTokens, ClientAuthenticationFailed, TokenError, hash_secret
from hipchat_server.authentication import AuthenticationFailed, Authenticator
from hipchat_server.rest import api
from hipchat_server.rest.capabilities import capabilities_document
from hipchat_server.rest.capabilities import register as register_capabilities
from hipchat_server.rest.oauth import register_with
from hipchat_server.storage.api_tokens import ApiTokenStore
from hipchat_server.storage.oauth_clients import OAuthClientStore
from hipchat_server.storage.schema import api_tokens, metadata, oauth_clients, rooms, users
from hipchat_server.storage.users import UserStore
from tests.unit.test_api_framework import FakeCredentials, call

START = datetime(2026, 6, 1, 12, 0, 0)


@pytest.fixture
def engine():
    engine = create_engine("sqlite://", future=True)
    metadata.create_all(engine, tables=[users, rooms, oauth_clients, api_tokens])
    with engine.begin() as connection:
        for name, admin in (("alice", False), ("root", True)):
            connection.execute(
                users.insert().values(name=name, mention_name=name, email=f"{name}@example.com", username=name, is_admin=admin)
            )
        connection.execute(rooms.insert().values(name="Ops Room", jid_node="ops"))
    return engine


@pytest.fixture
def now():
    return [START]


@pytest.fixture
def tokens(engine, now):
    return ApiTokens(ApiTokenStore(engine), OAuthClientStore(engine), UserStore(engine), oauth_token_seconds=3600, now=lambda: now[0])


def test_a_personal_token_is_stored_hashed_and_authenticates_with_its_scopes(engine, tokens, now):
    """The token is shown once; the table holds its SHA-256; Bearer finds the user and the chosen scopes."""
    issued = tokens.create_personal("alice", "view_group,send_message", label="deploy bot")
    assert len(issued.token) == 40 and issued.token.isalnum()
    with engine.connect() as connection:
        stored = connection.execute(select(api_tokens.c.token_hash)).scalars().all()
    assert stored == [hashlib.sha256(issued.token.encode()).hexdigest()]
    caller = Authenticator(FakeCredentials(), ApiTokenStore(engine), now=lambda: now[0]).caller(f"Bearer {issued.token}")
    assert caller.username == "alice" and caller.scopes == {"view_group", "send_message"}
    assert caller.token_id == issued.id and caller.token_label == "deploy bot"


def test_scopes_are_checked_when_a_token_is_made(tokens):
    """Unknown scopes and admin_group for a non-admin are refused, naming the problem; an admin may hold admin_group."""
    with pytest.raises(TokenError, match="unknown scope 'fly'"):
        tokens.create_personal("alice", "fly")
    with pytest.raises(TokenError, match="admin_group"):
        tokens.create_personal("alice", "admin_group")
    with pytest.raises(TokenError, match="no user"):
        tokens.create_personal("nobody", "view_group")
    assert tokens.create_personal("root", "admin_group").scopes == ["admin_group"]


def test_an_expiring_personal_token_stops_working(engine, tokens, now):
    issued = tokens.create_personal("alice", "view_group", expires_days=1)
    authenticator = Authenticator(FakeCredentials(), ApiTokenStore(engine), now=lambda: now[0])
    authenticator.caller(f"Bearer {issued.token}")
    now[0] += timedelta(days=1, seconds=1)
    with pytest.raises(AuthenticationFailed, match="expired"):
        authenticator.caller(f"Bearer {issued.token}")


def test_a_room_token_is_found_by_name_address_or_id_and_only_sends_notifications(engine, tokens):
    for room in ("Ops Room", "ops", "1"):
        issued = tokens.create_room_token(room, label="CI")
        caller = Authenticator(FakeCredentials(), ApiTokenStore(engine)).caller(f"Bearer {issued.token}")
        assert caller.room_id == 1 and caller.scopes == {"send_notification"} and caller.username is None
    with pytest.raises(TokenError, match="no room"):
        tokens.create_room_token("nowhere")


def test_list_and_revoke(tokens, now):
    """Listing leaves expired tokens out unless asked; a revoked token is gone."""
    keep = tokens.create_personal("alice", "view_group")
    old = tokens.create_personal("alice", "view_group", expires_days=1)
    now[0] += timedelta(days=2)
    assert [row.id for row in tokens.list()] == [keep.id]
    assert [row.id for row in tokens.list(include_expired=True)] == [keep.id, old.id]
    assert tokens.revoke(keep.id) and not tokens.revoke(keep.id)
    assert tokens.find(keep.token) is None


def test_client_credentials_grant_issues_expiring_tokens_within_the_clients_scopes(engine, tokens, now):
    client = tokens.create_client("alice", "send_notification,view_group", label="Jenkins")
    issued, _ = tokens.grant_client_credentials(client.client_id, client.secret, "send_notification")
    assert issued.scopes == ["send_notification"] and issued.expires_at == START + timedelta(seconds=3600)
    everything, _ = tokens.grant_client_credentials(client.client_id, client.secret, None)
    assert everything.scopes == ["send_notification", "view_group"]
    caller = Authenticator(FakeCredentials(), ApiTokenStore(engine), now=lambda: now[0]).caller(f"Bearer {issued.token}")
    assert caller.oauth_client_id == client.client_id and caller.username == "alice"
    with pytest.raises(TokenError, match="may not ask for"):
        tokens.grant_client_credentials(client.client_id, client.secret, "admin_room")
    for client_id, secret in ((client.client_id, "wrong"), ("unknown", client.secret), ("", "")):
        with pytest.raises(ClientAuthenticationFailed):
            tokens.grant_client_credentials(client_id, secret, None)


def test_deleting_a_client_revokes_its_tokens_and_grants_clear_out_expired_tokens(engine, tokens, now):
    client = tokens.create_client("alice", "view_group")
    issued, _ = tokens.grant_client_credentials(client.client_id, client.secret, None)
    now[0] += timedelta(hours=2)
    tokens.grant_client_credentials(client.client_id, client.secret, None)
    assert tokens.find(issued.token) is None, "the expired token was deleted by the next grant"
    assert tokens.delete_client(client.client_id) and not tokens.delete_client(client.client_id)
    assert tokens.list_clients() == []


# The routes.


@pytest.fixture
def app(engine, tokens, now):
    from twisted.internet import defer

    context = api.ApiContext(
        authenticator=Authenticator(FakeCredentials(), ApiTokenStore(engine), accounts=lambda u: {"root": (2, True), "alice": (1, False)}.get(u, (99, False)), now=lambda: now[0]),
        limiter=None,
        run_blocking=lambda f, *args: defer.maybeDeferred(f, *args),
        domain="example.com",
        public_url="https://chat.example.com",
    )
    app = api.ApiApp(context)
    register_with(app, context, tokens)
    register_capabilities(app, context)
    return app


def basic(user, password):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_the_oauth_flow_over_http(app, tokens):
    """POST /v2/oauth/token (form or JSON) -> HipChat's token document; GET shows it; DELETE revokes it."""
    client = tokens.create_client("alice", "send_notification,view_group")
    answer = call(
        app,
        "POST",
        "/oauth/token",
        authorization=basic(client.client_id, client.secret),
        body=b"grant_type=client_credentials&scope=view_group",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert answer.status == 200, answer.body
    document = answer.json()
    assert document["token_type"] == "bearer" and document["expires_in"] == 3600 and document["scope"] == "view_group"
    assert document["group_name"] == "example.com" and "x-ratelimit-limit" in answer.headers
    token = document["access_token"]
    info = call(app, "GET", f"/oauth/token/{token}", authorization=f"Bearer {token}")
    assert info.status == 200 and info.json()["client"] == {"id": client.client_id} and info.json()["scopes"] == ["view_group"]
    assert call(app, "GET", f"/oauth/token/{token}", authorization=basic("bob", "secret")).status == 404, "not bob's token"
    assert call(app, "DELETE", f"/oauth/token/{token}", authorization=f"Bearer {token}").status == 204
    assert call(app, "GET", f"/oauth/token/{token}", authorization=basic("root", "secret")).status == 404
    as_json = call(
        app,
        "POST",
        "/oauth/token",
        authorization=basic(client.client_id, client.secret),
        body=json.dumps({"grant_type": "client_credentials"}).encode(),
        headers={"content-type": "application/json"},
    )
    assert as_json.status == 200 and as_json.json()["scope"] == "send_notification view_group"


@pytest.mark.parametrize(
    "authorization, body, status",
    [
        (None, b"grant_type=client_credentials", 401),
        ("wrong", b"grant_type=client_credentials", 401),
        ("right", b"grant_type=password", 400),
        ("right", b"grant_type=client_credentials&scope=admin_room", 400),
        ("right", b"grant_type=client_credentials&scope=flying", 400),
    ],
)
def test_bad_grants_are_refused_with_hipchats_error_body(app, tokens, authorization, body, status):
    client = tokens.create_client("alice", "view_group")
    header = {"right": basic(client.client_id, client.secret), "wrong": basic(client.client_id, "nope"), None: None}[authorization]
    answer = call(app, "POST", "/oauth/token", authorization=header, body=body, headers={"content-type": "application/x-www-form-urlencoded"})
    assert answer.status == status and answer.json()["error"]["code"] == status


def test_capabilities_name_the_token_url_scopes_and_limits(app):
    answer = call(app, "GET", "/capabilities")
    assert answer.status == 200
    document = answer.json()
    assert document["links"]["self"] == "https://chat.example.com/v2/capabilities"
    assert document["capabilities"]["oauth2Provider"]["tokenUrl"] == "https://chat.example.com/v2/oauth/token"
    provider = document["capabilities"]["hipchatApiProvider"]
    assert set(provider["availableScopes"]) >= {"send_notification", "view_messages", "admin_group"}
    assert provider["limits"]["rateLimit"] == {"requests": 500, "seconds": 300}


def test_capabilities_document_is_plain_json():
    context = api.ApiContext(authenticator=None, limiter=None, run_blocking=None, domain="d", public_url="https://h")
    json.dumps(capabilities_document(context))


def test_hash_secret_is_sha256():
    assert hash_secret("x") == hashlib.sha256(b"x").hexdigest()


def test_a_form_that_is_not_utf8_or_has_odd_fields_is_400_not_500(app, tokens):
    """Found by schemathesis: percent-encoded non-ASCII field names crashed the form parsing."""
    client = tokens.create_client("alice", "view_group")
    header = basic(client.client_id, client.secret)
    odd = b"%F0%98%B0%B0%C2%86=%C2%BB&grant_type=client_credentials"
    answer = call(app, "POST", "/oauth/token", authorization=header, body=odd, headers={"content-type": "application/x-www-form-urlencoded"})
    assert answer.status == 200
    bad = b"grant_type=client_credentials&scope=%FF"
    answer = call(app, "POST", "/oauth/token", authorization=header, body=bad, headers={"content-type": "application/x-www-form-urlencoded"})
    assert answer.status == 400 and answer.json()["error"]["code"] == 400
