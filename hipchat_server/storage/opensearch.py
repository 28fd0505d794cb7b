"""OpenSearch access: one client over every data node's HTTP port."""

from __future__ import annotations

from opensearchpy import OpenSearch

from hipchat_server.config import OpenSearchConfig


# A node that failed is retried after dead_timeout * 2**(failures-1) seconds, capped by timeout_cutoff
# doublings: 1 s up to 8 s. opensearch-py's default (60 s, growing to 32 minutes) left one data node
# taking every request long after the other came back from an outage.
NODE_RETRY_OPTIONS = {"dead_timeout": 1.0, "timeout_cutoff": 3}


def create_opensearch_client(config: OpenSearchConfig, timeout: float = 10.0, **options) -> OpenSearch:
    """A client over every data node; ``options`` go to opensearch-py (they override `NODE_RETRY_OPTIONS`)."""
    # Retry on the next node when one is down, so a lost data node goes unnoticed.
    options = {**NODE_RETRY_OPTIONS, **options}
    return OpenSearch(config.urls, timeout=timeout, max_retries=2, retry_on_timeout=True, **options)
