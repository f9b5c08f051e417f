"""Exceptions raised by lightprune.

Every error the library raises on purpose derives from :class:`LightpruneError`, so callers can
catch them all at once. The subclasses also derive from the matching built-in exception
(``ValueError``, ``KeyError``-like lookups are ``ValueError`` too) so generic handlers keep working.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["LightpruneError", "ConfigError", "UnknownNameError", "InputSizeError", "DataNotFoundError"]


class LightpruneError(Exception):
    """Base class of every error raised on purpose by lightprune."""


class ConfigError(LightpruneError, ValueError):
    """An argument has a value outside what is allowed."""


class UnknownNameError(ConfigError):
    """A name (model, dataset, criterion, strategy, ...) is not registered."""

    def __init__(self, kind: str, name: object, known: Iterable[str], plural: str | None = None) -> None:
        self.kind, self.name, self.known = kind, name, sorted(known)
        super().__init__(f"Unknown {kind} {name!r}. Known {plural or kind + 's'}: {', '.join(self.known)}")


class InputSizeError(ConfigError):
    """The input images are too small for the chosen model."""


class DataNotFoundError(LightpruneError, FileNotFoundError):
    """A data set is not on disk and downloading was not requested."""


def check_choice(argument: str, value: object, allowed: Iterable[object]) -> None:
    """Raise :class:`ConfigError` unless ``value`` is one of ``allowed``.

    Example::

        >>> check_choice("channels", 3, (1, 3))
        >>> check_choice("channels", 2, (1, 3))
        Traceback (most recent call last):
        ...
        lightprune.errors.ConfigError: channels=2 is not allowed; choose one of: 1, 3
    """
    allowed = list(allowed)
    if value not in allowed:
        raise ConfigError(f"{argument}={value!r} is not allowed; choose one of: {', '.join(map(str, allowed))}")


def check_positive_int(argument: str, value: object, minimum: int = 1) -> int:
    """Raise :class:`ConfigError` unless ``value`` is an int >= ``minimum``; return it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{argument}={value!r} is not allowed; it must be an integer >= {minimum}")
    return value


def check_fraction(argument: str, value: object, *, low_open: bool = False, high_open: bool = True) -> float:
    """Raise :class:`ConfigError` unless ``value`` is a number in [0, 1) (bounds configurable)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{argument}={value!r} is not allowed; it must be a number in [0, 1)")
    lo_ok = value > 0 if low_open else value >= 0
    hi_ok = value < 1 if high_open else value <= 1
    if not (lo_ok and hi_ok):
        lo = "(0" if low_open else "[0"
        hi = "1)" if high_open else "1]"
        raise ConfigError(f"{argument}={value!r} is not allowed; it must lie in {lo}, {hi}")
    return float(value)
