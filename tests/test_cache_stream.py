"""The feature cache streams: flushed shards are not kept in memory, get() holds the result plus
about one shard, compact() copies shard by shard; the shard format stays np.savez's."""

import io
import tracemalloc

import numpy as np
import pytest

from animefaces.errors import AnimeFacesError
from animefaces.features.cache import FeatureCache

N_SHARDS, ROWS, DIM = 24, 64, 2048
SHARD_BYTES = ROWS * DIM * 4  # 512 KiB; all shards: 12 MiB
# The key -> (shard, row) index is kept (as before): allow this much per key for it.
INDEX_BYTES_PER_KEY = 512
FP = "c" * 64


def _keys(s):
    return [f"{s:04x}{i:060x}" for i in range(ROWS)]


def _rows(s):
    return np.random.default_rng(s).standard_normal((ROWS, DIM), dtype=np.float32)


def _write(root):
    """N_SHARDS shards through add/flush, as extraction writes them; returns the traced memory
    still held afterwards (numpy reports its buffers to tracemalloc)."""
    # One write and read beforehand, untraced: first-use allocations (imports, caches) aside.
    warm = FeatureCache(root, FP, meta={}, name="warm")
    warm.add(_keys(0), _rows(0))
    warm.flush()
    FeatureCache(root, FP, meta={}, name="warm").get(_keys(0))
    cache = FeatureCache(root, FP, meta={"feature_dim": DIM}, name="t")
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for s in range(N_SHARDS):
            rows = _rows(s)
            cache.add(_keys(s)[:ROWS // 2], rows[:ROWS // 2])
            cache.add(_keys(s)[ROWS // 2:], rows[ROWS // 2:])
            del rows
            cache.flush()
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    return cache, held


def _all():
    keys = [k for s in range(N_SHARDS) for k in _keys(s)]
    return keys, np.concatenate([_rows(s) for s in range(N_SHARDS)])


def test_flushed_shards_are_not_kept_in_memory(tmp_path):
    cache, held = _write(tmp_path)
    assert len(list(cache.dir.glob("shard-*.npz"))) == N_SHARDS
    # The old cache kept every flushed shard's rows (12 MiB here) besides writing them.
    bound = 2 * SHARD_BYTES + INDEX_BYTES_PER_KEY * N_SHARDS * ROWS
    assert held < bound, f"{held / 2**20:.1f} MiB still held after {N_SHARDS} flushes"
    keys, want = _all()
    assert np.array_equal(cache.get(keys), want)


@pytest.mark.parametrize("fresh", [True, False])
def test_get_holds_the_result_plus_about_one_shard(tmp_path, fresh):
    written, _ = _write(tmp_path)
    keys, want = _all()
    order = np.random.default_rng(0).permutation(len(keys))
    keys = [keys[i] for i in order]
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        # fresh: open the cache from disk (the old cache read every shard into memory here);
        # else: the same object that wrote the shards.
        cache = FeatureCache(tmp_path, FP, meta={}, name="t") if fresh else written
        assert len(cache) == N_SHARDS * ROWS
        got = cache.get(keys)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert np.array_equal(got, want[order])
    extra = peak - got.nbytes
    bound = 3 * SHARD_BYTES + INDEX_BYTES_PER_KEY * N_SHARDS * ROWS
    assert extra < bound, f"opening + get() peaked {extra / 2**20:.1f} MiB above the result"


def test_compact_copies_shard_by_shard(tmp_path):
    _write(tmp_path)
    keys, want = _all()
    cache = FeatureCache(tmp_path, FP, meta={}, name="t")
    tracemalloc.start()
    try:
        cache.compact(min_shards=2)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # The old compact held every row several times over (get(), concatenate, the zip in memory).
    bound = 4 * SHARD_BYTES + INDEX_BYTES_PER_KEY * N_SHARDS * ROWS
    assert peak < bound, f"compact() peaked at {peak / 2**20:.1f} MiB"
    shards = list(cache.dir.glob("shard-*.npz"))
    assert len(shards) == 1
    assert np.array_equal(FeatureCache(tmp_path, FP, meta={}, name="t").get(keys), want)
    with np.load(shards[0], allow_pickle=False) as z:  # still a plain np.savez file
        assert z["keys"].dtype == np.dtype("S64") and z["features"].shape == want.shape
        assert np.array_equal(z["features"], want)


def test_shards_written_by_np_savez_still_load(tmp_path):
    """Caches written before streaming (np.savez into a buffer) load unchanged."""
    cache = FeatureCache(tmp_path, FP, meta={}, name="t")
    cache.dir.mkdir(parents=True)
    buf = io.BytesIO()
    np.savez(buf, keys=np.array(_keys(0), dtype="S64"), features=_rows(0))
    (cache.dir / "shard-00000000000000000001-deadbeef.npz").write_bytes(buf.getvalue())
    assert cache.missing(_keys(0) + ["x" * 64]) == ["x" * 64]
    assert np.array_equal(cache.get(_keys(0)[::-1]), _rows(0)[::-1])


def test_new_shards_are_plain_npz(tmp_path):
    cache, _ = _write(tmp_path)
    for path in sorted(cache.dir.glob("shard-*.npz"))[:2]:
        with np.load(path, allow_pickle=False) as z:
            s = int(z["keys"][0][:4], 16)
            assert z["keys"].tolist() == [k.encode() for k in _keys(s)]
            assert np.array_equal(z["features"], _rows(s))
    assert not list(cache.dir.glob(".*.tmp"))


def _damage(path, where):
    data = bytearray(path.read_bytes())
    if where == "truncate":
        data = data[: len(data) // 2]
    else:  # flip a byte inside the feature rows: only the zip CRC can tell
        data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("where", ["truncate", "flip"])
def test_damaged_shard_is_set_aside_and_recomputed(tmp_path, where):
    _write(tmp_path)
    victim = sorted((tmp_path / f"t-{FP[:12]}").glob("shard-*.npz"))[3]
    _damage(victim, where)
    cache = FeatureCache(tmp_path, FP, meta={}, name="t")
    assert cache.missing(_keys(3) + _keys(4)) == _keys(3)
    assert len(list(victim.parent.glob(victim.name + ".damaged-*"))) == 1 and not victim.exists()
    cache.add(_keys(3), _rows(3))
    cache.flush()
    keys, want = _all()
    assert np.array_equal(FeatureCache(tmp_path, FP, meta={}, name="t").get(keys), want)


def test_shard_truncated_after_opening_is_a_clear_error(tmp_path):
    _write(tmp_path)
    cache = FeatureCache(tmp_path, FP, meta={}, name="t")
    assert len(cache) == N_SHARDS * ROWS
    victim = sorted(cache.dir.glob("shard-*.npz"))[5]
    _damage(victim, "truncate")
    with pytest.raises(AnimeFacesError, match="run again"):
        cache.get(_keys(5))
    assert len(list(victim.parent.glob(victim.name + ".damaged-*"))) == 1
    assert FeatureCache(tmp_path, FP, meta={}, name="t").missing(_keys(5)) == _keys(5)


def test_get_after_another_process_compacted(tmp_path):
    """Shards are read when wanted: if another process merged them meanwhile, get() finds the
    rows in the merged shard."""
    _write(tmp_path)
    keys, want = _all()
    mine = FeatureCache(tmp_path, FP, meta={}, name="t")
    assert len(mine) == len(keys)
    FeatureCache(tmp_path, FP, meta={}, name="t").compact(min_shards=2)
    assert np.array_equal(mine.get(keys), want)
    mine.compact(min_shards=2)  # one shard left: nothing to do
    assert len(list(mine.dir.glob("shard-*.npz"))) == 1


def test_compressed_shard_loads(tmp_path):
    """A shard written with np.savez_compressed (not ours, but valid npz) is read through
    zipfile."""
    cache = FeatureCache(tmp_path, FP, meta={}, name="t")
    cache.dir.mkdir(parents=True)
    np.savez_compressed(cache.dir / "shard-00000000000000000001-0000beef.npz",
                        keys=np.array(_keys(1), dtype="S64"), features=_rows(1))
    assert np.array_equal(cache.get(_keys(1)), _rows(1))


def test_in_memory_cache_still_works():
    cache = FeatureCache(None, FP, meta={}, name="t")
    for s in range(3):
        cache.add(_keys(s), _rows(s))
        cache.flush()
    keys = [k for s in range(3) for k in _keys(s)]
    assert np.array_equal(cache.get(keys[::-1]),
                          np.concatenate([_rows(s) for s in range(3)])[::-1])


def test_atomic_writes_get_the_usual_permissions(tmp_path):
    """Models, reports and caches are readable by whoever could read a normally written file
    (mkstemp alone would leave them 0600)."""
    import os
    import stat

    from animefaces._io import _umask, atomic_write_bytes

    atomic_write_bytes(tmp_path / "x.json", b"{}")
    mode = stat.S_IMODE(os.stat(tmp_path / "x.json").st_mode)
    assert mode == 0o666 & ~_umask(), oct(mode)
