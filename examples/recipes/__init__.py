"""Real WSGI applications as listeners, each with the one thing it needs to know.

Each module serves a Flask host with the recipe's listener on 127.0.0.1:

    python -m examples.recipes.dash_app 8000       # Dash: requests_pathname_prefix
    python -m examples.recipes.django_admin 8000   # Django admin + whitenoise
    python -m examples.recipes.pypi_index 8000     # pypiserver: pip install through it
    python -m examples.recipes.bottle_app 8000     # Bottle: links, forms, redirects

Their dependencies are the ``recipes`` extra (``pip install wsgi-proxy-listen[recipes]``).
"""
