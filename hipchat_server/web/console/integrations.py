"""Integrations: API tokens (create with scopes, shown once, revoke), OAuth clients (secret shown once),
and every room's webhooks with their recent deliveries and the failures the job queue holds."""

from __future__ import annotations

from twisted.internet import defer

from hipchat_server.authentication import SCOPES
from hipchat_server.integrations import IntegrationError, integrations
from hipchat_server.web.console.app import Refused


def register(console) -> None:
    domain = integrations(console.chat_server)
    run = console.run_blocking

    @defer.inlineCallbacks
    def refusing(call, *args, **kwargs):
        try:
            return (yield run(call, *args, **kwargs))
        except IntegrationError as e:
            raise Refused(str(e)) from None

    @console.page("/integrations")
    @defer.inlineCallbacks
    def page(request, admin):
        overview = yield run(domain.overview)
        return "integrations.html", dict(overview, section="integrations", scopes=SCOPES)

    @console.action("/integrations/tokens")
    @defer.inlineCallbacks
    def create_token(request, admin, form):
        scopes = ",".join(s for s in SCOPES if form.get(f"scope-{s}"))
        expires = form.get("expires_days", "").strip()
        if expires and not expires.isdigit():
            raise Refused("days until it expires: a whole number, or empty for never")
        issued = yield refusing(
            domain.create_token, admin.username, username=form.get("username", "").strip(), room=form.get("room", "").strip(),
            scopes=scopes, label=form.get("label", "").strip(), expires_days=int(expires) if expires else None,
        )
        return console.render(request, "secret.html", {
            "section": "integrations", "title": f"Token {issued.id} created", "what": f"The token (scopes: {', '.join(issued.scopes)})",
            "secret": issued.token, "next": "/admin/integrations", "extra": "Use it as Authorization: Bearer <token>.",
        }, admin)

    @console.action("/integrations/tokens/<int:token_id>/revoke")
    @defer.inlineCallbacks
    def revoke(request, admin, form, token_id):
        yield refusing(domain.revoke_token, admin.username, token_id)
        return "/admin/integrations", f"Token {token_id} revoked."

    @console.action("/integrations/clients")
    @defer.inlineCallbacks
    def create_client(request, admin, form):
        scopes = ",".join(s for s in SCOPES if form.get(f"scope-{s}"))
        client = yield refusing(domain.create_client, admin.username, form.get("username", "").strip(), scopes, form.get("label", "").strip())
        return console.render(request, "secret.html", {
            "section": "integrations", "title": f"OAuth client {client.client_id} created", "what": "Its secret",
            "secret": client.secret, "next": "/admin/integrations",
            "extra": f"Client id {client.client_id}; scopes {', '.join(client.scopes)}. Tokens come from POST /v2/oauth/token (client credentials).",
        }, admin)

    @console.action("/integrations/clients/<client_id>/delete")
    @defer.inlineCallbacks
    def delete_client(request, admin, form, client_id):
        yield refusing(domain.delete_client, admin.username, client_id)
        return "/admin/integrations", f"OAuth client {client_id} deleted; its tokens are revoked."
