"""An OpenAI-compatible HTTP server for the course engine, as ``vllm serve`` is for vLLM.

    python -m course_lib.serving.server --model smollm2-135m --port 8000

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    client.chat.completions.create(model="smollm2-135m", messages=[{"role": "user", "content": "Hi!"}])

In a notebook or a test, ``with serve(engine, "course-model") as url:`` runs the same server in a
thread for the length of the block. The endpoints:

* ``GET /v1/models``: the one model served;
* ``POST /v1/completions``: a prompt (text or token ids) continued;
* ``POST /v1/chat/completions``: messages rendered with the tokenizer's chat template, then continued.

Both POST endpoints stream as OpenAI does (``stream: true``): Server-Sent Events, one ``data: {json}``
chunk per piece of new text, a last chunk with the ``finish_reason``, then ``data: [DONE]``. Errors
have OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``. The engine runs behind
``AsyncEngine`` (``async_engine``): one thread steps it, so concurrent requests are batched together.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator, Sequence
from typing import Any

from ..core.optional import missing

_GONE = missing("fastapi", "uvicorn")
if _GONE:
    _MESSAGE = (f"The course server needs {' and '.join(_GONE)}, which {'is' if len(_GONE) == 1 else 'are'} not "
                "installed here: pip install 'course_lib[serve]' (from the repository: pip install -e '.[serve]').")
    if __name__ == "__main__":
        sys.exit(_MESSAGE)
    raise ModuleNotFoundError(_MESSAGE)

import uvicorn  # noqa: E402
from fastapi import FastAPI, Request  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import JSONResponse, StreamingResponse  # noqa: E402
from pydantic import BaseModel, ConfigDict  # noqa: E402
from starlette.exceptions import HTTPException  # noqa: E402

from .async_engine import AsyncEngine, Update  # noqa: E402
from .engine import Engine  # noqa: E402
from .sampling import RequestError, SamplingParams  # noqa: E402


# Fields of OpenAI's API that the course engine does not implement: a request that sets one gets a 400
# (rather than an answer that silently ignores it). Other unknown fields are ignored, as vLLM does.
UNSUPPORTED = ("logprobs", "top_logprobs", "echo", "best_of", "suffix", "logit_bias", "presence_penalty",
               "frequency_penalty", "tools", "functions", "response_format")


class APIError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, message: str, status: int = 400, *, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.message, self.status, self.param, self.code, self.type = message, status, param, code, type

    def response(self) -> JSONResponse:
        body = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return JSONResponse({"error": body}, status_code=self.status)


# ---- request bodies (pydantic validates types; the engine validates values) ---------------------
class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None                  # None: the model served
    max_tokens: int | None = None
    temperature: float | None = None          # OpenAI's default is 1.0 (sampling); 0 is greedy
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    top_k: int | None = None                  # vLLM's extensions: top_k (0 or -1: off), ignore_eos, stop_token_ids
    ignore_eos: bool | None = False
    stop_token_ids: list[int] | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[int]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(_Sampling):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None  # OpenAI's newer name for max_tokens


def sampling_params(body: _Sampling, max_tokens: int) -> SamplingParams:
    """The engine's SamplingParams for a request body (RequestError for values it cannot serve)."""
    if body.n not in (None, 1):
        raise APIError(f"n={body.n} is not supported: the course server returns one choice per request (n=1). "
                       "Send separate requests (with different seeds) instead.", param="n")
    for name, value in (body.model_extra or {}).items():
        if name in UNSUPPORTED and value not in (None, False, 0, [], {}):
            raise APIError(f"{name} is not supported by the course server.", param=name)
    if body.seed is not None and not -2**63 <= body.seed < 2**64:
        raise APIError(f"seed must fit in 64 bits, got {body.seed}.", param="seed")
    stop = [body.stop] if isinstance(body.stop, str) else body.stop or []
    return SamplingParams(max_tokens=max_tokens, temperature=1.0 if body.temperature is None else body.temperature,
                          top_p=1.0 if body.top_p is None else body.top_p,
                          top_k=0 if body.top_k in (None, -1) else body.top_k, seed=body.seed, stop=tuple(stop),
                          stop_token_ids=tuple(body.stop_token_ids or ()), ignore_eos=bool(body.ignore_eos))


def render_chat(tokenizer, messages: Sequence[ChatMessage], model_name: str) -> list[int]:
    """Token ids of the messages through the chat template, ending with the assistant's turn opened."""
    if not getattr(tokenizer, "chat_template", None):
        raise APIError(f"The model {model_name!r} has no chat template, so /v1/chat/completions cannot turn messages "
                       "into a prompt. Use /v1/completions with a plain prompt, or serve a model that has one "
                       "(python -m course_lib.serving.server --model smollm2-135m).", param="messages")
    if not messages:
        raise APIError("messages is empty; give at least one message.", param="messages")
    conversation = []
    for m in messages:
        content = m.content
        if isinstance(content, list):  # OpenAI's content parts: only text here
            if any(part.get("type") != "text" for part in content):
                raise APIError("Only text content parts are supported.", param="messages")
            content = "".join(str(part.get("text", "")) for part in content)
        conversation.append({"role": m.role, "content": content or ""})
    try:
        text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # the template's own checks (roles must alternate, ...) raise Jinja errors
        raise APIError(f"The chat template could not render these messages: {exc}", param="messages") from exc
    return tokenizer.encode(text, add_special_tokens=False)  # the template wrote the special tokens itself


# ---- responses --------------------------------------------------------------------------------
def _usage(u: Update) -> dict[str, int]:
    return {"prompt_tokens": u.num_prompt_tokens, "completion_tokens": u.num_output_tokens,
            "total_tokens": u.num_prompt_tokens + u.num_output_tokens}


def _choice(chat: bool, text: str | None, finish_reason: str | None, *, stream: bool) -> dict[str, Any]:
    """One choice of a response or a chunk; text None in a chat chunk is the empty delta."""
    if not chat:
        return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
    if stream:
        return {"index": 0, "delta": {} if text is None else {"content": text}, "logprobs": None,
                "finish_reason": finish_reason}
    return {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
            "finish_reason": finish_reason}


def _sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


async def _chain(first: Update, rest: AsyncIterator[Update]) -> AsyncIterator[Update]:
    yield first
    async for update in rest:
        yield update


async def _events(updates: AsyncIterator[Update], head: dict[str, Any], chat: bool,
                  include_usage: bool) -> AsyncIterator[str]:
    """Server-Sent Events of one request, as OpenAI streams them."""
    if chat:  # the first chat chunk names the role
        yield _sse({**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                         "logprobs": None, "finish_reason": None}]})
    sent = 0
    async for u in updates:
        if u.error:
            yield _sse({"error": {"message": u.error, "type": "internal_server_error", "param": None, "code": None}})
            break
        delta = u.text[sent:]  # the engine streams safely: no half character, no start of a stop string
        sent += len(delta)
        if delta:
            yield _sse({**head, "choices": [_choice(chat, delta, None, stream=True)]})
        if u.finished:
            yield _sse({**head, "choices": [_choice(chat, None, u.finish_reason, stream=True)]})
            if include_usage:
                yield _sse({**head, "choices": [], "usage": _usage(u)})
    yield _sse("[DONE]")


async def _unless_disconnected(request: Request, work: Awaitable[Any]) -> Any:
    """Await `work`, but cancel it if the client disconnects first (a cancelled generation is aborted).

    Starlette does this for a streaming response once it has started; before that (and for a whole
    non-streamed answer) a disconnect would go unnoticed while the engine computes for nobody.
    """
    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task, watcher = asyncio.ensure_future(work), asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    if task.cancelled():
        raise APIError("The client disconnected.", 499, type="client_disconnected")
    return task.result()


# ---- the app ----------------------------------------------------------------------------------
def create_app(engine: Engine | AsyncEngine, model_name: str) -> FastAPI:
    """The FastAPI app serving `engine` as `model_name`; its lifespan starts and stops the stepping thread.

    ``app.state.engine`` is the AsyncEngine. Serve an Engine from one app at a time: only its thread may step it.
    """
    aengine = engine if isinstance(engine, AsyncEngine) else AsyncEngine(engine)
    tokenizer = aengine.engine.tokenizer

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        aengine.start()
        yield
        aengine.close()

    app = FastAPI(title="course_lib OpenAI-compatible server", lifespan=lifespan)
    app.state.engine = aengine

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError) -> JSONResponse:
        return APIError(str(exc)).response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI answers 422; OpenAI's API (and vLLM) answer 400 for a malformed body
        errors = exc.errors()
        parts = [f"{'.'.join(str(x) for x in e['loc'] if x != 'body') or 'body'}: {e['msg']}" for e in errors[:3]]
        param = next((str(e["loc"][1]) for e in errors if len(e["loc"]) > 1), None)
        return APIError("Invalid request: " + "; ".join(parts), param=param).response()

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        # e.g. 404 for a path that is not served: name it (a missing /v1 is the usual mistake)
        return APIError(f"{exc.detail}: {request.method} {request.url.path}", exc.status_code).response()

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:  # still OpenAI's shape (and logged)
        return APIError(f"{type(exc).__name__}: {exc}", 500, type="internal_server_error").response()

    def check_model(name: str | None) -> None:
        if name is not None and name != model_name:
            raise APIError(f"The model {name!r} does not exist; this server serves {model_name!r}.", 404,
                           param="model", code="model_not_found")

    def default_max_tokens(num_prompt: int) -> int:
        """A chat's default: whatever the context and the whole KV cache leave after the prompt."""
        e = aengine.engine
        return max(1, min(e.max_model_len, e.num_blocks * e.config.block_size) - num_prompt)

    async def answer(request: Request, body: _Sampling, prompt_ids: list[int], params: SamplingParams,
                     chat: bool) -> Any:
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        head = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                "created": int(time.time()), "model": model_name}
        updates = aengine.generate(prompt_ids, params, request_id=rid)
        if body.stream:
            # the first update comes after the prompt's prefill; a RequestError surfaces here, as a 400
            first = await _unless_disconnected(request, anext(updates))
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(_events(_chain(first, updates), head, chat, include_usage),
                                     media_type="text/event-stream")

        async def collect() -> JSONResponse:
            last = None
            async for last in updates:
                pass
            if last.error:
                return APIError(last.error, 500, type="internal_server_error").response()
            return JSONResponse({**head, "object": "chat.completion" if chat else "text_completion",
                                 "choices": [_choice(chat, last.text, last.finish_reason, stream=False)],
                                 "usage": _usage(last)})

        return await _unless_disconnected(request, collect())

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": int(time.time()),
                                            "owned_by": "course_lib", "max_model_len": aengine.engine.max_model_len}]}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Any:
        check_model(body.model)
        params = sampling_params(body, 16 if body.max_tokens is None else body.max_tokens)
        prompt = body.prompt
        prompt_ids = await asyncio.to_thread(tokenizer.encode, prompt) if isinstance(prompt, str) else prompt
        return await answer(request, body, prompt_ids, params, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request) -> Any:
        check_model(body.model)
        prompt_ids = await asyncio.to_thread(render_chat, tokenizer, body.messages, model_name)
        max_tokens = body.max_completion_tokens or body.max_tokens
        params = sampling_params(body, default_max_tokens(len(prompt_ids)) if max_tokens is None else max_tokens)
        return await answer(request, body, prompt_ids, params, chat=True)

    return app


# ---- running it ---------------------------------------------------------------------------------
@contextlib.contextmanager
def serve(engine: Engine | AsyncEngine, model_name: str, host: str = "127.0.0.1", port: int = 0,
          log_level: str = "warning") -> Iterator[str]:
    """Run the server in a thread for the length of a ``with`` block; yields the base URL (``.../v1``).

    port 0 picks a free port. On leaving the block (also through an exception) the server and the
    engine thread stop.
    """
    app = create_app(engine, model_name)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                           timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:   # set once the socket listens
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"The server did not start on {host}:{port} (see the log above).")
            time.sleep(0.01)
        bound = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://{f'[{host}]' if ':' in host else host}:{bound}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        app.state.engine.close()


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m course_lib.serving.server``: load a model and serve it until Ctrl-C."""
    from ..lm.models import load_model
    from .engine import EngineConfig

    p = argparse.ArgumentParser(prog="python -m course_lib.serving.server", description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="course model name (default: the bundled model), e.g. smollm2-135m")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 exposes it to the network)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--num-blocks", type=int, default=EngineConfig.num_blocks, help="KV-cache blocks")
    p.add_argument("--block-size", type=int, default=EngineConfig.block_size, help="tokens per KV block")
    p.add_argument("--max-num-seqs", type=int, default=EngineConfig.max_num_seqs, help="requests in one batch")
    p.add_argument("--max-num-batched-tokens", type=int, default=EngineConfig.max_num_batched_tokens,
                   help="new tokens in one step (chunked prefill's budget)")
    p.add_argument("--kv-cache-dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32", "fp8"])
    p.add_argument("--no-prefix-caching", action="store_true", help="turn automatic prefix caching off")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: what load_model picks)")
    p.add_argument("--enforce-eager", action="store_true", help="on CUDA, run decode steps eagerly (no CUDA graphs)")
    args = p.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    model, tokenizer = load_model(args.model, device=args.device)
    config = EngineConfig(num_blocks=args.num_blocks, block_size=args.block_size, max_num_seqs=args.max_num_seqs,
                          max_num_batched_tokens=args.max_num_batched_tokens, kv_dtype=args.kv_cache_dtype,
                          enable_prefix_caching=not args.no_prefix_caching,
                          cuda_graphs=next(model.parameters()).is_cuda and not args.enforce_eager)
    name = args.model or "course-model"
    app = create_app(Engine(model, tokenizer, config), name)
    print(f"Serving {name!r} at http://{args.host}:{args.port}/v1 (Ctrl-C stops it)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
