"""How the command-line tools report expected errors: one ``error: ...`` paragraph, exit status 2.

Every ``python -m irra_core.<tool>`` entry point wraps its ``main`` with :func:`run_cli`. An *expected* error
(bad input, a missing file, weights that cannot be fetched offline, an unknown option) is printed as one
paragraph that names the file or field and the fix, without a traceback; anything else is a bug and keeps its
traceback. ``--debug`` (or ``IRRA_DEBUG=1``) re-raises expected errors too, with their traceback. Warnings are
printed as one ``warning: ...`` line each (without the source line Python shows by default) unless ``--debug``.
"""
from __future__ import annotations

import os
import sys
import textwrap
import warnings
from typing import Callable, Sequence


from irra_core.errors import UserError

__all__ = ["UserError", "EXPECTED_ERRORS", "format_error", "run_cli"]

#: what :func:`run_cli` prints as one paragraph: every layer's error types subclass :class:`UserError`
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (UserError, FileNotFoundError)


def format_error(exc: BaseException, width: int = 100) -> str:
    """``error: <message>`` wrapped to ``width`` columns; blank lines in the message separate paragraphs."""
    text = str(exc).strip() or type(exc).__name__
    paragraphs = [textwrap.fill(" ".join(p.split()), width=width, subsequent_indent="  ", break_long_words=False,
                               break_on_hyphens=False)
                  for p in text.split("\n\n")]
    return "error: " + "\n  ".join(paragraphs)


def run_cli(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Call ``main(argv)`` and turn expected errors into ``error: ...`` on stderr and exit status 2.

    Args:
        main: the tool's entry point; receives ``argv`` with ``--debug`` removed.
        argv: the arguments (default ``sys.argv[1:]``).

    Returns:
        ``main``'s exit status, or 2 for an expected error.

    Raises:
        Whatever ``main`` raises that is not an expected error (a bug keeps its traceback), and expected errors
        too when ``--debug`` is given or ``IRRA_DEBUG=1`` is set.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("IRRA_DEBUG", "") not in ("", "0")
    args = [a for a in args if a != "--debug"]
    previous = warnings.formatwarning
    if not debug:
        warnings.formatwarning = _format_warning
    try:
        return main(args)
    except EXPECTED_ERRORS as exc:
        if debug:
            raise
        print(format_error(exc), file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = previous


def _format_warning(message, category, filename, lineno, line=None) -> str:  # noqa: ARG001 - warnings' signature
    return f"warning: {message}\n"
