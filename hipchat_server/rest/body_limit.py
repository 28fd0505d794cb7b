"""Request bodies are bounded while they arrive, not after.

Twisted's `server.Request` keeps the whole body (in memory, or in a
temporary file past 100 KB) before any resource sees the request, so a
client announcing or streaming gigabytes would be read in full before the
API could answer 413. `BodyLimitedRequest` stops keeping bytes past
`MAX_KEPT_BYTES`: an announced ``Content-Length`` over it is refused at
once (413, connection closed), and a chunked body that grows past it is
discarded as it comes.

Under ``/v2/`` a body over the limit reaches the API with
``request.body_too_large`` set and an empty ``content``, so the API answers
413 in HipChat's error format with its usual headers (`api.read_body`);
elsewhere a plain 413 page answers.
"""

from __future__ import annotations

import io
import json

from twisted.web import server

# The largest body any resource takes: the REST API's 1 MiB bodies and the console's CSV imports
# (10,000 users are ~1 MB) fit well under it.
MAX_KEPT_BYTES = 16 * 1024 * 1024

API_PREFIX = b"/v2/"


class BodyLimitedRequest(server.Request):
    """A `server.Request` that keeps at most `MAX_KEPT_BYTES` of body; see the module docstring."""

    max_kept_bytes = MAX_KEPT_BYTES
    body_too_large = False
    _received = 0

    def gotLength(self, length):
        if length is not None and length > self.max_kept_bytes:
            # Announced too large: answer before reading any of it, and close (the body is never read).
            self.body_too_large = True
            # The final status goes instead of "100 Continue" (RFC 9110 10.1.1): the client need not send the body.
            self.requestHeaders.removeHeader(b"expect")
            self._refuse_now()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.body_too_large:
            return
        self._received += len(data)
        if self._received > self.max_kept_bytes:
            self.body_too_large = True
            self.content.close()
            self.content = io.BytesIO()
            return
        super().handleContentChunk(data)

    def requestReceived(self, command, path, version):
        if self.body_too_large and self.content is None:
            return  # answered in gotLength already
        super().requestReceived(command, path, version)

    def process(self):
        if self.body_too_large and not self.path.startswith(API_PREFIX):
            self.setResponseCode(413)
            self.setHeader(b"content-type", b"text/plain; charset=utf-8")
            self.setHeader(b"connection", b"close")
            self.write(f"The request body is over {self.max_kept_bytes} bytes.\n".encode())
            self.finish()
            return
        super().process()

    def _refuse_now(self) -> None:
        body = json.dumps(
            {"error": {"code": 413, "type": "Request Entity Too Large", "message": f"the request body is over {self.max_kept_bytes} bytes"}}
        ).encode()
        transport = self.channel.transport
        transport.write(
            b"HTTP/1.1 413 Request Entity Too Large\r\ncontent-type: application/json\r\nconnection: close\r\n"
            + b"content-length: %d\r\n\r\n" % len(body)
            + body
        )
        self.loseConnection()  # through the channel: it lets go of the transport as producer first
