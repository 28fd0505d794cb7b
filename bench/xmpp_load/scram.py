"""The client side of SASL SCRAM (RFC 5802, RFC 7677) without channel binding.

scramp's ScramClient derives SaltedPassword on every login and has no way to hand it a cached
one; a real client keeps it after the first login (the server sends the same salt and count
again), and so does this one: the derivation is memoized by its exact inputs. That matters in a
reconnect storm, where thousands of PBKDF2 runs would otherwise load the load generator.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os

HASHES = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-1": "sha1"}


class ScramError(Exception):
    pass


@functools.lru_cache(maxsize=65536)
def salted_password(hash_name: str, password: bytes, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac(hash_name, password, salt, iterations)


def _saslname(username: str) -> str:
    return username.replace("=", "=3D").replace(",", "=2C")


class ScramClient:
    """One SCRAM exchange: ``first()``, ``final(server_first)``, ``verify(server_final)``."""

    __slots__ = ("hash_name", "username", "password", "nonce", "_first_bare", "_server_signature")

    def __init__(self, mechanism: str, username: str, password: str, nonce: str | None = None):
        self.hash_name = HASHES[mechanism]
        self.username, self.password = username, password
        self.nonce = nonce or base64.b64encode(os.urandom(18)).decode("ascii")
        self._first_bare = f"n={_saslname(username)},r={self.nonce}"
        self._server_signature = b""

    def first(self) -> bytes:
        return ("n,," + self._first_bare).encode()

    def final(self, server_first: bytes) -> bytes:
        fields = dict(part.split("=", 1) for part in server_first.decode().split(","))
        nonce, salt, iterations = fields["r"], base64.b64decode(fields["s"]), int(fields["i"])
        if not nonce.startswith(self.nonce):
            raise ScramError("server nonce does not extend the client nonce")
        h = self.hash_name
        salted = salted_password(h, self.password.encode(), salt, iterations)
        client_key = hmac.digest(salted, b"Client Key", h)
        stored_key = hashlib.new(h, client_key).digest()
        without_proof = f"c=biws,r={nonce}"
        auth_message = f"{self._first_bare},{server_first.decode()},{without_proof}".encode()
        signature = hmac.digest(stored_key, auth_message, h)
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        server_key = hmac.digest(salted, b"Server Key", h)
        self._server_signature = hmac.digest(server_key, auth_message, h)
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def verify(self, server_final: bytes) -> None:
        fields = dict(part.split("=", 1) for part in server_final.decode().split(",") if "=" in part)
        if "e" in fields:
            raise ScramError(f"server error {fields['e']}")
        if not hmac.compare_digest(base64.b64decode(fields.get("v", "")), self._server_signature):
            raise ScramError("server signature does not match")
