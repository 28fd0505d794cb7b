"""``GET /v2/openapi.json``: the API's OpenAPI 3 document, merged from ``rest/openapi/*.yaml`` (no authentication).

Each area keeps its own fragment (``common.yaml`` has the shared components,
security schemes and error answers; ``rooms.yaml``, ``webhooks.yaml``, ...
their paths and schemas). Fragments are merged in name order, ``common.yaml``
first: paths and components are joined, and a path or component defined twice
differently is an error at start-up (`SpecError`), so two areas cannot
silently overwrite each other. ``servers`` is this appliance's public URL.
"""

from __future__ import annotations

import copy
import os
import zoneinfo
from typing import Any

import yaml

from hipchat_server.rest import api

FRAGMENTS_DIR = os.path.join(os.path.dirname(__file__), "openapi")
COMMON = "common.yaml"


class SpecError(Exception):
    """The fragments do not merge: the message names the fragment and the key."""


def load_fragments(directory: str = FRAGMENTS_DIR) -> list[tuple[str, dict]]:
    names = sorted(n for n in os.listdir(directory) if n.endswith(".yaml"))
    if COMMON in names:
        names.remove(COMMON)
        names.insert(0, COMMON)
    fragments = []
    for name in names:
        try:
            with open(os.path.join(directory, name), encoding="utf-8") as f:
                document = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise SpecError(f"{name}: not valid YAML: {e}") from e
        if not isinstance(document, dict):
            raise SpecError(f"{name}: expected a mapping")
        fragments.append((name, document))
    return fragments


def merge(fragments: list[tuple[str, dict]]) -> dict:
    """One document from the fragments; SpecError when two define the same path or component differently."""
    spec: dict[str, Any] = {}
    origin: dict[tuple, str] = {}
    for name, fragment in fragments:
        for key, value in fragment.items():
            if key == "paths":
                _join(spec.setdefault("paths", {}), value or {}, ("paths",), name, origin)
            elif key == "components":
                components = spec.setdefault("components", {})
                for section, entries in (value or {}).items():
                    _join(components.setdefault(section, {}), entries or {}, ("components", section), name, origin)
            elif key not in spec:
                spec[key] = copy.deepcopy(value)
                origin[(key,)] = name
            elif spec[key] != value:
                raise SpecError(f"{name}: {key} is already set by {origin[(key,)]}")
    return spec


def _join(into: dict, entries: dict, where: tuple, name: str, origin: dict) -> None:
    for key, value in entries.items():
        if key in into and into[key] != value:
            raise SpecError(f"{name}: {'.'.join(where)}.{key} is already defined by {origin[where + (key,)]}")
        into[key] = copy.deepcopy(value)
        origin[where + (key,)] = name


def build_spec(public_url: str, directory: str = FRAGMENTS_DIR) -> dict:
    spec = merge(load_fragments(directory))
    spec["servers"] = [{"url": f"{public_url}/v2"}]
    time_zone = spec.get("components", {}).get("schemas", {}).get("TimeZone")
    if time_zone is not None:
        # The names this host's zoneinfo knows: what the API accepts, so clients (and the spec test) can tell.
        time_zone["enum"] = sorted(zoneinfo.available_timezones() | {"UTC"})
    return spec


def register(app, context: api.ApiContext) -> None:
    spec = build_spec(context.public_url)

    @api.route(app, "GET", "/openapi.json", scope=None)
    def openapi(request, caller):
        return spec
