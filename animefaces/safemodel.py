"""A pickle-free copy of a saved model: numbers in ``PATH.npz`` (loaded with
``allow_pickle=False``), everything else in the JSON beside it.

A joblib model file is a pickle, and loading a pickle can run any code, so a model from someone
else is only as safe as its sender. ``save_model`` therefore also writes ``PATH.npz``, and
``load_model`` prefers it: the scaler's statistics, the support vectors, their dual
coefficients and the intercept are plain arrays, and the decision function is recomputed here
with numpy, giving the same values as the scikit-learn pipeline (to ~1e-7: the pipeline scales
float32 features in float32, this in float64; checked by a test).
Only binary ``Pipeline(scale, SVC)`` models with the kernels the sweep uses (linear, rbf, poly,
sigmoid) are written this way; anything else keeps only the joblib file.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

SAFE_FORMAT = "animefaces-svm-arrays/1"
KERNELS = ("linear", "rbf", "poly", "sigmoid")


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
        X = np.asarray(X, np.float64)
        if self.scaling == "l2":
            n = np.linalg.norm(X, axis=1, keepdims=True)
            return X / np.where(n == 0, 1.0, n)
        if self.scaling == "standard":
            return (X - self.mean) / self.scale
        return X

    def decision_function(self, X) -> np.ndarray:
        """Same values as the scikit-learn pipeline's ``decision_function`` ((n,) float64)."""
        Z = self.transform(X)
        S = self.support_vectors
        dot = Z @ S.T
        if self.kernel == "linear":
            K = dot
        elif self.kernel == "rbf":
            d2 = (Z * Z).sum(1)[:, None] + (S * S).sum(1)[None, :] - 2.0 * dot
            K = np.exp(-self.gamma * np.maximum(d2, 0.0))
        elif self.kernel == "poly":
            K = (self.gamma * dot + self.coef0) ** self.degree
        else:  # sigmoid
            K = np.tanh(self.gamma * dot + self.coef0)
        return K @ self.dual_coef + self.intercept

    def predict(self, X) -> np.ndarray:
        return (self.decision_function(X) > 0).astype(np.int64)


def to_arrays(pipeline) -> tuple[dict, dict] | None:
    """(JSON part, arrays) of a fitted binary ``Pipeline(scale, SVC)``; None when it is not one
    this format can hold (then only the joblib file is written)."""
    try:
        from sklearn.preprocessing import Normalizer, StandardScaler
        from sklearn.svm import SVC
    except ImportError:
        return None
    steps = getattr(pipeline, "steps", None)
    if not steps or not isinstance(steps[-1][1], SVC):
        return None
    svc = steps[-1][1]
    if svc.kernel not in KERNELS or len(getattr(svc, "classes_", [])) != 2:
        return None
    if list(svc.classes_) != [0, 1]:
        return None
    arrays = {"support_vectors": np.asarray(svc.support_vectors_, np.float64),
              "dual_coef": np.asarray(svc.dual_coef_[0], np.float64)}
    scaler = steps[0][1] if len(steps) > 1 else "passthrough"
    if isinstance(scaler, Normalizer) and scaler.norm == "l2":
        scaling = "l2"
    elif isinstance(scaler, StandardScaler):
        scaling = "standard"
        arrays["mean"] = np.asarray(scaler.mean_ if scaler.with_mean else 0.0, np.float64) * np.ones(
            svc.support_vectors_.shape[1])
        arrays["scale"] = np.asarray(scaler.scale_ if scaler.with_std else 1.0, np.float64) * np.ones(
            svc.support_vectors_.shape[1])
    elif scaler in ("passthrough", None):
        scaling = "none"
    else:
        return None
    info = {"format": SAFE_FORMAT, "scaling": scaling, "kernel": svc.kernel,
            "gamma": float(svc._gamma), "degree": int(svc.degree), "coef0": float(svc.coef0),
            "intercept": float(svc.intercept_[0])}
    return info, arrays


def from_arrays(info: dict, arrays) -> ArraySVM:
    if info.get("format") != SAFE_FORMAT:
        raise ValueError(f"not an {SAFE_FORMAT} model: {info.get('format')!r}")
    return ArraySVM(scaling=info["scaling"], kernel=info["kernel"], gamma=info["gamma"],
                    degree=info["degree"], coef0=info["coef0"],
                    support_vectors=np.asarray(arrays["support_vectors"], np.float64),
                    dual_coef=np.asarray(arrays["dual_coef"], np.float64),
                    intercept=info["intercept"],
                    mean=arrays["mean"] if "mean" in arrays else None,
                    scale=arrays["scale"] if "scale" in arrays else None)


def split_extras(extras: dict) -> tuple[dict, dict]:
    """Extras as JSON plus arrays: the OOD guard's training features go to the arrays."""
    extras = dict(extras or {})
    arrays = {}
    ood = extras.get("ood")
    if isinstance(ood, dict) and ood.get("train") is not None:
        ood = dict(ood)
        arrays["ood_train"] = np.asarray(ood.pop("train"))
        extras["ood"] = ood
    return extras, arrays


def join_extras(extras: dict, arrays) -> dict:
    extras = dict(extras or {})
    if isinstance(extras.get("ood"), dict):
        extras["ood"] = dict(extras["ood"], train=np.asarray(arrays["ood_train"])
                             if "ood_train" in arrays else None)
    return extras


def npz_bytes(arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()
