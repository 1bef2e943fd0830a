"""Issue "Nothing lost, nothing forged": damaged caches, hostile report inputs, bad config values,
special files, manifest paths outside their folder, decompression bombs, batch sizes, skipped
images that empty a split, and run folders left by failed sweeps."""

from __future__ import annotations

import json
import os
import struct
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from animefaces.errors import AnimeFacesError, BadImageError, ConfigError, DatasetError

from conftest import face_image, make_dataset, noface_image, tiny_config


# -- damaged caches: set aside and rebuilt ----------------------------------------------------------
def test_set_aside_renames_and_says_so(tmp_path, capsys):
    from animefaces._io import set_aside

    f = tmp_path / "x.npz"
    f.write_bytes(b"junk")
    moved = set_aside(f, "BadZipFile: File is not a zip file", what="image-stats cache")
    err = capsys.readouterr().err
    assert not f.exists() and moved.is_file() and moved.name.startswith("x.npz.damaged-")
    assert err.count("\n") == 1 and "image-stats cache" in err and str(f) in err
    assert "BadZipFile" in err and moved.name in err
    assert set_aside(f, "gone already") is None  # another process moved it: no error


def _stats_files(tmp_path, n=3):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        p = tmp_path / f"img{i}.png"
        face_image(rng).save(p)
        out.append(p)
    return out


def test_truncated_image_stats_cache_is_set_aside_and_rebuilt(tmp_path, capsys):
    from animefaces.ood import STATS_VERSION, stats_for_files

    files = _stats_files(tmp_path)
    cache = tmp_path / "features" / "image-stats"
    first = stats_for_files(files, cache_dir=cache, n_jobs=1)
    cache_file = cache / f"image-stats-v{STATS_VERSION}.npz"
    data = cache_file.read_bytes()
    cache_file.write_bytes(data[: len(data) // 2])  # truncated: zipfile.BadZipFile on load
    again = stats_for_files(files, cache_dir=cache, n_jobs=1)
    np.testing.assert_allclose(again, first)
    err = capsys.readouterr().err
    assert "image-stats cache" in err and "damaged" in err
    aside = list(cache.glob(f"image-stats-v{STATS_VERSION}.npz.damaged-*"))
    assert len(aside) == 1 and aside[0].stat().st_size == len(data) // 2
    with np.load(cache_file) as z:  # rebuilt whole
        assert len(z["keys"]) == 3
    # a file of the right format but the wrong shapes is foreign: also set aside
    np.savez(cache_file, keys=np.array(["a", "b"]), stats=np.zeros((2, 3)))
    np.testing.assert_allclose(stats_for_files(files, cache_dir=cache, n_jobs=1), first)
    assert len(list(cache.glob("*.damaged-*"))) == 2


def test_damaged_hash_index_is_set_aside_with_one_line(tmp_path, capsys):
    from animefaces.fileindex import INDEX_NAME, HashIndex

    (tmp_path / INDEX_NAME).write_bytes(b"PK\x03\x04 truncated")
    idx = HashIndex(tmp_path)
    assert idx.get("x") is None
    assert "file-hash index" in capsys.readouterr().err
    assert len(list(tmp_path.glob(INDEX_NAME + ".damaged-*"))) == 1
    idx.put("/c|1|2|3|4", "cd")
    idx.save()
    assert HashIndex(tmp_path).get("/c|1|2|3|4") == "cd"


# -- config values: types and ranges, named ---------------------------------------------------------
_GRID = [{"kernel": "poly", "C": [1.0], "degree": [2]}]


@pytest.mark.parametrize("section, key, value, match", [
    ("svm", "cache_size", -5, r"svm.cache_size: must be a finite number > 0.*got -5"),
    ("svm", "cache_size", float("nan"), r"svm.cache_size: must be a finite number > 0.*got nan"),
    ("svm", "seed", "x", r"svm.seed: must be an integer from 0 to 2\*\*32 - 1, got 'x'"),
    ("svm", "seed", -1, r"svm.seed: .*got -1"),
    ("svm", "n_jobs", True, r"svm.n_jobs = True"),
    ("features", "cache_dir", 123, r"features.cache_dir: must be a non-empty string.*got 123"),
    ("features", "device", "", r"features.device: must be a non-empty string"),
    ("output", "reports_dir", ["r"], r"output.reports_dir: must be a non-empty string"),
    ("output", "models_dir", 1.5, r"output.models_dir: must be a non-empty string"),
    ("features", "skip_bad", "false", r"features.skip_bad: must be true or false.*got 'false'"),
    ("features", "skip_bad", 1, r"features.skip_bad: must be true or false.*got 1"),
    ("features", "batch_size", 100000, r"features.batch_size = 100000: above the limit of 4096.*GB"),
    ("features", "batch_size", -3, r"features.batch_size = -3: use an integer from 1 to 4096"),
    ("features", "batch_size", "8", r"features.batch_size = '8'"),
])
def test_config_values_are_checked_and_named(section, key, value, match):
    from animefaces.config import config_from_dict

    raw = {"svm": {"grid": _GRID}, section: {key: value}}
    if section == "svm":
        raw["svm"] = {"grid": _GRID, key: value}
    with pytest.raises(ConfigError, match=match):
        config_from_dict(raw)


@pytest.mark.parametrize("key, value, match", [
    ("C", float("nan"), r"svm.grid\[0\].C: must be a finite number > 0, got nan"),
    ("C", 0, r"svm.grid\[0\].C: must be a finite number > 0, got 0"),
    ("C", True, r"svm.grid\[0\].C: .*got True"),
    ("gamma", float("inf"), r"svm.grid\[0\].gamma: must be 'scale', 'auto' or a finite number > 0, got inf"),
    ("degree", 1000, r"svm.grid\[0\].degree: must be an integer from 1 to 100.*got 1000"),
    ("degree", 2.5, r"svm.grid\[0\].degree: .*got 2.5"),
    ("coef0", "abc", r"svm.grid\[0\].coef0: must be a finite number, got 'abc'"),
    ("coef0", float("nan"), r"svm.grid\[0\].coef0: must be a finite number, got nan"),
])
def test_grid_values_are_checked_and_named(key, value, match):
    from animefaces.config import config_from_dict

    with pytest.raises(ConfigError, match=match):
        config_from_dict({"svm": {"grid": [{"kernel": "poly", key: value}]}})


def test_grid_must_be_tables_and_toml_nan_is_refused(tmp_path):
    from animefaces.config import config_from_dict, load_config

    with pytest.raises(ConfigError, match="svm.grid must be a list of tables"):
        config_from_dict({"svm": {"grid": [1]}})
    p = tmp_path / "c.toml"
    p.write_text('[svm]\ncache_size = -5\n[[svm.grid]]\nkernel = "rbf"\nC = [nan]\n')
    with pytest.raises(ConfigError, match=f"config {p}: svm.cache_size"):
        load_config(p)
    # the shipped configs still load
    assert load_config("default").grid and load_config("paper").grid


def test_huge_batch_size_is_refused_in_one_place(tmp_path, tiny_dataset, capsys):
    from animefaces.cli import main
    from animefaces.extract import FeatureExtractor

    with pytest.raises(ConfigError, match=r"batch size = 100000: above the limit of 4096; .*GB"):
        FeatureExtractor("tiny", weights="random", batch_size=100000)
    with pytest.raises(ConfigError, match=r"batch size = 0"):
        FeatureExtractor("tiny", weights="random", batch_size=0)
    assert FeatureExtractor("tiny", weights="random", batch_size=4096).settings.batch_size == 4096
    rc = main(["extract", "--backbone", "tiny", "--weights", "random", "--data", str(tiny_dataset),
               "--cache-dir", str(tmp_path / "f"), "--batch-size", "100000", "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "above the limit of 4096" in err and "Traceback" not in err
