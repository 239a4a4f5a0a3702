"""Checks of command-line option values, done before anything starts: one OptionError naming the option, the
value given and what is allowed. The invoke tasks pass options through as text; these parse them."""

from __future__ import annotations

import math
from collections.abc import Sequence

from cosim.errors import OptionError

DEFAULT_WATCHDOG_S = 30.0  # seconds a node may take to answer (here, so that the CLI's help imports nothing heavy)


def choice(option: str, value: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise OptionError(option, value, "one of " + ", ".join(allowed))
    return value


def positive_seconds(option: str, value: str | float) -> float:
    """A finite number of seconds greater than 0 (a watchdog of 0 or less would fire before any reply)."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise OptionError(option, value, "a number of seconds greater than 0") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise OptionError(option, value, "a number of seconds greater than 0")
    return seconds


def integer_at_least(option: str, value: str | int, minimum: int, what: str = "") -> int:
    allowed = f"a whole number of at least {minimum}" + (f" ({what})" if what else "")
    if isinstance(value, bool):
        raise OptionError(option, value, allowed)
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise OptionError(option, value, allowed) from None
    if number < minimum or (isinstance(value, float) and value != number):
        raise OptionError(option, value, allowed)
    return number
