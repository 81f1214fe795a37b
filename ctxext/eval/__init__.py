"""Evaluation of extended models, before and after extension, all offline.

- ``passkey``: passkey retrieval (Landmark / PI / YaRN format);
- ``ruler``: RULER-style synthetic tasks (and essay-haystack NIAH on local prose);
- ``perplexity``: sliding-window perplexity with NLL per position bucket (also the fine-tune
  recipes' held-out perplexity);
- ``runner``: ``ctxext eval`` (methods side by side, resumable, lm-eval tasks included),
  written up by ``report``;
- ``probe``: ``ctxext probe``, the effective retrieval length of a model as it loads (a runner
  run without methods on a ladder of lengths, E from the summary's rule);
- ``tune``: ``ctxext tune``, candidate methods and parameters ranked at one target length (records
  through the runner's store, the winner cached for ``--method auto``);
- ``longrope_search``: LongRoPE's evolutionary search for ``longrope`` factors, by perplexity (``tune
  --methods longrope``);
- ``lm_eval_bridge``: lm-eval on the in-memory model and our shipped lm-eval task configs;
- ``checks``: what can be checked without the model's weights (its config, the planned
  extension, device, dtype, lengths, tokenizer), shared with the fine-tune recipes;
- ``constants``: the baseline's name and the default needle depths, shared with the CLI.
"""
