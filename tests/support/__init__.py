"""What the tests share: WSGI helpers (wsgi), raw sockets and processes (wire), real
directories, redis-server and gunicorn (cluster), headless Chromium (browser), and the apps
that tests run in processes of their own (*_app, browser_hosts, cluster_gunicorn)."""
