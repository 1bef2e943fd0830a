"""Cached features read a chunk at a time, for training on more rows than fit in memory.

:class:`CachedRows` is a read-only view of some keys of a :class:`~.cache.FeatureCache`, in the
given order, that hands out float64 chunks (the protocol of
:mod:`animefaces.classify.scalable`: ``len()``, ``n_features``, ``chunk(start, stop)``,
``take(indices)``). Each chunk memory-maps the shards it needs (uncompressed ``np.savez``
members: the rows lie in the file as they are), copies its rows and unmaps them again, so the
process holds one chunk, not the cache: 500,000 x 1,280 float32 features are 2.6 GB on disk and
a 16,384-row chunk is 168 MB in float64.

:meth:`CachedRows.subset` gives the rows of a split or a fold as another view (no feature is
read), which is how a streamed sweep (``[svm] stream``) hands its splits and folds around.
A shard that another process merged away meanwhile (``FeatureCache.compact``) is found again:
the view keeps its keys and reads the cache folder's index anew.
"""

from __future__ import annotations

import numpy as np

from .cache import _FEATURE_DTYPE


class CachedRows:
    """Rows of ``cache`` for ``keys`` (every key must be cached), in that order.

    Raises:
        KeyError: some keys are not in the cache (how many, and where it is).
    """

    def __init__(self, cache, keys):
        self._cache = cache
        self._keys = np.asarray(list(keys), dtype=object)
        self._resolve()

    def _resolve(self) -> None:
        cache, keys = self._cache, self._keys
        cache._load()
        lost = [k for k in keys if k not in cache._index]
        if lost:
            raise KeyError(f"{len(lost)} of {len(keys)} feature(s) not in cache {cache.dir}")
        self._where = np.array([cache._index[k] for k in keys], dtype=np.int64).reshape(-1, 2)
        # The shard list these (shard, row) pairs index: reading the cache again makes a new one.
        self._shards = cache._shards
        dims = {self._shards[a].d for a in np.unique(self._where[:, 0]).tolist()}
        if len(dims) > 1:
            raise ValueError(f"feature cache {cache.dir} mixes feature widths {sorted(dims)}")
        self._d = dims.pop() if dims else int(cache.meta.get("feature_dim", 0))

    def __len__(self) -> int:
        return len(self._where)

    def __repr__(self) -> str:
        return f"CachedRows({len(self)} x {self._d} from {self._cache.dir})"

    @property
    def n_features(self) -> int:
        return self._d

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self), self._d)

    @property
    def keys(self) -> list[str]:
        return self._keys.tolist()

    def subset(self, indices) -> "CachedRows":
        """The rows at ``indices`` (ints, or a bool mask of len(self)) as a view: nothing is read."""
        idx = np.asarray(indices)
        if idx.dtype == bool:
            if len(idx) != len(self):
                raise ValueError(f"mask of {len(idx)} for {len(self)} rows")
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64)
        view = object.__new__(CachedRows)
        view._cache, view._d, view._shards = self._cache, self._d, self._shards
        view._keys, view._where = self._keys[idx], self._where[idx]
        return view

    def chunk(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as (stop - start, d) float64."""
        return self._gather(slice(start, stop))

    def take(self, indices) -> np.ndarray:
        """Rows at ``indices`` as (len(indices), d) float64."""
        return self._gather(np.asarray(indices, dtype=np.int64))

    def to_array(self, dtype=np.float32) -> np.ndarray:
        """Every row in memory (what the streamed path avoids; for small views)."""
        return self._gather(slice(0, len(self))).astype(dtype, copy=False)

    def _gather(self, sel) -> np.ndarray:
        from .cache import _ShardGone

        for _ in range(3):
            try:
                return self._gather_once(self._where[sel])
            except (_ShardGone, FileNotFoundError):
                # Another process compacted the shards: the merged shard was written before the
                # old ones went, so the folder's index has every key again.
                self._cache.reread()
                self._resolve()
        return self._gather_once(self._where[sel])  # a fourth failure is raised

    def _gather_once(self, where: np.ndarray) -> np.ndarray:
        out = np.empty((len(where), self._d), np.float64)
        for a in np.unique(where[:, 0]).tolist():
            sel = where[:, 0] == a
            out[sel] = self._rows(a)[where[sel, 1]]
        return out

    def _rows(self, a: int):
        from .cache import _read_shard_features

        shard = self._shards[a]
        if shard.rows is not None:
            return shard.rows
        if shard.offset is None:  # a compressed member (not written by animefaces): read it
            return _read_shard_features(shard.path, shard.n, shard.d, shard.offset)
        return np.memmap(shard.path, dtype=_FEATURE_DTYPE, mode="r", offset=shard.offset,
                         shape=(shard.n, shard.d))
