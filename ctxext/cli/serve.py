"""``ctxext serve``: an OpenAI-compatible HTTP server for a model as it loads or extended with a method."""

from __future__ import annotations

import argparse

from . import options

HELP = "OpenAI-compatible HTTP server (/v1/completions, /v1/chat/completions) for the extended model"


def add_arguments(p: argparse.ArgumentParser) -> None:
    options.add_model(p)
    p.add_argument(
        "--method",
        help="extension method applied as the model loads (see 'ctxext methods'), or auto; without it the model "
        "is served as it loads (a patched checkpoint with its patch)",
    )
    options.add_lengths(p, required=False, original=False)
    options.add_replace(p)
    options.add_runtime(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on; 0: any free port (default 8000)")
    p.add_argument(
        "--queue",
        type=int,
        default=8,
        help="requests that may wait behind the one generating; more are answered 503 (default 8)",
    )
    options.add_method_parameters(p)


def run(args: argparse.Namespace) -> int:
    from ..openai_server.launch import ServeConfig, open_server

    server = open_server(
        ServeConfig(
            model=args.model,
            method=args.method,
            factor=args.factor,
            target_length=args.target_length,
            params=options.method_params(args),
            replace=args.replace,
            dtype=args.dtype,
            device=args.device,
            host=args.host,
            port=args.port,
            queue=args.queue,
        )
    )
    if server.auto:
        print(f"auto chose {server.auto['chose']} {server.auto['params']}: {server.auto['reason']}")
    engine = server.engine
    print(f"serving {engine.name!r} at {server.url} ({engine.length} tokens per request); Ctrl-C stops", flush=True)
    server.run()
    return 0
