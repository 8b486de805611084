"""``jetex serve``: a local explorer in the browser (lens, paths, attribution, n-grams).

:mod:`jetex.serve.app` builds the web application (Starlette) over loaded models and
read-only n-gram stores; :mod:`jetex.serve.compute` does the work with the library's
public functions; :mod:`jetex.serve.jobs` runs one computation per model at a time and
stops cancelled ones; :mod:`jetex.serve.limits` validates requests; :mod:`jetex.serve.client`
is the torch-free client behind ``--server URL``. This package imports nothing heavy
itself, so the client stays light.
"""
