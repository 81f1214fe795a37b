"""One module per context-extension method, named as users type it; importing this package
registers them all. Modules starting with ``_`` are shared helpers, not methods."""

from . import (  # noqa: F401
    block_retrieval,
    dca,
    dynamic_ntk,
    dynamic_yarn,
    gali,
    llama3,
    lm_infinite,
    longrope,
    ms_poe,
    ntk,
    pi,
    rerope,
    self_extend,
    string,
    yarn,
)
