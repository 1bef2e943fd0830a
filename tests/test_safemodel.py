"""Pickle-free models: the .npz + JSON copy gives the same decisions and never unpickles."""

import json

import numpy as np
import pytest

from animefaces.classify.arrays import from_arrays, to_arrays
from animefaces.classify.persist import TrainedModel, load_model, save_model
from animefaces.classify.svm import make_pipeline
from animefaces.errors import AnimeFacesError, ModelMismatchError


@pytest.mark.parametrize("scaling", ["l2", "standard", "none"])
@pytest.mark.parametrize("params", [{"kernel": "rbf", "C": 1.0, "gamma": "scale"},
                                    {"kernel": "linear", "C": 0.5},
                                    {"kernel": "poly", "degree": 3, "coef0": 1.0, "C": 1.0},
                                    {"kernel": "sigmoid", "coef0": 0.0, "C": 1.0}])
def test_array_svm_matches_the_sklearn_pipeline(scaling, params):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 12)).astype(np.float32) + 0.3
    y = (X[:, 0] + 0.5 * X[:, 1] ** 2 + rng.normal(0, 0.3, 120) > 0.5).astype(int)
    pipe = make_pipeline(params, scaling=scaling).fit(X, y)
    info, arrays = to_arrays(pipe)
    svm = from_arrays(json.loads(json.dumps(info)), arrays)
    Xt = rng.normal(size=(40, 12)).astype(np.float32)
    np.testing.assert_allclose(svm.decision_function(Xt), pipe.decision_function(Xt), rtol=1e-5, atol=1e-6)
    assert (svm.predict(Xt) == pipe.predict(Xt)).all()


def _saved(tmp_path):
    from animefaces.classify.ood import OODGuard

    rng = np.random.default_rng(1)
    X = rng.normal(size=(80, 8))
    y = (X[:, 0] > 0).astype(int)
    pipe = make_pipeline({"kernel": "rbf", "C": 1.0, "gamma": "scale"}).fit(X, y)
    guard = OODGuard().fit(X[:60], X_val=X[60:])
    extras = {"calibration": {"method": "platt", "a": -2.0, "b": 0.1},
              "abstain": {"band": [0.05, 0.95]}, "ood": guard.to_dict()}
    model = TrainedModel(pipeline=pipe, platt=(-1.5, 0.0), meta={"backbone": "tiny"}, extras=extras)
    return save_model(model, tmp_path / "m"), pipe, X


def test_saved_model_loads_without_unpickling(tmp_path, monkeypatch):
    path, pipe, X = _saved(tmp_path)
    folder = path.parent / json.loads(path.read_text())["model"]
    assert sorted(p.name for p in folder.iterdir()) == ["model.json", "model.npz"]  # no pickle
    import joblib

    def no_pickles(*a, **k):
        raise AssertionError("joblib.load called: the model was unpickled")

    monkeypatch.setattr(joblib, "load", no_pickles)
    m = load_model(path)
    np.testing.assert_allclose(m.decision(X), pipe.decision_function(X), rtol=1e-9, atol=1e-9)
    assert m.platt == (-1.5, 0.0) and m.extras["abstain"]["band"] == [0.05, 0.95]
    from animefaces.classify.ood import OODGuard

    g = OODGuard.from_dict(m.extras["ood"])
    assert g.train.shape == (60, 8) and g.thresholds["weak"] > 0
    assert np.allclose(m.proba(X[:3]), 1 / (1 + np.exp(-2.0 * pipe.decision_function(X[:3]) + 0.1)))
    # Saving a loaded (array) model keeps it pickle-free: the same folder, the same digest.
    again = save_model(m, tmp_path / "again")
    assert json.loads(again.read_text())["digest"] == json.loads(path.read_text())["digest"]
    assert not list(tmp_path.glob("**/*.joblib"))


def test_changed_arrays_are_refused(tmp_path):
    path, pipe, X = _saved(tmp_path)
    npz = path.parent / json.loads(path.read_text())["model"] / "model.npz"
    data = bytearray(npz.read_bytes())
    data[-40] ^= 0xFF
    npz.write_bytes(bytes(data))
    with pytest.raises(ModelMismatchError, match="changed or damaged"):
        load_model(path)
    with pytest.raises(ModelMismatchError, match="changed or damaged"):
        load_model(path, allow_pickle=True)  # there is no pickle to fall back on
