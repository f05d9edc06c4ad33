"""Unpickling files that focalexp did not write, through one allowlist: nothing imported, nothing run.

A pickle is a small program. Its only ways to reach code are the opcodes that name a global
(``GLOBAL``, ``STACK_GLOBAL``, ``INST``, ``OBJ`` and the ``EXT`` extension codes): the unpickler asks
``find_class(module, name)`` for the object and later calls it (``REDUCE``, ``NEWOBJ``) or hands it
state (``BUILD``). :class:`AllowlistUnpickler` answers ``find_class`` from a fixed table of objects
that are safe to call with any arguments (tensor rebuilders, containers, dtypes, config holders) and
refuses every other name with :class:`RefusedGlobal` *before* anything is imported or called. It never
falls back to ``pickle.Unpickler.find_class``, so not even a module's import-time code runs.

Tables (combine them with ``|``):

``PLAIN``    what pickle needs for plain data in protocols 0-2 (sets, bytes, ``OrderedDict``)
``TENSORS``  what ``torch.save`` writes for tensors, parameters and state dicts
``NUMPY``    numpy arrays, scalars and dtypes (CIFAR batches, numpy values in training checkpoints)
``CONFIGS``  config objects that checkpoints carry beside the weights: ``argparse.Namespace`` (timm)
             and yacs' ``CfgNode`` (the official FocalNet code), the latter rebuilt as :class:`ConfigNode`,
             a plain dict, without importing yacs

:func:`torch_pickle_module` packages a table as the ``pickle_module`` that ``torch.load`` accepts, with
*both* of its entry points restricted (torch's legacy reader calls ``pickle_module.load`` directly).
"""

from __future__ import annotations

import argparse
import collections
import copyreg
import io
import pickle
import types
from functools import lru_cache
from typing import IO, Any, Callable, Mapping

Table = Mapping[tuple[str, str], Any]

# names that protocol 0-2 pickles written by Python 2 use
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a global outside the allowlist; nothing of it was imported or called."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name
        super().__init__(f"global '{self.qualname}' is not allowed")

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"


class ConfigNode(dict):
    """Stands in for yacs' ``CfgNode`` (a dict subclass) so that official checkpoints load without yacs."""


class AllowlistUnpickler(pickle._Unpickler):  # the pure-Python unpickler: its opcodes can be overridden
    """An unpickler whose ``find_class`` only returns objects of ``table``, and whose ``BUILD`` (set an
    object's state) only applies to *instances* of the table's classes: a pickle cannot rewrite the
    attributes of a class or a function (``__defaults__``, class attributes) that it was allowed to name."""

    table: Table = {}

    def __init__(self, file: IO[bytes], *args: Any, table: Table | None = None, **kwargs: Any) -> None:
        super().__init__(file, *args, **kwargs)
        if table is not None:
            self.table = table
        self._buildable = tuple({v for v in self.table.values() if isinstance(v, type)})

    def find_class(self, module: str, name: str) -> Any:
        module = _PY2_MODULES.get(module, module)
        try:
            return self.table[(module, name)]
        except (KeyError, TypeError):  # TypeError: a name that is not even a string
            raise RefusedGlobal(str(module), str(name)) from None

    def load_build(self) -> None:
        inst = self.stack[-2] if len(self.stack) >= 2 else None
        if isinstance(inst, type) or not isinstance(inst, self._buildable):
            raise pickle.UnpicklingError(f"BUILD on {type(inst).__name__} is not allowed")
        super().load_build()

    def _name_line(self, encoding: str) -> str:
        line = self.readline()
        if not line.endswith(b"\n"):  # pickle would drop the last character of a cut-off name
            raise pickle.UnpicklingError("pickle data was truncated (in a global's name)")
        return line[:-1].decode(encoding)

    def load_global(self) -> None:
        module = self._name_line("utf-8")
        name = self._name_line("utf-8")
        self.append(self.find_class(module, name))

    def load_inst(self) -> None:
        module = self._name_line("ascii")
        name = self._name_line("ascii")
        klass = self.find_class(module, name)
        self._instantiate(klass, self.pop_mark())

    dispatch = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.BUILD[0]] = load_build
    dispatch[pickle.GLOBAL[0]] = load_global
    dispatch[pickle.INST[0]] = load_inst


def load(file: IO[bytes], table: Table, **kwargs: Any) -> Any:
    """``pickle.load`` through the allowlist ``table``."""
    return AllowlistUnpickler(file, table=table, **kwargs).load()


def loads(data: bytes, table: Table, **kwargs: Any) -> Any:
    return load(io.BytesIO(data), table, **kwargs)


def torch_pickle_module(table: Table) -> types.SimpleNamespace:
    """A ``pickle_module`` for ``torch.load`` whose ``Unpickler`` and ``load`` both use ``table``."""

    class Unpickler(AllowlistUnpickler):
        pass

    Unpickler.table = table

    def _load(file: IO[bytes], **kwargs: Any) -> Any:
        return Unpickler(file, **kwargs).load()

    return types.SimpleNamespace(__name__="focalexp.unpickle", Unpickler=Unpickler, load=_load,
                                 UnpicklingError=pickle.UnpicklingError)


# ---------------------------------------------------------------------------- tables
def _attrs(module: Any, modname: str, names: tuple[str, ...]) -> dict[tuple[str, str], Any]:
    return {(modname, n): getattr(module, n) for n in names if hasattr(module, n)}


_BUILTINS: dict[tuple[str, str], Any] = {
    # what pickle itself needs for plain data in protocols 0-2 (sets, bytes, ...)
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "bytearray"): bytearray,
    ("builtins", "complex"): complex,
    ("builtins", "slice"): slice,
    ("_codecs", "encode"): __import__("_codecs").encode,
    ("collections", "OrderedDict"): collections.OrderedDict,
    # copyreg._reconstructor(cls, base, state) only calls cls/base, which come from this table too
    ("copyreg", "_reconstructor"): copyreg._reconstructor,
}

_CONFIGS: dict[tuple[str, str], Any] = {
    ("argparse", "Namespace"): argparse.Namespace,
    ("yacs.config", "CfgNode"): ConfigNode,
}


@lru_cache(maxsize=None)
def _tensor_table() -> dict[tuple[str, str], Any]:
    import torch
    import torch._tensor
    import torch._utils

    table = dict(_BUILTINS)
    table.update(_attrs(torch._utils, "torch._utils", (
        "_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
        "_rebuild_parameter_with_state", "_rebuild_meta_tensor_no_storage")))
    table.update(_attrs(torch._tensor, "torch._tensor", ("_rebuild_from_type_v2",)))
    table[("torch", "Size")] = torch.Size
    table[("torch", "device")] = torch.device
    table[("torch", "Tensor")] = torch.Tensor
    table[("torch.nn.parameter", "Parameter")] = torch.nn.Parameter
    for n in dir(torch):
        v = getattr(torch, n, None)
        if isinstance(v, torch.dtype):
            table[("torch", n)] = v
    return table


@lru_cache(maxsize=None)
def _numpy_table() -> dict[tuple[str, str], Any]:
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    multiarray = core.multiarray
    table = dict(_BUILTINS)
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[(mod, "_reconstruct")] = multiarray._reconstruct
        table[(mod, "scalar")] = multiarray.scalar
    table[("numpy", "ndarray")] = np.ndarray
    table[("numpy", "dtype")] = np.dtype
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:  # numpy >= 1.25 names dtype classes numpy.dtypes.Float32DType, ...
        for n in dir(dtypes):
            v = getattr(dtypes, n)
            if isinstance(v, type) and issubclass(v, np.dtype):
                table[("numpy.dtypes", n)] = v
    return table


class _LazyTable(Mapping):
    """A table assembled on first use (so that importing this module imports neither torch nor numpy)."""

    def __init__(self, *parts: Callable[[], Mapping] | Mapping) -> None:
        self._parts = parts
        self._table: dict | None = None

    def _get(self) -> dict:
        if self._table is None:
            t: dict = {}
            for p in self._parts:
                t.update(p() if callable(p) else p)
            self._table = t
        return self._table

    def __getitem__(self, key):
        return self._get()[key]

    def __iter__(self):
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())

    def __or__(self, other: Any) -> "_LazyTable":
        return _LazyTable(*self._parts, *(other._parts if isinstance(other, _LazyTable) else (other,)))


TENSORS = _LazyTable(_tensor_table)
NUMPY = _LazyTable(_numpy_table)
PLAIN = _LazyTable(_BUILTINS)
CONFIGS = _LazyTable(_CONFIGS)
