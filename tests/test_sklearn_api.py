"""CNNFeatures as a scikit-learn transformer."""

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import Normalizer
from sklearn.svm import SVC
from sklearn.utils import estimator_checks as ec

from animefaces import CNNFeatures
from animefaces.data.datasets import load_dataset


def test_sklearn_api_checks_that_apply():
    est = CNNFeatures(backbone="tiny", weights="random", device="cpu")
    name = type(est).__name__
    ec.check_no_attributes_set_in_init(name, est)
    ec.check_get_params_invariance(name, est)
    ec.check_set_params(name, est)
    ec.check_parameters_default_constructible(name, est)
    assert clone(est).get_params() == est.get_params()


def test_pipeline_and_grid_search(tiny_dataset, tmp_path):
    ds = load_dataset(tiny_dataset)
    paths = [str(r.path) for r in ds.records if r.split in ("train", "val")]
    y = [r.label for r in ds.records if r.split in ("train", "val")]
    pipe = make_pipeline(CNNFeatures(backbone="tiny", weights="random", device="cpu",
                                     cache_dir=tmp_path / "f"), Normalizer(), SVC())
    gs = GridSearchCV(pipe, {"svc__C": [0.1, 10.0]}, cv=3).fit(paths, y)
    test = [r for r in ds.records if r.split == "test"]
    acc = gs.score([str(r.path) for r in test], [r.label for r in test])
    assert acc >= 0.7
    assert any((tmp_path / "f").glob("*/shard-*.npz"))  # the transformer used the cache


def test_transform_shapes_and_unfitted_error():
    from PIL import Image
    from sklearn.exceptions import NotFittedError

    est = CNNFeatures(backbone="tiny", weights="random", device="cpu")
    with pytest.raises(NotFittedError):
        est.transform([Image.new("RGB", (8, 8))])
    X = est.fit().transform(np.zeros((3, 20, 20, 3), np.uint8))
    assert X.shape == (3, 32) and X.dtype == np.float32
    assert len(est.get_feature_names_out()) == 32
