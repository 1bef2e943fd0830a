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
