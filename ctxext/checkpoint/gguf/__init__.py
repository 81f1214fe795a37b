"""GGUF files: ``reader`` (the layout, validated), ``mapping`` (rope keys <-> transformers rope parameters, the
patch plan) and ``writer`` (a new .gguf whose tensors are the input's, byte for byte)."""
