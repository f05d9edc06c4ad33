"""IDX files (the MNIST family's format), read as untrusted input: the header is checked before a byte of
data is trusted, and nothing is allocated from a size the file declares without checking it first.

An IDX file is ``00 00 TT NN`` (``TT``: element type, ``NN``: number of dimensions), then ``NN``
big-endian uint32 sizes, then the elements in C order. It may be stored raw or gzip-compressed (the
gzip magic ``1f 8b`` tells which). The checks, each a one-line :class:`~focalexp.errors.ConfigError`
naming ``data.root`` and the file:

- the magic: two zero bytes, an element type we read (uint8 only: ``0x08``) and the expected rank;
- the sizes: none zero, each within the caller's limits (e.g. 28 x 28 images, at most a million items);
- the length: a raw file holds exactly header + payload bytes; a gzip file's trailer (ISIZE, the length
  mod 2**32) agrees, and the declared payload is no more than deflate can produce from the compressed
  bytes (1032:1 at best), so a small file that declares gigabytes is refused before anything is inflated;
- reading inflates at most header + payload + 1 bytes (a gzip bomb stops there), needs exactly
  header + payload, and lets gzip verify its CRC at the end.

Header checks are stdlib-only (a sweep checks its data without importing numpy or torch) and cached per
file (path, size, mtime); :func:`read_idx` returns a NumPy array.
"""

from __future__ import annotations

import functools
import gzip
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from ..errors import ConfigError

UBYTE = 0x08
GZIP_MAGIC = b"\x1f\x8b"
DEFLATE_MAX_RATIO = 1032  # deflate's best case: 258 bytes from a 2-bit code (about 1032:1)


@dataclass(frozen=True)
class IdxHeader:
    shape: tuple[int, ...]
    gzipped: bool
    header_bytes: int

    @property
    def payload_bytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def _bad(path: Path, why: str, key: str) -> ConfigError:
    return ConfigError(f"'{path}' is not a valid IDX file ({why})", key=key)


def _open(path: Path, gzipped: bool):
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def check_header(path: str | os.PathLike, ndim: int, dims: Sequence[Optional[int]], max_items: int,
                 key: str = "data.root") -> IdxHeader:
    """The header of the uint8 IDX file ``path``, checked: rank ``ndim``; ``dims[i]`` the required size of
    dimension ``i`` (None: any size from 1 to ``max_items`` for the first); lengths as described above."""
    p = Path(path)
    st = p.stat()
    return _check_header(str(p), st.st_size, st.st_mtime_ns, st.st_ino, ndim, tuple(dims), max_items, key)


@functools.lru_cache(maxsize=256)
def _check_header(path: str, size: int, mtime_ns: int, ino: int, ndim: int, dims: tuple, max_items: int,
                  key: str) -> IdxHeader:
    p = Path(path)
    gzipped = False
    try:
        with open(p, "rb") as f:
            gzipped = f.read(2) == GZIP_MAGIC
        with _open(p, gzipped) as f:
            head = f.read(4)
            if len(head) < 4:
                raise _bad(p, f"{len(head)} bytes, shorter than the 4-byte magic", key)
            if head[:2] != b"\0\0":
                raise _bad(p, f"magic {head.hex()} does not start with 0000", key)
            if head[2] != UBYTE:
                raise _bad(p, f"element type 0x{head[2]:02x}, expected 0x08 (unsigned bytes)", key)
            if head[3] != ndim:
                raise _bad(p, f"{head[3]} dimensions, expected {ndim}", key)
            raw = f.read(4 * ndim)
            if len(raw) < 4 * ndim:
                raise _bad(p, "cut off inside the header", key)
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise _bad(p, f"unreadable{' gzip' if gzipped else ''} header: {type(e).__name__}", key) from None
    shape = struct.unpack(f">{ndim}I", raw)
    for i, (got, want) in enumerate(zip(shape, dims)):
        if got == 0:
            raise _bad(p, f"dimension {i} is 0", key)
        if want is not None and got != want:
            raise _bad(p, f"dimension {i} is {got}, expected {want}", key)
    if shape[0] > max_items:
        raise _bad(p, f"declares {shape[0]:,} items, more than the {max_items:,} allowed", key)
    hdr = IdxHeader(shape, gzipped, 4 + 4 * ndim)
    total = hdr.header_bytes + hdr.payload_bytes
    if not gzipped:
        if size != total:
            raise _bad(p, f"{size:,} bytes, but its header declares {'x'.join(map(str, shape))} "
                          f"= {total:,} bytes", key)
        return hdr
    if total > size * DEFLATE_MAX_RATIO:
        raise _bad(p, f"declares {total:,} bytes, more than a {size:,}-byte gzip file can hold", key)
    with open(p, "rb") as f:
        f.seek(max(size - 4, 0))
        isize = struct.unpack("<I", f.read(4).rjust(4, b"\0"))[0]
    if isize != total % 2**32:
        raise _bad(p, f"gzip says it inflates to {isize:,} bytes, its header declares {total:,}; "
                      "truncated or corrupt", key)
    return hdr


def read_idx(path: str | os.PathLike, ndim: int, dims: Sequence[Optional[int]], max_items: int,
             key: str = "data.root"):
    """The uint8 array of a checked IDX file (shape from its header); see :func:`check_header`."""
    import numpy as np

    p = Path(path)
    hdr = check_header(p, ndim, dims, max_items, key)
    total = hdr.header_bytes + hdr.payload_bytes
    try:
        with _open(p, hdr.gzipped) as f:
            data = f.read(total + 1)  # at most one byte more than declared: a bomb stops here
            if len(data) == total and hdr.gzipped:
                f.read(1)  # reach the end: gzip checks its CRC and length there
    except (OSError, EOFError, zlib.error) as e:
        raise _bad(p, f"corrupt or truncated {'gzip ' if hdr.gzipped else ''}data: {type(e).__name__}", key) from None
    if len(data) != total:
        raise _bad(p, f"{'inflates to ' if hdr.gzipped else ''}{len(data):,}{'+' if len(data) > total else ''} "
                      f"bytes, but its header declares {total:,}", key)
    return np.frombuffer(data, np.uint8, offset=hdr.header_bytes).reshape(hdr.shape)
