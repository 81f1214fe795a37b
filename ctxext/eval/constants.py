"""Names and defaults shared by the evaluation modules, the lm-eval task functions and the CLI.

Kept free of imports so that anything (``ctxext/cli.py`` at start-up, the report, the
runner) can read them without loading the evaluation itself.
"""

BASELINE = "unpatched"  # the method name of the model without extension, in records and reports
LM_EVAL = "lm-eval"  # the task name of the records that hold a method's lm-eval results
DEFAULT_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)  # needle depths (fractions), cycled over samples
THRESHOLD = 85.6  # RULER's effective-length threshold (Llama-2-7B's score at 4k), the default of eval and probe
