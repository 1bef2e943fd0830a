"""Models as plain numbers: arrays in an ``.npz`` (loaded with ``allow_pickle=False``) and the rest
in the model's JSON, so that loading a model never unpickles anything.

A joblib model file is a pickle, and loading a pickle can run any code, so a model from someone
else would be only as safe as its sender. The scaler's statistics, the support vectors, their dual
coefficients and the intercepts are plain arrays, and the decision function is recomputed here
with numpy, giving the same values as the scikit-learn pipeline (to ~1e-7: the pipeline scales
float32 features in float32, this in float64; checked by a test).

Two forms: :class:`ArraySVM` for binary ``Pipeline(scale, SVC)`` models (the face task, and the
character task with two characters) and :class:`ArrayMulticlassSVM` for multi-class ones (the
character task: libsvm's one-vs-one machines, with scikit-learn's one-vs-rest decision values).
Both take the exact kernels of :mod:`.kernels` (linear, rbf, poly, sigmoid; the scalable ones
are saved by :mod:`.linear`). Every number is checked when it
is read (:func:`from_arrays`): a NaN gamma or a support vector of the wrong width is refused with
the field's name instead of giving NaN answers.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from .kernels import EXACT_KERNELS, MAX_DEGREE, kernel_matrix

SAFE_FORMAT = "animefaces-svm-arrays/1"
MULTI_FORMAT = "animefaces-svc-ovo-arrays/1"
SCALINGS = ("l2", "standard", "none")


def _transform(X, scaling: str, mean, scale) -> np.ndarray:
    X = np.asarray(X, np.float64)
    if scaling == "l2":
        n = np.linalg.norm(X, axis=1, keepdims=True)
        return X / np.where(n == 0, 1.0, n)
    if scaling == "standard":
        return (X - mean) / scale
    return X


def _kernel(Z: np.ndarray, S: np.ndarray, kernel: str, gamma: float, degree: int,
            coef0: float) -> np.ndarray:
    """(n, n_sv) kernel values between scaled rows ``Z`` and support vectors ``S``."""
    return kernel_matrix(kernel, Z, S, gamma=gamma, degree=degree, coef0=coef0)


@dataclass
class ArraySVM:
    """The decision function of a fitted binary ``Pipeline(scale, SVC)``, from arrays only."""

    scaling: str  # "l2", "standard" or "none"
    kernel: str
    gamma: float
    degree: int
    coef0: float
    support_vectors: np.ndarray  # (n_sv, d) float64, already scaled
    dual_coef: np.ndarray  # (n_sv,) float64
    intercept: float
    mean: np.ndarray | None = None  # StandardScaler
    scale: np.ndarray | None = None

    def transform(self, X) -> np.ndarray:
        return _transform(X, self.scaling, self.mean, self.scale)

    def decision_function(self, X) -> np.ndarray:
        """Same values as the scikit-learn pipeline's ``decision_function`` ((n,) float64)."""
        K = _kernel(self.transform(X), self.support_vectors, self.kernel, self.gamma,
                    self.degree, self.coef0)
        return K @ self.dual_coef + self.intercept

    def predict(self, X) -> np.ndarray:
        return (self.decision_function(X) > 0).astype(np.int64)


@dataclass
class ArrayMulticlassSVM:
    """The decision function of a fitted multi-class ``Pipeline(scale, SVC)`` (classes 0..k-1),
    from arrays only: libsvm's k(k-1)/2 one-vs-one machines share the support vectors."""

    scaling: str
    kernel: str
    gamma: float
    degree: int
    coef0: float
    support_vectors: np.ndarray  # (n_sv, d) float64, already scaled, grouped by class
    dual_coef: np.ndarray  # (k - 1, n_sv) float64
    intercept: np.ndarray  # (k(k-1)/2,) float64, pairs (0,1), (0,2), ..., (k-2,k-1)
    n_support: np.ndarray  # (k,) int64: support vectors per class
    decision_function_shape: str = "ovr"
    mean: np.ndarray | None = None
    scale: np.ndarray | None = None

    @property
    def n_classes(self) -> int:
        return len(self.n_support)

    def transform(self, X) -> np.ndarray:
        return _transform(X, self.scaling, self.mean, self.scale)

    def _ovo(self, X) -> np.ndarray:
        """(n, k(k-1)/2) one-vs-one decision values, as libsvm computes them."""
        K = _kernel(self.transform(X), self.support_vectors, self.kernel, self.gamma,
                    self.degree, self.coef0)
        start = np.concatenate([[0], np.cumsum(self.n_support)])
        out, p = np.empty((len(K), len(self.intercept))), 0
        for i in range(self.n_classes):
            si = slice(start[i], start[i + 1])
            for j in range(i + 1, self.n_classes):
                sj = slice(start[j], start[j + 1])
                out[:, p] = (K[:, si] @ self.dual_coef[j - 1, si] + K[:, sj] @ self.dual_coef[i, sj]
                             + self.intercept[p])
                p += 1
        return out

    def decision_function(self, X) -> np.ndarray:
        """Same values as the scikit-learn pipeline's ``decision_function``: (n, k) one-vs-rest
        (votes plus a confidence below 1) or (n, k(k-1)/2) one-vs-one."""
        ovo = self._ovo(X)
        if self.decision_function_shape == "ovo":
            return ovo
        k, n = self.n_classes, len(ovo)
        votes, conf = np.zeros((n, k)), np.zeros((n, k))
        p = 0
        for i in range(k):  # scikit-learn's _ovr_decision_function
            for j in range(i + 1, k):
                conf[:, i] += ovo[:, p]
                conf[:, j] -= ovo[:, p]
                votes[ovo[:, p] >= 0, i] += 1
                votes[ovo[:, p] < 0, j] += 1
                p += 1
        return votes + conf / (3 * (np.abs(conf) + 1))

    def predict(self, X) -> np.ndarray:
        """The class with most one-vs-one votes (libsvm's rule: ties to the lower class)."""
        ovo = self._ovo(X)
        votes = np.zeros((len(ovo), self.n_classes), np.int64)
        p = 0
        for i in range(self.n_classes):
            for j in range(i + 1, self.n_classes):
                votes[:, i] += ovo[:, p] > 0
                votes[:, j] += ovo[:, p] <= 0
                p += 1
        return votes.argmax(axis=1)


def scaler_arrays(scaler, d: int) -> tuple[str, dict] | None:
    """A pipeline's scaling step as ``(scaling, arrays)``: ``l2`` / ``none`` with no arrays,
    ``standard`` with ``mean`` and ``scale`` of length ``d``; None for any other step."""
    from sklearn.preprocessing import Normalizer, StandardScaler

    if isinstance(scaler, Normalizer) and scaler.norm == "l2":
        return "l2", {}
    if isinstance(scaler, StandardScaler):
        return "standard", {
            "mean": np.asarray(scaler.mean_ if scaler.with_mean else 0.0, np.float64) * np.ones(d),
            "scale": np.asarray(scaler.scale_ if scaler.with_std else 1.0, np.float64) * np.ones(d)}
    if scaler in ("passthrough", None):
        return "none", {}
    return None


def to_arrays(pipeline) -> tuple[dict, dict] | None:
    """(JSON part, arrays) of a fitted ``Pipeline(scale, SVC)`` (binary with classes 0/1, or
    multi-class with classes 0..k-1), or of an :class:`ArraySVM` / :class:`ArrayMulticlassSVM`
    (a model loaded from arrays saves as arrays again); None when it is none of these (then the
    model can only be pickled)."""
    if isinstance(pipeline, (ArraySVM, ArrayMulticlassSVM)):
        return _arrays_of_array_svm(pipeline)
    try:
        from sklearn.svm import SVC
    except ImportError:
        return None
    steps = getattr(pipeline, "steps", None)
    if not steps or not isinstance(steps[-1][1], SVC):
        return None
    svc = steps[-1][1]
    classes = list(getattr(svc, "classes_", []))
    if svc.kernel not in EXACT_KERNELS or len(classes) < 2 or classes != list(range(len(classes))):
        return None
    if len(classes) > 2 and (getattr(svc, "break_ties", False)
                             or svc.decision_function_shape not in ("ovr", "ovo")):
        return None
    d = svc.support_vectors_.shape[1]
    arrays = {"support_vectors": np.asarray(svc.support_vectors_, np.float64)}
    scaled = scaler_arrays(steps[0][1] if len(steps) > 1 else "passthrough", d)
    if scaled is None:
        return None
    scaling, scaler_parts = scaled
    arrays.update(scaler_parts)
    info = {"scaling": scaling, "kernel": svc.kernel, "gamma": float(svc._gamma),
            "degree": int(svc.degree), "coef0": float(svc.coef0)}
    if len(classes) == 2:
        arrays["dual_coef"] = np.asarray(svc.dual_coef_[0], np.float64)
        return dict(info, format=SAFE_FORMAT, intercept=float(svc.intercept_[0])), arrays
    arrays["dual_coef"] = np.asarray(svc.dual_coef_, np.float64)
    arrays["intercept"] = np.asarray(svc.intercept_, np.float64)
    arrays["n_support"] = np.asarray(svc.n_support_, np.int64)
    return dict(info, format=MULTI_FORMAT, n_classes=len(classes),
                decision_function_shape=svc.decision_function_shape), arrays


def _arrays_of_array_svm(m) -> tuple[dict, dict]:
    info = {"scaling": m.scaling, "kernel": m.kernel, "gamma": float(m.gamma),
            "degree": int(m.degree), "coef0": float(m.coef0)}
    arrays = {"support_vectors": m.support_vectors, "dual_coef": m.dual_coef}
    if m.mean is not None:
        arrays["mean"], arrays["scale"] = m.mean, m.scale
    if isinstance(m, ArraySVM):
        return dict(info, format=SAFE_FORMAT, intercept=float(m.intercept)), arrays
    arrays["intercept"], arrays["n_support"] = m.intercept, m.n_support
    return dict(info, format=MULTI_FORMAT, n_classes=m.n_classes,
                decision_function_shape=m.decision_function_shape), arrays


def _number(info: dict, key: str, *, low=None, integer: bool = False, high=None):
    v = info.get(key)
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
    if ok and integer:
        ok = float(v).is_integer()
    if ok and low is not None:
        ok = v > low if not integer else v >= low
    if ok and high is not None:
        ok = v <= high
    if not ok:
        want = ("an integer" if integer else "a finite number") + (
            f" from {low} to {high}" if integer and low is not None else
            f" > {low}" if low is not None else "")
        raise ValueError(f"{key} = {v!r}; expected {want}")
    return int(v) if integer else float(v)


def _array(arrays, key: str, shape: tuple, *, integer: bool = False) -> np.ndarray:
    """``arrays[key]`` with the given shape (None: any length) and only finite values."""
    if key not in arrays:
        raise ValueError(f"array {key!r} is missing")
    a = np.asarray(arrays[key])
    if a.dtype.kind not in ("iu" if integer else "fiu") or a.ndim != len(shape) or any(
            want is not None and got != want for got, want in zip(a.shape, shape)):
        raise ValueError(f"array {key!r} is {a.dtype} {a.shape}, expected "
                         f"{'integers' if integer else 'numbers'} of shape "
                         f"{tuple('n' if w is None else w for w in shape)}")
    if not integer and not np.isfinite(a).all():
        raise ValueError(f"array {key!r} has {int(np.count_nonzero(~np.isfinite(a)))} NaN or "
                         f"infinite value(s)")
    return a.astype(np.int64) if integer else a.astype(np.float64)


def from_arrays(info: dict, arrays) -> ArraySVM | ArrayMulticlassSVM:
    """The model from its JSON part and arrays, every value checked.

    Raises:
        ValueError: a field or array that is missing, of the wrong shape, not finite or out of
            range, named (``gamma = nan; expected a finite number > 0``).
    """
    fmt = info.get("format")
    if fmt not in (SAFE_FORMAT, MULTI_FORMAT):
        raise ValueError(f"format = {fmt!r}; expected {SAFE_FORMAT} or {MULTI_FORMAT}")
    if info.get("scaling") not in SCALINGS:
        raise ValueError(f"scaling = {info.get('scaling')!r}; choose one of: {', '.join(SCALINGS)}")
    if info.get("kernel") not in EXACT_KERNELS:
        raise ValueError(f"kernel = {info.get('kernel')!r}; choose one of: {', '.join(EXACT_KERNELS)}")
    common = dict(scaling=info["scaling"], kernel=info["kernel"],
                  gamma=_number(info, "gamma", low=0.0),
                  degree=_number(info, "degree", low=1, high=MAX_DEGREE, integer=True),
                  coef0=_number(info, "coef0"))
    sv = _array(arrays, "support_vectors", (None, None))
    n_sv, d = sv.shape
    if not n_sv or not d:
        raise ValueError(f"array 'support_vectors' is empty {sv.shape}")
    if info["scaling"] == "standard":
        common["mean"] = _array(arrays, "mean", (d,))
        common["scale"] = _array(arrays, "scale", (d,))
        if not (common["scale"] > 0).all():
            raise ValueError("array 'scale' has values <= 0; expected the positive standard "
                             "deviations of the training features")
    if fmt == SAFE_FORMAT:
        return ArraySVM(**common, support_vectors=sv, dual_coef=_array(arrays, "dual_coef", (n_sv,)),
                        intercept=_number(info, "intercept"))
    k = _number(info, "n_classes", low=3, high=100000, integer=True)
    shape = info.get("decision_function_shape", "ovr")
    if shape not in ("ovr", "ovo"):
        raise ValueError(f"decision_function_shape = {shape!r}; choose one of: ovr, ovo")
    n_support = _array(arrays, "n_support", (k,), integer=True)
    if (n_support < 0).any() or int(n_support.sum()) != n_sv:
        raise ValueError(f"array 'n_support' {n_support.tolist()} does not add up to the "
                         f"{n_sv} support vectors")
    return ArrayMulticlassSVM(**common, support_vectors=sv,
                              dual_coef=_array(arrays, "dual_coef", (k - 1, n_sv)),
                              intercept=_array(arrays, "intercept", (k * (k - 1) // 2,)),
                              n_support=n_support, decision_function_shape=shape)


def n_features(model) -> int | None:
    """The feature width an array model expects (None for other models)."""
    sv = getattr(model, "support_vectors", None)
    if sv is None:  # a linear.ArrayLinear names its width; other models: unknown
        d = getattr(model, "n_features_in", None)
        return None if d is None or not hasattr(model, "feature_map") else int(d)
    return int(sv.shape[1])


def n_outputs(model) -> int | None:
    """How many classes an array model tells apart (None for other models)."""
    if isinstance(model, ArraySVM):
        return 2
    if isinstance(model, ArrayMulticlassSVM):
        return model.n_classes
    return 2 if hasattr(model, "feature_map") else None  # linear.ArrayLinear: binary


# The OOD guard's array-valued parts (reference features, subspace): ``ood_<key>`` in the npz.
_OOD_ARRAYS = ("train", "subspace_mean", "subspace_components")


def split_extras(extras: dict) -> tuple[dict, dict]:
    """Extras as JSON plus arrays: the OOD guard's reference features and subspace go to the
    arrays."""
    extras = dict(extras or {})
    arrays = {}
    ood = extras.get("ood")
    if isinstance(ood, dict):
        ood = dict(ood)
        for k in _OOD_ARRAYS:
            v = ood.pop(k, None)
            if v is not None:
                arrays[f"ood_{k}"] = np.asarray(v)
        extras["ood"] = ood
    return extras, arrays


def join_extras(extras: dict, arrays) -> dict:
    extras = dict(extras or {})
    if isinstance(extras.get("ood"), dict):
        extras["ood"] = dict(extras["ood"], **{
            k: np.asarray(arrays[f"ood_{k}"]) if f"ood_{k}" in arrays else None
            for k in _OOD_ARRAYS})
    return extras


def npz_bytes(arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()
