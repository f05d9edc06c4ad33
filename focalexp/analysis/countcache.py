"""An on-disk cache for counts that change only with the code, never with the run: FLOP reports of configs.

Counting the FLOPs of every preset with fvcore takes tens of seconds (a JIT trace of each model); the
answer depends only on the config, the resolution and the code that builds and counts the model. So
:func:`lookup` / :func:`store` keep each answer as one small JSON file:

``$FOCALEXP_CACHE_DIR`` or ``$XDG_CACHE_HOME/focalexp`` or ``~/.cache/focalexp``, then ``<namespace>/<sha256>.json``

The file name hashes the caller's key together with what the count depends on beyond it: the focalexp,
torch and fvcore versions and a digest of the source of the counting code (``focalexp/models/*.py`` and
``focalexp/analysis/flops.py``), so that editing a model invalidates its counts without a version bump.
``FOCALEXP_CACHE=0`` turns the cache off.

Nothing read back is trusted: an entry is JSON (never a pickle), it is used only when it parses, its
stored key equals the wanted key and the caller's validator accepts its value; anything else counts as a
miss, and the recount overwrites it. Files are written atomically (temp file + rename), so concurrent
processes (a sweep's nodes) never read half a file. A cache directory that cannot be created or written
means no caching, silently: the counts are computed as if there were no cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

from ..fileio import atomic_write_text

_CODE_DIGEST: str | None = None
MAX_ENTRY_BYTES = 1 << 20  # an entry larger than this is not ours


def enabled() -> bool:
    return os.environ.get("FOCALEXP_CACHE", "1").strip().lower() not in ("0", "false", "no", "off")


def cache_dir() -> Path:
    """Where the cache lives (not created here)."""
    if os.environ.get("FOCALEXP_CACHE_DIR"):
        return Path(os.environ["FOCALEXP_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "focalexp"


def code_digest() -> str:
    """sha256 of the source of the code a count depends on (read once per process)."""
    global _CODE_DIGEST
    if _CODE_DIGEST is None:
        pkg = Path(__file__).resolve().parent.parent
        files = sorted((pkg / "models").glob("*.py")) + [pkg / "analysis" / "flops.py"]
        h = hashlib.sha256()
        for f in files:
            h.update(f.name.encode())
            try:
                h.update(f.read_bytes())
            except OSError:
                h.update(b"?")
        _CODE_DIGEST = h.hexdigest()
    return _CODE_DIGEST


def _environment() -> dict[str, str]:
    from importlib import metadata

    import torch

    import focalexp

    try:
        fvcore = metadata.version("fvcore")
    except metadata.PackageNotFoundError:
        fvcore = "none"
    return {"focalexp": focalexp.__version__, "torch": torch.__version__, "fvcore": fvcore, "code": code_digest()}


def _full_key(key: dict[str, Any]) -> dict[str, Any]:
    return {"key": key, "env": _environment()}


def _path(namespace: str, full_key: dict[str, Any]) -> Path:
    blob = json.dumps(full_key, sort_keys=True, separators=(",", ":"))
    return cache_dir() / namespace / f"{hashlib.sha256(blob.encode()).hexdigest()}.json"


def _plain(v: Any) -> Any:
    """``v`` as JSON gives it back (tuples become lists), to compare a wanted key with a stored one."""
    return json.loads(json.dumps(v))


def lookup(namespace: str, key: dict[str, Any], validate: Callable[[Any], bool]) -> Any | None:
    """The value stored for ``key``, or None (no entry, cache off, unreadable, or not valid)."""
    if not enabled():
        return None
    full = _full_key(key)
    try:
        path = _path(namespace, full)
        if not path.is_file() or path.stat().st_size > MAX_ENTRY_BYTES:
            return None
        entry = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(entry, dict) or set(entry) != {"key", "value"} or entry["key"] != _plain(full):
        return None
    value = entry["value"]
    try:
        return value if validate(value) else None
    except Exception:  # noqa: BLE001 - a validator tripping over odd content: not valid
        return None


def store(namespace: str, key: dict[str, Any], value: Any) -> bool:
    """Write ``value`` for ``key``; False (and nothing written) where the cache is off or not writable."""
    if not enabled():
        return False
    full = _full_key(key)
    try:
        text = json.dumps({"key": full, "value": value}, allow_nan=False)  # dict order kept: it is display order
        atomic_write_text(_path(namespace, full), text)
        return True
    except (OSError, ValueError, TypeError):
        return False
