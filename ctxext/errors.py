"""The one exception type ctxext raises for bad input.

Every message is a single line that says what was wrong and, where it helps, what would
be accepted instead; the CLI prints it as ``ctxext: error: <message>``.
"""


class CtxextError(ValueError):
    """Bad input to ctxext: unknown method, bad factor, unsupported model, bad path, ..."""
