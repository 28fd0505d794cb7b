"""TLS for client streams: the server's context, and STARTTLS (RFC 6120 section 5).

The same context serves STARTTLS on the client port and TLS from the first
byte on the direct-TLS port (XEP-0368). TLS 1.2 is the oldest version offered.
"""

from __future__ import annotations

from OpenSSL import SSL
from twisted.internet import ssl
from twisted.words.xish import domish

from hipchat_server.xmpp.features import TLS_NS


def server_tls_options(certificate_path: str, private_key_path: str) -> ssl.CertificateOptions:
    """A TLS 1.2+ server context from PEM files (the installer's certificate and key).

    Raises OSError when a file cannot be read, and an OpenSSL error when the
    key does not match the certificate, so a process fails at start rather than
    at the first client.
    """
    with open(certificate_path, "rb") as f:
        certificate_pem = f.read()
    with open(private_key_path, "rb") as f:
        key_pem = f.read()
    certificate = ssl.PrivateCertificate.loadPEM(certificate_pem + b"\n" + key_pem)
    options = ssl.CertificateOptions(
        privateKey=certificate.privateKey.original,
        certificate=certificate.original,
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
    )
    # An idle TLS connection otherwise keeps ~34 KiB of OpenSSL read/write buffers;
    # releasing them keeps a held session within its memory budget. The context is
    # built once and cached by CertificateOptions, so the mode applies to every connection.
    options.getContext().set_mode(SSL.MODE_RELEASE_BUFFERS)
    return options


def is_starttls(element: domish.Element) -> bool:
    """True for the client's ``<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>``."""
    return (element.uri, element.name) == (TLS_NS, "starttls")


def proceed() -> domish.Element:
    """``<proceed/>``: the server is ready for the TLS handshake (RFC 6120 5.4.2.3)."""
    return domish.Element((TLS_NS, "proceed"))
