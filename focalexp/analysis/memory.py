"""Peak memory of a piece of work, above what the process held before it: :class:`PeakMemory`.

Two different numbers are called "peak memory" in focalexp. They answer different questions and must not
be compared with each other:

``peak_delta_mb`` (``focalexp bench``, :class:`PeakMemory`): what the measured steps need
    The peak during a model's warm-up steps *minus* what the process held just before them, in MiB
    (2**20 bytes). The weights (and anything else alive before the warm-up) are left out; they are
    reported as ``weights_mb``. Its kind, ``mem_kind``, says what was measured:

    - ``cuda_allocator_peak``: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``,
      less ``memory_allocated`` at the start. Tensors only: the caching allocator's reserved-but-free
      blocks and the CUDA context are not in it.
    - ``cpu_rss_delta``: the process's peak resident set (``VmHWM``, reset through
      ``/proc/self/clear_refs``) less its resident set at the start, anonymous pages only (file-backed and
      shared pages, e.g. library code a first call pages in, are subtracted). Memory freed before the
      start is returned to the OS first (``gc.collect``, ``malloc_trim``) so that reused pages are not
      missed. Approximate: the allocator's reuse makes it vary by about +-20% run to run. Linux only.
    - ``unavailable``: not measured (a CPU without a writable ``/proc/self/clear_refs``).

``peak_memory_mb`` (a training or measure run's ``result.json``): what the whole process needed
    The high-water mark of the process since it started, everything included (weights, optimizer
    state, activations, data-loader buffers of the main process, the interpreter and its libraries): on
    CPU ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (resident set, KiB on Linux, divided by 1024); on
    CUDA ``torch.cuda.max_memory_allocated`` of the run's device since the process started (tensors
    only). Data-loader worker processes are not in it; in a DDP run it is the reporting rank's. Written by
    ``focalexp.train.loop.process_peak_memory_mb``; see :data:`PROCESS_PEAK_MEANING`.

The first is a difference over a few steps with the weights left out, the second an absolute maximum
over a whole run with everything in: they answer different questions and are never compared.
"""

from __future__ import annotations

import gc
import sys

import torch

MEM_CUDA = "cuda_allocator_peak"
MEM_RSS = "cpu_rss_delta"
MEM_NONE = "unavailable"
MEM_MEANING = {
    MEM_CUDA: "CUDA allocator peak during warm-up, above the memory allocated before it (weights excluded)",
    MEM_RSS: "process peak RSS during warm-up minus RSS just before it, anonymous memory (library code paged in "
             "is left out; Linux /proc; weights excluded; allocator reuse makes it approximate, +-20% run to run)",
    MEM_NONE: "not measured (CPU without a writable /proc/self/clear_refs)",
}
MEM_SHORT = {MEM_CUDA: "CUDA alloc", MEM_RSS: "RSS delta", MEM_NONE: "n/a"}

# what a run's result.json reports as peak_memory_mb (focalexp.train.loop, focalexp.analysis.measure)
PROCESS_PEAK_MEANING = {
    "cpu": "the process's peak resident set since it started (ru_maxrss), everything included",
    "cuda": "torch.cuda.max_memory_allocated of the run's device since the process started (tensors only)",
}


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _status(*keys: str) -> dict[str, int]:
    """Fields of /proc/self/status in kB (those present)."""
    out: dict[str, int] = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in keys:
                    out[k] = int(v.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return out


def _anon_kb(s: dict[str, int], rss_key: str) -> int | None:
    """Anonymous memory: ``rss_key`` (VmRSS or VmHWM) less file-backed and shared pages (the libraries'
    code that a first call pages in); the whole of it on kernels without the split (< 4.5)."""
    if rss_key not in s:
        return None
    return s[rss_key] - s.get("RssFile", 0) - s.get("RssShmem", 0)


def _reset_peak_rss() -> bool:
    """Reset the process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _malloc_trim() -> None:
    """Give memory freed to glibc back to the OS, so that the next RSS delta sees every page it touches."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


_RSS_OK: bool | None = None


def rss_peak_available() -> bool:
    """Whether this process can measure a CPU peak-RSS delta (Linux with a writable /proc/self/clear_refs)."""
    global _RSS_OK
    if _RSS_OK is None:
        _RSS_OK = "VmHWM" in _status("VmHWM") and _reset_peak_rss()
    return _RSS_OK


class PeakMemory:
    """Peak memory of what runs between :meth:`start` and :meth:`stop`, above what was held at start (MiB).

    CUDA: the caching allocator's peak (``max_memory_allocated``). CPU: the process's peak RSS minus its
    RSS at start, anonymous pages only (library code paged in by a first call is not the model's), or None
    where ``/proc`` cannot do it (``kind`` says which: ``MEM_CUDA``, ``MEM_RSS`` or ``MEM_NONE``).
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = MEM_CUDA if device.type == "cuda" else (MEM_RSS if rss_peak_available() else MEM_NONE)
        self._base = 0

    def start(self) -> None:
        gc.collect()
        if self.kind == MEM_CUDA:
            sync(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        elif self.kind == MEM_RSS:
            _malloc_trim()
            _reset_peak_rss()
            self._base = _anon_kb(_status("VmRSS", "RssFile", "RssShmem"), "VmRSS") or 0

    def stop(self) -> float | None:
        sync(self.device)
        if self.kind == MEM_CUDA:
            return (torch.cuda.max_memory_allocated(self.device) - self._base) / 2**20
        if self.kind == MEM_RSS:
            # file-backed pages only grow during the warm-up: subtracting the final count leaves the anonymous peak
            peak = _anon_kb(_status("VmHWM", "RssFile", "RssShmem"), "VmHWM")
            return None if peak is None else max(0, peak - self._base) / 1024
        return None
