"""What the test modules share; test modules import from here, never from each other or from conftest.

- ``models``: the tiny model families (``NATIVE``, ``FAMILIES``, ``make_model``), ``logits``, ``tokens``,
  offline tokenizers, a checkpoint whose config ships YaRN.
- ``method_cases``: the one table of example parameters per method (a row per registered method).
- ``attention``: tiny models under an attention method and under its dense reference.
- ``attention_reference``: the dense O(n^2) references of the attention methods.
- ``cli_harness``: the fork server that runs ``ctxext`` commands, and checks of their refusals.
- ``bad_inputs``: bad inputs that several commands refuse the same way.
- ``serving``: what each engine makes of a patched config.json, per method.

Fixtures (``family``, ``tiny_dir``, ``tiny_eval_dir``, ``cli``, ``block``) live in ``tests/conftest.py``.
"""
