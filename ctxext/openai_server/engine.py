"""The served model: one loaded (extended) model and its tokenizer, generating for one request at a time.

The model holds one set of weights and the CPU's threads, so requests run one after another on a single worker
thread, in the order they came; at most ``queue`` wait behind the one generating, and a request beyond that is
refused (503) at once rather than left hanging. Each run is ``model.generate`` with a :class:`Generation` as its
streamer and stopping criterion: it turns the new tokens into text, cuts the text at a stop string, and hands
each new piece to the event loop, which streams it or collects it.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator

import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from ..eval.generation import stop_ids
from .protocol import ApiError, Sampling


class Engine:
    """``model`` (in eval mode, on its device) served under the id ``name``; prompt and answer together stay
    within ``length`` tokens (the extended model's target length)."""

    def __init__(self, model, tokenizer, name: str, length: int, queue_size: int):
        self.model, self.tokenizer, self.name, self.length = model, tokenizer, name, length
        self.eos = sorted(stop_ids(model.generation_config, tokenizer))
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (self.eos or [None])[0]
        # the request's settings alone decide how it samples: no top_k, repetition penalty, ... from the checkpoint
        model.generation_config = GenerationConfig(eos_token_id=self.eos, pad_token_id=pad)
        self.bound = queue_size + 1  # the request generating and those waiting
        self.admitted = 0  # changed only on the event loop's thread
        self._tokenizer_lock = threading.Lock()  # a fast tokenizer refuses two threads at once ("Already borrowed")
        self._jobs: queue.Queue[Generation | None] = queue.Queue()
        self._running: Generation | None = None
        # not a daemon: a thread still inside a torch operation when the interpreter exits aborts the process
        self._worker = threading.Thread(target=self._work, name="ctxext-serve-generate")
        self._stopped = False

    def check_model(self, requested: str) -> None:
        if requested != self.name:
            raise ApiError(404, f"model {requested!r} is not served here; this server serves {self.name!r}")

    def encode_text(self, prompt: str) -> list[int]:
        with self._tokenizer_lock:
            return self.tokenizer(prompt, add_special_tokens=True)["input_ids"]

    def encode_chat(self, messages: list[dict]) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise ApiError(400, f"{self.name}'s tokenizer has no chat template; use /v1/completions")
        with self._tokenizer_lock:
            try:
                text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            except Exception as exc:  # the template's own checks (roles, order) raise jinja's or ValueError
                raise ApiError(400, f"the chat template refused these messages: {exc}") from None
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids: list[int]) -> str:
        with self._tokenizer_lock:
            return self.tokenizer.decode(ids, skip_special_tokens=True)

    def submit(self, prompt_ids: list[int], sampling: Sampling) -> Generation:
        """Queue a generation (on the event loop); refused when the prompt leaves no room for an answer or when
        the queue is full."""
        if len(prompt_ids) >= self.length:
            raise ApiError(
                400,
                f"the prompt is {len(prompt_ids)} tokens, beyond what this model serves: {self.length} tokens "
                "(its target length), prompt and answer together",
                kind="context_length_exceeded",
            )
        if self.admitted >= self.bound:
            raise ApiError(
                503,
                f"server busy: {self.admitted - 1} requests are waiting behind the one generating "
                f"(--queue {self.bound - 1}); try again later",
                kind="server_busy",
            )
        self.admitted += 1
        generation = Generation(self, prompt_ids, sampling, asyncio.get_running_loop())
        self._jobs.put(generation)
        return generation

    def start(self) -> None:
        """Start the worker that runs the queued generations."""
        self._worker.start()

    def stop(self) -> None:
        """End the running generation and every queued one now (on the event loop: the server is stopping), and
        the worker after them; their requests are answered 503."""
        if self._stopped:
            return
        self._stopped = True
        pending = [self._running]
        while not self._jobs.empty():
            pending.append(self._jobs.get_nowait())
        for generation in pending:
            if generation is not None:
                generation.abort("the server is stopping")
        self._jobs.put(None)

    def join(self) -> None:
        """Wait for the worker to end after ``stop`` (the running generation stops at its next token)."""
        if self._worker.is_alive():
            self._worker.join()

    def _work(self) -> None:
        while (generation := self._jobs.get()) is not None:
            self._running = generation
            try:
                generation.run()
            finally:
                self._running = None
                generation.post(self._release)

    def _release(self) -> None:
        self.admitted -= 1


class Generation(BaseStreamer, StoppingCriteria):
    """One request's run: ``model.generate`` hands it every new token (``put``) and asks it whether to stop
    (``__call__``); the text goes to the event loop piece by piece (``pieces``), held back while it could still
    turn into a stop string or is an unfinished UTF-8 character."""

    def __init__(self, engine: Engine, prompt_ids: list[int], sampling: Sampling, loop: asyncio.AbstractEventLoop):
        self.engine, self.prompt_ids, self.sampling, self.loop = engine, prompt_ids, sampling, loop
        self.generated: list[int] = []
        self.text = ""  # the answer so far, cut at a stop string
        self.finish_reason: str | None = None  # "stop" (end of sequence or a stop string) or "length"
        self.error: ApiError | None = None  # why the run failed or was aborted
        self._sent = 0  # characters of ``text`` handed to the event loop
        self._prompt_seen = False
        self._stopping = threading.Event()
        self._out: asyncio.Queue[str | None] = asyncio.Queue()

    # --- the worker's side

    def run(self) -> None:
        if self._stopping.is_set():  # cancelled while it waited
            self.end()
            return
        model, sampling = self.engine.model, self.sampling
        room = self.engine.length - len(self.prompt_ids)
        max_new = room if sampling.max_tokens is None else min(sampling.max_tokens, room)
        sample = sampling.temperature > 0
        settings = {"temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": 0} if sample else {}
        input_ids = torch.tensor([self.prompt_ids], device=model.device)
        # a seed draws from a copy of the random state, so it leaves later unseeded requests' draws as they were
        devices = [model.device] if model.device.type == "cuda" else []
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=devices, enabled=sampling.seed is not None):
                if sampling.seed is not None:
                    torch.manual_seed(sampling.seed)
                model.generate(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    max_new_tokens=max_new,
                    do_sample=sample,
                    **settings,
                    streamer=self,
                    stopping_criteria=StoppingCriteriaList([self]),
                )
        except Exception as exc:  # a failed generation fails its request, not the server
            self.error = ApiError(500, f"generation failed ({type(exc).__name__}: {exc})", kind="server_error")
            self.end()

    def put(self, value) -> None:
        if not self._prompt_seen:  # generate hands the prompt over first
            self._prompt_seen = True
            return
        if self.finish_reason is not None:  # a token generated after a stop string, before generate stopped
            return
        token = int(value.reshape(-1)[0])
        self.generated.append(token)
        if token in self.engine.eos:
            self.finish_reason = "stop"
            return
        text = self.engine.decode(self.generated)
        cut = min((i for i in (text.find(s) for s in self.sampling.stop) if i >= 0), default=None)
        if cut is not None:
            self.text, self.finish_reason = text[:cut], "stop"
            self._stopping.set()
            return
        self.text = text
        self._send(len(text) - self._held_back(text))

    def end(self) -> None:
        if self.finish_reason is None:
            self.finish_reason = "length"
        self._send(len(self.text))
        self.post(self._out.put_nowait, None)

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self._stopping.is_set(), dtype=torch.bool, device=input_ids.device)

    def _held_back(self, text: str) -> int:
        """How many characters at the end of ``text`` may still change: the longest end that begins a stop
        string, or an unfinished UTF-8 character (decoded as U+FFFD)."""
        if text.endswith("\ufffd"):
            return len(text) - len(text.rstrip("\ufffd"))
        return max(
            (
                n
                for stop in self.sampling.stop
                for n in range(min(len(stop) - 1, len(text)), 0, -1)
                if text.endswith(stop[:n])
            ),
            default=0,
        )

    def _send(self, upto: int) -> None:
        if upto > self._sent:
            piece, self._sent = self.text[self._sent : upto], upto
            self.post(self._out.put_nowait, piece)

    def post(self, callback, *args) -> None:
        """Run ``callback(*args)`` on the event loop's thread."""
        try:
            self.loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop has closed: the server stopped, and nobody waits for this answer
            pass

    # --- the event loop's side

    def cancel(self) -> None:
        """Stop at the next token: the client went away."""
        self._stopping.set()

    def abort(self, message: str) -> None:
        """Stop at the next token, and end the request's answer now with a 503 (the server is stopping)."""
        self._stopping.set()
        self.error = ApiError(503, message, kind="server_stopping")
        self._out.put_nowait(None)

    async def pieces(self) -> AsyncIterator[str]:
        """The answer's text, piece by piece as it is generated; an ``ApiError`` (500) when the run failed."""
        while (piece := await self._out.get()) is not None:
            yield piece
        if self.error is not None:
            raise self.error

    async def result(self) -> str:
        return "".join([piece async for piece in self.pieces()])
