"""An OpenAI-compatible HTTP server on Starlette (ASGI) + uvicorn: `specquant serve FILE`.

    POST /v1/chat/completions   POST /v1/completions   (JSON, or SSE with "stream": true)
    GET  /v1/models             GET  /health           GET  /   (the chat page, chat.html)

Continuous batching (runtime.engine): --parallel N slots on one Model(n_seq=N); every running
request advances by one token per step, and one forward pass computes the step for all of them
(the weights are read once), new prompts joining at the next step. A request takes the free slot
whose cached tokens share the longest prefix with its prompt (a follow-up turn evaluates only its
new tokens) or waits in line; its slot comes back when the answer ends, fails, or the client goes
away (streaming: at the next token; non-streaming: within half a second). Answers are
runtime.completions' shapes. Errors are OpenAI-shaped: {"error": {"message", "type", "param",
"code"}} with 400 (bad JSON / parameters, a prompt longer than the context:
code "context_length_exceeded"), 401 (missing or wrong bearer token with --api-key), 404, 405,
500. A max_tokens beyond the context is not an error: the answer ends when the context is full
(finish_reason "length"). Unknown "model" names are accepted, as llama-server does (one model is
served; answers carry its id).
Needs the `server` extra: pip install "specquant-gguf[server]".
"""
from __future__ import annotations

import asyncio
import hmac
import json
from importlib import resources
from typing import Any, AsyncIterator, Callable

from ..errors import SpecQuantError, UsageError
from ._native import ContextFullError
from .completions import Shape, chat_prompt, model_id, prompt_ids, sampling
from .engine import Engine
from .model import Model

try:
    import anyio
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
    from starlette.routing import Route
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise ImportError(f"the server needs the 'server' extra: pip install 'specquant-gguf[server]' ({exc})") from exc

__all__ = ["Served", "build_app", "serve"]


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_

    def response_body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.response_body(), status_code=self.status)


class Served:
    """The model behind the server: one Model with n_slots sequences and the Engine that runs them."""

    def __init__(self, path: str, n_slots: int = 1, n_ctx: int | None = None, n_threads: int | None = None,
                 **model_kw: Any) -> None:
        if n_slots < 1:
            raise UsageError(f"--parallel must be >= 1, got {n_slots}")
        self.model = Model(path, n_ctx=n_ctx, n_threads=n_threads, n_seq=n_slots, **model_kw)
        try:
            self.engine = Engine(self.model)
        except BaseException:
            self.model.close()
            raise
        self.n_slots = n_slots
        self.id = model_id(self.model)
        self.n_ctx = self.model.n_ctx

    def close(self) -> None:
        self.engine.close()
        self.model.close()


# ---------------------------------------------------------------------------------------------
# request parsing


_COMMON = {"model", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "min_p", "stop",
           "seed", "stream", "stream_options", "n", "repeat_penalty", "user", "presence_penalty",
           "frequency_penalty", "logprobs", "top_logprobs", "logit_bias", "response_format", "cache_prompt"}


def _options(body: dict, defaults: dict) -> dict:
    """Sampling options of an OpenAI request, type-checked here (values are checked by Sampling)."""
    def num(name: str) -> float:
        v = body.get(name, defaults[name])
        if v is None:
            return defaults[name]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ApiError(400, f"'{name}' must be a number, got {v!r}", name)
        return v

    def integer(name: str, default: Any) -> Any:
        v = body.get(name, default)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, int):
            raise ApiError(400, f"'{name}' must be an integer, got {v!r}", name)
        return v

    n = integer("n", 1)
    if n != 1:
        raise ApiError(400, f"only n=1 is supported, got n={n}", "n")
    if body.get("logprobs") not in (None, False):
        raise ApiError(400, "logprobs are not supported", "logprobs")
    max_tokens = integer("max_tokens", None)
    if max_tokens is None:
        max_tokens = integer("max_completion_tokens", defaults["max_tokens"])
    if max_tokens is not None and max_tokens < 0:
        raise ApiError(400, f"'max_tokens' must be >= 0, got {max_tokens}", "max_tokens")
    stop = body.get("stop")
    if stop is not None and not (isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))):
        raise ApiError(400, "'stop' must be a string or a list of strings", "stop")
    if isinstance(stop, list):
        stop = [s for s in stop if s] or None
    elif stop == "":
        stop = None
    seed = integer("seed", None)
    if seed is not None and seed < 0:
        seed = seed % (2 ** 64 - 1)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, f"'stream' must be a boolean, got {stream!r}", "stream")
    so = body.get("stream_options") or {}
    if not isinstance(so, dict):
        raise ApiError(400, "'stream_options' must be an object", "stream_options")
    top_k = integer("top_k", defaults["top_k"])
    return dict(max_tokens=max_tokens, temperature=num("temperature"), top_p=num("top_p"), top_k=top_k,
                min_p=num("min_p"), repeat_penalty=num("repeat_penalty"), stop=stop, seed=seed, stream=stream,
                include_usage=bool(so.get("include_usage", False)))


_CHAT_DEFAULTS = dict(max_tokens=None, temperature=0.8, top_p=0.95, top_k=40, min_p=0.05, repeat_penalty=1.0)
_TEXT_DEFAULTS = dict(max_tokens=16, temperature=0.8, top_p=0.95, top_k=40, min_p=0.05, repeat_penalty=1.0)


def _messages(body: dict) -> list[dict]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise ApiError(400, "'messages' must be a non-empty list of {role, content} objects", "messages")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise ApiError(400, f"messages[{i}] must be an object", "messages")
        content = m.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            parts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise ApiError(400, f"messages[{i}].content: only text parts are supported", "messages")
                parts.append(part["text"])
            content = "".join(parts)
        elif content is None:
            content = ""
        role = m.get("role")
        if role == "developer":
            role = "system"
        out.append({"role": role, "content": content})
    return out


def _prompt(body: dict) -> str | list[int]:
    p = body.get("prompt")
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str):
        p = p[0]
    if isinstance(p, str):
        return p
    if isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
        return p
    raise ApiError(400, "'prompt' must be a string (or one list of token ids)", "prompt")


# ---------------------------------------------------------------------------------------------
# the app


class _SlotStream(StreamingResponse):
    """A streaming response that always runs its cleanup (the slot comes back), also when the client
    went away or the request was cancelled mid-stream."""

    def __init__(self, content: AsyncIterator[str], cleanup: Callable[[], Any], **kw: Any) -> None:
        super().__init__(content, **kw)
        self._cleanup = cleanup

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._cleanup()


def build_app(served: Served, api_key: str | None = None) -> Starlette:
    page = resources.files(__package__).joinpath("chat.html").read_text(encoding="utf-8")

    def authorized(request: Request) -> bool:
        if not api_key:
            return True
        got = request.headers.get("authorization", "")
        return hmac.compare_digest(got.encode(), f"Bearer {api_key}".encode())

    async def body_of(request: Request) -> dict:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"the request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        return body

    async def health(request: Request) -> Response:
        busy = served.engine.busy
        return JSONResponse({"status": "ok", "slots_idle": served.n_slots - busy, "slots_processing": busy,
                             "requests_waiting": served.engine.waiting, "steps": served.engine.steps,
                             "steps_batched": served.engine.steps_batched})

    async def models(request: Request) -> Response:
        if not authorized(request):
            return ApiError(401, "invalid or missing API key (Authorization: Bearer ...)", code="invalid_api_key",
                            type_="authentication_error").response()
        return JSONResponse({"object": "list", "data": [{"id": served.id, "object": "model", "created": 0,
                                                          "owned_by": "specquant", "meta": {"n_ctx": served.n_ctx,
                                                                                            "slots": served.n_slots}}]})

    async def index(request: Request) -> Response:
        return HTMLResponse(page)

    async def completion(request: Request, chat: bool) -> Response:
        if not authorized(request):
            return ApiError(401, "invalid or missing API key (Authorization: Bearer ...)", code="invalid_api_key",
                            type_="authentication_error").response()
        try:
            body = await body_of(request)
            opts = _options(body, _CHAT_DEFAULTS if chat else _TEXT_DEFAULTS)
            what = _messages(body) if chat else _prompt(body)
        except ApiError as exc:
            return exc.response()
        stream, include_usage = opts.pop("stream"), opts.pop("include_usage")
        model = served.model
        try:
            s = sampling(**opts)
        except UsageError as exc:
            return _error(exc).response()
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        ready: asyncio.Future = loop.create_future()

        def on_ready(exc: BaseException | None) -> None:
            loop.call_soon_threadsafe(lambda: ready.done() or ready.set_result(exc))

        # the prompt's tokens are made on the engine's thread (it owns the model), errors come back here
        req = served.engine.submit(lambda: chat_prompt(model, what) if chat else prompt_ids(model, what), s,
                                   lambda piece, done: loop.call_soon_threadsafe(events.put_nowait, (piece, done)),
                                   on_ready)
        try:
            exc = await ready
        except BaseException:
            served.engine.cancel(req)
            raise
        if exc is not None:
            return _error(exc).response()
        shape = Shape(chat, served.id)

        if not stream:
            parts = []
            try:
                while True:
                    try:
                        piece, done = await asyncio.wait_for(events.get(), 0.5)
                    except asyncio.TimeoutError:
                        if await request.is_disconnected():
                            served.engine.cancel(req)
                            return Response(status_code=499)
                        continue
                    if piece:
                        parts.append(piece)
                    if done:
                        break
            finally:
                if not req.done:
                    served.engine.cancel(req)
            if req.error is not None:
                return _error(req.error).response()
            return JSONResponse(shape.final("".join(parts), req.info))

        async def sse() -> AsyncIterator[str]:
            first = shape.first()
            if first is not None:
                yield "data: " + json.dumps(first) + "\n\n"
            while True:
                piece, done = await events.get()
                if piece:
                    yield "data: " + json.dumps(shape.chunk(piece, None), ensure_ascii=False) + "\n\n"
                if done:
                    break
            if req.error is not None:
                yield "data: " + json.dumps(_error(req.error).response_body()) + "\n\n"
            else:
                yield "data: " + json.dumps(shape.chunk(None if chat else "", req.info["finish_reason"])) + "\n\n"
                if include_usage:
                    yield "data: " + json.dumps(shape.usage_chunk(req.info)) + "\n\n"
            yield "data: [DONE]\n\n"

        async def cleanup() -> None:
            if not req.done:
                served.engine.cancel(req)  # the client went away: the slot comes back at the next step

        return _SlotStream(sse(), cleanup, media_type="text/event-stream",
                           headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def chat_completions(request: Request) -> Response:
        return await completion(request, True)

    async def text_completions(request: Request) -> Response:
        return await completion(request, False)

    async def not_found(request: Request, exc: Exception) -> Response:
        return ApiError(404, f"no such endpoint: {request.method} {request.url.path}", type_="not_found_error").response()

    async def bad_method(request: Request, exc: Exception) -> Response:
        return ApiError(405, f"{request.method} is not allowed on {request.url.path}").response()

    routes = [Route("/", index), Route("/health", health), Route("/v1/models", models),
              Route("/v1/chat/completions", chat_completions, methods=["POST"]),
              Route("/v1/completions", text_completions, methods=["POST"]),
              Route("/chat/completions", chat_completions, methods=["POST"]),
              Route("/completions", text_completions, methods=["POST"])]
    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: bad_method})
    app.state.served = served
    return app


def _error(exc: Exception) -> ApiError:
    if isinstance(exc, ContextFullError):
        return ApiError(400, str(exc), "messages", "context_length_exceeded")
    if isinstance(exc, UsageError):
        return ApiError(400, str(exc))
    return ApiError(500, str(exc), type_="server_error")


def serve(path: str, host: str = "127.0.0.1", port: int = 8080, parallel: int = 1, n_ctx: int | None = None,
          n_threads: int | None = None, api_key: str | None = None, log_level: str = "info",
          ready: Callable[[int], None] | None = None, **model_kw: Any) -> None:
    """Loads the model with `parallel` slots and serves until interrupted. port 0 = a free port; ready(port) is called once
    the server listens (with the port it got)."""
    import socket

    import uvicorn

    served = Served(path, parallel, n_ctx=n_ctx, n_threads=n_threads, **model_kw)
    try:
        app = build_app(served, api_key)
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)  # connections made before uvicorn runs wait in the backlog
        real_port = sock.getsockname()[1]
        config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=2)
        server = uvicorn.Server(config)
        if ready is not None:
            ready(real_port)
        server.run(sockets=[sock])
    finally:
        served.close()
