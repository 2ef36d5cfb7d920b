"""Serve a run (or any model) over the OpenAI chat completions API, with a streaming web chat page and a feedback
store.

    chattune serve runs/demo                  # http://127.0.0.1:8000/ (page), /v1/chat/completions, /v1/models
    chattune serve runs/demo --api-key KEY    # /v1/* and /api/* then need "Authorization: Bearer KEY"
    chattune serve runs/demo --host 0.0.0.0 --api-key KEY --allow-host chat.example.com --rate-limit 60

    client = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="KEY")
    client.chat.completions.create(model="runs/demo", messages=[{"role": "user", "content": "hi!"}], stream=True)

Routes only translate between HTTP and the engine (engine.py) and store (store.py); errors leave in OpenAI's shape,
`{"error": {"message", "type", "param", "code"}}`, never with a stack trace.
"""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from chattune.errors import InputError
from chattune.generate.sampling import Sampling, run_sampling
from chattune.serve.engine import Engine, EngineBusy, Finished
from chattune.serve.guard import AccessLog, BodyLimit, HostCheck, RateLimit, SecurityHeaders, error_response
from chattune.serve.schemas import (
    MAX_BODY_BYTES,
    MAX_TOKENS_CAP,
    ChatCompletion,
    ChatRequest,
    DecodingDefaults,
    FeedbackRequest,
    FeedbackResponse,
    ModelCard,
    ModelList,
)
from chattune.serve.settings import DECODE_THREADS, RETRY_AFTER, ServeSettings
from chattune.serve.store import Store, StoredReply
from chattune.serve.stream import Reply, completion, results, sse

STATIC = Path(__file__).parent / "static"
log = logging.getLogger("chattune.serve")


class ApiError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code = status, message, type, code


_error = error_response


# --- dependencies -------------------------------------------------------------------------------------------------

def get_engine(request: Request) -> Engine:
    return request.app.state.engine


def get_store(request: Request) -> Store:
    return request.app.state.store


def require_api_key(request: Request) -> None:
    key = request.app.state.settings.api_key
    if key is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), key.encode()):
        raise ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer KEY' with the key "
                            "the server was started with", "authentication_error", "invalid_api_key")


EngineDep = Annotated[Engine, Depends(get_engine)]
StoreDep = Annotated[Store, Depends(get_store)]

v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])
api = APIRouter(prefix="/api", dependencies=[Depends(require_api_key)])


# --- routes -------------------------------------------------------------------------------------------------------

@v1.get("/models")
def list_models(request: Request) -> ModelList:
    return ModelList(data=[ModelCard(id=request.app.state.model_id, created=request.app.state.started)])


@v1.post("/chat/completions", response_model=None)
async def chat_completions(body: ChatRequest, request: Request, engine: EngineDep,
                           store: StoreDep) -> ChatCompletion | StreamingResponse | Response:
    model_id = request.app.state.model_id
    if body.model not in (None, model_id):
        raise ApiError(404, f"model {body.model!r} is not served here; this server serves {model_id!r}",
                       "not_found_error", "model_not_found")
    sampling = body.sampling(request.app.state.defaults)
    reply = Reply(f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), model_id, engine.backend.decode)
    messages = [m.model_dump() for m in body.messages]
    conversation_id = (body.metadata or {}).get("conversation_id") or reply.id
    # choice i of a seeded request draws with seed + i (as `replies` does), so the n replies differ yet reproduce;
    # choice 0 is stored under the completion id, choice i > 0 under "<id>-<i>"
    samplings = [replace(sampling, seed=None if sampling.seed is None else sampling.seed + i) for i in range(body.n)]
    records = [_recorder(store, StoredReply(
        id=reply.id if i == 0 else f"{reply.id}-{i}", conversation_id=conversation_id, model=model_id,
        messages=messages, content="", finish_reason="", temperature=s.temperature, top_p=s.top_p,
        max_tokens=s.max_new_tokens, seed=s.seed, prompt_tokens=0, completion_tokens=0))
        for i, s in enumerate(samplings)]
    top_logprobs = (body.top_logprobs or 0) if body.logprobs else None
    jobs = engine.submit_choices(messages, samplings, body.stop, records, top_logprobs)
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return StreamingResponse(sse(jobs, request, reply, include_usage, body.logprobs,
                                     request.app.state.settings.keepalive_every),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    finished = await results(jobs, request)
    if any(done.finish_reason == "cancelled" for done in finished):
        return Response(status_code=499)  # nginx's "client closed request": nobody is left to read it
    return completion(jobs, reply, body.logprobs)


def _recorder(store: Store, template: StoredReply) -> Callable[[Finished], None]:
    """Stores the reply once it is finished; runs in the decode worker, before the client sees the end."""

    def record(finished: Finished) -> None:
        store.add_reply(replace(template, content=finished.text, finish_reason=finished.finish_reason,
                                prompt_tokens=finished.prompt_tokens, completion_tokens=finished.completion_tokens))

    return record


@api.get("/defaults")
def decoding_defaults(request: Request) -> DecodingDefaults:
    """What a request that leaves the sampling fields out gets; the web page starts its settings from these."""
    defaults = request.app.state.defaults
    return DecodingDefaults(temperature=defaults.temperature, top_p=defaults.top_p,
                            max_tokens=defaults.max_new_tokens, max_tokens_cap=MAX_TOKENS_CAP)


@api.post("/feedback")
def feedback(body: FeedbackRequest, store: StoreDep) -> FeedbackResponse:
    changes = {field: getattr(body, field) for field in body.model_fields_set - {"reply_id"}}
    if changes.get("rating") == 0:
        changes["rating"] = None
    row = store.set_feedback(body.reply_id, changes)
    if row is None:
        raise ApiError(404, f"no reply with id {body.reply_id!r}", "not_found_error", "reply_not_found")
    return FeedbackResponse(**row)


# --- errors and limits --------------------------------------------------------------------------------------------

def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
        return _error(error.status, error.message, error.type, code=error.code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = error.errors()
        if problems and problems[0]["type"] == "json_invalid":
            reason = problems[0].get("ctx", {}).get("error", "")
            return _error(400, f"the body is not valid JSON: {reason} (character {problems[0]['loc'][-1]})",
                          "invalid_request_error")
        where = ".".join(str(part) for part in problems[0]["loc"] if part != "body") if problems else None
        message = "; ".join(f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}"
                            for e in problems[:3])
        return _error(400, message, "invalid_request_error", param=where or None)

    @app.exception_handler(InputError)
    async def input_error(request: Request, error: InputError) -> JSONResponse:
        return _error(400, str(error), "invalid_request_error")

    @app.exception_handler(EngineBusy)
    async def busy(request: Request, error: EngineBusy) -> JSONResponse:
        return _error(503, str(error), "server_busy", headers={"Retry-After": str(RETRY_AFTER)})

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        return _error(error.status_code, str(error.detail), kind, headers=error.headers)

    @app.exception_handler(Exception)
    async def crash(request: Request, error: Exception) -> JSONResponse:
        log.error("request failed", exc_info=error)
        return _error(500, "internal server error; see the server log", "server_error")


# --- the app ------------------------------------------------------------------------------------------------------

def create_app(engine: Engine, store: Store, model_id: str, settings: ServeSettings | None = None,
               defaults: Sampling | None = None) -> FastAPI:
    """The routes over `engine` and `store`; `defaults` decode requests that leave the sampling fields out."""
    settings = settings or ServeSettings()
    app = FastAPI(title="chattune", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine, app.state.store, app.state.model_id, app.state.settings = engine, store, model_id, settings
    app.state.defaults = defaults or Sampling()
    app.state.started = int(time.time())
    app.include_router(v1)
    app.include_router(api)
    _install_error_handlers(app)
    # added last runs first: log everything, then refuse foreign hosts, then the rest
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES, read_timeout=settings.read_timeout)
    app.add_middleware(RateLimit, per_minute=settings.rate_limit, retry_after=RETRY_AFTER)
    if settings.cors_origin:  # off unless asked: a page elsewhere cannot read replies through the user's browser
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=[settings.cors_origin], allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(SecurityHeaders)
    app.add_middleware(HostCheck, hosts=settings.hosts)
    if settings.access_log:
        app.add_middleware(AccessLog)

    @app.get("/health")
    def health() -> dict:  # no model path, no settings: anyone on the network may call it
        return {"status": "ok", **engine.load}

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def serve(run: str, host: str = "127.0.0.1", port: int = 8000, db: str = "feedback.sqlite", backend: str = "hf",
          quant: str = "q8_0", settings: ServeSettings | None = None, insecure: bool = False,
          max_batch: int | None = None, kv_tokens: int | None = None, threads: int = DECODE_THREADS,
          parked_cells: int | None = None, prompt_precision: str = "auto") -> None:
    """Load `run`, then serve it until Ctrl-C or SIGTERM. The API key is the settings', else $CHATTUNE_API_KEY."""
    import dataclasses
    import os

    import torch

    from chattune.generate.backend import load_backend
    from chattune.serve.server import check_port_free, run_server

    settings = settings or ServeSettings()
    settings = dataclasses.replace(settings, api_key=settings.api_key or os.environ.get("CHATTUNE_API_KEY") or None)
    settings.check(host, insecure)
    check_port_free(host, port)
    if host not in ("0.0.0.0", "::"):
        settings = dataclasses.replace(settings, allow_hosts=(*settings.allow_hosts, host))
    torch.set_num_threads(threads)
    if settings.access_log:
        access = logging.getLogger("chattune.access")
        access.setLevel(logging.INFO)
        access.addHandler(logging.StreamHandler())
    model_id = run.rstrip("/")
    store = Store(db)
    engine = Engine.loading(lambda: load_backend(run, backend, quant, max_batch=max_batch, kv_tokens=kv_tokens,
                                                 threads=threads, parked_cells=parked_cells,
                                                 prompt_precision=prompt_precision),
                            max_waiting=settings.max_waiting)
    # the run's decoding defaults (its generation_config.json), as `chattune chat` decodes the same run
    app = create_app(engine, store, model_id, settings, defaults=run_sampling(run))
    print(f"serving {model_id}\n  chat page: http://{host}:{port}/\n  API:       http://{host}:{port}/v1 "
          f"(OpenAI chat completions)\n  feedback:  {db}  (chattune feedback stats --db {db})", flush=True)
    try:
        run_server(app, engine, host, port, settings)
    finally:
        engine.close()
        store.close()
