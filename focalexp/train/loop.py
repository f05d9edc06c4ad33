"""One training run: the paper's recipe from timm's parts, exact resume, preemption, DDP.

Run directory (rank 0 writes, every file atomically):

``config.yaml``    the resolved run config
``metrics.jsonl``  one line per epoch: train_loss, eval_loss, top1, top5, lr, images_per_s, epoch_seconds
``last.pth``       everything needed to continue exactly (weights, optimizer, scheduler, scaler, EMA, RNG
                   states, position in the epoch, metrics so far); written every epoch, every
                   ``checkpoint_every_steps`` and when the process is told to stop
``last.prev.pth``  the ``last.pth`` before it (kept by a hard link when a new one is complete): a resume
                   whose ``last.pth`` is missing, cut short or corrupt says so in one line and continues
                   from this one; when neither can be read, or ``metrics.jsonl`` records epochs but no
                   checkpoint is there, the run stops with one line naming the files (never a silent
                   restart from scratch over a run's history)
``best.pth``       the best weights so far (focalexp format: ``create_model(checkpoint=...)`` rebuilds it)
``result.json``    top1, top5, params, gmacs, train_seconds, images_per_s, peak_memory_mb, status, reason
``tb/``            TensorBoard event files (``train.trackers``, :mod:`focalexp.train.trackers`): every
                   ``train.log_every`` steps train/loss, lr, images/s, grad norm and peak memory; every
                   epoch the metrics.jsonl row; x axis: optimizer steps, continued on resume

Resuming from ``last.pth`` continues bit-identically on CPU: the batches of epoch ``e`` are a permutation
seeded by ``(seed, e)``, augmentation is seeded per item, and all RNG streams of the process are restored.
``metrics.jsonl`` is rewritten from the checkpoint resumed from, so every epoch is logged once.

A write that fails (a full disk, a quota) removes its temporary file and leaves the earlier file intact;
the run then stops with ``status: stopped`` and a one-line reason in ``result.json`` (``write_error``: the
file), so that a re-run with space continues from the last checkpoint (a sweep resubmits stopped runs).
"""

from __future__ import annotations

import errno
import json
import math
import os
import random
import signal
import sys
import time
import contextlib
import dataclasses
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
import torch.nn as nn
import yaml

from ..errors import CheckpointError, ConfigError, FocalexpError
from ..models.checkpoint import atomic_save, read_state, save_model
from .config import RunConfig
from ..fileio import atomic_write_text
from .distributed import DistInfo, all_reduce_sum, setup_distributed, teardown
from .trackers import TrackedRun, Trackers, epoch_scalars

RUN_FORMAT = "focalexp-run"


class NonFiniteLoss(RuntimeError):
    pass


class RunInterrupted(Exception):
    """The process was told to stop; ``last.pth`` holds the state to continue from."""


class CannotResume(CheckpointError):
    """The run dir holds a run's history (checkpoints, metrics) but no checkpoint of it can be read: one
    line naming the files; nothing is trained or written (exit code 2)."""


class WriteFailed(Exception):
    """Writing a file of the run dir failed (``errno``: ENOSPC for a full disk); the file is as it was."""

    def __init__(self, path: Path, error: OSError | None) -> None:
        self.path, self.error = path, error
        if error is None:  # another rank's write failed
            text = f"the first process could not write in {path}"
        elif error.errno in (errno.ENOSPC, errno.EDQUOT):
            text = f"{os.strerror(error.errno).lower()} writing {path}"
        else:
            text = f"cannot write {path} ({error.strerror or error})"
        super().__init__(text)


# ---------------------------------------------------------------------------- small helpers
def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_metrics(run_dir: Path) -> list[dict]:
    p = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.exists() else []


def process_peak_memory_mb(device: torch.device) -> float:
    """``peak_memory_mb`` of a run's ``result.json``: the most memory this process held at once, in MiB
    (2**20 bytes): on CUDA the peak of tensor memory allocated on ``device`` (``max_memory_allocated``);
    on CPU the process's maximum resident set size (``ru_maxrss``: weights, activations, the Python
    interpreter and its libraries). Not comparable across the two, nor with ``focalexp bench``, which
    measures what a model adds during its warm-up steps."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def tune_cpu_allocator() -> bool:
    """Keep large freed buffers in the process (glibc): avoids page-faulting every activation back in
    on each step, about 20% faster CPU training. Opt out with FOCALEXP_NO_MALLOPT=1."""
    if os.environ.get("FOCALEXP_NO_MALLOPT") or not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, 1 << 30) and libc.mallopt(-1, 1 << 30))  # M_MMAP_/M_TRIM_THRESHOLD
    except OSError:  # not glibc
        return False


def _rng_state() -> dict:
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


@contextlib.contextmanager
def batches(loader: torch.utils.data.DataLoader) -> Iterator:
    """``iter(loader)``, its worker processes stopped as soon as the block ends, whatever ends it. An
    error re-raised from a worker keeps the iterator in a reference cycle (through the traceback); left
    to the garbage collector, it is finalised after its queues are closed, cannot reach its workers and
    waits 5 s per worker before killing them (measured: 10 s at exit with 2 workers)."""
    it = iter(loader)
    try:
        yield it
    finally:
        shutdown = getattr(it, "_shutdown_workers", None)  # torch's own clean-up (idempotent; private)
        if shutdown is not None:
            shutdown()


def epoch_loader_generator(seed: int, epoch: int, start: int) -> torch.Generator:
    """The generator the training DataLoader of ``epoch`` draws its workers' base seed from, when it
    starts at step ``start``. Without one, a DataLoader draws that seed from torch's global RNG when
    iteration starts, and a run resumed mid-epoch would draw it at another point of the global stream than
    the uninterrupted run (drop path, the detectors' RoI sampling and multi-scale draws use that stream):
    the resume would not be exact. An epoch's first step still makes the draw the DataLoader made, so that
    runs give the numbers they gave before (the evaluation's DataLoaders, at the same points in both
    runs, keep drawing it themselves)."""
    if start == 0:
        torch.empty((), dtype=torch.int64).random_()
    return torch.Generator().manual_seed(int(seed) * 100_003 + int(epoch))


def _set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class EpochBatches(torch.utils.data.Sampler):
    """This rank's batches of epoch ``epoch``: a permutation seeded by ``(seed, epoch)`` cut into global
    batches, of which the rank takes a contiguous slice; batches before ``start`` are skipped."""

    def __init__(self, n: int, global_batch: int, info: DistInfo, seed: int, epoch: int, start: int = 0,
                 shuffle: bool = True, drop_last: bool = True):
        self.n, self.B, self.info, self.seed, self.epoch = n, global_batch, info, seed, epoch
        self.start, self.shuffle, self.drop_last = start, shuffle, drop_last

    def num_batches(self) -> int:
        return self.n // self.B if self.drop_last else math.ceil(self.n / self.B)

    def __len__(self) -> int:
        return max(0, self.num_batches() - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        w, r = self.info.world_size, self.info.rank
        for b in range(self.start, self.num_batches()):
            chunk = order[b * self.B:(b + 1) * self.B]
            per = math.ceil(len(chunk) / w)
            mine = chunk[r * per:(r + 1) * per]
            if mine:
                yield mine


class _StopSignals:
    """Turn stop signals (SIGTERM, SIGINT, and submitit's preemption signal) into a flag checked at step
    boundaries; remembers the previous handlers so submitit can requeue after the state is saved."""

    def __init__(self) -> None:
        sig_name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
        self.preempt = getattr(signal, f"SIG{sig_name}", signal.SIGUSR2)
        self.signals = [self.preempt, signal.SIGTERM, signal.SIGINT]
        self.caught: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopSignals":
        for s in self.signals:
            try:
                self.previous[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.caught is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without saving
        self.caught = signum

    def __exit__(self, *exc) -> None:
        for s, h in self.previous.items():
            signal.signal(s, h)

    def hand_over(self) -> None:
        """Call the handler that was there before ours (submitit's checkpoint + requeue), if any."""
        prev = self.previous.get(self.caught) if self.caught is not None else None
        if callable(prev) and self.caught == self.preempt:
            prev(self.caught, None)


# ---------------------------------------------------------------------------- the trainer
class Trainer:
    """One training + evaluation of a classifier, in a run dir. Subclasses replace the parts that differ
    (data and model, loss of a batch, evaluation, result: :class:`focalexp.detection.trainer.DetectionTrainer`)
    and name their config class (``config_cls``: what a DDP worker rebuilds the resolved config as)."""

    config_cls: type = RunConfig

    def __init__(self, cfg: RunConfig, out: str | os.PathLike, *, resume: str | os.PathLike | None = None,
                 progress: bool | None = None, provenance: Mapping[str, Any] | None = None):
        self.cfg = cfg
        self.provenance = provenance  # the origin to record in provenance.json (None: the caller records it)
        self.out = Path(out)
        self.resume_path = Path(resume) if resume is not None else None
        self.progress = progress

    # -- setup
    def _device(self) -> torch.device:
        want = self.cfg.train.device
        if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
            if not torch.cuda.is_available():
                raise ConfigError("train.device: cuda requested but no GPU is available")
            return torch.device("cuda")
        return torch.device("cpu")

    def _build(self) -> None:
        from timm.optim import create_optimizer_v2
        from timm.scheduler import create_scheduler_v2
        from timm.utils import ModelEmaV3

        cfg, t = self.cfg, self.cfg.train
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        if self.device.type == "cpu":  # training in this machine's memory: refuse what cannot fit it
            self._check_memory(int(os.environ.get("LOCAL_WORLD_SIZE", self.dist.world_size)))
        self._build_data_and_model()
        self.lr = t.lr * t.batch_size / t.lr_base_batch
        wd = 0.0 if t.weight_decay_mode == "official_none" else t.weight_decay
        extra = {"eps": t.opt_eps, "betas": tuple(t.betas)} if "adam" in t.opt.lower() or t.opt.lower() == "lamb" else {}
        self.optimizer = create_optimizer_v2(self.model, opt=t.opt, lr=self.lr, weight_decay=wd,
                                             filter_bias_and_bn=t.weight_decay_mode == "skip_norm_bias", **extra)
        self.steps_per_epoch = len(self.data.train) // t.batch_size  # type: ignore[arg-type]
        if self.steps_per_epoch < 1:
            raise ConfigError(f"train.batch_size: {t.batch_size} is larger than the training set "
                              f"({len(self.data.train)} images)")  # type: ignore[arg-type]
        milestones = getattr(t, "decay_milestones", None)  # multistep (a detection recipe's 8 and 11 of 12)
        self.scheduler, _ = create_scheduler_v2(
            self.optimizer, sched=t.sched, num_epochs=t.epochs, warmup_epochs=t.warmup_epochs,
            warmup_lr=t.warmup_lr, min_lr=t.min_lr, decay_epochs=t.decay_epochs, decay_rate=t.decay_rate,
            step_on_epochs=False, updates_per_epoch=self.steps_per_epoch,
            **({"decay_milestones": list(milestones)} if milestones else {}),
        )
        self._build_loss()
        self.ema = ModelEmaV3(self.model, decay=t.ema_decay) if t.ema else None
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(t.amp)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=t.amp == "fp16")
        self.net: nn.Module = self.model
        if self.dist.world_size > 1:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.find_unused_parameters)
        if t.compile:
            self.net = torch.compile(self.net)

    # -- what a task changes: its data and model, its loss, its evaluation, its result
    primary = "top1"  # the evaluation metric best.pth follows (higher is better)
    collate = None  # the DataLoader's collate_fn (None: torch's default)
    find_unused_parameters = False  # DDP

    def _check_memory(self, processes: int) -> None:
        from .config import check_memory

        check_memory(self.cfg, processes)

    def _build_data_and_model(self) -> None:
        """``self.data`` (train, val, num_classes) and ``self.model`` on ``self.device``."""
        from ..data.build import build_data
        from ..models.factory import create_model

        cfg, t = self.cfg, self.cfg.train
        self.data = build_data(cfg.data, cfg.seed, in_chans=cfg.model_config().in_chans)
        self.model = create_model(cfg.model).to(self.device)
        if t.channels_last:  # conv weights in the layout their gradients arrive in (no DDP bucket copies)
            self.model = self.model.to(memory_format=torch.channels_last)
        if t.grad_checkpointing:
            self.model.set_grad_checkpointing(True)

    def _build_loss(self) -> None:
        """``self.criterion`` and ``self.mixup`` (classification)."""
        from timm.data import Mixup
        from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

        t = self.cfg.train
        self.mixup = None
        if t.mixup > 0 or t.cutmix > 0:
            self.mixup = Mixup(mixup_alpha=t.mixup, cutmix_alpha=t.cutmix, prob=t.mixup_prob,
                               switch_prob=t.mixup_switch_prob, label_smoothing=t.smoothing,
                               num_classes=self.data.num_classes)
            self.criterion: nn.Module = SoftTargetCrossEntropy()
        elif t.smoothing > 0:
            self.criterion = LabelSmoothingCrossEntropy(t.smoothing)
        else:
            self.criterion = nn.CrossEntropyLoss()

    def _loss(self, batch: Any) -> tuple[torch.Tensor, int]:
        """The training loss of one batch (of this rank) and its number of images."""
        x, y = batch
        x, y = self._to_device(x), y.to(self.device)
        if self.mixup is not None:
            x, y = self.mixup(x, y)
        with self._autocast():
            loss = self.criterion(self.net(x), y)
        return loss, len(y)

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # -- state
    def _state(self, epoch: int, step: int) -> dict:
        return {
            "format": RUN_FORMAT, "version": 1, "config": self.cfg.to_dict(), "run_id": self.cfg.run_id,
            "experiment": self.cfg.experiment_dict(),
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "epoch": epoch, "step": step, "global_step": self.global_step, "best_top1": self.best_top1,
            "metrics": self.metrics, "running": dict(self.running), "train_seconds": self.train_seconds,
            "train_samples": self.train_samples, "rng": _rng_state(),
        }

    def _save_last(self, epoch: int, step: int) -> None:
        """``last.pth`` (the one before it kept as ``last.prev.pth``, unless it was the damaged file this run
        could not resume from); every rank stops together when rank 0's writes of this step failed."""
        last = self.out / "last.pth"
        if self.dist.is_main:
            previous = None if self._last_is_bad else previous_checkpoint(last)
            self._write(last, lambda: atomic_save(self._state(epoch, step), last, previous=previous))
            self._last_is_bad = self._last_is_bad and self._write_error is not None
        self._check_writes()
        self._saved_at = (epoch, step)

    def _write(self, path: Path, write) -> None:
        """Rank 0's ``write()`` of ``path``; an ``OSError`` (a full disk) is kept, the later writes skipped,
        and every rank stops at the next :meth:`_check_writes`."""
        if self._write_error is not None:
            return
        try:
            write()
        except OSError as e:
            self._write_error = WriteFailed(path, e)

    def _check_writes(self) -> None:
        """Raise :class:`WriteFailed` on every rank when rank 0 could not write (a barrier otherwise)."""
        failed = self._write_error is not None
        if self.dist.world_size > 1:
            flag = torch.tensor([float(failed)], dtype=torch.float64, device=self.device)
            failed = bool(all_reduce_sum(flag, self.dist).item() > 0)
        if failed:
            raise self._write_error or WriteFailed(self.out, None)

    def _load(self, st: dict) -> tuple[int, int]:
        try:
            self.model.load_state_dict(st["model"])
            self.optimizer.load_state_dict(st["optimizer"])
            self.scheduler.load_state_dict(st["scheduler"])
            self.scaler.load_state_dict(st["scaler"])
            if self.ema is not None and st["ema"] is not None:
                self.ema.load_state_dict(st["ema"])
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError, AttributeError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise ConfigError(f"--resume: '{self._resume_from}' does not fit this run ({first})") from None
        self.global_step, self.best_top1 = st["global_step"], st["best_top1"]
        self.metrics, self.running = list(st["metrics"]), dict(st["running"])
        self.train_seconds, self.train_samples = st["train_seconds"], st["train_samples"]
        _set_rng_state(st["rng"])
        return st["epoch"], st["step"]

    # -- evaluation
    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        model.eval()
        bs = self.cfg.eval.batch_size or self.cfg.train.batch_size
        sampler = EpochBatches(len(self.data.val), bs, self.dist, 0, 0, shuffle=False, drop_last=False)
        loader = torch.utils.data.DataLoader(self.data.val, batch_sampler=sampler, num_workers=self.cfg.data.workers)
        k = min(5, self.data.num_classes)
        sums = torch.zeros(4, dtype=torch.float64)
        with batches(loader) as items:
            for x, y in items:
                x, y = self._to_device(x), y.to(self.device)
                with self._autocast():
                    logits = model(x)
                loss = nn.functional.cross_entropy(logits.float(), y, reduction="sum")
                top = logits.topk(k, dim=1).indices
                sums += torch.tensor([loss.item(), (top[:, 0] == y).sum().item(),
                                      (top == y[:, None]).any(1).sum().item(), len(y)], dtype=torch.float64)
        sums = all_reduce_sum(sums.to(self.device), self.dist).cpu()
        n = max(sums[3].item(), 1.0)
        # top-5 says nothing with 5 classes or fewer (always 100): reported as None then
        top5 = 100 * sums[2].item() / n if self.data.num_classes > 5 else None
        return {"eval_loss": sums[0].item() / n, "top1": 100 * sums[1].item() / n, "top5": top5}

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.train.channels_last else x

    # -- the run
    def run(self) -> dict:
        """Train (resuming when ``last.pth`` exists), evaluate, write the run dir; returns result.json."""
        self.device = self._device()
        if self.device.type == "cpu":
            tune_cpu_allocator()
            if self.cfg.train.threads:
                torch.set_num_threads(self.cfg.train.threads)
        self.dist = setup_distributed(self.device.type)
        try:
            return self._run()
        finally:
            teardown(self.dist)

    def _run(self) -> dict:
        main = self.dist.is_main
        # everything that can fail on bad input happens before the run dir is written
        point = find_resume(self.out, self.cfg, self.resume_path)
        self._resume_from, resume = point.path, point.state
        self._last_is_bad = point.last_is_bad
        self._write_error: WriteFailed | None = None
        if point.warning and main:
            print(point.warning, file=sys.stderr, flush=True)
        self._build()
        self.global_step, self.best_top1 = 0, -1.0
        self.metrics: list[dict] = []
        self.running: dict[str, float] = {"loss_sum": 0.0, "count": 0, "seconds": 0.0, "samples": 0}
        self.train_seconds, self.train_samples = 0.0, 0
        epoch, start = 0, 0
        if resume is not None:
            epoch, start = self._load(resume)
        self._saved_at = (epoch, start) if resume is not None else None  # what the checkpoint on disk holds
        if main:
            self._write(self.out, lambda: self.out.mkdir(parents=True, exist_ok=True))
            self._write(self.out / "config.yaml", lambda: atomic_write_text(
                self.out / "config.yaml", yaml.safe_dump(self.cfg.to_dict(), sort_keys=False)))
            if resume is not None:  # epochs newer than the checkpoint (a fallback, a failed write) are dropped
                self._write(self.out / "metrics.jsonl", self._write_metrics)
            if self.provenance is not None:
                from .. import provenance

                self._write(self.out / "provenance.json", lambda: provenance.record_attempt(self.out, self.provenance))
        if main and self.progress is not False:
            c = self.cfg
            print(f"run {c.run_id}: {self._model_name()} on {c.data.dataset} ({len(self.data.train)} images), "
                  f"recipe {c.recipe}, {c.train.epochs} epochs, {self.device}, {self.dist.world_size} process(es) "
                  f"-> {self.out}", file=sys.stderr)
        result_base = self._result_base()
        if main and epoch == 0 and start == 0:
            self._write(self.out / "result.json",
                        lambda: write_json(self.out / "result.json", {**result_base, "status": "running"}))
        try:
            self._check_writes()
        except WriteFailed as e:
            return self._stopped_by(e)
        t = self.cfg.train
        stop_at = t.epochs if t.stop_after_epochs is None else min(t.epochs, epoch + t.stop_after_epochs)
        self.trackers = Trackers(t.trackers if main and epoch < stop_at else (), TrackedRun(
            self.cfg.run_id, self.out, self.cfg.to_dict(), self.global_step,
            f"{self._model_name()} {self.cfg.data.dataset} seed {self.cfg.seed} ({self.cfg.run_id})"))
        self._window = [0.0, 0, 0.0]  # loss sum, images, seconds since the trackers' last per-step log
        self._pending: tuple | None = None
        status = "failed"
        try:
            result = self._train(epoch, start, stop_at)
            status = result["status"]
            return result
        except RunInterrupted:
            status = "interrupted"
            raise
        finally:
            self.trackers.finish(status)

    def _train(self, epoch: int, start: int, stop_at: int) -> dict:
        main, t = self.dist.is_main, self.cfg.train
        try:
            with _StopSignals() as stops:
                while epoch < stop_at:
                    self._train_epoch(epoch, start, stops)
                    start = 0
                    epoch += 1
                    self._end_epoch(epoch)
        except RunInterrupted:
            result = {**self._result_base(), **self._summary(), "status": "interrupted",
                      "reason": f"stopped by signal {signal.Signals(stops.caught).name} at epoch {self._stop_epoch}; "
                                "last.pth continues the run"}
            if main:
                with contextlib.suppress(OSError):  # a full disk: last.pth is written, the rest is best effort
                    write_json(self.out / "result.json", result)
            self.trackers.finish("interrupted")
            stops.hand_over()  # submitit: checkpoint() + requeue, then exit
            raise
        except WriteFailed as e:
            return self._stopped_by(e)
        except NonFiniteLoss as e:
            result = {**self._result_base(), **self._summary(), "status": "failed", "reason": str(e)}
            if main:
                self._write(self.out / "result.json", lambda: write_json(self.out / "result.json", result))
            return result
        except FocalexpError as e:  # input found bad only once read (a damaged image): failed, and said once
            if main:
                with contextlib.suppress(OSError):
                    write_json(self.out / "result.json", {**self._result_base(), **self._summary(),
                                                          "status": "failed", "reason": str(e)})
            raise
        done = epoch >= t.epochs
        result = {**self._result_base(), **self._summary(), "status": "done" if done else "stopped",
                  "reason": "" if done else f"stop_after_epochs: paused after epoch {epoch}; run again to continue"}
        if main:
            self._write(self.out / "result.json", lambda: write_json(self.out / "result.json", result))
        try:
            self._check_writes()
        except WriteFailed as e:
            return self._stopped_by(e)
        return result

    def _stopped_by(self, e: WriteFailed) -> dict:
        """The result of a run stopped by a failed write: ``status: stopped`` (a re-run continues from the
        last checkpoint on disk), the reason in one line; result.json written if the disk still takes it."""
        if self._saved_at is None:
            keep = "no checkpoint was written: free some space and run again"
        else:
            epoch, step = self._saved_at
            at = f"after epoch {epoch}" if step == 0 else f"epoch {epoch + 1}, step {step}"
            name = self._resume_from if self._last_is_bad else self.out / "last.pth"
            keep = f"{name} ({at}) is intact: free some space and run again to continue"
        saved = self.metrics[: self._saved_at[0]] if self._saved_at else []  # what a re-run continues from
        result = {**self._result_base(), **self._summary(saved), "status": "stopped", "reason": f"{e}; {keep}",
                  "write_error": str(e.path)}
        if self.dist.is_main:
            with contextlib.suppress(OSError):
                write_json(self.out / "result.json", result)
        return result

    def _write_metrics(self) -> None:
        atomic_write_text(self.out / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in self.metrics))

    def _train_epoch(self, epoch: int, start: int, stops: _StopSignals) -> None:
        t = self.cfg.train
        if hasattr(self.data.train, "set_epoch"):
            self.data.train.set_epoch(epoch)
        sampler = EpochBatches(len(self.data.train), t.batch_size, self.dist, self.cfg.seed, epoch, start)
        loader = torch.utils.data.DataLoader(self.data.train, batch_sampler=sampler, num_workers=self.cfg.data.workers,
                                             pin_memory=self.device.type == "cuda", collate_fn=self.collate,
                                             generator=epoch_loader_generator(self.cfg.seed, epoch, start))
        self.net.train()
        show = self.dist.is_main and (self.progress if self.progress is not None else sys.stderr.isatty())
        from tqdm import tqdm

        bar = tqdm(total=self.steps_per_epoch, initial=start, desc=f"epoch {epoch + 1}/{t.epochs}", disable=not show,
                   leave=False, dynamic_ncols=True)
        step = start
        t0 = time.perf_counter()
        with batches(loader) as items:
            for batch in items:
                loss, n_batch = self._loss(batch)
                # one small collective per step: the global loss for the log, a non-finite flag and a stop
                # flag, so that every rank fails or stops at the same step
                stats = torch.tensor([loss.item() * n_batch, n_batch, 0.0 if math.isfinite(loss.item()) else 1.0,
                                      float(stops.caught is not None)], dtype=torch.float64, device=self.device)
                stats = all_reduce_sum(stats, self.dist).cpu()
                self._flush_log()  # the step logged last: its grad norm is ready now (the .cpu() above waited)
                if stats[2] > 0:
                    kept = [n for n in ("last.pth", "best.pth") if (self.out / n).exists()]
                    raise NonFiniteLoss(f"non-finite loss ({loss.item()}) at epoch {epoch + 1}, step {step + 1}; " + (
                        f"{' and '.join(kept)} hold the last good state" if kept else "no checkpoint was written yet"))
                self.scaler.scale(loss).backward()
                grad_norm = None
                if t.clip_grad:
                    self.scaler.unscale_(self.optimizer)
                    grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), t.clip_grad)
                log_now = bool(self.trackers) and (self.global_step + 1) % t.log_every == 0
                if log_now and grad_norm is None:
                    grad_norm = self._grad_norm()
                lr = self.optimizer.param_groups[0]["lr"]
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                if self.ema is not None:
                    self.ema.update(self.model, step=self.global_step)
                self.global_step += 1
                step += 1
                self.scheduler.step_update(num_updates=self.global_step)
                n = int(stats[1])
                self.running["loss_sum"] += float(stats[0])
                self.running["count"] += n
                now = time.perf_counter()
                self.running["seconds"] += now - t0
                self.running["samples"] += n
                w = self._window
                w[0], w[1], w[2] = w[0] + float(stats[0]), w[1] + n, w[2] + now - t0
                if log_now:
                    self._pending = (self.global_step, {
                        "train/loss": w[0] / max(w[1], 1), "train/lr": lr, "train/images_per_s": w[1] / max(w[2], 1e-9),
                        "system/peak_memory_mb": process_peak_memory_mb(self.device)}, grad_norm)
                    self._window = [0.0, 0, 0.0]
                t0 = now
                bar.update(1)
                bar.set_postfix(loss=f"{self.running['loss_sum'] / self.running['count']:.3f}")
                if stats[3] > 0:
                    self._flush_log()
                    self._stop_epoch = epoch + 1
                    self._save_last(epoch, step)
                    raise RunInterrupted()
                if (t.checkpoint_every_steps and self.global_step % t.checkpoint_every_steps == 0
                        and step < self.steps_per_epoch):
                    self._save_last(epoch, step)
        bar.close()

    def _grad_norm(self) -> torch.Tensor:
        """The global gradient norm (DDP has averaged the gradients), as a tensor: read at the next sync."""
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)  # scaler.step() will not unscale again
        grads = [p.grad.detach() for p in self.model.parameters() if p.grad is not None]
        if not grads:
            return torch.zeros(())
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))

    def _flush_log(self) -> None:
        """Send the per-step scalars kept at the last logging step (reading its grad norm: no extra sync
        when called after one)."""
        if self._pending is None:
            return
        step, scalars, grad_norm = self._pending
        self._pending = None
        if grad_norm is not None:
            scalars["train/grad_norm"] = grad_norm.item()
        self.trackers.log(scalars, step)

    def _end_epoch(self, epoch: int) -> None:
        """After ``epoch`` epochs: schedule, evaluate, log, checkpoint."""
        t = self.cfg.train
        self.scheduler.step(epoch)
        r = self.running
        row: dict[str, Any] = {
            "epoch": epoch, "step": self.global_step,
            "train_loss": r["loss_sum"] / max(r["count"], 1),
            "lr": self.optimizer.param_groups[0]["lr"],
            "images_per_s": r["samples"] / max(r["seconds"], 1e-9),
            "epoch_seconds": r["seconds"],
        }
        self.train_seconds += r["seconds"]
        self.train_samples += r["samples"]
        if epoch % self.cfg.eval.every_epochs == 0 or epoch == t.epochs:
            row.update(self.evaluate(self.model))
            if self.ema is not None:
                row.update({f"ema_{k}": v for k, v in self.evaluate(self.ema.module).items()})
        self.metrics.append(row)
        self._flush_log()
        self.trackers.log(epoch_scalars(row), self.global_step)
        self.running = {"loss_sum": 0.0, "count": 0, "seconds": 0.0, "samples": 0}
        p = self.primary
        if self.dist.is_main and self.progress is not False:  # one plain line per epoch (job logs, pipes)
            acc = f", {self._metric_name(p)} {row[p]:.2f}" if row.get(p) is not None else ""
            print(f"epoch {epoch}/{t.epochs}: loss {row['train_loss']:.4f}{acc}, {row['images_per_s']:.0f} img/s, "
                  f"{row['epoch_seconds']:.1f} s", file=sys.stderr, flush=True)
        if self.dist.is_main:
            self._write(self.out / "metrics.jsonl", self._write_metrics)
            if row.get(p) is not None and row[p] > self.best_top1:
                self.best_top1 = row[p]
                self._write(self.out / "best.pth", lambda: self._save_best(epoch, row))
        if row.get(p) is not None:
            self.best_top1 = max(self.best_top1, row[p])
        self._save_last(epoch, 0)

    def _model_name(self) -> str:
        return str(self.cfg.model.get("preset") or self.cfg.model.get("timm"))

    @staticmethod
    def _metric_name(key: str) -> str:
        return {"top1": "top-1", "box_ap": "box AP"}.get(key, key)

    def _save_best(self, epoch: int, row: dict) -> None:
        save_model(self.model, self.out / "best.pth", extra={"epoch": epoch, self.primary: row[self.primary]})

    # -- result
    def _result_base(self) -> dict:
        if not hasattr(self, "_base"):
            from ..models.macs import gmacs

            mcfg = self.model.config
            params = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
            self._base = {"run_id": self.cfg.run_id, "params": params, "gmacs": gmacs(mcfg),
                          "model": self.cfg.model.get("preset"), "img_size": mcfg.img_size}
        return dict(self._base)

    def _summary(self, metrics: list[dict] | None = None) -> dict:
        metrics = self.metrics if metrics is None else metrics
        last = next((m for m in reversed(metrics) if "top1" in m), {})
        peak = process_peak_memory_mb(self.device)
        return {
            "top1": last.get("top1"), "top5": last.get("top5"), "eval_loss": last.get("eval_loss"),
            "best_top1": self.best_top1 if self.best_top1 >= 0 else None,
            "epochs_done": len(metrics), "train_seconds": self.train_seconds,
            "images_per_s": self.train_samples / self.train_seconds if self.train_seconds else None,
            "peak_memory_mb": peak, "device": str(self.device), "world_size": self.dist.world_size,
            "ema_top1": last.get("ema_top1"),
        }


def _first_difference(a: Any, b: Any, key: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{key}.{k}" if key else k)
    return f"{key}: {a!r} vs {b!r}"


def train(cfg: RunConfig, out: str | os.PathLike, *, resume: str | os.PathLike | None = None,
          progress: bool | None = None, nproc: int = 1, provenance: Mapping[str, Any] | None = None,
          trainer: type[Trainer] | None = None) -> dict:
    """Run one training + evaluation; returns the result dict (also in ``out/result.json``).

    ``provenance``: record this attempt in ``out/provenance.json`` with that origin (``cwd``, ``argv``,
    ``time``) once every check passed (``focalexp train``; a sweep's job records its own).

    ``nproc`` > 1 trains on that many local processes (DDP: gloo on CPU, nccl with one GPU each); the
    run dir and ``resume`` are checked once, here, before any process starts.

    ``trainer``: the :class:`Trainer` subclass to run (default :class:`Trainer`, a classifier; ``cfg`` is
    an instance of its ``config_cls``); :func:`focalexp.detection.trainer.train_detector` passes its own."""
    from .config import check_nproc

    trainer = trainer or Trainer

    check_nproc(nproc)
    check_out_dir(cfg, Path(out))
    if nproc == 1:
        return trainer(cfg, out, resume=resume, progress=progress, provenance=provenance).run()
    from .multiprocess import train_multiprocess

    find_resume(out, cfg, resume)  # bad input answers here, once, in one line
    try:
        train_multiprocess(cfg.to_dict(), str(out), nproc, progress, None if resume is None else str(resume),
                           None if provenance is None else dict(provenance), trainer)
    except FocalexpError as e:  # found mid-run by one process; the others were stopped wherever they were
        _mark_failed(Path(out) / "result.json", str(e))
        raise
    return json.loads((Path(out) / "result.json").read_text())


def _mark_failed(path: Path, reason: str) -> None:
    """``result.json`` of a run that ended on bad input: what it says, with status failed and ``reason``."""
    from ..fileio import read_json_object

    try:
        result = read_json_object(path, "result.json")
    except ConfigError:
        result = {}
    with contextlib.suppress(OSError):
        write_json(path, {**result, "status": "failed", "reason": reason})


RESUME_KEYS = ("model", "optimizer", "scheduler", "scaler", "ema", "epoch", "step", "global_step", "best_top1",
               "metrics", "running", "train_seconds", "train_samples", "rng")


def read_run_checkpoint(path: str | os.PathLike, cfg: RunConfig, what: str = "--resume") -> dict:
    """A run's ``last.pth``, read through the allowlist and checked against ``cfg`` before anything is
    built or written: the format, the experiment (run id) and every key a resume needs. A file that is
    unreadable, cut short, refused or damaged raises :class:`CheckpointError`; one of another experiment
    a :class:`ConfigError`."""
    st = read_state(path, what)
    if not isinstance(st, dict) or st.get("format") != RUN_FORMAT:
        raise CheckpointError(f"{what}: '{path}' is not a focalexp run checkpoint (last.pth); to start from "
                              "weights alone use model.checkpoint")
    if st.get("run_id") != cfg.run_id:
        exp = st.get("experiment")
        diff = _first_difference(exp, cfg.experiment_dict()) if isinstance(exp, dict) else "no experiment recorded"
        raise ConfigError(f"{what}: '{path}' belongs to a different config ({diff})")
    missing = [k for k in RESUME_KEYS if k not in st]
    if missing:
        raise CheckpointError(f"{what}: '{path}' is damaged: it lacks {', '.join(missing)}")
    bad = [k for k, t in (("model", dict), ("optimizer", dict), ("scheduler", dict), ("scaler", dict),
                          ("epoch", int), ("step", int), ("global_step", int), ("metrics", list),
                          ("running", dict), ("rng", dict)) if not isinstance(st[k], t)]
    if bad:
        raise CheckpointError(f"{what}: '{path}' is damaged: {', '.join(bad)} has the wrong type")
    if not 0 <= st["epoch"] <= cfg.train.epochs or st["step"] < 0:
        raise CheckpointError(f"{what}: '{path}' is damaged: epoch {st['epoch']}, step {st['step']} (expected "
                              f"epoch 0..{cfg.train.epochs}, step >= 0)")
    return st


def previous_checkpoint(path: str | os.PathLike) -> Path:
    """Where the checkpoint written before ``path`` is kept: ``last.pth`` -> ``last.prev.pth``."""
    p = Path(path)
    return p.with_name(f"{p.stem}.prev{p.suffix}")


@dataclasses.dataclass
class ResumePoint:
    """What a run continues from: ``path`` and its ``state`` (None, None: from scratch). ``warning``: one
    line saying that the newer checkpoint could not be read and this older one is used; ``last_is_bad``:
    the file at the newer checkpoint's place is that damaged one (not kept as the previous checkpoint)."""

    path: Path | None = None
    state: dict | None = None
    warning: str | None = None
    last_is_bad: bool = False


def find_resume(out: str | os.PathLike, cfg: RunConfig, resume: str | os.PathLike | None = None) -> ResumePoint:
    """The checkpoint a run in ``out`` continues from: ``resume`` (``--resume``) or ``out/last.pth``; when it
    is missing, cut short, corrupt or damaged, the one before it (``last.prev.pth`` beside it) with a
    warning. Raises one line (exit code 2) when no checkpoint can be read: for ``--resume``, the error
    of that file; in the run dir, :class:`CannotResume` naming every file, also when ``metrics.jsonl``
    records trained epochs but no checkpoint is there. Nothing is written."""
    out = Path(out)
    first = Path(resume) if resume is not None else out / "last.pth"
    what = "--resume" if resume is not None else "resume"
    prev = previous_checkpoint(first)
    stop = ("not training from scratch over the run's history (move the run dir aside to start again)"
            if resume is None else "nothing to resume from")
    if resume is not None or first.exists():
        try:
            return ResumePoint(first, read_run_checkpoint(first, cfg, what))
        except CheckpointError as e:
            if not prev.exists():
                if resume is not None:
                    raise
                raise CannotResume(f"{e}; there is no {prev.name} to fall back on; {stop}") from None
            first_error = str(e)
    elif prev.exists():
        first_error = f"{what}: '{first}' is missing"
    else:
        rows = _metrics_rows(out)
        if rows:
            raise CannotResume(f"{what}: '{out / 'metrics.jsonl'}' records {rows} trained epoch(s) but there is no "
                               f"checkpoint (last.pth, {prev.name}) to continue from; {stop}")
        return ResumePoint()
    try:
        st = read_run_checkpoint(prev, cfg, what)
    except CheckpointError as e:
        raise CannotResume(f"{first_error}; and {str(e).removeprefix(what + ': ')}; {stop}") from None
    at = f"after epoch {st['epoch']}" if st["step"] == 0 else f"epoch {st['epoch'] + 1}, step {st['step']}"
    damaged_here = first.exists() and first.resolve() == (out / "last.pth").resolve()
    return ResumePoint(prev, st, f"warning: {first_error}; resuming from '{prev}' ({at}) instead",
                       last_is_bad=damaged_here)


def _metrics_rows(out: Path) -> int:
    """Lines in ``out/metrics.jsonl`` (epochs logged); unreadable counts as one (a history is there)."""
    p = out / "metrics.jsonl"
    if not p.exists():
        return 0
    try:
        return sum(1 for line in p.read_bytes().splitlines() if line.strip())
    except OSError:
        return 1


def check_out_dir(cfg: RunConfig, out: Path) -> None:
    """A run dir may only be reused by the same experiment (operational knobs may differ)."""
    from ..config import load_yaml
    from ..fileio import output_dir
    from .config import resolve_run_config

    output_dir(out, "--out")
    saved = out / "config.yaml"
    if saved.exists():
        raw = load_yaml(saved, "--out")
        if not isinstance(raw, dict):
            raise ConfigError(f"--out: '{saved}' is not a focalexp run config; choose another --out")
        resolve = getattr(cfg, "resolve_saved", None) or (lambda d: resolve_run_config(d, check_data_present=False))
        try:
            old = resolve(raw).experiment_dict()
        except FocalexpError as e:
            raise ConfigError(f"--out: '{saved}' is not a run config focalexp can read ({e}); "
                              "choose another --out") from None
        if old != cfg.experiment_dict():
            raise ConfigError(f"--out: '{out}' holds a run with a different config "
                              f"({_first_difference(old, cfg.experiment_dict())}); choose another --out")
