"""
Listeners across worker processes and hosts
===========================================

.. code-block:: python

    from wsgi_proxy_listen import ProxyMiddleware, Registry
    from wsgi_proxy_listen.cluster import RedisDirectory

    registry = Registry(directory=RedisDirectory(
        url="redis://127.0.0.1:6379/0",
        secret=os.environ["WSGI_PROXY_LISTEN_SECRET"],
        advertise_host="127.0.0.1",
    ))
    application = ProxyMiddleware(django_or_flask_app, registry)

Needs the extra: ``pip install wsgi-proxy-listen[cluster]`` (redis-py, urllib3, waitress).
``import wsgi_proxy_listen`` never imports this package.
"""

from .directory import Owner, RedisDirectory

__all__ = ["Owner", "RedisDirectory"]
