"""The FastAPI app: ``POST /search``, ``GET /health``, ``GET /info``, built by :func:`create_app`.

Nothing happens at import time: :func:`create_app` takes an already loaded
:class:`~embed_kd.serve.engine.SearchEngine` (or :func:`create_app_from_paths` loads one), so the
startup checks fail before the server binds a port.

API
===

``POST /search`` — body (JSON object, unknown fields refused)::

    {"query": "text" | ["text", ...],   # 1..max_queries non-blank strings of ≤ max_query_chars
     "k": 10,                           # 1..max_k (max_k is capped at the index size)
     "return_text": false}              # also return each hit's text

→ ``200 {"results": [{"ids": [...], "scores": [...], "texts": [...]?}, ...], "k": int, "took_ms": float}``,
one result per query in request order, best first; scores are inner products (cosine similarities
for normalised models), exactly what ``embed-kd eval`` ranks by.

Bad requests are answered ``4xx`` with ``{"error": "<one sentence>", "problems": [{"field",
"message", "type"}]}``: ``422`` for a malformed JSON body, wrong types (strict: ``"5"`` is not an
int, ``1`` is not a bool), an empty/blank/oversized query, too many queries, ``k`` out of range or
unknown fields, and a query that is not valid Unicode text (an unpaired surrogate such as
``"\\ud800"``, which the tokenizer cannot encode) — each refused before it is batched with anyone
else's; ``413`` for a body larger than ``max_body_bytes`` (by ``Content-Length``, or counted while
reading a chunked body); ``404``/``405`` for unknown routes or methods.

``GET /health`` → ``{"status": "ok", "n_docs": int}``.
``GET /info`` → query and doc models (spec, fingerprint, dim, max_seq_length), alignment check,
index (path, kind, n, dim, normalize, corpus), limits, micro-batching settings and counters.

Concurrency: requests are validated on the event loop, then their queries go through a
:class:`~embed_kd.serve.batching.MicroBatcher`: concurrent queries are encoded together, in a
worker thread, and searched with one FAISS call. A failure inside a batch is isolated to the
request that causes it (the batch is retried request by request): that request gets ``500
{"error": ...}``, every other request of the batch its ``200``.
"""

# no ``from __future__ import annotations`` here: FastAPI must see the request model defined in
# create_app as a real class, not as a string it cannot resolve.
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from embed_kd import __version__
from embed_kd.device import device_info
from embed_kd.io import versions
from embed_kd.serve.batching import Arrival, MicroBatcher
from embed_kd.serve.engine import SearchEngine

if TYPE_CHECKING:  # pragma: no cover
    from fastapi import FastAPI

    from embed_kd.serve.engine import SearchEngine


@dataclass
class ServeSettings:
    """Request limits and micro-batching knobs (``embed-kd serve`` flags)."""

    max_k: int = 1000
    default_k: int = 10
    max_query_chars: int = 2000
    max_queries: int = 64
    max_body_bytes: int = 1 << 20
    max_batch_size: int = 32
    max_wait_ms: float = 2.0


def _json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return f"number {value!r}"
    if isinstance(value, str):
        return f"string {value[:20]!r}"
    return {"dict": "object", "list": "array"}.get(type(value).__name__, type(value).__name__)


def _not_encodable(text: str) -> str | None:
    """Why a tokenizer cannot take ``text`` (None when it can): an unpaired UTF-16 surrogate (JSON
    ``"\\ud800"``) is not Unicode text and makes the fast tokenizers raise — for the whole batch."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (f"holds an unpaired surrogate U+{ord(text[exc.start]):04X} at character {exc.start}; it is not "
                "valid Unicode text (send UTF-8 text)")
    return None


class _BodyLimit:
    """Pure ASGI middleware: answer 413 for a body larger than the limit.

    With ``Content-Length`` the size is known before reading (400 for an invalid header). Without
    it (``Transfer-Encoding: chunked``) the body is read here, counting bytes, and the request is
    answered 413 as soon as the count passes the limit — so a chunked upload cannot make the app
    buffer more than ``limit`` bytes; a body within the limit is replayed to the app unchanged.
    """

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def _reject(self, scope, receive, send, status: int, msg: str) -> None:
        from fastapi.responses import JSONResponse

        await JSONResponse({"error": msg, "problems": []}, status_code=status)(scope, receive, send)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    size = int(value)
                except ValueError:
                    size = -1
                if size < 0 or size > self.limit:
                    if size > self.limit:
                        await self._reject(scope, receive, send, 413,
                                           f"request body is {size} bytes; the limit is {self.limit} bytes")
                    else:
                        await self._reject(scope, receive, send, 400, "invalid Content-Length header")
                    return
                await self.app(scope, receive, send)
                return
        # no Content-Length (chunked): count while reading, replay when within the limit
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.limit:
                await self._reject(scope, receive, send, 413,
                                   f"request body is more than {self.limit} bytes (chunked); the limit is "
                                   f"{self.limit} bytes")
                return
            if not message.get("more_body", False):
                break

        async def replay():
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


class _Arrivals:
    """Pure ASGI middleware: announce each ``POST /search`` to the micro-batcher as soon as it
    reaches the server (before its body is read and validated), and withdraw it if it never
    submits — so the batcher waits for requests that are on their way, and only for those."""

    def __init__(self, app, batcher: MicroBatcher):
        self.app, self.batcher = app, batcher

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") != "/search":
            await self.app(scope, receive, send)
            return
        arrival = scope[ARRIVAL_KEY] = self.batcher.announce()
        try:
            await self.app(scope, receive, send)
        finally:
            self.batcher.withdraw(arrival)  # a no-op once the request has submitted


ARRIVAL_KEY = "embed_kd.arrival"


def create_app(engine: "SearchEngine", settings: ServeSettings | None = None) -> "FastAPI":
    """Build the app around a loaded engine (its micro-batcher starts with the app's lifespan)."""
    import contextlib

    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, ConfigDict, Field, field_validator
    from starlette.exceptions import HTTPException as StarletteHTTPException

    s = settings or ServeSettings()
    n_docs = engine.index.n
    max_k = max(1, min(s.max_k, n_docs))
    default_k = min(s.default_k, max_k)
    batcher = MicroBatcher(engine.search_items, max_batch_size=s.max_batch_size, max_wait_ms=s.max_wait_ms)

    class SearchRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)

        query: str | list[str] = Field(description=f"a query, or a list of 1..{s.max_queries} queries")
        k: int = Field(default_k, description=f"documents per query, 1..{max_k}")
        return_text: bool = Field(False, description="also return the documents' texts")

        @field_validator("query", mode="before")
        @classmethod
        def _query(cls, v: Any) -> Any:
            def check(text: Any, where: str) -> None:
                if not isinstance(text, str):
                    raise ValueError(f"{where} must be a string, got {_json_type(text)}")
                if not text.strip():
                    raise ValueError(f"{where} is empty")
                if len(text) > s.max_query_chars:
                    raise ValueError(f"{where} is {len(text)} characters long; the limit is {s.max_query_chars}")
                bad = _not_encodable(text)
                if bad:
                    raise ValueError(f"{where} {bad}")

            if isinstance(v, list):
                if not v:
                    raise ValueError("query list is empty")
                if len(v) > s.max_queries:
                    raise ValueError(f"{len(v)} queries in one request; the limit is {s.max_queries}")
                for i, text in enumerate(v):
                    check(text, f"query[{i}]")
            elif isinstance(v, str):
                check(v, "query")
            else:
                raise ValueError(f"query must be a string or a list of strings, got {_json_type(v)}")
            return v

        @field_validator("k")
        @classmethod
        def _k(cls, v: int) -> int:
            if not 1 <= v <= max_k:
                raise ValueError(f"k must be between 1 and {max_k} (the index holds {n_docs} documents; "
                                 f"the server's limit is {s.max_k}), got {v}")
            return v

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title="embed-kd search", version=__version__, lifespan=lifespan,
                  description="Asymmetric dense retrieval: documents encoded by the teacher, queries by the "
                              "query model (a student aligned to it, or the teacher itself).")
    app.add_middleware(_BodyLimit, limit=s.max_body_bytes)
    app.add_middleware(_Arrivals, batcher=batcher)  # outermost: counts a request before anything reads it
    app.state.engine, app.state.batcher, app.state.settings = engine, batcher, s

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        problems = []
        ctype = request.headers.get("content-type", "")
        for e in exc.errors():
            msg = str(e.get("msg", "invalid value")).removeprefix("Value error, ")
            if e.get("type") == "json_invalid":
                pos = e.get("loc", ("body", "?"))[-1]
                problems.append({"field": "body", "message": f"not valid JSON ({e.get('ctx', {}).get('error', msg)} "
                                 f"at character {pos})", "type": "json_invalid"})
                continue
            loc = [str(p) for p in e.get("loc", ()) if p != "body"]
            # the union's branch names (str / list[str]) are noise: keep the field and the list index
            loc = [p for p in loc if p not in ("str", "list[str]")]
            if not loc and "json" not in ctype:
                msg = f"send a JSON object with 'Content-Type: application/json' (got {ctype or 'no content type'})"
            elif e.get("type") in ("int_type", "bool_type", "string_type", "dict_type"):
                msg = f"{msg}, got {_json_type(e.get('input'))}"
            problems.append({"field": ".".join(loc) or "body", "message": msg, "type": e.get("type")})
        text = "; ".join(f"{p['field']}: {p['message']}" for p in problems) or "invalid request body"
        return JSONResponse({"error": f"invalid request: {text}", "problems": problems}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        return JSONResponse({"error": str(exc.detail), "problems": []}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.post("/search")
    async def search(req: SearchRequest, request: Request) -> dict:
        """Top-k documents for one query or a list of queries."""
        t = time.perf_counter()
        queries = [req.query] if isinstance(req.query, str) else req.query
        arrival: Arrival | None = request.scope.get(ARRIVAL_KEY)
        try:
            hits = await batcher.submit([(q, req.k) for q in queries], arrival)
        except Exception as exc:  # noqa: BLE001 - this request's own failure (the batcher isolated it)
            return JSONResponse({"error": f"the query could not be processed ({type(exc).__name__}: "
                                          f"{' '.join(str(exc).split())[:300]})", "problems": []}, status_code=500)
        results = []
        for ids, scores, rows in hits:
            r: dict[str, Any] = {"ids": ids, "scores": scores}
            if req.return_text:
                r["texts"] = [engine.index.text(row) for row in rows]
            results.append(r)
        return {"results": results, "k": req.k, "took_ms": (time.perf_counter() - t) * 1000.0}

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "n_docs": n_docs}

    @app.get("/info")
    async def info() -> dict:
        return {
            **engine.info(),
            "limits": {**asdict(s), "max_k_effective": max_k},
            "batching": {"max_batch_size": s.max_batch_size, "max_wait_ms": s.max_wait_ms,
                         **batcher.stats.as_dict()},
            "device": device_info(),
            "versions": versions(),
        }

    return app


def create_app_from_paths(index_dir: str, query_model: str | None = None, *,
                          expect_teacher_fingerprint: str | None = None,
                          settings: ServeSettings | None = None) -> "FastAPI":
    """Load the engine (with its startup checks) and build the app."""
    engine = SearchEngine.load(index_dir, query_model, expect_teacher_fingerprint=expect_teacher_fingerprint)
    return create_app(engine, settings)
