"""`focalexp bench` and its library entry point: every model x mode, ratios, memory, outputs, bad input.

Tiny models (the focalnet_micro preset, timm's test_vit and resnet18) at 64 px, batch 2, 1 thread: the
whole file takes seconds. No assertion compares speeds: timings on a shared machine are noise.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import pytest
import torch

from focalexp.analysis import bench
from focalexp.analysis.bench import run_bench
from focalexp.analysis.memory import MEM_RSS, rss_peak_available
from focalexp.analysis.timing import paired_ratio
from focalexp.errors import ConfigError, UnknownNameError

@pytest.fixture(autouse=True, scope="module")
def _own_count_cache(tmp_path_factory):
    """GMACs are counted for real, into a cache of this module's own (not the user's)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
    mp.delenv("FOCALEXP_CACHE_DIR", raising=False)
    yield
    mp.undo()


TINY = ["--img-size", "64", "--batch-size", "2", "--rounds", "2", "--warmup", "1", "--threads", "1"]


@pytest.fixture(scope="module")
def report():
    """A FocalNet preset and a timm ViT (built for 64 px), both modes."""
    threads = torch.get_num_threads()
    rep = run_bench(["focalnet_micro", "test_vit"], img_size=64, batch_size=2, rounds=3, warmup=1, mode="both",
                    device="cpu", threads=1)
    assert torch.get_num_threads() == threads  # the run's thread count does not leak out
    return rep


def test_every_model_and_mode_has_a_result(report):
    assert [(r.name, r.mode) for r in report.results] == [
        ("focalnet_micro", "infer"), ("focalnet_micro", "train"), ("test_vit", "infer"), ("test_vit", "train")]
    for r in report.results:
        assert len(r.images_per_s) == len(r.seconds) == 3 and all(v > 0 for v in r.images_per_s)
        assert min(r.images_per_s) <= r.median <= max(r.images_per_s)
        assert r.step_ms == pytest.approx(1000 * 2 / r.median)
        assert r.batch_size == 2 and r.img_size == 64
        assert r.params > 0 and r.gmacs > 0 and r.weights_mb > 0
    assert report.get("focalnet_micro", "infer").params == 514_798  # the preset as `focalexp models` lists it
    env = report.env
    assert env["device"] == "cpu" and env["threads"] == 1 and env["precision"] == "fp32"
    assert env["torch"] == torch.__version__ and env["timm"] and env["device_name"]
    assert env["channels_last"] is False and env["compile"] is False and env["baseline"] == "focalnet_micro"


def test_ratios_first_is_one_and_others_agree_with_the_rounds(report):
    for mode in ("infer", "train"):
        first, other = report.get("focalnet_micro", mode), report.get("test_vit", mode)
        assert first.ratio == first.ratio_q1 == first.ratio_q3 == 1.0
        assert other.ratio == paired_ratio(other, first)[0]
        assert other.ratio_q1 <= other.ratio <= other.ratio_q3
        # every round's ratio is other/first images/s of that round, so the median lies within these bounds
        lo = min(other.images_per_s) / max(first.images_per_s)
        hi = max(other.images_per_s) / min(first.images_per_s)
        assert lo * (1 - 1e-9) <= other.ratio <= hi * (1 + 1e-9)


@pytest.mark.skipif(not rss_peak_available(), reason="needs Linux /proc/self/clear_refs")
def test_cpu_peak_memory_is_a_positive_rss_delta(report):
    for mode in ("infer", "train"):
        r = report.get("focalnet_micro", mode)
        assert r.mem_kind == MEM_RSS and r.peak_delta_mb > 0
        assert r.peak_mem_mb == r.peak_delta_mb  # the old attribute name still reads it
    # a training step holds activations, gradients and AdamW's state: more than inference needs
    assert report.get("focalnet_micro", "train").peak_delta_mb > report.get("focalnet_micro", "infer").peak_delta_mb
    assert report.env["memory_kind"] == MEM_RSS and "RSS" in report.env["memory_meaning"]


@pytest.mark.skipif(not rss_peak_available(), reason="needs Linux /proc/self/clear_refs")
def test_rss_delta_sees_memory_again_after_it_was_freed():
    # glibc keeps freed buffers (always, after the trainer's mallopt): without malloc_trim the second
    # measurement would reuse resident pages and read ~0. A subprocess keeps the mallopt out of this one.
    code = (
        "import ctypes, torch\n"
        "from focalexp.analysis.memory import PeakMemory\n"
        # M_MMAP_THRESHOLD and M_TRIM_THRESHOLD, as the trainer's tune_cpu_allocator sets them
        "libc = ctypes.CDLL('libc.so.6'); libc.mallopt(-3, 1 << 30); libc.mallopt(-1, 1 << 30)\n"
        "for _ in range(3):\n"
        "    mem = PeakMemory(torch.device('cpu')); mem.start()\n"
        "    ts = [torch.ones(1 << 20) for _ in range(8)]\n"  # 8 x 4 MB, touched
        "    del ts\n"
        "    print(mem.stop())\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    peaks = [float(v) for v in p.stdout.split()]
    assert len(peaks) == 3 and all(28 < v < 64 for v in peaks), peaks


def test_json_output_parses(run):
    p = run("bench", "--model", "focalnet_micro", "--model", "test_vit", *TINY, "--json")
    d = json.loads(p.stdout)
    assert [(r["name"], r["mode"]) for r in d["results"]] == [("focalnet_micro", "infer"), ("test_vit", "infer")]
    r = d["results"][1]
    for k in ("median", "min", "max", "step_ms", "peak_delta_mb", "mem_kind", "params", "gmacs", "ratio"):
        assert k in r
    assert "peak_mem_mb" not in r and "peak_memory_mb" not in r  # one name, not a run's process peak
    assert d["results"][0]["ratio"] == 1.0
    for k in ("torch", "timm", "device", "device_name", "threads", "precision", "channels_last", "compile",
              "memory_kind", "memory_meaning", "batch_size", "rounds", "warmup"):
        assert k in d["env"]
    assert d["env"]["threads"] == 1 and d["env"]["batch_size"] == 2


def test_csv_has_one_row_per_model_and_mode_and_a_cnn_from_timm(run):
    # resnet18 takes no img_size argument: it is built as is and run at 64 px
    p = run("bench", "--model", "focalnet_micro", "--model", "resnet18", *TINY, "--mode", "both", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(p.stdout)))
    assert [(r["model"], r["mode"]) for r in rows] == [
        ("focalnet_micro", "infer"), ("focalnet_micro", "train"), ("resnet18", "infer"), ("resnet18", "train")]
    for col in ("images_per_s", "images_per_s_min", "images_per_s_max", "step_ms", "peak_delta_mb", "mem_kind",
                "params", "gmacs", "ratio", "device", "precision", "threads", "torch", "timm"):
        assert col in rows[0]
    assert float(rows[0]["ratio"]) == 1.0 and float(rows[2]["ratio"]) > 0
    assert int(rows[2]["params"]) == 11_689_512
    assert float(rows[2]["gmacs"]) == pytest.approx(1.82 * (64 / 224) ** 2, rel=0.02)  # timm: 1.82 at 224


def test_table_names_every_model_and_the_conventions(run):
    p = run("bench", "--model", "focalnet_micro", "--model", "test_vit", *TINY)
    assert "focalnet_micro" in p.stdout and "test_vit" in p.stdout and "1.00x" in p.stdout
    for needle in ("img/s median [min-max]", "step ms", "peak delta MB", "params M", "GMACs", "speed ratio", "threads 1"):
        assert needle in p.stdout
    assert "not the whole-process peak" in p.stdout  # the bench figure says which peak it is
    assert p.stderr == ""  # no progress lines when stderr is not a terminal


def test_set_applies_to_presets_and_changes_gmacs(run, report):
    p = run("bench", "--model", "focalnet_micro", "--model", "test_vit", *TINY, "--set", "focal_levels=4", "--json")
    d = {r["name"]: r for r in json.loads(p.stdout)["results"]}
    assert set(d) == {"focalnet_micro (focal_levels=4)", "test_vit"}  # the timm model is left alone
    assert d["focalnet_micro (focal_levels=4)"]["gmacs"] > report.get("focalnet_micro", "infer").gmacs
    assert d["focalnet_micro (focal_levels=4)"]["params"] > report.get("focalnet_micro", "infer").params
    assert d["test_vit"]["gmacs"] == pytest.approx(report.get("test_vit", "infer").gmacs)


def test_same_model_twice_is_an_a_a_check_and_fp16_runs_on_cpu(run):
    p = run("bench", "--model", "focalnet_micro", "--model", "focalnet_micro", *TINY, "--precision", "fp16",
            "--mode", "train", "--json")
    d = json.loads(p.stdout)
    assert [r["name"] for r in d["results"]] == ["focalnet_micro", "focalnet_micro #2"]
    assert d["env"]["precision"] == "fp16" and d["env"]["autocast"] is True


def test_native_resolution_and_channels_last(run):
    # no --img-size: each model at its own resolution (focalnet_micro: 32, test_vit: 160)
    p = run("bench", "--model", "focalnet_micro", "--model", "test_vit", "--batch-size", "2", "--rounds", "1",
            "--warmup", "1", "--threads", "1", "--channels-last", "--json")
    d = json.loads(p.stdout)
    assert [r["img_size"] for r in d["results"]] == [32, 160]
    assert d["env"]["channels_last"] is True and d["env"]["img_size"] is None


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--model", "focalnet_micro", "--model", "focalnet_tiny"],
         "unknown model 'focalnet_tiny'; closest: focalnet_tiny_srf"),
        (["--model", "swin_tiny_patch4_window7_22"], "unknown model 'swin_tiny_patch4_window7_22'"),
        (["--model", "focalnet_micro", "--batch-size", "0"], "--batch-size: expected a positive integer, got 0"),
        (["--model", "focalnet_micro", "--rounds", "0"], "--rounds: expected a positive integer, got 0"),
        (["--model", "focalnet_micro", "--steps", "-1"], "--steps: expected a positive integer"),
        (["--model", "focalnet_micro", "--set", "focal_level=3"], "did you mean 'focal_levels'"),
        (["--model", "resnet18", "--set", "focal_levels=3"], "none of the models is one"),
        (["--model", "focalnet_micro", "--img-size", "60"], "--img-size: 60 is not a multiple of the network stride"),
        (["--model", "test_vit", "--img-size", "50"], "test_vit does not run at 50x50"),
        (["--model", "focalnet_micro", "--device", "tpu"], "--device: expected cpu or cuda"),
        (["--model", "focalnet_micro", "--precision", "fp8"], "invalid choice: 'fp8'"),
        (["--model", "focalnet_micro", "--json", "--format", "csv"], "not allowed with argument --json"),
        (["--batch-size", "2"], "the following arguments are required: --model"),
    ],
)
def test_bad_input_exits_2_with_one_line(run, args, needle):
    p = run("bench", *args, check_rc=2)
    assert needle in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "Traceback" not in p.stderr
    assert p.stdout == ""


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda_exits_2(run):
    p = run("bench", "--model", "focalnet_micro", "--device", "cuda", check_rc=2)
    assert "--device cuda: CUDA is not available" in p.stderr and "use --device cpu" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and p.stdout == ""


def test_everything_is_validated_before_any_model_is_built(monkeypatch):
    built = []
    monkeypatch.setattr(bench, "_build", lambda *a, **k: built.append(a) or pytest.fail("built a model"))
    with pytest.raises(UnknownNameError, match="nope_net"):
        run_bench(["focalnet_micro", "nope_net"], device="cpu")
    with pytest.raises(ConfigError, match="--rounds"):
        run_bench(["focalnet_micro", "test_vit"], device="cpu", rounds=0)
    with pytest.raises(ConfigError, match="--img-size"):
        run_bench(["test_vit", "focalnet_micro"], device="cpu", img_size=60)
    assert built == []


def test_help_shows_examples_and_defaults(run):
    p = run("bench", "--help")
    assert "examples:" in p.stdout and "focalexp bench --model focalnet_t_srf" in p.stdout
    assert "128 on cuda" in p.stdout and "16 on cpu" in p.stdout
