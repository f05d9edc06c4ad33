"""User-facing errors.

Everything a user can get wrong (a config key, a value, a model name, a file) raises a
:class:`FocalexpError` subclass whose message is one line that names the bad key or value and,
where there is one, the closest valid choice. The CLI prints that line and exits with code 2.
"""

from __future__ import annotations

import difflib
from typing import Iterable


class FocalexpError(Exception):
    """Base class for errors caused by user input (bad config, unknown name, unreadable file)."""

    exit_code = 2


class ConfigError(FocalexpError, ValueError):
    """A config key or value is invalid."""


class UnknownNameError(FocalexpError, KeyError):
    """A name (model, key, choice) is not known."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CheckpointError(FocalexpError, RuntimeError):
    """A checkpoint cannot be read or does not fit the model."""


def closest(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """Up to ``n`` valid choices closest to ``name`` (case-insensitive), best first."""
    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    hits = difflib.get_close_matches(str(name).lower(), list(lowered), n=n, cutoff=0.5)
    if not hits:
        # a prefix/substring match helps with long names ("focalnet_t" -> "focalnet_t_srf")
        hits = [c for c in lowered if str(name).lower() in c][:n]
    return [lowered[h] for h in hits]


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Text to append to an error message: ``" (did you mean 'x'?)"`` or ``""``."""
    hits = closest(name, choices, n=1)
    return f" (did you mean '{hits[0]}'?)" if hits else ""
