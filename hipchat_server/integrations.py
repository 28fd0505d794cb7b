"""Integrations for administrators (the console's page; the CLI has `token` and `oauth-client`):
API tokens (created with scopes, shown once, revoked), OAuth clients, and every room's webhooks with
their recent deliveries and the failures the job queue holds.

A revoked token stops working within `authentication.TOKEN_CACHE_TTL`
seconds in the other processes (they remember looked-up tokens that long).
Every change is written to the audit log. Blocking: call from a thread.
"""

from __future__ import annotations

from hipchat_server import audit
from hipchat_server.api_tokens import TokenError, parse_scopes


class IntegrationError(ValueError):
    """A change refused; the message says why."""


class Integrations:
    def __init__(self, tokens, store, job_queue):
        """``tokens`` an `api_tokens.ApiTokens`, ``store`` a `storage.integrations.IntegrationsStore`, ``job_queue`` a `jobs.JobQueue`."""
        self.tokens, self.store, self.job_queue = tokens, store, job_queue

    def overview(self) -> dict:
        dead = [d for d in self.job_queue.dead_letters(100) if d.get("kind") == "webhook"]
        counts = self.job_queue.counts()
        return {
            "tokens": self.tokens.list(),
            "clients": self.tokens.list_clients(),
            "webhooks": self.store.all_webhooks(),
            "deliveries": self.store.recent_deliveries(50),
            "failures": dead,
            "waiting": counts.waiting.get("webhook", 0),
            "retrying": counts.retrying,
        }

    def create_token(self, actor: str, *, username: str = "", room: str = "", scopes: str = "", label: str = "", expires_days=None):
        """A personal token (``username`` with ``scopes``) or a room notification token (``room``); the `IssuedToken`."""
        try:
            if room:
                issued = self.tokens.create_room_token(room, label=label)
                audit.record(actor, "token.create", f"room {room}", {"id": issued.id, "label": label, "scopes": issued.scopes})
            else:
                issued = self.tokens.create_personal(username, parse_scopes(scopes), label=label, expires_days=expires_days)
                audit.record(actor, "token.create", f"user {username}", {"id": issued.id, "label": label, "scopes": issued.scopes, "expires_days": expires_days})
        except TokenError as e:
            raise IntegrationError(str(e)) from None
        return issued

    def revoke_token(self, actor: str, token_id: int) -> None:
        if not self.tokens.revoke(token_id):
            raise IntegrationError(f"no token {token_id}")
        audit.record(actor, "token.revoke", str(token_id))

    def create_client(self, actor: str, username: str, scopes: str, label: str = ""):
        try:
            client = self.tokens.create_client(username, parse_scopes(scopes), label=label)
        except TokenError as e:
            raise IntegrationError(str(e)) from None
        audit.record(actor, "oauth_client.create", client.client_id, {"user": username, "scopes": client.scopes, "label": label})
        return client

    def delete_client(self, actor: str, client_id: str) -> None:
        if not self.tokens.delete_client(client_id):
            raise IntegrationError(f"no OAuth client {client_id!r}")
        audit.record(actor, "oauth_client.delete", client_id)


def integrations(chat_server) -> Integrations:
    from hipchat_server.api_tokens import ApiTokens
    from hipchat_server.jobs import JobQueue
    from hipchat_server.storage.api_tokens import ApiTokenStore
    from hipchat_server.storage.integrations import IntegrationsStore
    from hipchat_server.storage.oauth_clients import OAuthClientStore
    from hipchat_server.storage.users import UserStore

    engine = chat_server.get_database_engine()
    audit.for_server(chat_server)
    tokens = ApiTokens(ApiTokenStore(engine), OAuthClientStore(engine), UserStore(engine),
                       oauth_token_seconds=chat_server.get_config().api.oauth_token_seconds)
    return Integrations(tokens, IntegrationsStore(engine, chat_server.get_redis_primary), JobQueue(chat_server.get_redis_primary))
