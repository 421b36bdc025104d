"""
TLS on the hop
==============

Across machines the hop crosses a network, and what it carries is the users'
requests: their cookies, their ``Authorization`` headers, their bodies. With
the operator's files, every TCP hop connection is TLS, both ways verified:

- ``TLS_CERT`` and ``TLS_KEY``: this process's certificate (chain) and key, which
  it shows as an owner (server) and as a host (client);
- ``TLS_CA``: the certificate authority that signed every process's
  certificate; a peer whose certificate it did not sign is refused, whichever
  side it is on (mutual TLS). Names are not checked: owners are reached by the
  address they advertise (often an IP), and every process of the deployment
  holds a certificate of that CA.

The secret still authenticates each connection and signs every frame: TLS adds
privacy and a second key, it replaces neither. Unix sockets (one machine, a
folder only this user opens) carry no TLS.
"""

from __future__ import annotations

import os
import ssl
import typing as t

from .variables import ENV_TLS_CA, ENV_TLS_CERT, ENV_TLS_KEY

__all__ = ["TLS", "tls_files"]


class TLS(t.NamedTuple):
    """The files of a process's TLS on the hop."""

    cert: str
    key: str
    ca: str

    def server(self) -> ssl.SSLContext:
        """The context an owner's endpoint accepts with: it asks for the host's
        certificate and checks it against the CA."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._load(context)
        context.verify_mode = ssl.CERT_REQUIRED
        return context

    def client(self) -> ssl.SSLContext:
        """The context a host connects with: it checks the owner's certificate against
        the CA (not its name) and shows its own."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_REQUIRED
        self._load(context)
        return context

    def _load(self, context: ssl.SSLContext) -> None:
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert, self.key)
        context.load_verify_locations(self.ca)


def tls_files(cert: str | None = None, key: str | None = None, ca: str | None = None) -> TLS | None:
    """The hop's TLS files as given, else from ``WSGI_PROXY_LISTEN_TLS_CERT``,
    ``_TLS_KEY`` and ``_TLS_CA``; ``None`` when none is named.

    :raises ValueError: some but not all of the three, a file that cannot be read, or
        files that do not make a TLS context (a key that is not the certificate's).
    """
    cert = cert or os.environ.get(ENV_TLS_CERT) or None
    key = key or os.environ.get(ENV_TLS_KEY) or None
    ca = ca or os.environ.get(ENV_TLS_CA) or None
    named = {"TLS_CERT": cert, "TLS_KEY": key, "TLS_CA": ca}
    if not any(named.values()):
        return None
    missing = [name for name, value in named.items() if not value]
    if missing:
        raise ValueError(
            f"TLS on the hop needs TLS_CERT, TLS_KEY and TLS_CA together: {missing} missing"
        )
    for name, path in named.items():
        if not os.access(t.cast(str, path), os.R_OK):
            raise ValueError(f"{name} {path!r} is no file this process can read")
    files = TLS(t.cast(str, cert), t.cast(str, key), t.cast(str, ca))
    try:
        files.server()
        files.client()
    except (OSError, ssl.SSLError) as error:
        raise ValueError(f"the hop's TLS files cannot be used: {error}") from None
    return files
