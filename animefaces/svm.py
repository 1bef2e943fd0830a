"""SVM grids on cached features: build, fit (in parallel), score, and persist classifiers.

Scaling (``l2`` / ``standard`` / ``none``) is part of the saved pipeline, so a loaded model applies
exactly what it was trained with. Scores are turned into P(face) by a sigmoid fitted on the
validation split (Platt scaling), never on test data.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import AnimeFacesError, ModelMismatchError

MODEL_FORMAT = "animefaces-svm/1"


def make_pipeline(params: dict, *, scaling: str = "l2", cache_size: float = 2000, seed: int = 0):
    """An unfitted ``Pipeline(scale, SVC)`` for one parameter set (e.g. ``{"kernel": "rbf", "C": 1}``)."""
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import Normalizer, StandardScaler
    from sklearn.svm import SVC

    scaler = {"l2": Normalizer(norm="l2"), "standard": StandardScaler(), "none": "passthrough"}[scaling]
    svc = SVC(**params, cache_size=cache_size, random_state=seed, class_weight=None)
    return Pipeline([("scale", scaler), ("svm", svc)])


@dataclass
class FitResult:
    """One fitted parameter set and its accuracy on each split."""

    row: str
    params: dict
    accuracy: dict[str, float]
    fit_seconds: float
    predict_seconds: float
    pipeline: object = field(repr=False, default=None)
    positive_rate: dict[str, float] = field(default_factory=dict)
    # Decision values per split, (n,) float64: calibration and trust metrics are computed from them.
    decision: dict[str, np.ndarray] = field(default_factory=dict, repr=False)


def _scaled(X: dict, scaling: str) -> dict:
    """Apply the pipeline's scaler (fitted on train) to every split, as float64."""
    from sklearn.preprocessing import Normalizer, StandardScaler

    if scaling == "none":
        return {k: np.asarray(v, np.float64) for k, v in X.items()}
    scaler = Normalizer() if scaling == "l2" else StandardScaler()
    scaler.fit(np.asarray(X["train"], np.float64))
    return {k: scaler.transform(np.asarray(v, np.float64)) for k, v in X.items()}


def _gamma(gamma, Xtrain: np.ndarray) -> float:
    # The same rule as sklearn's SVC, so the precomputed kernels equal the real ones.
    if gamma == "scale":
        var = Xtrain.var()
        return 1.0 / (Xtrain.shape[1] * var) if var > 0 else 1.0
    if gamma == "auto":
        return 1.0 / Xtrain.shape[1]
    return float(gamma)


def _kernel(params: dict, G: np.ndarray, sq_rows: np.ndarray, sq_train: np.ndarray, gamma: float):
    """Kernel matrix from the linear Gram matrix G = X_split @ X_train.T."""
    k = params["kernel"]
    if k == "linear":
        return G
    if k == "rbf":
        d2 = np.maximum(sq_rows[:, None] + sq_train[None, :] - 2.0 * G, 0.0)
        return np.exp(-gamma * d2)
    if k == "poly":
        return (gamma * G + params.get("coef0", 0.0)) ** params.get("degree", 3)
    if k == "sigmoid":
        return np.tanh(gamma * G + params.get("coef0", 0.0))
    raise ValueError(f"unknown kernel {k!r}")


def _fit_precomputed(row, params, Xs, y, grams, sq, cache_size, seed):
    import warnings

    from sklearn.svm import SVC

    gamma = _gamma(params.get("gamma", "scale"), Xs["train"])
    t0 = time.perf_counter()
    K = {s: _kernel(params, grams[s], sq[s], sq["train"], gamma) for s in Xs}
    svc_params = {k: v for k, v in params.items() if k not in ("kernel", "gamma", "degree", "coef0")}
    svc = SVC(kernel="precomputed", cache_size=cache_size, random_state=seed, **svc_params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: visible in the accuracies instead
        svc.fit(K["train"], y["train"])
    t1 = time.perf_counter()
    acc, pos, dec = {}, {}, {}
    for split in Xs:
        if len(Xs[split]):
            pred = svc.predict(K[split])
            acc[split] = float(np.mean(pred == y[split]))
            pos[split] = float(np.mean(pred == 1))
            dec[split] = svc.decision_function(K[split]).astype(np.float64)
    return FitResult(row=row, params=params, accuracy=acc, fit_seconds=t1 - t0,
                     predict_seconds=time.perf_counter() - t1, positive_rate=pos, decision=dec)


def fit_grid(X: dict[str, np.ndarray], y: dict[str, np.ndarray], rows, *, scaling="l2",
             cache_size=2000, seed=0, n_jobs=0) -> list[FitResult]:
    """Fit every parameter set of every row on ``X["train"]`` and score every split.

    All kernels here are functions of the linear Gram matrix, so it is computed once per split
    (one BLAS call) and each SVM is trained on a precomputed kernel: the same model as
    ``SVC(kernel=...)`` (libsvm sees the same numbers) at a fraction of the cost. Fits run in
    threads (libsvm releases the GIL). Use :func:`refit` to get a stand-alone pipeline.

    Args:
        X: {split: (n, d) float32}; must contain ``train`` and ``val``.
        y: {split: (n,) int} with 1 = face.
        rows: ``SweepConfig.kernel_rows()``.
        n_jobs: parallel fits (0 = one per CPU core).
    """
    from joblib import Parallel, delayed

    Xs = _scaled(X, scaling)
    grams = {s: Xs[s] @ Xs["train"].T for s in Xs}
    sq = {s: np.einsum("ij,ij->i", Xs[s], Xs[s]) for s in Xs}
    jobs = [(row, p) for row, _fixed, combos in rows for p in combos]
    n = (os.cpu_count() or 1) if n_jobs == 0 else n_jobs
    # Slow fits (high-degree polynomials) first, so the pool does not end on a straggler.
    order = sorted(range(len(jobs)), key=lambda i: -jobs[i][1].get("degree", 1))
    out = Parallel(n_jobs=min(n, len(jobs)), prefer="threads")(
        delayed(_fit_precomputed)(jobs[i][0], jobs[i][1], Xs, y, grams, sq, cache_size, seed)
        for i in order)
    back = [None] * len(jobs)
    for i, res in zip(order, out):
        back[i] = res
    return back


def refit(params: dict, X_train: np.ndarray, y_train: np.ndarray, *, scaling="l2",
          cache_size=2000, seed=0):
    """A stand-alone fitted ``Pipeline(scale, SVC)`` for one parameter set (for saving)."""
    import warnings

    pipe = make_pipeline(params, scaling=scaling, cache_size=cache_size, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe.fit(X_train, y_train)
    return pipe


def accuracy_se(acc: float, n: int) -> float:
    """Standard error of an accuracy measured on ``n`` samples (Laplace-smoothed, so a perfect
    score still has a non-zero error bar), never less than one sample (``1 / n``): a difference
    of one image is never evidence."""
    if n <= 0:
        return 0.0
    p = (acc * n + 1) / (n + 2)
    return float(max(np.sqrt(p * (1 - p) / n), 1.0 / n))


def one_se_pick(items, *, acc, n: int):
    """The one-standard-error rule (Breiman et al. 1984; Hastie et al., ESL 7.10): every item whose
    accuracy is within one standard error of the best counts as tied, and the first of them wins,
    so list items from simplest / most regularised to most complex (config order: smaller C
    first). The error bar is :func:`accuracy_se`: Laplace-smoothed with a one-image floor, so a
    perfect val score (plain binomial SE 0) still ties with one that misses one image."""
    items = list(items)
    best = max(acc(i) for i in items)
    tol = accuracy_se(best, n)
    return next(i for i in items if acc(i) >= best - tol - 1e-9)


def select_per_row(results: list[FitResult], *, on: str = "val", n: int = 0) -> dict[str, FitResult]:
    """The chosen parameter set of each row by accuracy on ``on`` (one-SE rule over config order)."""
    rows: dict[str, list[FitResult]] = {}
    for r in results:
        rows.setdefault(r.row, []).append(r)
    return {row: one_se_pick(rs, acc=lambda r: r.accuracy.get(on, -1.0), n=n)
            for row, rs in rows.items()}


FLAG_ONE_CLASS = "one_class"
FLAG_NEAR_MAJORITY = "near_majority"


def degenerate_flags(result: FitResult, y: dict[str, np.ndarray], *, one_class: float = 0.95,
                     balanced: float = 0.4, margin: float = 0.05) -> tuple[list[str], dict]:
    """Flags for a model that has learnt (almost) nothing.

    ``one_class``: on some balanced split (the rarer label is at least ``balanced`` of it) the
    model predicts one class for at least ``one_class`` of the images. ``near_majority``: its
    val accuracy is within ``margin`` of always answering the majority label of val.

    Returns:
        (flags, details) with the evidence for each flag.
    """
    flags, details = [], {}
    for split, rate in result.positive_rate.items():
        ys = y.get(split)
        if ys is None or not len(ys):
            continue
        pos = float(np.mean(ys == 1))
        if min(pos, 1 - pos) >= balanced and max(rate, 1 - rate) >= one_class:
            if FLAG_ONE_CLASS not in flags:
                flags.append(FLAG_ONE_CLASS)
            details.setdefault(FLAG_ONE_CLASS, []).append(
                {"split": split, "predicted_face": round(rate, 4), "actual_face": round(pos, 4)})
    if "val" in result.accuracy and y.get("val") is not None and len(y["val"]):
        majority = float(max(np.mean(y["val"] == 1), np.mean(y["val"] == 0)))
        if result.accuracy["val"] <= majority + margin:
            flags.append(FLAG_NEAR_MAJORITY)
            details[FLAG_NEAR_MAJORITY] = {"val_accuracy": round(result.accuracy["val"], 4),
                                           "val_majority_rate": round(majority, 4)}
    return flags, details


def platt_fit(scores: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Sigmoid ``P = 1 / (1 + exp(a*s + b))`` fitted to decision scores (Platt 1999, with his
    target smoothing). Returns (a, b).

    Newton's method with backtracking on the two parameters, as in Lin, Lin & Weng (2007), "A
    note on Platt's probabilistic outputs for support vector machines" (the algorithm libsvm
    uses): a few milliseconds, where a general L-BFGS logistic regression took ~0.1 s per fit
    (the sweep fits dozens: one per kernel row plus the cross-validated calibration folds).
    """
    f = np.asarray(scores, np.float64).ravel()
    y = np.asarray(y).ravel()
    n_pos, n_neg = int(np.sum(y == 1)), int(np.sum(y == 0))
    t = np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    a, b = 0.0, float(np.log((n_neg + 1) / (n_pos + 1)))

    def nll(a, b):
        z = a * f + b
        # sum of t*z + log(1 + exp(-z)), written stably for both signs of z
        return float(np.sum(np.where(z >= 0, t * z + np.log1p(np.exp(-z)),
                                     (t - 1) * z + np.log1p(np.exp(z)))))

    val = nll(a, b)
    for _ in range(100):
        z = a * f + b
        p = np.where(z >= 0, np.exp(-z) / (1 + np.exp(-z)), 1 / (1 + np.exp(z)))  # 1 / (1 + e^z)
        q = 1 - p
        d1, d2 = t - p, p * q
        g1, g2 = float(f @ d1), float(d1.sum())
        if abs(g1) < 1e-5 and abs(g2) < 1e-5:
            break
        h11, h22, h21 = float(f * f @ d2) + 1e-12, float(d2.sum()) + 1e-12, float(f @ d2)
        det = h11 * h22 - h21 * h21
        da, db = -(h22 * g1 - h21 * g2) / det, -(-h21 * g1 + h11 * g2) / det
        gd = g1 * da + g2 * db
        step = 1.0
        while step >= 1e-10:
            na, nb = a + step * da, b + step * db
            nv = nll(na, nb)
            if nv < val + 1e-4 * step * gd:
                a, b, val = na, nb, nv
                break
            step /= 2
        else:
            break  # line search failed: (a, b) is as good as it gets
    return float(a), float(b)


def platt_apply(scores: np.ndarray, ab: tuple[float, float]) -> np.ndarray:
    a, b = ab
    z = np.clip(a * np.asarray(scores, np.float64) + b, -500, 500)
    return 1.0 / (1.0 + np.exp(z))


@dataclass
class TrainedModel:
    """A fitted pipeline plus what it needs at prediction time.

    Attributes:
        pipeline: sklearn ``Pipeline(scale, SVC)``; classes are 0 (no_face) and 1 (face).
        platt: (a, b) of the score-to-probability sigmoid (fitted on val).
        meta: backbone / features / params / metrics / versions (saved as JSON beside the model).
        extras: optional parts saved with the model: ``calibration`` (the calibrator chosen on
            val, see :mod:`animefaces.calibration`; used by :meth:`proba` instead of ``platt``),
            ``abstain`` (``{"band": [lo, hi], ...}``) and ``ood`` (an :class:`OODGuard` as a dict).
    """

    pipeline: object
    platt: tuple[float, float]
    meta: dict
    extras: dict = field(default_factory=dict)

    def decision(self, X: np.ndarray) -> np.ndarray:
        return self.pipeline.decision_function(X)

    def proba(self, X: np.ndarray) -> np.ndarray:
        """P(face) per row, (n,) float64, calibrated on val."""
        return self.proba_from_decision(self.decision(X))

    def proba_from_decision(self, decision: np.ndarray) -> np.ndarray:
        cal = self.extras.get("calibration")
        if cal:
            from .calibration import apply_calibrator

            return apply_calibrator(cal, decision)
        return platt_apply(decision, self.platt)


def torch_version() -> str | None:
    """torch's installed version from its package metadata, without importing it (the import
    costs seconds); the same string whether or not torch is imported."""
    import sys
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch")
    except PackageNotFoundError:
        mod = sys.modules.get("torch")
        return getattr(mod, "__version__", None)


def _versions() -> dict:
    import platform

    import joblib
    import sklearn

    from . import __version__

    out = {"animefaces": __version__, "scikit-learn": sklearn.__version__, "joblib": joblib.__version__,
           "numpy": np.__version__, "python": platform.python_version()}
    out["torch"] = torch_version()
    return out


def save_model(model: TrainedModel, path: os.PathLike) -> Path:
    """Write ``PATH.joblib`` and ``PATH.json`` atomically; returns the .joblib path.

    The JSON carries the model file's sha256, checked on load.
    """
    import hashlib
    import io

    import joblib

    from .cache import atomic_write_bytes, atomic_write_json

    path = Path(path)
    if path.suffix == ".joblib":
        path = path.with_suffix("")
    buf = io.BytesIO()
    joblib.dump({"format": MODEL_FORMAT, "pipeline": model.pipeline, "platt": model.platt,
                 "extras": model.extras}, buf)
    model_file = path.with_suffix(".joblib")
    data = buf.getvalue()
    atomic_write_bytes(model_file, data)
    # hashed from the bytes written, not by reading the file back
    meta = dict(model.meta, format=MODEL_FORMAT, versions=_versions(),
                model_file=model_file.name, model_sha256=hashlib.sha256(data).hexdigest())
    meta.pop("arrays", None)
    # The same model without pickle (see animefaces.safemodel), preferred by load_model.
    from .safemodel import npz_bytes, split_extras, to_arrays

    packed = to_arrays(model.pipeline)
    extras_json, extra_arrays = split_extras(model.extras)
    try:
        json.dumps(extras_json, allow_nan=True)
    except (TypeError, ValueError):
        packed = None  # extras that JSON cannot hold: joblib only
    if packed is not None:
        info, arrays = packed
        arrays_file = path.with_suffix(".npz")
        data = npz_bytes(dict(arrays, **extra_arrays))
        atomic_write_bytes(arrays_file, data)
        meta["arrays"] = dict(info, file=arrays_file.name, sha256=hashlib.sha256(data).hexdigest(),
                              platt=list(model.platt), extras=extras_json)
    atomic_write_json(path.with_suffix(".json"), meta)
    model.meta = meta
    return model_file


def resolve_model_path(path: os.PathLike | str) -> Path:
    """Accept ``models/best``, ``models/best.joblib``, ``models/best.json`` or a folder holding
    ``best.joblib``; return the .joblib path."""
    p = Path(path).expanduser()
    candidates = [p] if p.suffix == ".joblib" else []
    candidates += [p.with_suffix(".joblib"), Path(str(p) + ".joblib"), p / "best.joblib"]
    for c in candidates:
        if c.is_file():
            return c
    raise AnimeFacesError(f"no model at {path}: expected {p.with_suffix('.joblib')} (+ .json), "
                          f"as written by `animefaces sweep` into models/")


def load_model(path: os.PathLike | str, *, trust: bool = True,
               allow_pickle: bool | None = None) -> TrainedModel:
    """Load a model saved by :func:`save_model`, checking its sha256 against the JSON.

    Models are saved twice: ``PATH.npz`` + ``PATH.json`` (plain arrays and JSON, loaded without
    pickle; see :mod:`animefaces.safemodel`) and ``PATH.joblib`` (a pickle: loading one can run
    code). The pickle-free copy is used whenever it is there.

    Args:
        allow_pickle: None (default): the .npz copy when present, else the joblib pickle.
            False: never unpickle (raise if there is no .npz copy). True: always the joblib file.

    Raises:
        AnimeFacesError / ModelMismatchError: missing files, a changed model file, a wrong format.
    """
    model_file = resolve_model_path(path)
    meta_file = model_file.with_suffix(".json")
    if not meta_file.is_file():
        raise AnimeFacesError(f"model {model_file} has no metadata file {meta_file.name} beside it; "
                              f"it is needed to check what the model was trained on")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as exc:
        raise AnimeFacesError(f"model metadata {meta_file} is not valid JSON ({exc})") from None
    arrays_info = meta.get("arrays")
    if arrays_info and allow_pickle is not True:
        return _load_arrays(model_file.with_name(arrays_info["file"]), meta)
    if allow_pickle is False:
        raise AnimeFacesError(f"model {model_file} has no pickle-free copy (.npz); it was saved by an "
                              f"older animefaces: load it with allow_pickle=True if you trust it, "
                              f"or retrain with `animefaces sweep`")
    import joblib

    _check_sha256(model_file, meta.get("model_sha256"), meta_file.name)
    try:
        blob = joblib.load(model_file)
    except Exception as exc:  # noqa: BLE001 - corrupt pickles raise anything
        raise AnimeFacesError(f"cannot load model {model_file}: {exc}") from None
    if not isinstance(blob, dict) or blob.get("format") != MODEL_FORMAT:
        raise AnimeFacesError(f"{model_file} is not an animefaces model ({MODEL_FORMAT})")
    return TrainedModel(pipeline=blob["pipeline"], platt=tuple(blob["platt"]), meta=meta,
                        extras=blob.get("extras", {}))


def _check_sha256(model_file: Path, expected, meta_name: str) -> None:
    """ModelMismatchError unless ``model_file`` hashes to what its JSON (``meta_name``) says."""
    from .weights import sha256_file

    digest = sha256_file(model_file)
    if expected != digest:
        raise ModelMismatchError(f"model file {model_file} has sha256 {digest[:16]}..., but "
                                 f"{meta_name} says {str(expected)[:16]}...: "
                                 f"the file was changed or damaged; retrain or restore it")


def _load_arrays(arrays_file: Path, meta: dict) -> TrainedModel:
    """The pickle-free copy: arrays from ``.npz`` (allow_pickle=False) and the JSON."""
    from .safemodel import from_arrays, join_extras

    info = meta["arrays"]
    if not arrays_file.is_file():
        raise AnimeFacesError(f"model arrays {arrays_file} are missing (named in the model's JSON); "
                              f"restore the file or retrain with `animefaces sweep`")
    _check_sha256(arrays_file, info.get("sha256"), arrays_file.with_suffix(".json").name)
    try:
        with np.load(arrays_file, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        svm = from_arrays(info, arrays)
    except (OSError, ValueError, KeyError) as exc:
        raise AnimeFacesError(f"cannot load model arrays {arrays_file}: {exc}") from None
    return TrainedModel(pipeline=svm, platt=tuple(info["platt"]), meta=meta,
                        extras=join_extras(info.get("extras") or {}, arrays))
