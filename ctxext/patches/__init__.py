"""One module per context-extension method; importing this package registers them all."""

from . import (  # noqa: F401
    dca,
    dynamic_ntk,
    dynamic_yarn,
    llama3,
    lm_infinite,
    longrope,
    ms_poe,
    ntk,
    pi,
    self_extend,
    string_shift,
    yarn,
)
