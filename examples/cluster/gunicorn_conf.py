"""gunicorn settings for the cluster example: four threaded workers behind one port."""

bind = "127.0.0.1:8000"
workers = 4
worker_class = "gthread"
threads = 4
