"""Files: atomic writes (temp file + fsync + rename), the file lock, and the checks on every path a user passes.

The checks answer in one line (a :class:`~focalexp.errors.ConfigError` naming the flag or key) before
anything is read or written: a file that is missing or a directory, an output directory that is a
file or lies under one, a place that cannot be written.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

from .errors import ConfigError, FocalexpError


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, binary: bool = False,
                 previous: str | os.PathLike | None = None) -> Iterator[IO]:
    """``with atomic_write(path) as f: ...``: readers of ``path`` see the old file or the complete new one,
    never a torn one (a unique temporary file in the same directory, fsync, rename); on an error (a full
    disk included) the temporary file is removed and ``path`` is untouched. The one atomic writer of
    focalexp (text, JSON, YAML, checkpoints, claims).

    ``previous``: keep the file ``path`` held so far there once the new one is complete (a hard link then
    a rename, so that ``path`` exists at every moment; a plain rename where links are not supported). An
    older ``previous`` is removed before the new file is written, so the disk holds at most two copies."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if previous is not None and path.exists():
        with contextlib.suppress(FileNotFoundError):
            os.unlink(previous)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if previous is not None and path.exists():
            _keep_previous(path, Path(previous))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _keep_previous(path: Path, previous: Path) -> None:
    link = previous.with_name(f".{previous.name}.link")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(link)
    try:
        os.link(path, link)
    except OSError:  # no hard links here (FAT, some FUSE file systems): for a moment there is no ``path``
        os.replace(path, previous)
        return
    os.replace(link, previous)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path) as f:
        f.write(text)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, *, blocking: bool = True) -> Iterator[IO]:
    """Hold an exclusive ``flock`` on ``path`` (created if needed) for the ``with`` block; yields the open
    file (``a+``: a holder may write its name into it). ``blocking=False`` raises :class:`BlockingIOError`
    at once when another process holds it. The one file lock of focalexp (sweep dirs, run claims)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BaseException:
        f.close()
        raise
    try:
        yield f
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


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


def read_json_object(path: str | os.PathLike, what: str, max_bytes: int = 1 << 20) -> dict:
    """An untrusted JSON object (a config.json, a result.json): at most ``max_bytes``, UTF-8, strict JSON
    (no NaN/Infinity), an object at the top; anything else is one :class:`ConfigError` line naming ``what``."""
    import json

    p = input_file(path, what, ConfigError)
    size = p.stat().st_size
    if size > max_bytes:
        raise ConfigError(f"{what}: '{p}' is {size:,} bytes; expected at most {max_bytes:,}")

    def no_constants(name: str) -> None:
        raise ValueError(f"{name} is not a JSON number")

    try:
        obj = json.loads(p.read_bytes().decode("utf-8"), parse_constant=no_constants)
    except UnicodeDecodeError:
        raise ConfigError(f"{what}: '{p}' is not UTF-8 text (not JSON)") from None
    except (ValueError, RecursionError) as e:
        raise ConfigError(f"{what}: '{p}' is not valid JSON ({' '.join(str(e).split())[:120]})") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{what}: '{p}' holds a JSON {type(obj).__name__}, not an object")
    return obj


MAX_PIXELS = 64 * 2**20  # an image file is untrusted: a few KB of PNG can decode to gigapixels


@contextlib.contextmanager
def open_image(path: str | os.PathLike, what: str, *, base: Path | None = None,
               max_pixels: int = MAX_PIXELS) -> Iterator:
    """An untrusted image file opened with PIL (header read, nothing decoded yet), or one
    :class:`ConfigError` line naming ``what`` and the file: missing, a directory, outside ``base`` (a link
    or ``..``; when given), not an image, more than ``max_pixels`` pixels (a decompression bomb, refused
    before decoding), or damaged (truncated: found when the body decodes the pixels)."""
    import warnings

    from PIL import Image

    if base is not None and inside(base, path) is None:
        raise ConfigError(f"{what}: '{path}' leads outside '{base}' (a link or '..'); refused")
    p = input_file(path, what)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise ConfigError(f"{what}: '{p}' is {w}x{h} = {w * h:,} pixels, more than {max_pixels:,}; "
                                      "refused (resize it first)")
                yield im
    except ConfigError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ConfigError(f"{what}: '{p}' decodes to too many pixels ({e}); refused") from None
    except Exception as e:  # noqa: BLE001 - PIL reports damage as many exception types
        why = " ".join(str(e).split())[:120] or type(e).__name__
        raise ConfigError(f"{what}: '{p}' is not a readable image ({why})") from None


def read_image(path: str | os.PathLike, what: str, *, base: Path | None = None, max_pixels: int = MAX_PIXELS,
               mode: str = "RGB"):
    """A PIL image in ``mode`` from an untrusted file (decoded), with the checks of :func:`open_image`."""
    with open_image(path, what, base=base, max_pixels=max_pixels) as im:
        return im.convert(mode)


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


def machine_memory_gb() -> float | None:
    """This machine's physical memory in GiB (``MemTotal``), or None where /proc/meminfo cannot tell."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_generated_fits(n_train: int, n_val: int, bytes_per_item: int, what: str, key_prefix: str = "data") -> None:
    """One line if a generated dataset (``n_train + n_val`` items, ``bytes_per_item`` at the generator's
    peak) cannot fit this machine's memory: a spec's ``train_size: 1e9`` would otherwise run until the
    kernel's OOM killer ends the process, without a word. The key named is the larger of the two sizes."""
    gb = machine_memory_gb()
    n = n_train + n_val
    if gb is None or n * bytes_per_item <= gb * 2**30:
        return
    key = f"{key_prefix}.train_size" if n_train >= n_val else f"{key_prefix}.val_size"
    fits = int(gb * 2**30 // bytes_per_item)
    raise ConfigError(f"{n:,} generated {what} (train + val) need about {n * bytes_per_item / 2**30:,.1f} GiB of "
                      f"memory; this machine has {gb:.1f} GiB: about {fits:,} fit", key=key)

