"""``tandem serve``: the search pipeline behind HTTP (FastAPI on uvicorn).

- ``POST /search``: ``{"query": str}`` or ``{"queries": [str, ...]}``, ``k``, ``candidates``,
  ``rerank`` -> ``{"results": [{"query", "hits": [...]}], "took_ms"}``.
- ``GET /health``, ``GET /info`` (models, index size and manifest, limits, batching counters),
  ``GET /docs`` (OpenAPI), ``GET /`` (a search page).
- ``POST /reload`` (when enabled) or SIGHUP: load the index again (or another one), check it,
  then swap it in; batches already running finish on the old pipeline, a broken index is refused
  and the old one keeps serving.
- ``POST /passages`` (when enabled, behind the API key; Milvus store only): ``{"passages": [{"id", "title",
  "text"}, ...]}`` encodes them with the index's passage encoder, adds them to the live collection and the
  index directory, and makes them searchable at once, without a rebuild.

Requests that arrive together are answered as one batch (one encoder pass, one re-ranker pass):
a single worker takes the first waiting request, everything queued behind it up to
``max_batch`` queries, and, when the previous batch held several requests (the service is under
load), waits at most ``max_wait_ms`` for more; then it runs them together.
"""

import asyncio
import logging
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from tandem.errors import TandemError
from tandem.pipeline import Pipeline, Request

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"


@dataclass(frozen=True)
class ServeSettings:
    max_batch: int = 32  # queries per model batch
    max_wait_ms: float = 2.0  # how long a batch waits for company
    max_queries: int = 32  # queries per request
    max_query_chars: int = 2000
    max_k: int = 100
    max_candidates: int = 1000
    max_body_bytes: int = 256 * 1024
    api_key: str | None = None
    allow_reload: bool = False
    allow_append: bool = False


class MicroBatcher:
    """Gathers concurrent requests into bounded batches, run one at a time on a worker thread."""

    def __init__(self, pipeline: Callable[[], Pipeline], max_batch: int, max_wait_ms: float):
        self.pipeline, self.max_batch, self.max_wait = pipeline, max_batch, max_wait_ms / 1000
        self.queue: asyncio.Queue | None = None
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="tandem-model")
        self.batches = self.queries = 0
        self._last = 0  # requests in the previous batch
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=True)

    async def submit(self, requests: list[Request]) -> list:
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put((requests, fut))
        return await fut

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            n = len(batch[0][0])
            # wait for company only under load (the last batch had several requests): a lone client pays no wait
            deadline = loop.time() + (self.max_wait if self._last > 1 else 0.0)
            while n < self.max_batch:
                if not self.queue.empty():
                    item = self.queue.get_nowait()
                else:
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self.queue.get(), left)
                    except asyncio.TimeoutError:
                        break
                batch.append(item)
                n += len(item[0])
            self._last = len(batch)
            pipeline = self.pipeline()  # a reload swaps the reference; this batch keeps the one it took
            flat = [r for reqs, _ in batch for r in reqs]
            try:
                results = await loop.run_in_executor(self.executor, pipeline.search_batch, flat)
            except Exception as e:  # noqa: BLE001 - every waiter gets the error
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            self.batches += 1
            self.queries += len(flat)
            at = 0
            for reqs, fut in batch:
                if not fut.done():
                    fut.set_result(results[at : at + len(reqs)])
                at += len(reqs)


def create_app(pipeline: Pipeline, settings: ServeSettings = ServeSettings(),
               loader: Callable[[Optional[str]], Pipeline] | None = None):
    """The FastAPI app serving ``pipeline``; ``loader(index_dir or None)`` builds a replacement on reload."""
    from fastapi import FastAPI, HTTPException, Request as HTTPRequest
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse
    from pydantic import BaseModel, ConfigDict, Field

    state: dict[str, Any] = {"pipeline": pipeline, "reloads": 0, "started": time.time()}
    batcher = MicroBatcher(lambda: state["pipeline"], settings.max_batch, settings.max_wait_ms)
    reload_lock = asyncio.Lock()
    reload_pool = ThreadPoolExecutor(1, thread_name_prefix="tandem-reload")

    class SearchBody(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        query: Optional[str] = Field(None, description="one query (or give queries)")
        queries: Optional[list[str]] = Field(None, description=f"up to {settings.max_queries} queries")
        k: int = Field(10, ge=1, le=settings.max_k, description="hits per query")
        candidates: int = Field(100, ge=1, le=settings.max_candidates,
                                description="retrieved passages the re-ranker re-scores (at least k are retrieved)")
        rerank: bool = Field(True, description="re-rank the candidates (when the service has a re-ranker)")

    class Passage(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        id: str = Field(..., min_length=1, max_length=1024, description="passage id (new to the index)")
        title: str = Field("", description="title (may be empty)")
        text: str = Field(..., description="passage text")

    class PassagesBody(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        passages: list[Passage] = Field(..., description="passages to add (the body limit bounds how many)")

    class ReloadBody(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        index: Optional[str] = Field(None, description="index directory to load (default: the current one again)")

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(_reload(None)))
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no SIGHUP here
            pass
        yield
        await batcher.stop()
        reload_pool.shutdown(wait=False)

    app = FastAPI(title="tandem search", version="1", lifespan=lifespan,
                  description="Dense retrieval + re-ranking with a tandem-trained retriever and re-ranker.")

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: HTTPRequest, exc: RequestValidationError):
        errs = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errs):
            return error(400, "the body is not valid JSON")
        parts = [f"{'.'.join(str(x) for x in e.get('loc', ()) if x != 'body') or 'body'}: {e.get('msg')}" for e in errs]
        return error(422, "; ".join(parts))

    @app.exception_handler(HTTPException)
    async def on_http(request: HTTPRequest, exc: HTTPException):
        return error(exc.status_code, str(exc.detail))

    @app.middleware("http")
    async def guard(request: HTTPRequest, call_next):
        if request.method == "POST":
            length = request.headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > settings.max_body_bytes):
                return error(413, f"body over {settings.max_body_bytes} bytes")
            body = await request.body()
            if len(body) > settings.max_body_bytes:
                return error(413, f"body over {settings.max_body_bytes} bytes")
        if settings.api_key and request.url.path in ("/search", "/reload", "/info", "/passages"):
            if request.headers.get("x-api-key") != settings.api_key:
                return error(401, "missing or wrong X-API-Key header")
        return await call_next(request)

    @app.get("/health")
    async def health():
        return {"status": "ok", "passages": len(state["pipeline"].index)}

    @app.get("/info")
    async def info():
        p = state["pipeline"]
        return {**p.info, "reranker_loaded": p.reranker is not None,
                "limits": {k: v for k, v in settings.__dict__.items() if k != "api_key"},
                "api_key_required": bool(settings.api_key), "reloads": state["reloads"],
                "batches": batcher.batches, "queries_served": batcher.queries,
                "mean_batch": batcher.queries / batcher.batches if batcher.batches else 0.0,
                "uptime_s": time.time() - state["started"]}

    @app.post("/search")
    async def search(body: SearchBody):
        if (body.query is None) == (body.queries is None):
            return error(422, 'give "query" (a string) or "queries" (a list of strings), not both')
        queries = [body.query] if body.query is not None else body.queries
        if not queries:
            return error(422, "queries: the list is empty")
        if len(queries) > settings.max_queries:
            return error(422, f"queries: at most {settings.max_queries} per request (got {len(queries)})")
        for i, q in enumerate(queries):
            if not q.strip():
                return error(422, f"query {i}: empty")
            if len(q) > settings.max_query_chars:
                return error(422, f"query {i}: longer than {settings.max_query_chars} characters ({len(q)})")
        t0 = time.perf_counter()
        reqs = [Request(q, body.k, body.candidates, body.rerank) for q in queries]  # the pipeline retrieves >= k
        try:
            results = await batcher.submit(reqs)
        except Exception as e:  # noqa: BLE001
            log.exception("search failed")
            return error(500, f"search failed: {e}")
        reranked = body.rerank and state["pipeline"].reranker is not None
        return {"results": [{"query": q, "hits": [h.to_dict() for h in hits]} for q, hits in zip(queries, results)],
                "reranked": reranked, "took_ms": round(1000 * (time.perf_counter() - t0), 2)}

    async def _reload(index: str | None) -> dict:
        if loader is None:
            raise HTTPException(409, "this service cannot reload (started without a loader)")
        async with reload_lock:
            loop = asyncio.get_running_loop()
            try:
                new = await loop.run_in_executor(reload_pool, loader, index)
                await loop.run_in_executor(reload_pool, lambda: new.search_batch([Request("health check", 1, 1, True)]))
            except Exception as e:  # noqa: BLE001 - a broken index must not take the service down
                log.warning("reload refused, still serving %s: %s", state["pipeline"].info.get("index"), e)
                raise HTTPException(422, f"reload refused, the old index keeps serving: {e}") from None
            old, state["pipeline"] = state["pipeline"], new
            state["reloads"] += 1
            # batches that took the old pipeline are already queued on the model thread: close it after them
            loop.run_in_executor(batcher.executor, old.close)
            log.info("reloaded: now serving %s (%d passages)", new.info.get("index"), len(new.index))
            return {"status": "reloaded", "index": new.info.get("index"), "passages": len(new.index),
                    "reloads": state["reloads"]}

    @app.post("/reload")
    async def reload(body: ReloadBody | None = None):
        if not settings.allow_reload:
            return error(403, "reloading is disabled (start with --allow-reload)")
        return await _reload(body.index if body else None)

    @app.post("/passages")
    async def passages(body: PassagesBody):
        if not settings.allow_append:
            return error(403, "adding passages is disabled (start with --allow-append)")
        if not body.passages:
            return error(422, "passages: the list is empty")
        records = [(x.id, x.title, x.text) for x in body.passages]
        async with reload_lock:  # not while an index is being swapped in
            p = state["pipeline"]
            loop = asyncio.get_running_loop()
            try:  # on the model thread, between search batches
                n = await loop.run_in_executor(batcher.executor, p.append, records)
            except TandemError as e:
                return error(422, str(e))
        log.info("appended %d passages: %d in all", n, len(p.index))
        return {"status": "appended", "appended": n, "passages": len(p.index)}

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "search.html", media_type="text/html")

    app.state.tandem = state
    app.state.batcher = batcher
    return app


def serve(index: str | Path, reranker: str | None = None, data: str | None = None, host: str = "127.0.0.1",
          port: int = 8000, settings: ServeSettings = ServeSettings(), allow_untrained_reranker: bool = False,
          log_level: str = "info", backend: str = "torch", hybrid: bool = False) -> None:
    """Load the pipeline (failing fast on a bad index or model), then serve it until stopped."""
    import uvicorn

    def loader(new_index: str | None) -> Pipeline:
        return Pipeline.load(new_index or index, reranker=reranker, data=data,
                             allow_untrained_reranker=allow_untrained_reranker, backend=backend, hybrid=hybrid)

    pipeline = loader(None)
    app = create_app(pipeline, settings, loader)
    log.info("serving %s (%d passages%s%s) on http://%s:%d", index, len(pipeline.index),
             ", hybrid with BM25" if hybrid else "", f", re-ranker {reranker}" if reranker else "", host, port)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=10)


__all__ = ["ServeSettings", "MicroBatcher", "create_app", "serve"]
