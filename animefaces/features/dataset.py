"""Features of a whole dataset: every readable image's features in record order,
computed once and then read from the feature cache.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..data.datasets import Dataset, Record, load_dataset
from .backbones import DEFAULT_BACKBONE

if TYPE_CHECKING:
    from .stream import CachedRows


@dataclass
class ExtractedFeatures:
    """Features of a dataset's readable images, in record order.

    Attributes:
        records: the records that have features (unreadable ones are in ``bad``).
        X: (len(records), d) float32; with ``stream=True`` a
            :class:`~.stream.CachedRows` view of the feature cache (read a chunk at a time).
        bad: ``[(path, reason)]`` of images left out (only with skip_bad).
        meta: the extractor's description (backbone, weights, fingerprint...).
        seconds: wall time of the extraction step (hashing, cache lookup, forward passes).
        computed: how many images needed a forward pass (0 when everything was cached).
    """

    records: list[Record]
    X: "np.ndarray | CachedRows"
    bad: list[tuple[Path, str]]
    meta: dict
    seconds: float
    computed: int = 0


def make_extractor(backbone: str, *, weights=None, device="auto", precision="auto",
                   pooling="auto", batch_size=None):
    from .extract import FeatureExtractor

    return FeatureExtractor(backbone, weights=weights, device=device, precision=precision,
                            pooling=pooling, batch_size=batch_size or None)


def extract_dataset(data, *, backbone: str = DEFAULT_BACKBONE, weights=None,
                    cache_dir: os.PathLike | str = "features", device: str = "auto",
                    precision: str = "auto", pooling: str = "auto", batch_size: int | None = None,
                    skip_bad: bool = False, progress: bool = True, extractor=None,
                    labels=("face", "no_face"), checkpoint_every: int = 256,
                    allow_outside: bool = False, ray=None, stream: bool = False) -> ExtractedFeatures:
    """Extract (or load from the cache) features for every image of a dataset.

    Args:
        data: a :class:`Dataset`, a manifest CSV or a folder tree.
        backbone, weights, device, precision, pooling, batch_size: see :class:`FeatureExtractor`.
        cache_dir: feature cache root.
        skip_bad: leave unreadable images out (listed in ``bad``) instead of stopping.
        checkpoint_every: write finished features to the cache every this many images (an
            interrupted run loses at most that many).
        allow_outside: accept manifest paths outside the manifest's folder (see
            :func:`~animefaces.data.datasets.load_dataset`).
        ray: a :class:`~animefaces.features.distributed.RayOptions` to extract on Ray (a local
            one, or the cluster at its ``address``; same cache entries), or None (this process).
        stream: leave the features in the cache: ``X`` is a :class:`~.stream.CachedRows` view
            (for the scalable kernels on more rows than fit in memory).
    """
    from .cache import FeatureCache

    ds = data if isinstance(data, Dataset) else load_dataset(data, labels=labels,
                                                             allow_outside=allow_outside)
    fx = extractor or make_extractor(backbone, weights=weights, device=device, precision=precision,
                                     pooling=pooling, batch_size=batch_size)
    cache = FeatureCache(cache_dir, fx.fingerprint, meta=fx.describe(), name=fx.spec.name)
    t0 = time.perf_counter()
    before = len(cache)
    paths = [r.path for r in ds.records]
    if ray is not None:
        from .distributed import extract_files_ray, ray_session

        with ray_session(ray.address):
            X, keys, bad = extract_files_ray(fx, paths, cache=cache, options=ray,
                                             skip_bad=skip_bad, progress=progress,
                                             load=not stream)
    else:
        X, keys, bad = fx.extract_files(paths, cache=cache, skip_bad=skip_bad,
                                        progress=progress, flush_every=checkpoint_every,
                                        load=not stream)
    computed = len(cache) - before
    if computed >= 512:
        cache.compact()
    if stream:
        from .stream import CachedRows

        X = CachedRows(cache, keys)
    bad_paths = {p for p, _ in bad}
    records = [r for r in ds.records if r.path not in bad_paths]
    return ExtractedFeatures(records=records, X=X, bad=bad, meta=fx.describe(),
                             seconds=time.perf_counter() - t0, computed=computed)
