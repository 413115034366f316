"""The OpenAI-compatible ASGI app (starlette).

Endpoints: ``POST /v1/completions``, ``POST /v1/chat/completions`` (both stream with
``"stream": true`` as server-sent events ending in ``data: [DONE]``), ``GET /v1/models``,
``GET /health`` (the process and its scheduler are alive) and ``GET /ready`` (the model is loaded
and the server takes requests; 503 while it drains on shutdown).

Each request: validate the body (400) → extract the caller's W3C trace context and baggage →
resolve the tenant (API key, ``X-Tenant`` or baggage ``ptune.tenant``; 401) → resolve ``model``
through the adapter store (404), with the canary pick → check the tenant owns it when keys are on
(403) → submit every choice to the scheduler thread, whose engine spans are children of the
caller's trace and carry ``ptune.tenant`` and ``ptune.deployment``.

Responses carry ``X-Request-Id`` and, when a soft prompt served them, ``X-Ptune-Adapter-Hash``,
``X-Ptune-Deployment`` and ``X-Ptune-Canary``. Non-streamed bodies add an ``x_ptune`` object
(adapter hash and each choice's ``gen_ai.response.id`` and trace/span ids, for scoring later).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from opentelemetry import propagate
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route as HttpRoute

from trace_ptune.runtime.requests import GenerationRequest, GenerationResult, time_ordered_id
from trace_ptune.runtime.server import openai_schema as oa
from trace_ptune.runtime.server.auth import ApiKeys, check_access, request_tenant
from trace_ptune.runtime.server.routing import Route, Router
from trace_ptune.runtime.server.scheduler import Delta, Done, Scheduler, Work

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 4 * 2**20
REQUEST_ID_HEADER = "x-request-id"

# engine error class -> HTTP status (anything else is a 500)
_ERROR_STATUS = {
    "GenerationError": 400,
    "AdapterMismatchError": 400,
    "AdapterNotFoundError": 404,
}


class ServerState:
    """Everything one app serves with; created by :func:`create_app`."""

    def __init__(
        self,
        engine: Any,
        router: Router,
        scheduler: Scheduler,
        api_keys: ApiKeys | None,
        on_shutdown: Callable[[], Any] | None,
    ) -> None:
        self.engine = engine
        self.router = router
        self.scheduler = scheduler
        self.api_keys = api_keys
        self.on_shutdown = on_shutdown
        self.draining = False
        self.started_at = time.time()


def create_app(
    engine: Any,
    *,
    store: Any | None = None,
    api_keys: ApiKeys | None = None,
    max_batch_size: int = 32,
    batch_wait_ms: float = 5.0,
    scheduling: str = "iteration",
    join_fraction: float = 0.5,
    join_max_wait_steps: int = 8,
    poll_interval_s: float = 0.0,
    canary_seed: int | None = None,
    on_shutdown: Callable[[], Any] | None = None,
    scheduler: Any | None = None,
) -> Starlette:
    """The ASGI app serving ``engine``; ``store`` defaults to the engine's adapter store.

    ``scheduler`` replaces the in-process scheduler, e.g. a
    :class:`~trace_ptune.runtime.server.engine_process.RemoteScheduler` whose engine runs in
    another process (``engine`` then only needs ``base.name`` and ``base.fingerprint``)."""
    store = store if store is not None else engine.registry.store
    router = Router(
        store,
        engine.base.name,
        base_fingerprint=engine.base.fingerprint,
        poll_interval_s=poll_interval_s,
        canary_seed=canary_seed,
    )
    if scheduler is None:
        scheduler = Scheduler(
            engine,
            max_batch_size=max_batch_size,
            batch_wait_ms=batch_wait_ms,
            mode=scheduling,
            join_fraction=join_fraction,
            join_max_wait_steps=join_max_wait_steps,
        )
    state = ServerState(engine, router, scheduler, api_keys, on_shutdown)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        scheduler.start()
        try:
            yield
        finally:
            # uvicorn has stopped accepting and waited for open requests; finish what is queued
            state.draining = True
            await asyncio.to_thread(scheduler.stop, 60.0)
            _flush_telemetry(on_shutdown)

    app = Starlette(
        routes=[
            HttpRoute("/v1/completions", _completions, methods=["POST"]),
            HttpRoute("/v1/chat/completions", _chat_completions, methods=["POST"]),
            HttpRoute("/v1/models", _models, methods=["GET"]),
            HttpRoute("/v1/models/{model:path}", _model, methods=["GET"]),
            HttpRoute("/health", _health, methods=["GET"]),
            HttpRoute("/ready", _ready, methods=["GET"]),
        ],
        exception_handlers={HTTPException: _http_error, oa.RequestError: _request_error},
        lifespan=lifespan,
    )
    app.state.server = state
    return app


def _flush_telemetry(on_shutdown: Callable[[], Any] | None) -> None:
    try:
        if on_shutdown is not None:
            on_shutdown()
        else:
            from opentelemetry import trace

            flush = getattr(trace.get_tracer_provider(), "force_flush", None)
            if flush is not None:
                flush(5000)
    except Exception as exc:  # telemetry never blocks shutdown
        logger.warning("flushing telemetry on shutdown failed (%s)", exc)


# ---------------------------------------------------------------------- errors


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = {404: f"No route {request.url.path!r}; see /v1/models, /v1/completions, /v1/chat/completions."}
    err = oa.RequestError(exc.status_code, message.get(exc.status_code, str(exc.detail)))
    return JSONResponse(err.body(), status_code=exc.status_code, headers=getattr(exc, "headers", None))


async def _request_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, oa.RequestError)
    return _error_response(exc)


def _error_response(exc: oa.RequestError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


# ---------------------------------------------------------------------- info endpoints


def _server(request: Request) -> ServerState:
    return request.app.state.server


async def _health(request: Request) -> Response:
    state = _server(request)
    refresh = getattr(state.scheduler, "refresh", None)
    if refresh is not None:  # counters of an engine process
        await asyncio.to_thread(refresh, 1.0)
    ok = state.scheduler.running
    return JSONResponse(
        {
            "status": "ok" if ok else "scheduler stopped",
            "inflight": state.scheduler.inflight,
            "batches": state.scheduler.batches,
            "steps": state.scheduler.steps,
            "rows": state.scheduler.rows,
            "max_rows_in_a_step": state.scheduler.max_rows_seen,
            "step_seconds": round(state.scheduler.step_seconds, 3),
            "joins": state.scheduler.joins,
            "scheduling": state.scheduler.mode,
            "uptime_s": round(time.time() - state.started_at, 3),
        },
        status_code=200 if ok else 503,
    )


async def _ready(request: Request) -> Response:
    state = _server(request)
    ready = state.scheduler.running and not state.draining
    base = state.engine.base
    return JSONResponse(
        {
            "ready": ready,
            "model": base.name,
            "fingerprint": base.fingerprint,
            "draining": state.draining,
        },
        status_code=200 if ready else 503,
    )


async def _models(request: Request) -> Response:
    state = _server(request)
    state.router.refresh()
    return JSONResponse({"object": "list", "data": state.router.models()})


async def _model(request: Request) -> Response:
    state = _server(request)
    model = request.path_params["model"]
    for row in state.router.models():
        if row["id"] == model:
            return JSONResponse(row)
    state.router.target(model)  # 404 naming the value, or resolvable but unlisted (a hash)
    return JSONResponse({"id": model, "object": "model", "owned_by": "shared"})


# ---------------------------------------------------------------------- generation


async def _completions(request: Request) -> Response:
    return await _generate(request, "completion")


async def _chat_completions(request: Request) -> Response:
    return await _generate(request, "chat")


async def _read_body(request: Request) -> dict[str, Any]:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise oa.RequestError(413, f"The request body is over {MAX_BODY_BYTES} bytes; send a smaller one.")
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise oa.RequestError(413, f"The request body is over {MAX_BODY_BYTES} bytes; send a smaller one.")
    return oa.parse_json_body(raw)


async def _generate(request: Request, kind: oa.Kind) -> Response:
    state = _server(request)
    request_id = request.headers.get(REQUEST_ID_HEADER) or time_ordered_id("req-")
    headers = {"X-Request-Id": request_id}
    try:
        if state.draining:
            raise oa.RequestError(503, "The server is shutting down; retry on another instance.")
        parsed = oa.parse_request(await _read_body(request), kind)
        ctx = propagate.extract(request.headers)
        tenant = request_tenant(request.headers, state.api_keys, ctx)
        route = state.router.route(parsed.model, request_id)
        if route.kind != "base":
            what = (
                f"deployment {route.deployment!r}"
                if route.kind == "deployment"
                else f"adapter {parsed.model!r}"
            )
            check_access(tenant, route.owner, what, enforce=state.api_keys is not None)
            headers["X-Ptune-Adapter-Hash"] = route.adapter_hash or ""
            if route.deployment:
                headers["X-Ptune-Deployment"] = route.deployment
            headers["X-Ptune-Canary"] = "true" if route.canary else "false"
        rows = _engine_requests(parsed, route, tenant, request_id)
        work = Work(rows, parent=ctx, loop=asyncio.get_running_loop(), stream=parsed.stream)
        try:
            state.scheduler.submit(work)
        except RuntimeError as exc:  # shutting down, or the engine process is gone
            raise oa.RequestError(503, f"{str(exc).capitalize()}; retry on another instance.") from None
        if parsed.stream:
            return await _stream_response(parsed, route, work, request_id, headers, request)
        return await _full_response(parsed, route, work, request_id, headers, request)
    except oa.RequestError as exc:
        return _error_response(exc, headers)


def _engine_requests(
    parsed: oa.ParsedRequest, route: Route, tenant: str | None, request_id: str
) -> list[GenerationRequest]:
    rows = []
    for prompt in parsed.prompts:
        for i in range(parsed.n):
            rows.append(
                GenerationRequest(
                    prompt=prompt,
                    adapter=route.adapter_hash,  # a full hash: the engine's registry hits its cache
                    tenant=tenant,
                    deployment=route.deployment,
                    max_new_tokens=parsed.max_tokens,
                    temperature=parsed.temperature,
                    top_p=parsed.top_p,
                    # each choice gets its own stream of random numbers, reproducible from the seed
                    seed=None if parsed.seed is None else parsed.seed + i,
                    stop=parsed.stop,
                    request_id=request_id,
                )
            )
    return rows


def _result_error(result: GenerationResult) -> oa.RequestError:
    status = _ERROR_STATUS.get(result.error_type or "", 500)
    param = "model" if (result.error_type or "").startswith("Adapter") else None
    return oa.RequestError(status, result.error or "generation failed", param=param, code=result.error_type)


def _choice(index: int, result: GenerationResult) -> oa.Choice:
    return oa.Choice(
        index=index,
        text=result.text,
        finish_reason=result.finish_reason,
        input_tokens=result.input_tokens,
        output_tokens=result.output_tokens,
    )


def _x_ptune(route: Route, results: list[GenerationResult]) -> dict[str, Any]:
    return {
        "adapter_hash": route.adapter_hash,
        "deployment": route.deployment,
        "canary": route.canary,
        "choices": [
            {"response_id": r.response_id, "trace_id": r.trace_id, "span_id": r.span_id, "model": r.model}
            for r in results
        ],
    }


async def _until_disconnect(request: Request) -> None:
    """Return when the client closes the connection (the body has been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _full_response(
    parsed: oa.ParsedRequest,
    route: Route,
    work: Work,
    request_id: str,
    headers: dict[str, str],
    request: Request,
) -> Response:
    results: dict[int, GenerationResult] = {}
    gone = asyncio.ensure_future(_until_disconnect(request))
    try:
        while len(results) < len(work.requests):
            events = asyncio.ensure_future(work.events.get())
            await asyncio.wait((events, gone), return_when=asyncio.FIRST_COMPLETED)
            if not events.done():  # the client left: stop generating for it
                events.cancel()
                _server(request).scheduler.cancel(work)
                return Response(status_code=499)  # nobody reads it; uvicorn drops it
            for item in events.result():
                if isinstance(item, Done) and item.index not in results:
                    results[item.index] = item.result
    finally:
        gone.cancel()
    ordered = [results[i] for i in range(len(work.requests))]
    for result in ordered:
        if result.error is not None:
            return _error_response(_result_error(result), headers)
    body = oa.completion_body(parsed, _openai_id(parsed, request_id), route.model,
                              [_choice(i, r) for i, r in enumerate(ordered)])  # fmt: skip
    body["x_ptune"] = _x_ptune(route, ordered)
    return JSONResponse(body, headers=headers)


def _openai_id(parsed: oa.ParsedRequest, request_id: str) -> str:
    prefix = "chatcmpl-" if parsed.kind == "chat" else "cmpl-"
    return prefix + request_id.removeprefix("req-")


async def _stream_response(
    parsed: oa.ParsedRequest,
    route: Route,
    work: Work,
    request_id: str,
    headers: dict[str, str],
    request: Request,
) -> Response:
    # Refusals (a prompt too long for the context...) come with the first step: answer them
    # with a plain error status rather than a stream that fails at once.
    first = await work.events.get()
    for item in first:
        if isinstance(item, Done) and item.result.error is not None:
            return _error_response(_result_error(item.result), headers)
    response_id = _openai_id(parsed, request_id)
    created = int(time.time())

    async def body() -> AsyncIterator[bytes]:
        finished: dict[int, GenerationResult] = {}
        try:
            async for chunk in chunks(finished):
                yield chunk
        finally:
            if len(finished) < len(work.requests):  # the client disconnected mid-stream
                _server(request).scheduler.cancel(work)

    async def chunks(finished: dict[int, GenerationResult]) -> AsyncIterator[bytes]:
        pending: list[Delta | Done] | None = first
        if parsed.kind == "chat":
            for index in range(len(work.requests)):
                yield oa.sse(
                    oa.chunk_body(parsed, response_id, route.model, created, index, "", None, first=True)
                )
        while True:
            items = pending if pending is not None else await work.events.get()
            pending = None
            out = []
            for item in items:
                if item.index in finished:
                    continue
                if isinstance(item, Delta):
                    out.append(
                        oa.sse(
                            oa.chunk_body(
                                parsed, response_id, route.model, created, item.index, item.text, None
                            )
                        )
                    )
                else:
                    finished[item.index] = item.result
                    if item.result.error is not None:  # a failed forward pass mid-stream
                        out.append(oa.sse(_result_error(item.result).body()))
                        continue
                    out.append(oa.sse(oa.chunk_body(parsed, response_id, route.model, created, item.index,
                                                    None, item.result.finish_reason)))  # fmt: skip
            if out:
                yield b"".join(out)
            if len(finished) == len(work.requests):
                break
        if parsed.include_usage:
            choices = [_choice(i, finished[i]) for i in range(len(work.requests))]
            yield oa.sse(oa.usage_chunk(parsed, response_id, route.model, created, choices))
        yield oa.SSE_DONE

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
