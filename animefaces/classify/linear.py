"""The scalable SVMs (:mod:`.scalable`) as plain numbers, like :mod:`.arrays` does for SVC:
nothing is unpickled when such a model is loaded.

A model is ``decision(x) = w . phi(scale(x)) + b``, where ``phi`` is

* nothing (``linear_svc``, ``sgd``): ``w`` has the feature width;
* the Nystroem map: RBF kernel values against ``components`` (m, d) times
  ``normalization.T`` (m, m), with its ``gamma``;
* PolynomialCountSketch: ``index_hash`` / ``bit_hash`` (degree, d[+1]), ``gamma``, ``coef0``
  and ``n_components``.

The arrays go to the model's ``.npz`` (``allow_pickle=False``), the rest to its JSON; the maps
are recomputed with :mod:`.kernels` in float64 (the same values as scikit-learn's pipeline to
rounding; checked by ``tests/test_svm_scale.py``). Every value is checked when it is read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .arrays import SCALINGS, _array, _number, _transform, scaler_arrays
from .kernels import MAX_COMPONENTS, MAX_DEGREE, count_sketch_map, nystroem_map

LINEAR_FORMAT = "animefaces-linear-arrays/1"
MAPS = ("none", "nystroem", "count_sketch")


@dataclass
class ArrayLinear:
    """The decision function of a fitted binary ``Pipeline(scale, map, linear SVM)``."""

    scaling: str
    feature_map: str  # "none", "nystroem" or "count_sketch"
    coef: np.ndarray  # (width,) float64
    intercept: float
    n_features_in: int
    gamma: float = 0.0
    coef0: float = 0.0
    n_components: int = 0
    components: np.ndarray | None = None      # nystroem (m, d)
    normalization: np.ndarray | None = None   # nystroem (m, m)
    index_hash: np.ndarray | None = None      # count_sketch (degree, d[+1]) int64
    bit_hash: np.ndarray | None = None        # count_sketch (degree, d[+1]) +-1
    mean: np.ndarray | None = None
    scale: np.ndarray | None = None

    n_classes = 2

    def transform(self, X) -> np.ndarray:
        """Scaled, then mapped rows ((n, width) float64)."""
        Z = _transform(X, self.scaling, self.mean, self.scale)
        if self.feature_map == "nystroem":
            return nystroem_map(Z, self.components, self.normalization, gamma=self.gamma)
        if self.feature_map == "count_sketch":
            return count_sketch_map(Z, self.index_hash, self.bit_hash,
                                    n_components=self.n_components, gamma=self.gamma,
                                    coef0=self.coef0)
        return Z

    def decision_function(self, X) -> np.ndarray:
        """Same values as the scikit-learn pipeline's ``decision_function`` ((n,) float64)."""
        return self.transform(X) @ self.coef + self.intercept

    def predict(self, X) -> np.ndarray:
        return (self.decision_function(X) > 0).astype(np.int64)


def to_arrays(pipeline) -> tuple[dict, dict] | None:
    """(JSON part, arrays) of a fitted scalable pipeline or an :class:`ArrayLinear`; None for
    anything else."""
    if isinstance(pipeline, ArrayLinear):
        m = pipeline
        fields = {k: getattr(m, k) for k in ("components", "normalization", "index_hash",
                                              "bit_hash", "mean", "scale")}
        arrays = {k: v for k, v in fields.items() if v is not None}
        arrays["coef"] = m.coef
        return _info(m.scaling, m.feature_map, m.intercept, m.n_features_in, m.gamma, m.coef0,
                     m.n_components, getattr(m.index_hash, "shape", (0,))[0]), arrays
    try:
        from sklearn.kernel_approximation import Nystroem, PolynomialCountSketch
        from sklearn.linear_model import SGDClassifier
        from sklearn.svm import LinearSVC
    except ImportError:
        return None
    steps = getattr(pipeline, "steps", None)
    if not steps or len(steps) != 3 or not isinstance(steps[2][1], (LinearSVC, SGDClassifier)):
        return None
    scaler, mapper, clf = (s for _, s in steps)
    if list(getattr(clf, "classes_", [])) != [0, 1] or clf.coef_.shape[0] != 1:
        return None
    d = int(clf.n_features_in_ if mapper in ("passthrough", None) else mapper.n_features_in_)
    arrays = {"coef": np.asarray(clf.coef_[0], np.float64)}
    scaled = scaler_arrays(scaler, d)
    if scaled is None:
        return None
    scaling, scaler_parts = scaled
    arrays.update(scaler_parts)
    gamma = coef0 = 0.0
    m = degree = 0
    if mapper in ("passthrough", None):
        fmap = "none"
    elif isinstance(mapper, Nystroem) and mapper.kernel == "rbf":
        fmap, gamma = "nystroem", float(mapper.gamma)
        arrays["components"] = np.asarray(mapper.components_, np.float64)
        arrays["normalization"] = np.asarray(mapper.normalization_, np.float64)
        m = len(mapper.components_)
    elif isinstance(mapper, PolynomialCountSketch):
        fmap, gamma, coef0 = "count_sketch", float(mapper.gamma), float(mapper.coef0)
        arrays["index_hash"] = np.asarray(mapper.indexHash_, np.int64)
        arrays["bit_hash"] = np.asarray(mapper.bitHash_, np.int64)
        m, degree = int(mapper.n_components), int(mapper.degree)
    else:
        return None
    return _info(scaling, fmap, float(clf.intercept_[0]), d, gamma, coef0, m, degree), arrays


def _info(scaling, fmap, intercept, d, gamma, coef0, m, degree) -> dict:
    return {"format": LINEAR_FORMAT, "scaling": scaling, "map": fmap,
            "intercept": float(intercept), "n_features": int(d), "gamma": float(gamma),
            "coef0": float(coef0), "n_components": int(m), "degree": int(degree)}


def from_arrays(info: dict, arrays) -> ArrayLinear:
    """The model from its JSON part and arrays, every value checked.

    Raises:
        ValueError: a field or array that is missing, of the wrong shape, not finite or out of
            range, named (``gamma = nan; expected a finite number > 0``).
    """
    if info.get("format") != LINEAR_FORMAT:
        raise ValueError(f"format = {info.get('format')!r}; expected {LINEAR_FORMAT}")
    if info.get("scaling") not in SCALINGS:
        raise ValueError(f"scaling = {info.get('scaling')!r}; choose one of: {', '.join(SCALINGS)}")
    fmap = info.get("map")
    if fmap not in MAPS:
        raise ValueError(f"map = {fmap!r}; choose one of: {', '.join(MAPS)}")
    d = _number(info, "n_features", low=1, high=10**7, integer=True)
    kw = {"scaling": info["scaling"], "feature_map": fmap, "n_features_in": d,
          "intercept": _number(info, "intercept")}
    width = d
    if fmap == "nystroem":
        m = _number(info, "n_components", low=1, high=MAX_COMPONENTS, integer=True)
        kw.update(gamma=_number(info, "gamma", low=0.0), n_components=m,
                  components=_array(arrays, "components", (m, d)),
                  normalization=_array(arrays, "normalization", (m, m)))
        width = m
    elif fmap == "count_sketch":
        m = _number(info, "n_components", low=1, high=MAX_COMPONENTS, integer=True)
        degree = _number(info, "degree", low=1, high=MAX_DEGREE, integer=True)
        coef0 = _number(info, "coef0")
        if coef0 < 0:
            raise ValueError(f"coef0 = {coef0!r}; expected a number >= 0")
        cols = d + (1 if coef0 != 0 else 0)
        idx = _array(arrays, "index_hash", (degree, cols), integer=True)
        bits = _array(arrays, "bit_hash", (degree, cols), integer=True)
        if idx.min() < 0 or idx.max() >= m:
            raise ValueError(f"array 'index_hash' has values outside [0, {m})")
        if not np.isin(bits, (-1, 1)).all():
            raise ValueError("array 'bit_hash' has values other than -1 and 1")
        kw.update(gamma=_number(info, "gamma", low=0.0), coef0=coef0, n_components=m,
                  index_hash=idx, bit_hash=bits)
        width = m
    if info["scaling"] == "standard":
        kw["mean"] = _array(arrays, "mean", (d,))
        kw["scale"] = _array(arrays, "scale", (d,))
        if not (kw["scale"] > 0).all():
            raise ValueError("array 'scale' has values <= 0; expected the positive standard "
                             "deviations of the training features")
    return ArrayLinear(coef=_array(arrays, "coef", (width,)), **kw)
