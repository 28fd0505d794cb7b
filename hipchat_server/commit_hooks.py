"""Incoming commit hooks: a GitHub or Bitbucket push becomes a notification in a room, with links to the commits.

A room admin creates a hook (``POST /v2/room/<id>/commit-hook``) and is shown
its URL once: ``/v2/room/<id>/commit-hook/<token>``. The token in the URL is
the secret (kept as its SHA-256, like API tokens); with a ``secret`` set as
well, GitHub's ``X-Hub-Signature-256`` (HMAC-SHA256 of the body) must match.
GitHub sends ``X-GitHub-Event: push`` (``ping`` when the hook is added, which
is answered and not posted); Bitbucket sends ``X-Event-Key: repo:push``.
Other events are accepted and ignored, so the services do not retry them.

The notification (HTML, HipChat's allowed tags only) names who pushed how
many commits to which branch of which repository, then one line per commit
(at most `MAX_LISTED`): the short id linking to the commit, the first line of
its message, its author.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import secrets
from dataclasses import dataclass

MAX_LISTED = 10
MESSAGE_LINE_LENGTH = 120
TOKEN_BYTES = 24
MAX_LABEL_LENGTH = 100


class CommitHookError(ValueError):
    """A push that cannot be read or a hook that cannot be created; the text says why."""


class SignatureMismatch(CommitHookError):
    """GitHub's X-Hub-Signature-256 is missing or does not match the hook's secret."""


@dataclass(frozen=True)
class Push:
    """A push, whatever service sent it."""

    service: str  # "GitHub" or "Bitbucket"
    pusher: str
    repository: str
    repository_url: str | None
    branch: str | None
    commits: list[dict]  # {"id", "url", "message", "author"}
    total: int  # commits in the push (the payload may list fewer)
    compare_url: str | None = None


def new_token() -> tuple[str, str]:
    """A new hook token and the SHA-256 to store."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    return token, token_hash(token)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_signature(secret: str | None, body: bytes, header: str | None) -> None:
    """With a secret, GitHub's ``sha256=<hex>`` HMAC of the body must match; raises SignatureMismatch."""
    if not secret:
        return
    if not header or not header.startswith("sha256="):
        raise SignatureMismatch("X-Hub-Signature-256 is missing")
    expected = "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, header.strip()):
        raise SignatureMismatch("X-Hub-Signature-256 does not match the hook's secret")


def event_of(headers: dict[str, str]) -> tuple[str, str] | None:
    """(service, event) from the request headers (lower-case names); None when neither service sent it."""
    if headers.get("x-github-event"):
        return "GitHub", headers["x-github-event"]
    if headers.get("x-event-key"):
        return "Bitbucket", headers["x-event-key"]
    return None


def _first_line(message: str) -> str:
    line = (message or "").strip().splitlines()[0] if (message or "").strip() else ""
    return line if len(line) <= MESSAGE_LINE_LENGTH else line[: MESSAGE_LINE_LENGTH - 1] + "…"


def github_push(payload: dict) -> Push:
    try:
        ref = payload.get("ref") or ""
        repository = payload["repository"]
        commits = [
            {
                "id": c.get("id", ""),
                "url": c.get("url"),
                "message": c.get("message", ""),
                "author": (c.get("author") or {}).get("name") or (c.get("author") or {}).get("username") or "",
            }
            for c in payload.get("commits") or []
        ]
        pusher = (payload.get("pusher") or {}).get("name") or (payload.get("sender") or {}).get("login") or "someone"
        return Push(
            service="GitHub",
            pusher=pusher,
            repository=repository.get("full_name") or repository.get("name") or "a repository",
            repository_url=repository.get("html_url"),
            branch=ref.split("/", 2)[2] if ref.startswith("refs/") and ref.count("/") >= 2 else (ref or None),
            commits=commits,
            total=len(commits),
            compare_url=payload.get("compare"),
        )
    except (AttributeError, KeyError, TypeError) as e:
        raise CommitHookError(f"not a GitHub push payload ({e})") from None


def bitbucket_push(payload: dict) -> Push:
    try:
        repository = payload["repository"]
        changes = (payload.get("push") or {}).get("changes") or []
        commits, branches, total = [], [], 0
        for change in changes:
            new = change.get("new") or {}
            if new.get("name"):
                branches.append(new["name"])
            listed = change.get("commits") or []
            total += len(listed) + (1 if change.get("truncated") else 0)
            for c in listed:
                author = c.get("author") or {}
                name = (author.get("user") or {}).get("display_name") or (author.get("raw") or "").split("<", 1)[0].strip()
                commits.append(
                    {"id": c.get("hash", ""), "url": ((c.get("links") or {}).get("html") or {}).get("href"), "message": c.get("message", ""), "author": name}
                )
        actor = payload.get("actor") or {}
        return Push(
            service="Bitbucket",
            pusher=actor.get("display_name") or actor.get("nickname") or "someone",
            repository=repository.get("full_name") or repository.get("name") or "a repository",
            repository_url=((repository.get("links") or {}).get("html") or {}).get("href"),
            branch=", ".join(dict.fromkeys(branches)) or None,
            commits=commits,
            total=max(total, len(commits)),
        )
    except (AttributeError, KeyError, TypeError) as e:
        raise CommitHookError(f"not a Bitbucket push payload ({e})") from None


def _link(url: str | None, text: str) -> str:
    text = html.escape(text)
    if url and url.startswith(("https://", "http://")):
        return f'<a href="{html.escape(url, quote=True)}">{text}</a>'
    return text


def push_html(push: Push) -> str:
    """The notification's HTML: a summary line, then one line per commit."""
    count = f"{push.total} commit{'s' if push.total != 1 else ''}"
    where = f" to <b>{html.escape(push.branch)}</b>" if push.branch else ""
    lines = [f"<b>{html.escape(push.pusher)}</b> pushed {count}{where} of {_link(push.repository_url, push.repository)}"]
    for commit in push.commits[:MAX_LISTED]:
        author = f" ({html.escape(commit['author'])})" if commit["author"] else ""
        lines.append(f"{_link(commit['url'], commit['id'][:7])} {html.escape(_first_line(commit['message']))}{author}")
    hidden = push.total - min(len(push.commits), MAX_LISTED)
    if hidden > 0:
        lines.append(_link(push.compare_url, f"and {hidden} more"))
    return "<br>".join(lines)


def notification_for(headers: dict[str, str], body: bytes, secret: str | None):
    """The `room_posting.Notification` a hook request asks for; None for events that post nothing (ping, tags only).

    ``headers`` has lower-case names. Raises SignatureMismatch or CommitHookError.
    """
    from hipchat_server.room_posting import Notification

    found = event_of(headers)
    if found is None:
        raise CommitHookError("neither X-GitHub-Event nor X-Event-Key is set: only GitHub and Bitbucket pushes are accepted")
    service, event = found
    if service == "GitHub":
        check_signature(secret, body, headers.get("x-hub-signature-256"))
    try:
        payload = json.loads(body)
    except ValueError:
        raise CommitHookError("the body is not JSON") from None
    if not isinstance(payload, dict):
        raise CommitHookError("the body is not a JSON object")
    if service == "GitHub" and event == "push":
        push = github_push(payload)
    elif service == "Bitbucket" and event == "repo:push":
        push = bitbucket_push(payload)
    else:
        return None
    if not push.commits:
        return None  # a branch deleted or a tag pushed: nothing to show
    return Notification(message=push_html(push), message_format="html", color="purple", notify=False, label=push.service)


class CommitHooks:
    """A room's commit hooks: create (the token is returned once) and find by token. Blocking."""

    def __init__(self, store):
        self.store = store

    def create(self, room_id: int, *, label: str, secret: str | None, created_by: int | None) -> tuple[int, str]:
        if not isinstance(label, str) or len(label) > MAX_LABEL_LENGTH:
            raise CommitHookError(f"label: expected at most {MAX_LABEL_LENGTH} characters")
        if secret is not None and (not isinstance(secret, str) or not 8 <= len(secret) <= 255):
            raise CommitHookError("secret: expected 8 to 255 characters")
        token, digest = new_token()
        hook_id = self.store.insert_commit_hook(room_id=room_id, token_hash=digest, label=label, secret=secret, created_by=created_by)
        return hook_id, token

    def find(self, room_id: int, token: str):
        """The hook (with its secret) whose URL token this is; None when the room has none."""
        if not token or len(token) > 200:
            return None
        return self.store.commit_hook(room_id, token_hash(token))
