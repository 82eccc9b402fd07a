"""Small WSGI application modules that the CLI and framework tests load by
name (e.g. `python -m yimmo hello:app` run from this folder)."""
