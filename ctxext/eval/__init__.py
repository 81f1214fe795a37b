"""Evaluation of extended models. For now: passkey retrieval (:mod:`ctxext.eval.passkey`)."""
