"""The checkpoint layer: model locations, the atomic writer, config.json patching, GGUF reading and writing,
and ``patch``, which picks between them for a path."""
