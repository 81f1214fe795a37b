"""The model layer: extending loaded models in place, loading models and tokenizers, rotary modules,
attention-level machinery and transformers-version shims."""
