"""Hostile files for the bad-input tests: pickles that would run code, in every format torch reads.

Every payload, if it ever ran, would create the file ``marker`` (a path the test owns); the tests check
that it never appears. The payloads cover each way a pickle reaches code: ``GLOBAL`` + ``REDUCE``
(protocols 0-5, ``STACK_GLOBAL`` from 4), ``INST`` and ``OBJ`` (protocols 0/1), the ``EXT`` extension
registry, a callable hidden inside torch's tensor rebuilders, a nested torch file, and ``BUILD``
rewriting a class it was allowed to name.
"""

from __future__ import annotations

import copyreg
import io
import os
import pickle
import struct
import zipfile
from pathlib import Path

import torch


class Reduce:
    """Pickles as ``func(*args)``."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def shell(marker: Path) -> Reduce:
    return Reduce(os.system, f"touch '{marker}'")


def py_exec(marker: Path) -> Reduce:
    return Reduce(exec, f"open({str(marker)!r}, 'w').close()")


def opcodes_inst(marker: Path) -> bytes:
    """Protocol 0: the INST opcode names and calls os.system in one step."""
    return b"(S'touch " + str(marker).encode() + b"'\nios\nsystem\n."


def opcodes_obj(marker: Path) -> bytes:
    """Protocol 1: the OBJ opcode."""
    return b"(cos\nsystem\nS'touch " + str(marker).encode() + b"'\no."


def opcodes_ext(marker: Path) -> bytes:
    """EXT1: a global named through copyreg's extension registry (left registered, the worst case)."""
    try:
        copyreg.add_extension("posix", "system", 0xF1)
    except ValueError:
        pass  # registered by an earlier case
    return b"\x80\x02\x82\xf1X" + struct.pack("<I", len(f"touch {marker}")) + f"touch {marker}".encode() + b"\x85R."


def opcodes_build_class() -> bytes:
    """BUILD on a class the allowlist names (argparse.Namespace): would set a class attribute."""
    return b"\x80\x02cargparse\nNamespace\n}X\x08\x00\x00\x00poisonedK\x01sb."


def in_tensor_rebuild(marker: Path) -> Reduce:
    """A callable hidden in torch's own rebuilder: _rebuild_from_type_v2(func, type, args, state)."""
    return Reduce(torch._tensor._rebuild_from_type_v2, os.system, torch.Tensor, (f"touch '{marker}'",), {})


def state_with(payload) -> dict:
    return {"model": {"stem.proj.weight": torch.zeros(2)}, "extra": payload}


def torch_zip(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def torch_legacy(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=False)
    return buf.getvalue()


def torch_legacy_evil_header(marker: Path) -> bytes:
    """torch's legacy layout whose sys_info record (read with pickle_module.load) is the payload."""
    magic = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
    return magic + pickle.dumps(1001, protocol=2) + pickle.dumps(shell(marker), protocol=2)


def zip_with_pickle(pkl: bytes) -> bytes:
    """A zip archive laid out as torch writes one, whose data.pkl is the given pickle."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
    return buf.getvalue()


def nested_torch_file(marker: Path) -> bytes:
    """A plain pickle whose tensor is rebuilt by torch.storage._load_from_bytes from an evil torch file."""
    inner = torch_zip(state_with(shell(marker)))
    return pickle.dumps({"w": Reduce(torch.storage._load_from_bytes, inner)}, protocol=2)


def torchscript() -> bytes:
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), buf)
    return buf.getvalue()


def evil_checkpoints(marker: Path) -> dict[str, bytes]:
    """name -> file contents; every one must be refused without creating ``marker``."""
    files = {}
    for proto in (0, 2, 4, 5):
        files[f"plain_pickle_p{proto}"] = pickle.dumps(state_with(shell(marker)), protocol=proto)
    files["plain_pickle_exec"] = pickle.dumps(state_with(py_exec(marker)), protocol=2)
    files["plain_pickle_inst"] = opcodes_inst(marker)
    files["plain_pickle_obj"] = opcodes_obj(marker)
    files["plain_pickle_ext"] = opcodes_ext(marker)
    files["plain_pickle_build_class"] = opcodes_build_class()
    files["plain_pickle_nested_torch"] = nested_torch_file(marker)
    files["torch_zip"] = torch_zip(state_with(shell(marker)))
    files["torch_zip_exec"] = torch_zip(state_with(py_exec(marker)))
    files["torch_zip_tensor_rebuild"] = torch_zip(state_with(in_tensor_rebuild(marker)))
    files["torch_legacy"] = torch_legacy(state_with(shell(marker)))
    files["torch_legacy_header"] = torch_legacy_evil_header(marker)
    files["zip_with_evil_pickle"] = zip_with_pickle(pickle.dumps(state_with(shell(marker)), protocol=2))
    files["torchscript"] = torchscript()
    return files


def cifar_root(root: Path, marker: Path) -> Path:
    """A CIFAR-10 folder whose batches are pickles that run code (torchvision reads them with pickle)."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    payload = pickle.dumps(shell(marker), protocol=2)
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                 "batches.meta"]:
        (d / name).write_bytes(payload)
    return root


# -- IDX files (Fashion-MNIST): valid tiny ones and every way one can lie

FASHION_NAMES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                 "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def idx_bytes(array, *, type_code: int = 0x08, dims: tuple[int, ...] | None = None, zero: bytes = b"\0\0") -> bytes:
    """An IDX file of ``array`` (uint8): ``00 00 TT NN``, big-endian sizes (``dims`` may lie), the data."""
    import numpy as np

    a = np.ascontiguousarray(array, dtype=np.uint8)
    dims = a.shape if dims is None else dims
    return zero + bytes([type_code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + a.tobytes()


def gz(data: bytes) -> bytes:
    import gzip

    return gzip.compress(data, mtime=0)


def fashion_arrays(n: int, seed: int = 0):
    """``n`` random 28 x 28 images and labels 0-9."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), (np.arange(n) % 10).astype(np.uint8)


def fashion_root(root: Path, n_train: int = 40, n_val: int = 20, compress: bool = True,
                 replace: dict[str, bytes] | None = None) -> Path:
    """A Fashion-MNIST folder of small valid IDX files (gzip'd or raw); ``replace``: file name -> contents
    (a name without ``.gz`` replaces the file whichever way it is stored)."""
    root.mkdir(parents=True, exist_ok=True)
    replace = replace or {}
    for split, n in (("train", n_train), ("val", n_val)):
        x, y = fashion_arrays(n, seed=0 if split == "train" else 1)
        for name, arr in zip(FASHION_NAMES[split], (x, y)):
            data = replace.get(name, idx_bytes(arr))
            (root / (f"{name}.gz" if compress else name)).write_bytes(gz(data) if compress and name not in replace
                                                                       else data)
    return root


def gzip_claiming(declared_items: int, actual: bytes = b"") -> bytes:
    """A small gzip'd images file whose header declares ``declared_items`` 28 x 28 images (a bomb's promise)."""
    return gz(struct.pack(">4I", 0x00000803, declared_items, 28, 28) + actual)


def gzip_bomb(n_declared: int = 2, inflated: int = 64 << 20) -> bytes:
    """A valid header for ``n_declared`` images followed by ``inflated`` zero bytes: tiny on disk, huge inflated."""
    import zlib

    head = struct.pack(">4I", 0x00000803, n_declared, 28, 28)
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = [c.compress(head)]
    block = bytes(1 << 20)
    for _ in range(inflated >> 20):
        out.append(c.compress(block))
    out.append(c.flush())
    return b"".join(out)


# -- images

def png_bomb(width: int, height: int) -> bytes:
    """A real greyscale PNG of ``width x height`` zero pixels: a few hundred KB that decode to
    ``width * height`` bytes (PIL's own ``save`` of such an image takes ~10 s; this ~1 s)."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    packer = zlib.compressobj(9)
    row = bytes(1 + width)  # the row's filter byte (none) and its pixels
    body = b"".join(packer.compress(row * 256) for _ in range(height // 256))
    body += packer.compress(row * (height % 256)) + packer.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", body) + chunk(b"IEND", b""))
