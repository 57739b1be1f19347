"""``licsearch ui``: the store in a browser, a small static page over a documented JSON API (FastAPI)."""
