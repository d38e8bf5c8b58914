"""What every subcommand's options share: the help formatter that shows defaults, and the argument types
(dates, id lists, date windows) that turn a typed string into a value or a one-line error."""
from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path


def shown_default(value) -> str:
    """A default as the user would type it: lists comma-separated, floats short (5e-4 stays 0.0005)."""
    if isinstance(value, (list, tuple)):
        return ",".join(shown_default(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


class DefaultsFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to an option's help when it has a default worth saying (not None/False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (default is None or default is False or default is argparse.SUPPRESS or "%(default)" in text
                or action.option_strings == []):
            return text
        return f"{text} (default: {shown_default(default).replace('%', '%%')})"


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose help shows defaults; subcommands (add_subparsers) inherit the class."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)


def positive_int(s: str) -> int:
    """A count that must be at least 1 (chunk sizes, batch sizes)."""
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {v}")
    return v


def date_arg(s: str) -> dt.date:
    try:
        return dt.date.fromisoformat(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date as YYYY-MM-DD, got {s!r}") from None


def ids_arg(s: str) -> list[int]:
    p = Path(s)
    text = p.read_text() if p.exists() else s
    try:
        return [int(x) for x in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected person ids (comma/space separated, or a file of them), "
                                         f"got {s[:60]!r}") from None


def date_window_arg(s: str) -> tuple[dt.date, dt.date]:
    start, sep, end = s.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected START:END as YYYY-MM-DD:YYYY-MM-DD, got {s!r}")
    return date_arg(start), date_arg(end)
