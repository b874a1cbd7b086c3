"""Stage — serve: asymmetric search over a persisted index (documents by the teacher, queries by a student).

- :mod:`embed_kd.serve.batching` — micro-batching of concurrent requests, encoding off the event loop;
- :mod:`embed_kd.serve.engine` — the query model + index pair, and the startup compatibility checks;
- :mod:`embed_kd.serve.app` — the FastAPI app factory (``POST /search``, ``GET /health``, ``GET /info``);
- :mod:`embed_kd.serve.runner` — run the app with uvicorn (in the foreground or a background thread);
- :mod:`embed_kd.serve.client` — a small Python client (sync and async, over ``httpx``).

Nothing is imported or loaded here: importing ``embed_kd.serve`` costs nothing, and models and
indexes are loaded only when an app is built.
"""
