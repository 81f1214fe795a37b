"""The one exception type ctxext raises for bad input.

Every message is a single line that says what was wrong and, where it helps, what would
be accepted instead; the CLI prints it as ``ctxext: error: <message>``.
"""


class CtxextError(ValueError):
    """Bad input to ctxext: unknown method, bad factor, unsupported model, bad path, ..."""


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message, for a one-line error (with the lines after it while it ends
    in a colon: transformers' config validation errors put their reason on the second line)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    for line in lines[1:]:
        if not text.endswith(":"):
            break
        text = f"{text} {line}"
    return text if len(text) <= 300 else text[:297] + "..."
