"""Evaluation of extended models, before and after extension, all offline.

- ``passkey``: passkey retrieval (Landmark / PI / YaRN format);
- ``ruler``: RULER-style synthetic tasks (and essay-haystack NIAH on local prose);
- ``perplexity``: sliding-window perplexity with NLL per position bucket;
- ``runner``: ``ctxext eval`` (methods side by side, resumable), written up by ``report``;
- ``lm_eval_bridge``: lm-eval on the in-memory model and our shipped lm-eval task configs.
"""
