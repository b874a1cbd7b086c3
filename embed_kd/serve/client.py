"""A small Python client for ``embed-kd serve`` (sync and async, over ``httpx``).

>>> # with a server running (embed-kd serve --index IDX --query-model S):
>>> # from embed_kd.serve.client import SearchClient
>>> # with SearchClient("http://127.0.0.1:8000") as c:
>>> #     hit = c.search("what lowers blood pressure?", k=5, return_text=True)
>>> #     hit["ids"], hit["scores"], hit["texts"]

``search`` with a string returns that query's result ``{"ids", "scores"[, "texts"]}``; with a list
it returns a list of results in the same order. A 4xx/5xx answer raises :class:`SearchError`
carrying the status and the server's one-sentence message; a server that cannot be reached raises
:class:`SearchError` with status ``None``.
"""

from __future__ import annotations

from typing import Any

from embed_kd.errors import EmbedKDError

DEFAULT_URL = "http://127.0.0.1:8000"


class SearchError(EmbedKDError):
    """The server refused a request (``status`` 4xx/5xx) or could not be reached (``status`` None)."""

    def __init__(self, message: str, status: int | None = None, payload: Any = None):
        super().__init__(message)
        self.status, self.payload = status, payload


def _body(query, k: int | None, return_text: bool) -> dict:
    body: dict[str, Any] = {"query": query, "return_text": return_text}
    if k is not None:
        body["k"] = k
    return body


def _unpack(resp, query) -> Any:
    try:
        payload = resp.json()
    except ValueError:
        payload = None
    if resp.status_code >= 400:
        msg = payload.get("error") if isinstance(payload, dict) else None
        raise SearchError(f"{resp.request.method} {resp.request.url.path}: HTTP {resp.status_code}: "
                          f"{msg or resp.text[:200]}", resp.status_code, payload)
    if query is None:
        return payload
    return payload["results"][0] if isinstance(query, str) else payload["results"]


class SearchClient:
    """Blocking client. ``with SearchClient(url) as c: c.search("query", k=10)``."""

    def __init__(self, base_url: str = DEFAULT_URL, *, timeout: float = 30.0):
        import httpx

        self._httpx = httpx
        self._client = httpx.Client(base_url=base_url, timeout=timeout)

    def _call(self, method: str, path: str, query=None, **kw) -> Any:
        try:
            resp = self._client.request(method, path, **kw)
        except self._httpx.TransportError as exc:
            raise SearchError(f"{self._client.base_url}: cannot reach the server ({exc.__class__.__name__}: {exc})") from None
        return _unpack(resp, query)

    def search(self, query: str | list[str], k: int | None = None, *, return_text: bool = False):
        return self._call("POST", "/search", query, json=_body(query, k, return_text))

    def health(self) -> dict:
        return self._call("GET", "/health")

    def info(self) -> dict:
        return self._call("GET", "/info")

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "SearchClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncSearchClient:
    """``async with AsyncSearchClient(url) as c: await c.search("query")`` — for many concurrent requests."""

    def __init__(self, base_url: str = DEFAULT_URL, *, timeout: float = 30.0, max_connections: int = 100):
        import httpx

        self._httpx = httpx
        self._client = httpx.AsyncClient(base_url=base_url, timeout=timeout,
                                         limits=httpx.Limits(max_connections=max_connections,
                                                             max_keepalive_connections=max_connections))

    async def _call(self, method: str, path: str, query=None, **kw) -> Any:
        try:
            resp = await self._client.request(method, path, **kw)
        except self._httpx.TransportError as exc:
            raise SearchError(f"{self._client.base_url}: cannot reach the server ({exc.__class__.__name__}: {exc})") from None
        return _unpack(resp, query)

    async def search(self, query: str | list[str], k: int | None = None, *, return_text: bool = False):
        return await self._call("POST", "/search", query, json=_body(query, k, return_text))

    async def health(self) -> dict:
        return await self._call("GET", "/health")

    async def info(self) -> dict:
        return await self._call("GET", "/info")

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> "AsyncSearchClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()
