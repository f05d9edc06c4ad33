"""Files: atomic writes (temp file + fsync + rename), and the checks on every path a user passes.

The checks answer in one line (a :class:`~focalexp.errors.ConfigError` naming the flag or key) before
anything is read or written: a file that is missing or a directory, an output directory that is a
file or lies under one, a place that cannot be written.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigError, FocalexpError


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def input_file(path: str | os.PathLike, what: str, error: type[FocalexpError] = ConfigError) -> Path:
    """``path`` as a readable regular file, or one line saying why it is not (``what``: the flag or key)."""
    p = Path(path)
    if p.is_dir():
        raise error(f"{what}: '{p}' is a directory, not a file")
    if not p.exists():
        parent = _first_non_dir_parent(p)
        if parent is not None:
            raise error(f"{what}: no such file '{p}' ('{parent}' is a file, not a directory)")
        raise error(f"{what}: no such file '{p}'")
    if not p.is_file():
        raise error(f"{what}: '{p}' is not a regular file")
    if not os.access(p, os.R_OK):
        raise error(f"{what}: '{p}' is not readable (permission denied)")
    return p


def _first_non_dir_parent(p: Path) -> Path | None:
    for parent in reversed(p.parents):
        if parent.exists() and not parent.is_dir():
            return parent
    return None


def output_dir(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a directory that exists or can be created and written; nothing is created here."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{what}: '{p}' is a file, not a directory")
    bad = _first_non_dir_parent(p)
    if bad is not None:
        raise ConfigError(f"{what}: cannot create '{p}': '{bad}' is a file, not a directory")
    existing = p if p.exists() else next(q for q in p.absolute().parents if q.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{what}: cannot write in '{existing}' (permission denied)")
    return p


def output_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a file that can be (over)written: not a directory, its folder creatable."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{what}: '{p}' is a directory; give a file name")
    if p.exists() and not os.access(p, os.W_OK):
        raise ConfigError(f"{what}: '{p}' is not writable (permission denied)")
    output_dir(p.parent if str(p.parent) else Path("."), what)
    return p


def inside(base: Path, path: str | os.PathLike) -> Path | None:
    """``path`` if it resolves to a place under ``base`` (no ``..`` or link out of it), else None."""
    try:
        target = Path(path)
        if not target.is_absolute():
            target = base / target
        resolved, root = target.resolve(), base.resolve()
    except (OSError, RuntimeError, ValueError):
        return None
    return resolved if resolved == root or root in resolved.parents else None


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a SLURM allocation), not the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
