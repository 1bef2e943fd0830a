"""Cached features read a chunk at a time, for training on more rows than fit in memory.

:class:`CachedRows` is a read-only view of some keys of a :class:`~.cache.FeatureCache`, in the
given order, that hands out float64 chunks (the protocol of
:mod:`animefaces.classify.scalable`: ``len()``, ``n_features``, ``chunk(start, stop)``,
``take(indices)``). Each chunk memory-maps the shards it needs (uncompressed ``np.savez``
members: the rows lie in the file as they are), copies its rows and unmaps them again, so the
process holds one chunk, not the cache: 500,000 x 1,280 float32 features are 2.6 GB on disk and
a 16,384-row chunk is 168 MB in float64.
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
        keys = list(keys)
        cache._load()
        lost = [k for k in keys if k not in cache._index]
        if lost:
            raise KeyError(f"{len(lost)} of {len(keys)} feature(s) not in cache {cache.dir}")
        self._cache = cache
        self._where = (np.array([cache._index[k] for k in keys], dtype=np.int64).reshape(-1, 2))
        dims = {cache._shards[a].d for a in np.unique(self._where[:, 0]).tolist()}
        if len(dims) > 1:
            raise ValueError(f"feature cache {cache.dir} mixes feature widths {sorted(dims)}")
        self._d = dims.pop() if dims else int(cache.meta.get("feature_dim", 0))

    def __len__(self) -> int:
        return len(self._where)

    @property
    def n_features(self) -> int:
        return self._d

    def chunk(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as (stop - start, d) float64."""
        return self._gather(self._where[start:stop])

    def take(self, indices) -> np.ndarray:
        """Rows at ``indices`` as (len(indices), d) float64."""
        return self._gather(self._where[np.asarray(indices, dtype=np.int64)])

    def _gather(self, where: np.ndarray) -> np.ndarray:
        out = np.empty((len(where), self._d), np.float64)
        for a in np.unique(where[:, 0]).tolist():
            sel = where[:, 0] == a
            out[sel] = self._rows(a)[where[sel, 1]]
        return out

    def _rows(self, a: int):
        shard = self._cache._shards[a]
        if shard.rows is not None:
            return shard.rows
        if shard.offset is None:  # a compressed member (not written by animefaces): read it
            return self._cache._rows_of(a)
        return np.memmap(shard.path, dtype=_FEATURE_DTYPE, mode="r", offset=shard.offset,
                         shape=(shard.n, shard.d))
