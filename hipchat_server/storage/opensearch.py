"""OpenSearch access: one client over every data node's HTTP port."""

from __future__ import annotations

from opensearchpy import OpenSearch

from hipchat_server.config import OpenSearchConfig


def create_opensearch_client(config: OpenSearchConfig, timeout: float = 10.0, **options) -> OpenSearch:
    """A client over every data node; ``options`` go to opensearch-py (its connection pool's ``dead_timeout``...)."""
    # Retry on the next node when one is down, so a lost data node goes unnoticed.
    return OpenSearch(config.urls, timeout=timeout, max_retries=2, retry_on_timeout=True, **options)
