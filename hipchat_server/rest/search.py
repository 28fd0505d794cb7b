"""``GET /v2/search?q=...``: search every message the caller may see (`search.Search`).

Arguments: ``q`` (Lucene syntax, with ``from:``, ``room:``/``in:`` and
``with:``), ``sort`` (``newest``, the default, or ``relevance``),
``start-index`` and ``max-results`` (HipChat's paging: at most 100 a page).
The answer holds the page's ``items`` (each with a ``highlight``: the body
HTML-escaped, hits in ``<em>``), the ``total``, ``facets`` by room, sender
and month, and a ``next`` link while there is more. A query the search
cannot take is 400 with a message saying what to change; the search cluster
not answering is 503.
"""

from __future__ import annotations

from urllib.parse import urlencode

from twisted.internet import defer

from hipchat_server.rest.api import ApiContext, ApiError, ApiResource, int_argument, query_argument
from hipchat_server.rest.messages import message_item
from hipchat_server.search import DEFAULT_RESULTS, MAX_START_INDEX, SearchError, SearchQuery, SearchUnavailableError


class SearchResource(ApiResource):
    def __init__(self, context: ApiContext, search):
        super().__init__(context)
        self.search = search

    @defer.inlineCallbacks
    def get(self, request, username: str):
        try:
            query = SearchQuery(
                text=query_argument(request, "q", "") or "",
                sort=query_argument(request, "sort", "newest") or "newest",
                start_index=int_argument(request, "start-index", 0),
                max_results=int_argument(request, "max-results", DEFAULT_RESULTS),
            )
            results = yield self.search.search(self.context.bare_jid(username), query)
        except SearchError as e:
            raise ApiError(400, str(e)) from e
        except SearchUnavailableError as e:
            raise ApiError(503, "search is not available right now; try again shortly") from e
        items = []
        for record in results.items:
            item = message_item(record, self.context.public_url, real_jids=record.get("real_jids", True))
            item["highlight"] = record.get("highlight")
            items.append(item)
        body = {
            "items": items,
            "startIndex": query.start_index,
            "maxResults": query.max_results,
            "total": results.total,
            "facets": {
                "rooms": [{"room": room, "count": n} for room, n in results.rooms],
                "senders": [{"sender": sender, "count": n} for sender, n in results.senders],
                "months": [{"month": month, "count": n} for month, n in results.months],
            },
            "links": {"self": self._link(query, query.start_index)},
        }
        following = query.start_index + query.max_results
        if following < results.total and following <= MAX_START_INDEX:
            body["links"]["next"] = self._link(query, following)
        return body

    def _link(self, query: SearchQuery, start_index: int) -> str:
        arguments = {"q": query.text, "sort": query.sort, "start-index": start_index, "max-results": query.max_results}
        return f"{self.context.public_url}/v2/search?{urlencode(arguments)}"
