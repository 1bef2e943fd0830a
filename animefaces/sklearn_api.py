"""The feature extractor as a scikit-learn transformer, for Pipelines and GridSearchCV.

    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.svm import SVC
    >>> pipe = make_pipeline(CNNFeatures(backbone="mobilenet_v2", cache_dir="features"), SVC())
    >>> pipe.fit(train_paths, train_labels).score(test_paths, test_labels)   # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from .features.backbones import DEFAULT_BACKBONE


class CNNFeatures(TransformerMixin, BaseEstimator):
    """Images -> pooled CNN features, cache-aware.

    Args:
        backbone: registry name.
        weights: None (find them), a path, or ``"random"`` (tests only).
        device, precision, pooling, batch_size: see :class:`animefaces.FeatureExtractor`.
        cache_dir: feature cache folder for file inputs (None: keep features in memory only).
        progress: show a progress bar while extracting.

    ``X`` for ``fit`` / ``transform`` is a sequence of image paths, PIL images or (H, W, 3)
    arrays, or a (N, H, W, 3) uint8 array. ``transform`` returns (N, feature_dim) float32.
    """

    def __init__(self, backbone: str = DEFAULT_BACKBONE, *, weights=None, device: str = "auto",
                 precision: str = "auto", pooling: str = "auto", batch_size: int | None = None,
                 cache_dir: str | os.PathLike | None = None, progress: bool = False):
        self.backbone = backbone
        self.weights = weights
        self.device = device
        self.precision = precision
        self.pooling = pooling
        self.batch_size = batch_size
        self.cache_dir = cache_dir
        self.progress = progress

    def fit(self, X=None, y=None):
        """Build the extractor (resolving weights); nothing is learned from X."""
        from .features.extract import FeatureExtractor

        self.extractor_ = FeatureExtractor(self.backbone, weights=self.weights, device=self.device,
                                           precision=self.precision, pooling=self.pooling,
                                           batch_size=self.batch_size)
        self.n_features_out_ = self.extractor_.feature_dim
        self.fingerprint_ = self.extractor_.fingerprint
        return self

    def transform(self, X) -> np.ndarray:
        from .features.cache import FeatureCache

        check_is_fitted(self, "extractor_")
        items = list(X)  # a sequence of images, or the rows of an (N, H, W, 3) array
        fx = self.extractor_
        if items and all(isinstance(i, (str, os.PathLike)) for i in items):
            cache = FeatureCache(self.cache_dir, fx.fingerprint, meta=fx.describe(),
                                 name=fx.spec.name)
            feats, _keys, _bad = fx.extract_files([Path(i) for i in items], cache=cache,
                                                  progress=self.progress)
            return feats
        return fx.transform_images(items)

    def get_feature_names_out(self, input_features=None):
        check_is_fitted(self, "extractor_")
        return np.array([f"{self.backbone}_{i}" for i in range(self.n_features_out_)], dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.requires_fit = True
        tags.non_deterministic = False
        return tags
