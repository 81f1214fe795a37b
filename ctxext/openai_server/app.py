"""The HTTP side of ``ctxext serve``, a FastAPI app: ``GET /v1/models``, ``POST /v1/completions`` and
``POST /v1/chat/completions`` in the OpenAI API's shapes, streamed as server-sent events (``data: {...}`` chunks,
then ``data: [DONE]``) when the request asks, and every error as the OpenAI API's error body."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from .engine import Engine, Generation
from .protocol import ApiError, ChatRequest, CompletionRequest, GenerationRequest


def build_app(engine: Engine) -> FastAPI:
    app = FastAPI(title="ctxext serve")
    created = int(time.time())

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.kind)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(400, _validation_message(exc))

    @app.exception_handler(HTTPException)
    async def _http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.get("/v1/models")
    async def models() -> dict:
        model = {"id": engine.name, "object": "model", "created": created, "owned_by": "ctxext"}
        return {"object": "list", "data": [{**model, "max_model_len": engine.length}]}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        engine.check_model(body.model)
        prompt_ids = await asyncio.to_thread(engine.encode_text, body.prompt)
        return await _respond(engine, body, prompt_ids, body.max_tokens, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest):
        engine.check_model(body.model)
        messages = [message.as_template_input() for message in body.messages]
        prompt_ids = await asyncio.to_thread(engine.encode_chat, messages)
        return await _respond(engine, body, prompt_ids, body.limit(), chat=True)

    return app


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": status}}, status)


def _validation_message(exc: RequestValidationError) -> str:
    error = exc.errors()[0]
    if error["type"] == "json_invalid":
        return f"malformed JSON body: {error.get('ctx', {}).get('error', error['msg'])}"
    where = ".".join(str(part) for part in error["loc"][1:]) or "body"
    return f"{where}: {error['msg'].removeprefix('Value error, ')}"


async def _respond(engine: Engine, body: GenerationRequest, prompt_ids: list[int], max_tokens: int | None, chat: bool):
    generation = engine.submit(prompt_ids, body.sampling(max_tokens))
    shape = _Shape(engine.name, chat)
    if body.stream:
        events = _events(generation, shape, len(prompt_ids), body.include_usage)
        return StreamingResponse(events, media_type="text/event-stream")
    try:
        text = await generation.result()
    finally:
        generation.cancel()  # nothing once it has ended; stops the model when this request was cancelled
    return shape.whole(text, generation.finish_reason, _usage(len(prompt_ids), generation))


async def _events(generation: Generation, shape: _Shape, n_prompt: int, include_usage: bool):
    try:
        if shape.chat:
            yield _event(shape.chunk([shape.delta({"role": "assistant", "content": ""}, None)]))
        async for piece in generation.pieces():
            yield _event(shape.chunk([shape.piece(piece)]))
        yield _event(shape.chunk([shape.last(generation.finish_reason)]))
        if include_usage:
            yield _event(shape.chunk([], usage=_usage(n_prompt, generation)))
    except ApiError as exc:  # the status line is sent already: the error goes in the stream, as OpenAI does
        yield _event({"error": {"message": exc.message, "type": exc.kind, "param": None, "code": exc.status}})
    finally:
        generation.cancel()  # nothing once it has ended; stops the model when the client went away
    yield "data: [DONE]\n\n"


def _event(data: dict) -> str:
    return f"data: {json.dumps(data)}\n\n"


def _usage(n_prompt: int, generation: Generation) -> dict:
    n_answer = len(generation.generated)
    return {"prompt_tokens": n_prompt, "completion_tokens": n_answer, "total_tokens": n_prompt + n_answer}


class _Shape:
    """The OpenAI API's response objects for one request: a completion or a chat completion, whole or in chunks."""

    def __init__(self, model: str, chat: bool):
        self.model, self.chat = model, chat
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def _object(self, kind: str, choices: list[dict], usage: dict | None) -> dict:
        found = {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": choices}
        return found if usage is None else {**found, "usage": usage}

    def whole(self, text: str, finish_reason: str | None, usage: dict) -> dict:
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}}
            return self._object(
                "chat.completion", [{**choice, "logprobs": None, "finish_reason": finish_reason}], usage
            )
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        return self._object("text_completion", [choice], usage)

    def chunk(self, choices: list[dict], usage: dict | None = None) -> dict:
        return self._object("chat.completion.chunk" if self.chat else "text_completion", choices, usage)

    def delta(self, delta: dict, finish_reason: str | None) -> dict:
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

    def piece(self, text: str) -> dict:
        if self.chat:
            return self.delta({"content": text}, None)
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": None}

    def last(self, finish_reason: str | None) -> dict:
        if self.chat:
            return self.delta({}, finish_reason)
        return {"index": 0, "text": "", "logprobs": None, "finish_reason": finish_reason}
