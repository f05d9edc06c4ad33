"""The on-disk count cache: a second count is read back, and nothing read back is trusted blindly."""

from __future__ import annotations

import json
import os
import stat

import pytest

from focalexp.analysis import countcache, flops
from focalexp.analysis.flops import config_flops, config_flops_table
from focalexp.models import get_preset

CFG = get_preset("focalnet_micro").config


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch):
    monkeypatch.delenv("FOCALEXP_CACHE_DIR", raising=False)
    monkeypatch.delenv("FOCALEXP_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return tmp_path / "focalexp"


def _entries(home):
    return sorted((home / "flops").glob("*.json"))


def _no_counting(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("counted again")

    monkeypatch.setattr(flops, "measure_flops", fail)
    monkeypatch.setattr(flops, "flops_table", fail)


def test_second_count_is_read_back_and_equal(cache_home, monkeypatch):
    first = config_flops(CFG, name="micro")
    (entry,) = _entries(cache_home)
    _no_counting(monkeypatch)
    again = config_flops(CFG, name="micro")
    assert again == first and list(again.by_operator) == list(first.by_operator)  # display order kept too
    assert config_flops(CFG, name="other").model == "other"  # the label is not part of the count
    no_xcheck = config_flops(CFG, cross_check=False)
    assert no_xcheck.flop_counter_gmacs is None and no_xcheck.gmacs == first.gmacs
    assert json.loads(entry.read_text())["key"]["env"]["code"] == countcache.code_digest()


def test_a_count_without_the_cross_check_does_not_answer_one_with_it(cache_home):
    a = config_flops(CFG, cross_check=False)
    b = config_flops(CFG)
    assert a.flop_counter_gmacs is None and b.flop_counter_gmacs is not None and b.gmacs == a.gmacs


def test_the_key_holds_the_config_the_resolution_and_the_code(cache_home, monkeypatch):
    config_flops(CFG, cross_check=False)
    config_flops(CFG, 64, cross_check=False)
    config_flops(CFG.replace(focal_levels=3), cross_check=False)
    assert len(_entries(cache_home)) == 3
    monkeypatch.setattr(countcache, "_CODE_DIGEST", "edited model code")
    config_flops(CFG, cross_check=False)
    assert len(_entries(cache_home)) == 4


@pytest.mark.parametrize("damage", [
    lambda d: "{not json",
    lambda d: json.dumps([1, 2]),
    lambda d: json.dumps({**d, "value": {**d["value"], "gmacs": "4.4"}}),  # a string where a number goes
    lambda d: json.dumps({**d, "value": {**d["value"], "params": True}}),
    lambda d: json.dumps({**d, "value": {**d["value"], "by_stage": {"stem": None}}}),
    lambda d: json.dumps({**d, "value": {k: v for k, v in d["value"].items() if k != "unsupported"}}),
    lambda d: json.dumps({**d, "value": {**d["value"], "extra": 1}}),
    lambda d: json.dumps({**d, "key": {**d["key"], "key": {**d["key"]["key"], "img_size": 64}}}),  # another key
    lambda d: json.dumps({**d, "value": {**d["value"], "gmacs": 1e400}}).replace("Infinity", "1e999"),
])
def test_damaged_or_foreign_entries_are_recounted(cache_home, damage):
    first = config_flops(CFG)
    (entry,) = _entries(cache_home)
    entry.write_text(damage(json.loads(entry.read_text())))
    assert config_flops(CFG) == first
    assert json.loads(entry.read_text())["value"]["gmacs"] == first.gmacs  # rewritten


def test_table_is_cached_too(cache_home, monkeypatch):
    table = config_flops_table(CFG, depth=2)
    _no_counting(monkeypatch)
    assert config_flops_table(CFG, depth=2) == table and "stages.0" in table


def test_off_switch_and_an_unwritable_directory_count_without_a_cache(cache_home, monkeypatch, tmp_path):
    monkeypatch.setenv("FOCALEXP_CACHE", "0")
    rep = config_flops(CFG, cross_check=False)
    assert not cache_home.exists()
    monkeypatch.delenv("FOCALEXP_CACHE")
    if os.geteuid() == 0:
        monkeypatch.setenv("FOCALEXP_CACHE_DIR", "/proc/focalexp-cache")  # not creatable, even for root
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
        monkeypatch.setenv("FOCALEXP_CACHE_DIR", str(ro / "cache"))
    assert config_flops(CFG, cross_check=False) == rep
    assert countcache.store("flops", {"x": 1}, {"y": 2}) is False
