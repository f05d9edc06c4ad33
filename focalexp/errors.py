"""User-facing errors.

Everything a user can get wrong (a config key, a value, a model name, a file) raises a
:class:`FocalexpError` subclass whose message is one line that names the bad key or value and,
where there is one, the closest valid choice. The CLI prints that line and exits with code 2.

Where an error happened is data, not text: ``key`` (the dotted config key), ``unknown`` (the key itself
is not valid; ``suggestion`` is the closest valid key), ``run`` (the sweep run's label) and ``axis`` (the
grid axis that brought an unknown key in). A layer that knows more context adds it with :meth:`under`
(a section: ``depths`` -> ``model.depths``) or :meth:`in_run`; the message is rendered from these fields
by ``str()``, so nothing is reworded on the way up and a caller can read ``e.key`` instead of parsing.
"""

from __future__ import annotations

import copy
import difflib
from typing import Iterable


def _from_worker(message: str, cls: type) -> str:
    """The one line of an error re-raised by torch's DataLoader from a worker process. torch rebuilds it
    as ``cls("Caught <cls> in DataLoader worker process N.\\nOriginal Traceback ...<module>.<cls>: <line>")``
    (only the type and the formatted text cross the process boundary); the user gets ``<line>``."""
    if not (message.startswith("Caught ") and "\nOriginal Traceback" in message):
        return message
    last = message.rstrip().rsplit("\n", 1)[-1]
    for name in (f"{cls.__module__}.{cls.__qualname__}: ", f"{cls.__qualname__}: "):
        if last.startswith(name):
            return last[len(name):]
    return message


class FocalexpError(Exception):
    """Base class for errors caused by user input (bad config, unknown name, unreadable file).

    ``FocalexpError("text")`` is a whole message; ``FocalexpError("expected >= 1, got 0", key="depths")``
    renders as ``depths: expected >= 1, got 0``; ``FocalexpError(key="depht", unknown=True,
    suggestion="depths")`` as ``unknown key 'depht' (did you mean 'depths'?)``.
    """

    exit_code = 2

    def __init__(self, message: str = "", *, key: str | None = None, unknown: bool = False,
                 suggestion: str | None = None, noun: str = "key", run: str | None = None,
                 axis: str | None = None) -> None:
        message = _from_worker(message, type(self))
        super().__init__(message)
        self.message = message
        self.key = key
        self.unknown = unknown
        self.suggestion = suggestion
        self.noun = noun
        self.run = run
        self.axis = axis

    def __str__(self) -> str:
        if self.unknown and self.key is not None:
            text = f"unknown {self.noun} '{self.key}'"
            if self.suggestion:
                text += f" (did you mean '{self.suggestion}'?)"
            if self.message:
                text += f"; {self.message}"
        elif self.key is not None:
            text = f"{self.key}: {self.message}" if self.message else self.key
        else:
            text = self.message
        if self.axis is not None:
            return f"grid axis '{self.axis}': {text}"
        if self.run is not None:
            return f"run [{self.run}]: {text}"
        return text

    def __reduce__(self):  # keep the fields across pickling (worker processes, submitit)
        return _restore, (type(self), self.message, dict(self.__dict__))

    def under(self, section: str) -> FocalexpError:
        """This error seen from the enclosing ``section``: ``depths`` becomes ``model.depths``, an unknown
        key's suggestion too, and an error without a key gets ``section`` as its key. A new error of the
        same class, chained to this one."""
        out = copy.copy(self)
        out.key = f"{section}.{self.key}" if self.key is not None else section
        if self.suggestion is not None:
            out.suggestion = f"{section}.{self.suggestion}"
        if self.unknown:
            out.noun = "key"
        out.__cause__ = self
        return out

    def in_run(self, run: str, axis: str | None = None) -> FocalexpError:
        """This error inside one sweep run (its label), or from the grid ``axis`` that set the bad key."""
        out = copy.copy(self)
        out.run, out.axis = run, axis
        out.__cause__ = self
        return out


def _restore(cls: type, message: str, fields: dict) -> FocalexpError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(fields)
    return err


class ConfigError(FocalexpError, ValueError):
    """A config key or value is invalid."""


class UnknownNameError(FocalexpError, KeyError):
    """A name (model, key, choice) is not known."""

    __str__ = FocalexpError.__str__  # KeyError would quote the message


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
