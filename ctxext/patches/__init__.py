"""One module per context-extension method; importing this package registers them all."""

from . import dynamic_ntk, dynamic_yarn, llama3, longrope, ntk, pi, yarn  # noqa: F401
