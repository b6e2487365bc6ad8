"""``fcnseg serve``: one model over HTTP with dynamic batching, Prometheus metrics and a web page.

``app.py`` holds the routes, ``service.py`` the decode -> predict -> encode steps, ``batcher.py`` the queue and
the dynamic batching (usable without HTTP), ``model.py`` the inference function, ``static/`` the page.
Importing this package does not import FastAPI: :func:`fcnseg.serve.app.create_app` does.
"""
