"""``GET /v2/capabilities``: HipChat's capabilities document for this appliance (no authentication).

Client libraries and add-ons read it to find the API's base URL, the OAuth
2.0 token URL and the scopes; we add the API's limits (rate limit, flood
control, OAuth token lifetime) under ``hipchatApiProvider.limits``.
"""

from __future__ import annotations

from hipchat_server import __version__
from hipchat_server.rest import api

#: HipChat's scopes with their names and descriptions, as its capabilities document lists them.
SCOPE_DESCRIPTIONS = {
    "admin_group": ("Administer Group", "Perform group administrative tasks"),
    "admin_room": ("Administer Room", "Perform room administrative tasks"),
    "manage_rooms": ("Manage Rooms", "Create, update, and remove rooms"),
    "send_message": ("Send Message", "Send private one-on-one messages and messages into rooms"),
    "send_notification": ("Send Notification", "Send room notifications"),
    "view_group": ("View Group", "View users, rooms, and other group information"),
    "view_messages": ("View Messages", "View messages from chat rooms and private chats you have access to"),
    "view_room": ("View Room", "View room information and participants, but not history"),
}


def capabilities_document(context: api.ApiContext) -> dict:
    base = context.public_url
    limits = context.config
    return {
        "name": "HipChat Server",
        "key": "hipchat",
        "description": "Group chat and IM built for teams, on premises",
        "version": __version__,
        "vendor": {"name": "HipChat Server appliance", "url": base},
        "links": {
            "self": f"{base}/v2/capabilities",
            "api": f"{base}/v2",
            "homepage": base,
            "subdomain": base,
        },
        "capabilities": {
            "oauth2Provider": {"tokenUrl": f"{base}/v2/oauth/token"},  # client credentials only: no authorizationUrl
            "hipchatApiProvider": {
                "url": f"{base}/v2/",
                "availableScopes": {
                    scope: {"id": scope, "name": name, "description": description}
                    for scope, (name, description) in SCOPE_DESCRIPTIONS.items()
                },
                "limits": {
                    "rateLimit": {"requests": limits.rate_limit_requests, "seconds": limits.rate_limit_seconds},
                    "floodControl": {"messages": limits.flood_messages, "seconds": limits.flood_seconds},
                    "oauthTokenSeconds": limits.oauth_token_seconds,
                    "maxResults": api.MAX_MAX_RESULTS,
                    "maxBodyBytes": api.MAX_BODY_BYTES,
                },
            },
        },
    }


def register(app, context: api.ApiContext) -> None:
    document = capabilities_document(context)

    @api.route(app, "GET", "/capabilities", scope=None)
    def capabilities(request, caller):
        return document
