"""Incoming commit hooks through the installed appliance: GitHub and Bitbucket push payloads over real HTTPS become
notifications that a slixmpp occupant sees, with links to the commits in the room's history."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json

import requests

from tests.e2e.test_api_rooms import Api, in_thread, room_name
from tests.e2e.test_rooms import join, member
from tests.e2e.xmpp_client import TIMEOUT, run

GITHUB_PUSH = {
    "ref": "refs/heads/main",
    "compare": "https://github.com/acme/app/compare/0123456...fedcba9",
    "repository": {"full_name": "acme/app", "html_url": "https://github.com/acme/app"},
    "pusher": {"name": "octocat"},
    "commits": [
        {"id": "0123456789abcdef0123", "url": "https://github.com/acme/app/commit/0123456789abcdef0123", "message": "Fix the build\n\nDetails", "author": {"name": "Octo Cat"}},
        {"id": "fedcba98765432100000", "url": "https://github.com/acme/app/commit/fedcba98765432100000", "message": "Add tests", "author": {"name": "Mona"}},
    ],
}
BITBUCKET_PUSH = {
    "actor": {"display_name": "Bit Bucket"},
    "repository": {"full_name": "acme/lib", "links": {"html": {"href": "https://bitbucket.org/acme/lib"}}},
    "push": {"changes": [{"new": {"type": "branch", "name": "develop"}, "truncated": False, "commits": [
        {"hash": "abcdef1234567890abcd", "message": "Add feature", "links": {"html": {"href": "https://bitbucket.org/acme/lib/commits/abcdef1234567890abcd"}},
         "author": {"raw": "Bit Bucket <bb@example.com>"}}]}]},
}


def post_hook(config, url: str, body: bytes, headers: dict) -> requests.Response:
    """POST a service's push to the hook URL (no API credentials: the token in the URL is the secret)."""
    local = url.replace(config.server.public_url.rstrip("/"), f"https://localhost:{config.http.https_port}")
    return requests.post(local, data=body, headers={"Content-Type": "application/json", **headers}, verify=config.tls.ca_certificate, timeout=30)


def test_github_and_bitbucket_pushes_become_notifications_with_commit_links(config, endpoint, new_user):
    alice = new_user()
    api = Api(config, alice)
    created = api.ok("POST", "room", {"name": room_name()}, status=201)
    jid = api.ok("GET", f"room/{created['id']}")["xmpp_jid"]
    github = api.ok("POST", f"room/{created['id']}/commit-hook", {"label": "app", "secret": "github-hook-secret"}, status=201)
    bitbucket = api.ok("POST", f"room/{created['id']}/commit-hook", {"label": "lib"}, status=201)
    assert github["url"].endswith(f"/v2/room/{created['id']}/commit-hook/{github['token']}")

    github_body = json.dumps(GITHUB_PUSH).encode()
    signature = "sha256=" + hmac.new(b"github-hook-secret", github_body, hashlib.sha256).hexdigest()

    async def scenario():
        a = await member(endpoint, alice)
        try:
            await join(a, jid, "alice")
            pushed = await in_thread(post_hook, config, github["url"], github_body, {"X-GitHub-Event": "push", "X-Hub-Signature-256": signature})
            assert pushed.status_code == 204, pushed.text
            message = await asyncio.wait_for(a.groupchat.get(), TIMEOUT)
            assert str(message["from"]) == f"{jid}/GitHub"
            assert message["body"].startswith("octocat pushed 2 commits to main of acme/app")
            assert "0123456 Fix the build (Octo Cat)" in message["body"]
            pushed = await in_thread(post_hook, config, bitbucket["url"], json.dumps(BITBUCKET_PUSH).encode(), {"X-Event-Key": "repo:push"})
            assert pushed.status_code == 204, pushed.text
            message = await asyncio.wait_for(a.groupchat.get(), TIMEOUT)
            assert str(message["from"]) == f"{jid}/Bitbucket"
            assert message["body"].startswith("Bit Bucket pushed 1 commit to develop of acme/lib")
        finally:
            await a.close()

    run(scenario())
    recent = api.ok("GET", f"room/{created['id']}/history", date="recent")["items"]
    github_item = next(i for i in recent if i.get("from") == "GitHub")
    assert github_item["type"] == "notification"
    # (the sanitiser adds rel="noopener noreferrer" to links)
    assert '<a href="https://github.com/acme/app/commit/0123456789abcdef0123"' in github_item["message"]
    assert '>0123456</a> Fix the build (Octo Cat)' in github_item["message"]
    bitbucket_item = next(i for i in recent if i.get("from") == "Bitbucket")
    assert '<a href="https://bitbucket.org/acme/lib/commits/abcdef1234567890abcd"' in bitbucket_item["message"]
    assert ">abcdef1</a> Add feature" in bitbucket_item["message"]


def test_hooks_refuse_wrong_tokens_and_signatures_and_ignore_pings(config, new_user):
    alice, bob = new_user(), new_user()
    api = Api(config, alice)
    created = api.ok("POST", "room", {"name": room_name()}, status=201)
    hook = api.ok("POST", f"room/{created['id']}/commit-hook", {"secret": "github-hook-secret"}, status=201)
    body = json.dumps(GITHUB_PUSH).encode()
    wrong_token = hook["url"].rsplit("/", 1)[0] + "/not-the-token"
    assert post_hook(config, wrong_token, body, {"X-GitHub-Event": "push"}).status_code == 404
    unsigned = post_hook(config, hook["url"], body, {"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + "0" * 64})
    assert unsigned.status_code == 401
    ping = json.dumps({"zen": "Keep it simple."}).encode()
    signature = "sha256=" + hmac.new(b"github-hook-secret", ping, hashlib.sha256).hexdigest()
    assert post_hook(config, hook["url"], ping, {"X-GitHub-Event": "ping", "X-Hub-Signature-256": signature}).status_code == 204
    assert api.ok("GET", f"room/{created['id']}/history", date="recent")["items"] == []
    # Only the room's owners and admins make hooks.
    assert Api(config, bob).post(f"room/{created['id']}/commit-hook", {}).status_code == 403
