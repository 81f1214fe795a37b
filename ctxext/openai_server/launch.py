"""Starting ``ctxext serve``: :func:`open_server` checks everything that needs no weights and takes the port, then
loads the model (``from_pretrained``: a patched checkpoint comes back extended) and extends it with the method
asked for; :meth:`Server.run` serves it with uvicorn until Ctrl-C or SIGTERM, which end the running generation
at its next token and every queued one at once."""

from __future__ import annotations

import errno
import signal
import socket
from dataclasses import dataclass, field

import uvicorn

from ..auto import is_auto, resolve
from ..checkpoint.locations import ModelLocation, resolve_model_path
from ..core.plan import auto_target, plan_extension
from ..core.record import ExtensionRecord
from ..core.rope_setup import native_length, text_config
from ..core.validate import check_count, check_dtype
from ..errors import CtxextError
from ..model.extend import extend
from ..model.loading import check_device, load_on_device, load_tokenizer, model_config
from .app import build_app
from .engine import Engine

MAX_PORT = 65535
STOP_GRACE_SECONDS = 3  # how long a stop waits for the open responses to end (they end at the next token)


@dataclass
class ServeConfig:
    """What ``ctxext serve`` is asked to serve, and where."""

    model: str
    method: str | None = None  # None: the model as it loads (a patched checkpoint keeps its patch)
    factor: float | None = None
    target_length: int | None = None
    params: dict = field(default_factory=dict)
    replace: bool = False
    dtype: str = "float32"
    device: str = "cpu"
    host: str = "127.0.0.1"
    port: int = 8000  # 0: any free port
    queue: int = 8  # requests that may wait behind the one generating


class _Uvicorn(uvicorn.Server):
    """uvicorn's server, which ends the generations before it waits for the open responses to end, and notes a
    Ctrl-C or SIGTERM in ``interrupted`` instead of raising the signal again after its shutdown: under
    ``asyncio.run`` that raise reaches asyncio's own SIGINT handler, and is lost when the task ends first."""

    def __init__(self, config: uvicorn.Config, engine: Engine):
        super().__init__(config)
        self.engine = engine
        self.interrupted = False

    def handle_exit(self, sig, frame) -> None:
        self.interrupted = True
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True  # a second Ctrl-C: stop waiting for the open responses
        self.should_exit = True

    async def shutdown(self, sockets=None) -> None:
        self.engine.stop()
        await super().shutdown(sockets)


class Server:
    """A loaded model and the socket it is served on; ``auto`` says what ``--method auto`` chose."""

    def __init__(self, engine: Engine, listening: socket.socket, host: str, auto: dict | None):
        self.engine, self.socket, self.host, self.auto = engine, listening, host, auto
        config = uvicorn.Config(
            build_app(engine), log_level="warning", access_log=False, timeout_graceful_shutdown=STOP_GRACE_SECONDS
        )
        self._server = _Uvicorn(config, engine)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.socket.getsockname()[1]}/v1"

    def run(self) -> None:
        """Serve until stopped: by Ctrl-C or SIGTERM when run on the main thread (raised again as
        KeyboardInterrupt once the server has stopped), or by :meth:`stop`. A stop ends every answer at its next
        token and returns once the model has stopped (a prompt's first pass runs to its end first)."""
        self.engine.start()
        try:
            self._server.run(sockets=[self.socket])
        finally:
            self.socket.close()
            self.engine.stop()  # done at uvicorn's shutdown, unless it failed to start
            self.engine.join()
        if self._server.interrupted:
            raise KeyboardInterrupt

    def stop(self) -> None:
        """Ask the server, running in another thread, to stop."""
        self._server.should_exit = True


def open_server(config: ServeConfig) -> Server:
    """Check the flags, the model's config and the method, and take the port, all before the model loads; then
    load the tokenizer and the model and extend it. Bad input is a ``CtxextError``."""
    check_dtype(config.dtype)
    check_device(config.device)
    check_count(config.port, "--port", minimum=0, maximum=MAX_PORT)
    check_count(config.queue, "--queue", minimum=0)
    location = resolve_model_path(config.model)
    checked_config = model_config(location)
    native_length(checked_config)  # a model without rotary embeddings is refused here
    method, params, auto = _method(config, location, checked_config)
    listening = _listen(config.host, config.port)
    try:
        tokenizer = load_tokenizer(location)
        model = load_on_device(config.model, config.dtype, config.device)
        if method is not None:
            extend(
                model,
                method,
                factor=config.factor,
                target_length=config.target_length,
                replace=config.replace,
                **params,
            )
        engine = Engine(model, tokenizer, config.model, served_length(model), config.queue)
    except BaseException:
        listening.close()
        raise
    return Server(engine, listening, config.host, auto)


def served_length(model) -> int:
    """The most tokens, prompt and answer, the model is served at: its extension's target length, else the
    context length of its config."""
    record = ExtensionRecord.of(model.config)
    return record.target_length if record is not None else int(text_config(model.config).max_position_embeddings)


def _method(config: ServeConfig, location: ModelLocation, checked_config) -> tuple[str | None, dict, dict | None]:
    """(method, parameters, what auto chose) planned on the model's config as ``extend`` will apply them."""
    if config.method is None:
        if config.factor is not None or config.target_length is not None or config.params:
            what = "method parameters" if config.params else "--factor / --target-length"
            raise CtxextError(f"{what} given without --method: nothing would use them")
        return None, {}, None
    method, params, auto = config.method, dict(config.params), None
    if is_auto(method):
        target = auto_target(checked_config, config.factor, config.target_length, None)
        method, params, auto = resolve(config.model, location.directory, target, params=params)
    plan_extension(
        checked_config,
        method,
        factor=config.factor,
        target_length=config.target_length,
        replace=config.replace,
        params=params,
    )
    return method, params, auto


def _listen(host: str, port: int) -> socket.socket:
    """A socket listening on (host, port), so that a port in use is refused before the model loads."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise CtxextError(f"--host {host}: not an address to listen on ({exc})") from None
    listening = socket.socket(family, kind, proto)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listening.bind(address)
        listening.listen(socket.SOMAXCONN)
    except OSError as exc:
        listening.close()
        why = "the port is in use (pick another with --port)" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise CtxextError(f"cannot listen on {host}:{port}: {why}") from None
    return listening
