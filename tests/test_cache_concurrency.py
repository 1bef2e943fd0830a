"""Issue "Nothing lost, nothing forged", the feature cache: compaction keeps shards that another
process flushed meanwhile (one process and two real ones), shards with NaN rows or another width
are set aside and named, and a full or read-only disk is one error line."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from animefaces.errors import AnimeFacesError
from animefaces.features.cache import FeatureCache

FP = "f" * 64


def test_compaction_keeps_the_shards_another_cache_flushed_after_it_opened(tmp_path):
    """The issue's reproduction: ``a`` read the folder before ``b`` flushed; compacting ``a``
    used to merge its own (stale) index and then delete every shard, b's included."""
    a = FeatureCache(tmp_path, FP, meta={})
    assert len(a) == 0
    b = FeatureCache(tmp_path, FP, meta={})
    b_keys = [f"b{i:063d}" for i in range(10)]
    b.add(b_keys, np.ones((10, 4), np.float32))
    b.flush()
    a_keys = []
    for s in range(8):
        keys = [f"a{s}{i:062d}" for i in range(10)]
        a.add(keys, np.zeros((10, 4), np.float32))
        a.flush()
        a_keys += keys
    a.compact()
    fresh = FeatureCache(tmp_path, FP, meta={})
    assert fresh.missing(b_keys + a_keys) == []
    assert (fresh.get(b_keys) == 1).all() and (fresh.get(a_keys) == 0).all()
    assert len(list(fresh.dir.glob("shard-*.npz"))) == 1  # b's shard was merged too, then removed


def test_compaction_leaves_a_shard_flushed_while_it_runs(tmp_path, monkeypatch):
    """A shard that appears after compaction read the folder is not deleted unread."""
    import animefaces.features.cache as cache_mod

    a = FeatureCache(tmp_path, FP, meta={})
    for s in range(8):
        a.add([f"a{s}{i:062d}" for i in range(10)], np.zeros((10, 4), np.float32))
        a.flush()
    late = [f"l{i:063d}" for i in range(5)]
    real = cache_mod._write_shard

    def write_and_meanwhile_another_process_flushes(path, keys, d, chunks):
        out = real(path, keys, d, chunks)
        if len(keys) == 80:  # the merged shard (not the other's flush)
            other = FeatureCache(tmp_path, FP, meta={})
            other.add(late, np.full((5, 4), 2, np.float32))
            other.flush()
        return out

    monkeypatch.setattr(cache_mod, "_write_shard", write_and_meanwhile_another_process_flushes)
    a.compact()
    monkeypatch.setattr(cache_mod, "_write_shard", real)
    fresh = FeatureCache(tmp_path, FP, meta={})
    assert fresh.missing(late) == [] and (fresh.get(late) == 2).all() and len(fresh) == 85


_WORKER = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    from animefaces.features.cache import FeatureCache
    root, tag, rounds, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    while not os.path.exists(go):
        time.sleep(0.005)
    for r in range(rounds):
        c = FeatureCache(root, "f" * 64, meta={"feature_dim": 8}) if r % 3 == 0 else c
        keys = [f"{tag}{r:05d}{i:058d}" for i in range(7)]
        c.add(keys, np.full((7, 8), r, np.float32))
        c.flush()
        c.compact(min_shards=2)
    print("done", tag)
""")


def test_two_processes_writing_and_compacting_one_cache_lose_no_key(tmp_path):
    rounds = 40
    go = tmp_path / "go"
    import animefaces

    env = dict(os.environ, PYTHONPATH=str(Path(animefaces.__file__).resolve().parents[1]))
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(tmp_path / "cache"), tag,
                               str(rounds), str(go)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for tag in ("p", "q")]
    time.sleep(0.5)  # both imported numpy and are waiting
    go.write_text("")
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
    want = [f"{tag}{r:05d}{i:058d}" for tag in ("p", "q") for r in range(rounds) for i in range(7)]
    fresh = FeatureCache(tmp_path / "cache", FP, meta={"feature_dim": 8})
    assert fresh.missing(want) == []
    got = fresh.get(want)
    assert np.array_equal(got[:, 0], np.array([r for _ in ("p", "q") for r in range(rounds)
                                               for _ in range(7)], np.float32))
    assert not list(fresh.dir.glob(".*.tmp"))


def test_shard_with_nan_rows_is_set_aside_and_named(tmp_path, capsys):
    c = FeatureCache(tmp_path, FP, meta={})
    good = [f"g{i:063d}" for i in range(4)]
    c.add(good, np.ones((4, 3), np.float32))
    c.flush()
    # A shard with NaN rows (a foreign tool, an older bug) for keys that are also cached.
    c.dir.joinpath("shard-00000000000000000009-0000dead.npz").write_bytes(_npz(
        keys=np.array(good[:2], "S64"), features=np.array([[np.nan, 1, 1], [1, 1, 1]], np.float32)))
    capsys.readouterr()
    fresh = FeatureCache(tmp_path, FP, meta={})
    assert fresh.missing(good) == [] and np.isfinite(fresh.get(good)).all()
    err = capsys.readouterr().err
    assert "shard-00000000000000000009-0000dead.npz" in err and "NaN" in err and "moved aside" in err
    assert len(list(c.dir.glob("shard-00000000000000000009-0000dead.npz.damaged-*"))) == 1


def test_shard_of_another_width_is_set_aside_not_the_whole_cache(tmp_path, capsys):
    c = FeatureCache(tmp_path, FP, meta={"feature_dim": 3})
    keys = [f"k{i:063d}" for i in range(4)]
    c.add(keys, np.ones((4, 3), np.float32))
    c.flush()
    odd = [f"o{i:063d}" for i in range(2)]
    c.dir.joinpath("shard-00000000000000000009-0000beef.npz").write_bytes(_npz(
        keys=np.array(odd, "S64"), features=np.ones((2, 7), np.float32)))
    capsys.readouterr()
    # Without a width in the caller's meta: the one in meta.json decides.
    fresh = FeatureCache(tmp_path, FP, meta={})
    assert fresh.missing(keys + odd) == odd
    assert fresh.get(keys).shape == (4, 3)
    err = capsys.readouterr().err
    assert "0000beef" in err and "width 7" in err and "3" in err
    fresh.compact(min_shards=1)  # no "mixes feature widths; delete the folder" any more
    assert FeatureCache(tmp_path, FP, meta={}).get(keys).shape == (4, 3)


def test_nan_features_are_not_cached(tmp_path):
    c = FeatureCache(tmp_path, FP, meta={})
    feats = np.ones((3, 2), np.float32)
    feats[1, 0] = np.inf
    with pytest.raises(AnimeFacesError, match="1 of 3 feature row.*NaN or infinite.*--precision fp32"):
        c.add([f"k{i:063d}" for i in range(3)], feats)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES])
def test_cache_write_failure_is_one_error_naming_the_folder(tmp_path, monkeypatch, code):
    """Disk full (the write or its fsync fails) or a read-only folder (tests run as root, where
    chmod does not stop writes: the refusal is simulated)."""
    c = FeatureCache(tmp_path, FP, meta={})
    c.add([f"a{i:063d}" for i in range(3)], np.ones((3, 2), np.float32))
    c.flush()
    if code == errno.ENOSPC:
        def fail(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(os, "fsync", fail)
    else:
        def fail(*a, **k):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

        monkeypatch.setattr(tempfile, "mkstemp", fail)
    c.add([f"b{i:063d}" for i in range(5)], np.ones((5, 2), np.float32))
    with pytest.raises(AnimeFacesError) as info:
        c.flush()
    msg = str(info.value)
    assert str(c.dir) in msg and "5 images" in msg and "3 already cached" in msg
    assert ("ENOSPC" in msg and "free some space" in msg) if code == errno.ENOSPC else (
        "EACCES" in msg and "writable" in msg)
    assert isinstance(info.value.__cause__, OSError) and c.pending == 0
    monkeypatch.undo()
    assert len(FeatureCache(tmp_path, FP, meta={})) == 3 and not list(c.dir.glob(".*.tmp"))


def test_extract_on_a_full_disk_prints_one_line(tmp_path, tiny_dataset, monkeypatch, capsys):
    from animefaces.cli import main

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    rc = main(["extract", "--backbone", "tiny", "--weights", "random", "--data", str(tiny_dataset),
               "--cache-dir", str(tmp_path / "f"), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1, err
    assert err[0].startswith("error: cannot write a feature cache shard") and "ENOSPC" in err[0]
    assert str(tmp_path / "f") in err[0] and "Traceback" not in err[0]


def _npz(**arrays) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()
