"""Jinja2 rendering of the pages under ``hipchat_server/web/templates/`` (HTML-escaped by default)."""

from __future__ import annotations

import jinja2

_environment = jinja2.Environment(
    loader=jinja2.PackageLoader("hipchat_server.web", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,  # a misspelt variable is an error, not an empty string on a page
)


def render(template: str, **context) -> bytes:
    """The template ``template`` rendered with ``context``, UTF-8 encoded."""
    return _environment.get_template(template).render(**context).encode("utf-8")
