"""Pages served by the HTTPS process: the web client, the search page and the admin console."""
