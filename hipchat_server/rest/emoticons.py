"""``/v2/emoticon``: the emoticons the appliance ships (HipChat's shortcuts, list and get by id or shortcut).

The set is data (`EMOTICONS`), not uploaded: an air-gapped appliance has no
emoticon service to fetch from. Images are referenced under the appliance's
public URL (``/static/emoticons/<file>``).
"""

from __future__ import annotations

from hipchat_server.rest import api
from hipchat_server.rest.rooms import collection

# (id, shortcut, image file, width, height): a small standard set, ids stable across releases.
EMOTICONS = (
    (1, "smile", "smile.png", 25, 25),
    (2, "wink", "wink.png", 25, 25),
    (3, "frown", "frown.png", 25, 25),
    (4, "thumbsup", "thumbsup.png", 25, 25),
    (5, "thumbsdown", "thumbsdown.png", 25, 25),
    (6, "lol", "lol.png", 25, 25),
    (7, "facepalm", "facepalm.png", 25, 25),
    (8, "shipit", "shipit.png", 32, 32),
    (9, "coffee", "coffee.png", 25, 25),
    (10, "beer", "beer.png", 25, 25),
    (11, "fire", "fire.png", 25, 25),
    (12, "success", "success.png", 25, 25),
    (13, "failed", "failed.png", 25, 25),
    (14, "yey", "yey.png", 25, 25),
    (15, "awthanks", "awthanks.png", 25, 25),
)
TYPES = ("all", "group", "global")


def emoticon(context, entry, full: bool = False) -> dict:
    number, shortcut, image, width, height = entry
    body = {
        "id": number,
        "shortcut": shortcut,
        "url": f"{context.public_url}/static/emoticons/{image}",
        "links": {"self": api.link(context, "emoticon", number)},
    }
    if full:
        body.update(width=width, height=height, audio_path=None, type="global", creator=None)
    return body


def register(app, context: api.ApiContext) -> None:
    @api.route(app, "GET", "/emoticon", scope="view_group")
    def list_emoticons(request, caller):
        kind = api.query_argument(request, "type", "all")
        if kind not in TYPES:
            raise api.ApiError(400, f"type: expected one of {', '.join(TYPES)}")
        entries = [] if kind == "group" else list(EMOTICONS)  # every emoticon here is a global one
        start, count = api.paging(request)
        page = [emoticon(context, e) for e in entries[start : start + count]]
        return collection(request, context, page, len(entries), "emoticon", expand_item=lambda item: emoticon(context, _by_id(item["id"]), True))

    @api.route(app, "GET", "/emoticon/<key>", scope="view_group")
    def get_emoticon(request, caller, key):
        entry = _by_id(int(key)) if key.isascii() and key.isdigit() else next((e for e in EMOTICONS if e[1] == key), None)
        if entry is None:
            raise api.ApiError(404, f"no emoticon {key[:50]!r}")
        return emoticon(context, entry, True)


def _by_id(number: int):
    return next((e for e in EMOTICONS if e[0] == number), None)
