"""Attention-level machinery shared by DCA, STRING, LM-Infinite, Ms-PoE, SelfExtend and ReRoPE.

``kernels`` (fused attention with log-sum-exp, exact merging, RoPE re-rotation), ``bands``
(blockwise attention over distance bands) and ``runtime`` (the hook into transformers'
attention and mask interfaces). The methods themselves live in ``ctxext.methods``.
"""
