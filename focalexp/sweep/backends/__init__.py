"""Where a sweep's runs go: :class:`Backend` objects in a registry, keyed by the spec's ``launcher.cluster``.

The launcher, ``status``, ``cancel`` and the CLI know a backend only through this interface::

    backend = resolve_backend(spec.launcher.cluster)     # "auto": the available one ranked highest
    backend.check(spec.launcher, allow_setup=False)     # refuse what no machine of it can meet
    jobs = backend.submit(submission, runs, progress)   # through submission.send (records jobs.jsonl)
    states = backend.states(sweep, jobs, results)       # run id -> JobState, one batched poll
    backend.cancel(sweep, jobs)                         # stop queued/running jobs

Built in: ``slurm`` (:mod:`.slurm`), ``local`` (:mod:`.local`) and ``debug`` (:mod:`.debug`). Your own
backend: subclass :class:`Backend` in one module and either call ``register_backend(MyBackend())`` (a
notebook, a script) or declare an entry point, which ``focalexp sweep --cluster NAME`` finds::

    [project.entry-points."focalexp.backends"]
    ray = "mypkg.ray_backend:RayBackend"

As with tasks, a spec never names a module to import: installing a package is the act of trust.
"""

from __future__ import annotations

from typing import Any

from ...errors import ConfigError, did_you_mean
from ...plugins import Plugins
from .base import Backend, JobState

ENTRY_POINT_GROUP = "focalexp.backends"
AUTO = "auto"

def _check_name(name: str) -> None:
    if not name or not name.replace("_", "").replace("-", "").isalnum() or name == AUTO:
        raise ValueError(f"backend name {name!r}: letters, digits, '-' and '_' only, and not '{AUTO}'")


_BACKENDS: Plugins[Backend] = Plugins(Backend, ENTRY_POINT_GROUP, "launcher.cluster", {
    "slurm": "focalexp.sweep.backends.slurm:SlurmBackend", "local": "focalexp.sweep.backends.local:LocalBackend",
    "debug": "focalexp.sweep.backends.debug:DebugBackend"}, _check_name)


def register_backend(backend: Backend | type[Backend]) -> Any:
    """Add ``backend`` (an instance or a class) to the registry under its ``name``; usable as a class
    decorator. Returns what it was given for a class, the instance otherwise."""
    inst = _BACKENDS.register(backend)
    return backend if isinstance(backend, type) else inst


def backend_names() -> list[str]:
    """Every backend a spec may name (besides ``auto``): built in, registered, installed through entry points."""
    return _BACKENDS.names()


def find_backend(name: str) -> Backend | None:
    """The backend registered as ``name``, or None (no error: ``status`` reads names from jobs.jsonl)."""
    return _BACKENDS.find(name) if isinstance(name, str) else None


def get_backend(name: str) -> Backend:
    """The backend registered as ``name``; an unknown name is one line with the closest name."""
    found = find_backend(name)
    if found is None:
        names = [AUTO, *backend_names()]
        raise ConfigError(f"launcher.cluster: unknown value {name!r}{did_you_mean(str(name), names)}; "
                          f"allowed: {', '.join(names)}")
    return found


def auto_order() -> list[Backend]:
    """The backends ``auto`` may pick, the one it tries first first."""
    ranked = [b for b in map(find_backend, backend_names()) if b is not None and b.auto_rank is not None]
    return sorted(ranked, key=lambda b: -b.auto_rank)  # type: ignore[operator]


def resolve_backend(name: str) -> Backend:
    """``name`` (a spec's ``launcher.cluster``) as the backend a sweep goes to: ``auto`` is the first
    available of :func:`auto_order`; a named backend that cannot submit from here is one line saying why."""
    if name == AUTO:
        for b in auto_order():
            if b.available():
                return b
        raise ConfigError("launcher.cluster: 'auto' found no available backend")
    b = get_backend(name)
    if not b.available():
        others = [x.name for x in auto_order() if x is not b and x.available()] + [AUTO]
        raise ConfigError(f"launcher.cluster: '{b.name}' but {b.unavailable}; use "
                          + " or ".join(f"'{n}'" for n in others))
    return b


def cluster_help() -> str:
    """``--cluster``'s help: ``auto`` explained, then every backend with its description."""
    order = auto_order()
    auto = ", else ".join(f"{b.name} when {b.requires}" if b.requires else b.name for b in order)
    parts = [f"{AUTO} (default): {auto}"]
    for name in backend_names():
        b = find_backend(name)
        parts.append(f"{name}: {b.description}" if b is not None else name)
    return "where the runs go (overrides launcher.cluster). " + "; ".join(parts)


__all__ = ["Backend", "JobState", "register_backend", "get_backend", "find_backend", "backend_names",
           "resolve_backend", "auto_order", "cluster_help", "AUTO", "ENTRY_POINT_GROUP"]
