"""`focalexp viz`: every kind of figure from the command line, and its one-line errors."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mpimg
import pytest

from focalexp.analysis.images import PHOTO_DIR
from focalexp.cli import main
from focalexp.models import create_model, save_model


def _not_blank(path) -> None:
    img = mpimg.imread(path)
    assert img.shape[0] > 150 and img[..., :3].std() > 0.05


@pytest.mark.parametrize("what,extra", [
    ("modulator", []),
    ("gates", ["--shared-scale"]),
    ("context", ["--block", "0"]),
    ("kernels", []),
    ("erf", ["--levels", "1", "3"]),
])
def test_viz_writes_each_figure(tmp_path, capsys, what, extra):
    out = tmp_path / f"{what}.png"
    rc = main(["viz", "--model", "focalnet_micro", "--what", what, "--img-size", "64",
               "--image", str(PHOTO_DIR / "cat.jpg"), "--out", str(out), *extra])
    assert rc == 0
    _not_blank(out)
    assert "random weights" in capsys.readouterr().out


def test_viz_from_a_focalexp_checkpoint_with_default_photos(tmp_path, capsys):
    ck = tmp_path / "best.pth"
    save_model(create_model("focalnet_micro", focal_levels=3), ck)
    out = tmp_path / "mod.pdf"
    assert main(["viz", "--checkpoint", str(ck), "--what", "kernels", "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"%PDF"
    assert "best.pth" in capsys.readouterr().out


@pytest.mark.slow
def test_viz_compare_with_swin_and_vit(tmp_path):
    out = tmp_path / "cmp.png"
    assert main(["viz", "--model", "focalnet_t_srf", "--what", "compare", "--image",
                 str(PHOTO_DIR / "coffee.jpg"), "--out", str(out)]) == 0
    _not_blank(out)


@pytest.mark.parametrize("args,message", [
    (["--what", "gates", "--out", "{tmp}/x.txt"], "--out: "),
    (["--what", "gates", "--set", "gating=none", "--out", "{tmp}/x.png"], "has no gates"),
    (["--what", "gates", "--set", "gatin=none", "--out", "{tmp}/x.png"], "gatin"),
    (["--what", "modulator", "--block", "stages.9", "--out", "{tmp}/x.png"], "no focal modulation named 'stages.9'"),
    (["--what", "modulator", "--image", "{tmp}/missing.jpg", "--out", "{tmp}/x.png"], "no such file"),
    (["--what", "modulator", "--levels", "2", "--out", "{tmp}/x.png"], "--levels: applies to --what erf only"),
    (["--what", "modulator", "--checkpoint", "{tmp}/none.pth", "--out", "{tmp}/x.png"], "--checkpoint: no such file"),
    (["--what", "compare", "--baseline", "resnet18", "--out", "{tmp}/x.png"], "neither a timm ViT nor a timm Swin"),
])
def test_viz_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    rc = main(["viz", "--model", "focalnet_micro", "--img-size", "64", *args])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not list(tmp_path.glob("x.*"))


def test_viz_unknown_model_suggests_the_closest_preset(tmp_path, capsys):
    assert main(["viz", "--model", "focalnet_mikro", "--what", "kernels", "--out", str(tmp_path / "k.png")]) == 2
    assert "focalnet_micro" in capsys.readouterr().err
