"""
The cluster's variables
=======================

What a process of a directory reads from its environment besides the directory's
name and secret (those are :mod:`wsgi_proxy_listen.naming`'s), and the namespace
a Redis deployment's keys take by default.
"""

from __future__ import annotations

import hashlib

__all__ = [
    "ENV_ADVERTISE",
    "ENV_BIND",
    "ENV_NAMESPACE",
    "ENV_TLS_CA",
    "ENV_TLS_CERT",
    "ENV_TLS_KEY",
    "check_namespace",
    "namespace_for",
]

#: The environment variable with the address that other machines reach this process at
#: (a Redis directory; see :class:`~wsgi_proxy_listen.cluster.RedisDirectory`).
ENV_ADVERTISE = "WSGI_PROXY_LISTEN_ADVERTISE"
#: The environment variable with the address (and port, or range of ports) that this
#: process's internal endpoint listens on (see :mod:`~wsgi_proxy_listen.cluster.addresses`).
ENV_BIND = "WSGI_PROXY_LISTEN_BIND"
#: The environment variable with a Redis directory's namespace, the prefix of its keys.
ENV_NAMESPACE = "WSGI_PROXY_LISTEN_NAMESPACE"
#: The environment variables with the files of TLS on the hop (see
#: :mod:`wsgi_proxy_listen.cluster.tls`).
ENV_TLS_CERT = "WSGI_PROXY_LISTEN_TLS_CERT"
ENV_TLS_KEY = "WSGI_PROXY_LISTEN_TLS_KEY"
ENV_TLS_CA = "WSGI_PROXY_LISTEN_TLS_CA"


def namespace_for(secret: str | bytes) -> str:
    """The namespace of a deployment whose secret is ``secret``: a digest of it, which
    says nothing of the secret."""
    key = secret.encode() if isinstance(secret, str) else secret
    digest = hashlib.sha256(b"wsgi-proxy-listen namespace\0" + key).hexdigest()
    return f"wsgi-proxy-listen-{digest[:16]}"


def check_namespace(namespace: object) -> str:
    """``namespace`` as a Redis deployment's namespace.

    :raises ValueError: an empty name, or one with ``}`` (it closes the keys' hash tag).
    """
    if not namespace or not isinstance(namespace, str) or "}" in namespace:
        raise ValueError(f"invalid namespace {namespace!r}: a non-empty name without '}}'")
    return namespace
