"""Scalable SVMs (linear_svc, sgd, nystroem, poly_sketch): one kernel implementation, fitted in
chunks, streamed from the feature cache, saved pickle-free with the same decisions."""

import json

import numpy as np
import pytest

from animefaces.classify import kernels
from animefaces.classify.linear import ArrayLinear, from_arrays, to_arrays
from animefaces.classify.persist import TrainedModel, load_model, save_model
from animefaces.classify.scalable import decision_function, fit
from animefaces.classify.svm import fit_grid, refit
from animefaces.errors import ConfigError

PARAMS = [{"kernel": "linear_svc", "C": 1.0},
          {"kernel": "sgd", "C": 10.0, "epochs": 3},
          {"kernel": "nystroem", "C": 1.0, "gamma": "scale", "n_components": 64},
          {"kernel": "nystroem", "C": 1.0, "n_components": 64, "solver": "sgd", "epochs": 2},
          {"kernel": "poly_sketch", "degree": 2, "coef0": 1.0, "C": 1.0, "n_components": 128},
          {"kernel": "poly_sketch", "degree": 3, "coef0": 0.0, "C": 1.0, "n_components": 128}]


def _data(n=400, d=16, seed=0):
    rng = np.random.default_rng(seed)
    X = (rng.normal(size=(n, d)) + 0.5).astype(np.float32)
    y = (X[:, 0] * X[:, 1] + X[:, 2] + rng.normal(0, 0.2, n) > 0.5).astype(np.int64)
    return X, y


def test_one_kernel_list_everywhere():
    from animefaces import config
    from animefaces.classify import arrays

    assert config.KERNELS is kernels.KERNELS
    assert arrays.EXACT_KERNELS is kernels.EXACT_KERNELS
    assert set(kernels.GRID_KEYS) == set(kernels.KERNELS)


def test_exact_kernels_match_sklearn():
    from sklearn.metrics.pairwise import pairwise_kernels

    rng = np.random.default_rng(1)
    Z, S = rng.normal(size=(7, 5)), rng.normal(size=(4, 5))
    for k, kw in [("linear", {}), ("rbf", {"gamma": 0.3}), ("poly", {"gamma": 0.3, "degree": 3, "coef0": 1.0}),
                  ("sigmoid", {"gamma": 0.3, "coef0": 0.5})]:
        np.testing.assert_allclose(kernels.kernel_matrix(k, Z, S, **({"gamma": 1.0} | kw)),
                                   pairwise_kernels(Z, S, metric=k, **kw), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("scaling", ["l2", "standard"])
@pytest.mark.parametrize("params", PARAMS, ids=lambda p: f"{p['kernel']}-{p.get('solver', '')}")
def test_array_model_matches_the_pipeline(params, scaling):
    X, y = _data()
    pipe = fit(params, X, y, scaling=scaling, chunk_rows=96)
    info, arrays = to_arrays(pipe)
    model = from_arrays(json.loads(json.dumps(info)), arrays)
    Xt = _data(50, seed=3)[0]
    want = pipe.decision_function(Xt.astype(np.float64))
    np.testing.assert_allclose(model.decision_function(Xt), want, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(decision_function(pipe, Xt, chunk_rows=7), want, rtol=1e-12, atol=1e-12)
    assert (model.predict(Xt) == pipe.predict(Xt.astype(np.float64))).all()
    # an array model saves as the same arrays again
    info2, arrays2 = to_arrays(model)
    assert info2 == info and all(np.array_equal(arrays[k], arrays2[k]) for k in arrays)


def test_scalable_grid_learns_and_refit_is_the_grid_model():
    X, y = _data(900)
    Xd = {"train": X[:600], "val": X[600:750], "test": X[750:]}
    yd = {"train": y[:600], "val": y[600:750], "test": y[750:]}
    rows = [(p["kernel"], {}, [p]) for p in PARAMS]
    res = fit_grid(Xd, yd, rows, n_jobs=1)
    majority = max(yd["val"].mean(), 1 - yd["val"].mean())
    for r in res:
        assert r.accuracy["val"] > majority + 0.05, (r.params, r.accuracy)
    best = res[2]  # nystroem: the refit (for saving) is the grid's model, seeded
    again = refit(best.params, Xd["train"], yd["train"])
    np.testing.assert_allclose(decision_function(again, Xd["val"]), best.decision["val"], rtol=0, atol=0)


def test_saved_scalable_model_loads_pickle_free(tmp_path, monkeypatch):
    X, y = _data()
    pipe = fit(PARAMS[4], X, y)
    path = save_model(TrainedModel(pipeline=pipe, platt=(-1.0, 0.0), meta={"backbone": "tiny"}),
                      tmp_path / "m")
    assert not list(tmp_path.glob("**/*.joblib"))
    import joblib

    monkeypatch.setattr(joblib, "load", lambda *a, **k: pytest.fail("unpickled"))
    m = load_model(path)
    assert isinstance(m.pipeline, ArrayLinear)
    np.testing.assert_allclose(m.decision(X), pipe.decision_function(X.astype(np.float64)), rtol=1e-9,
                               atol=1e-9)


def test_damaged_linear_arrays_are_named():
    X, y = _data()
    info, arrays = to_arrays(fit(PARAMS[2], X, y))
    bad = dict(arrays, components=arrays["components"][:, :3])
    with pytest.raises(ValueError, match="components"):
        from_arrays(info, bad)
    with pytest.raises(ValueError, match="gamma"):
        from_arrays(dict(info, gamma=float("nan")), arrays)
    info_s, arrays_s = to_arrays(fit(PARAMS[4], X, y))
    with pytest.raises(ValueError, match="bit_hash"):
        from_arrays(info_s, dict(arrays_s, bit_hash=arrays_s["bit_hash"] * 2))


def test_streamed_from_the_feature_cache_equals_in_memory(tmp_path):
    from animefaces.features.cache import FeatureCache
    from animefaces.features.stream import CachedRows

    X, y = _data(500)
    keys = [f"{i:064x}" for i in range(len(X))]
    cache = FeatureCache(tmp_path, "f" * 64, meta={"feature_dim": X.shape[1]})
    for a in range(0, len(X), 128):  # four shards
        cache.add(keys[a:a + 128], X[a:a + 128])
        cache.flush()
    order = list(np.random.default_rng(0).permutation(len(X)))
    rows = CachedRows(FeatureCache(tmp_path, "f" * 64, meta={}), [keys[i] for i in order])
    assert len(rows) == 500 and rows.n_features == X.shape[1]
    np.testing.assert_array_equal(rows.chunk(10, 300), X[order][10:300])
    np.testing.assert_array_equal(rows.take([3, 1, 400]), X[order][[3, 1, 400]])
    for p in (PARAMS[1], PARAMS[2]):
        a = fit(p, rows, y[order], chunk_rows=100)
        b = fit(p, X[order], y[order], chunk_rows=100)
        np.testing.assert_allclose(decision_function(a, rows), decision_function(b, X[order]), rtol=1e-12)


def test_scalable_kernels_refuse_more_classes():
    X, _ = _data()
    with pytest.raises(ConfigError, match="two classes"):
        fit(PARAMS[0], X, np.arange(len(X)) % 3)


def test_exact_rows_too_big_are_refused_before_fitting(monkeypatch):
    import os

    from animefaces.classify import svm

    monkeypatch.setattr(os, "sysconf", lambda name: {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 1000}[name])
    X, y = _data(300)
    with pytest.raises(ConfigError, match="scalable kernels"):
        svm.fit_grid({"train": X, "val": X}, {"train": y, "val": y},
                     [("rbf", {}, [{"kernel": "rbf", "C": 1.0}])], n_jobs=1)


def test_config_grid_for_scalable_kernels():
    from animefaces.config import config_from_dict

    def grid(*entries):
        return config_from_dict({"svm": {"grid": list(entries)}})

    cfg = grid({"kernel": "nystroem", "C": [1.0], "n_components": [256], "solver": ["sgd"]},
               {"kernel": "poly_sketch", "degree": [2, 3], "coef0": [1.0]}, {"kernel": "sgd"})
    rows = cfg.kernel_rows()
    assert [r[0] for r in rows] == ["nystroem", "poly_sketch-2", "poly_sketch-3", "sgd"]
    assert rows[3][2] == [{"kernel": "sgd", "C": 1.0}]
    for entry, msg in [({"kernel": "nystroem", "n_components": [2]}, "n_components"),
                       ({"kernel": "nystroem", "solver": ["adam"]}, "solver"),
                       ({"kernel": "linear_svc", "gamma": ["scale"]}, "takes no gamma"),
                       ({"kernel": "poly_sketch", "coef0": [-1.0]}, "coef0"),
                       ({"kernel": "sgd", "epochs": [0]}, "epochs"),
                       ({"kernel": "nystrom"}, "choose one of")]:
        with pytest.raises(ConfigError, match=msg):
            grid(entry)


def test_sweep_with_scalable_kernels_saves_a_pickle_free_model(tmp_path):
    from conftest import make_dataset

    from animefaces.api import FaceClassifier
    from animefaces.train.sweep import run_sweep

    data = make_dataset(tmp_path / "data")
    cfg = tmp_path / "scalable.toml"
    cfg.write_text(f'''
[features]
backbones = ["tiny"]
cache_dir = "{(tmp_path / 'features').as_posix()}"
[svm]
n_jobs = 1
[[svm.grid]]
kernel = "nystroem"
C = [1.0]
n_components = [16]
[[svm.grid]]
kernel = "sgd"
C = [10.0]
[[svm.grid]]
kernel = "poly_sketch"
degree = [2]
coef0 = [1.0]
n_components = [64]
[output]
reports_dir = "{(tmp_path / 'reports').as_posix()}"
models_dir = "{(tmp_path / 'models').as_posix()}"
''')
    res = run_sweep(data, config=cfg, weights="random", progress=False)
    kernels_fitted = {f["kernel"] for f in res.results["fits"]}
    assert kernels_fitted == {"nystroem", "sgd", "poly_sketch-2"}
    assert not list((tmp_path / "models").glob("**/*.joblib"))
    clf = FaceClassifier.load(res.best_model)
    assert isinstance(clf.model.pipeline, ArrayLinear)
    images = sorted((data.parent / "images").glob("test-*.png"))
    preds = clf.predict_many(images)
    assert all(0.0 <= p.score <= 1.0 for p in preds)


def test_saved_svc_models_decide_as_before_to_the_bit():
    """ArraySVM's kernels now come from classify/kernels.py: the same operations in the same
    order as the formula the saved models were checked with, so the same bits."""
    def earlier(Z, S, kernel, gamma, degree, coef0):  # arrays._kernel before the move
        dot = Z @ S.T
        if kernel == "linear":
            return dot
        if kernel == "rbf":
            d2 = (Z * Z).sum(1)[:, None] + (S * S).sum(1)[None, :] - 2.0 * dot
            return np.exp(-gamma * np.maximum(d2, 0.0))
        if kernel == "poly":
            return (gamma * dot + coef0) ** degree
        return np.tanh(gamma * dot + coef0)

    rng = np.random.default_rng(5)
    Z, S = rng.normal(size=(60, 24)), rng.normal(size=(40, 24))
    for k in kernels.EXACT_KERNELS:
        assert np.array_equal(kernels.kernel_matrix(k, Z, S, gamma=0.02, degree=3, coef0=1.0),
                              earlier(Z, S, k, 0.02, 3, 1.0)), k
