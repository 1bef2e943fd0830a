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


# Keys save_model writes itself (from the model), never taken over from an earlier meta.
_DERIVED = ("format", "versions", "arrays", "pickle", "platt", "extras", "digest", "model_file",
            "model_sha256")


def _json_default(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} cannot be saved in a model's JSON")


def save_model(model: TrainedModel, path: os.PathLike) -> Path:
    """Save ``model`` under the name ``path`` (e.g. ``models/best``); returns ``PATH.json``.

    The model goes into a new folder ``PATH-<digest>/`` (``model.json`` + ``model.npz``: plain
    arrays, no pickle; a ``model.joblib`` pickle only for a pipeline that arrays cannot hold),
    renamed into place whole, and ``PATH.json`` is then replaced atomically to point at it (see
    :mod:`animefaces.modelstore`): a reader never sees half a model, and a crash leaves the
    previous one. The JSON's digest covers every number that decides an answer.

    Raises:
        AnimeFacesError: the folder cannot be written (disk full, read-only), named.
    """
    import hashlib
    import io

    from . import modelstore
    from .safemodel import npz_bytes, split_extras, to_arrays

    meta = {k: v for k, v in model.meta.items() if k not in _DERIVED}
    extras_json, extra_arrays = split_extras(model.extras)
    try:
        extras_json = json.loads(json.dumps(extras_json, default=_json_default, allow_nan=True))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"model extras cannot be saved as JSON: {exc}") from None
    doc = dict(meta, format=modelstore.MODEL_FORMAT, versions=_versions(),
               platt=[float(v) for v in model.platt], extras=extras_json)
    files = {}
    packed = to_arrays(model.pipeline)
    if packed is not None:
        info, arrays = packed
        data = npz_bytes(dict(arrays, **extra_arrays))
        files["model.npz"] = data
        doc["arrays"] = dict(info, file="model.npz", sha256=hashlib.sha256(data).hexdigest())
    else:
        # Not an SVC pipeline that arrays can hold: only a pickle can (loading it needs
        # allow_pickle=True). The OOD reference features still go to the npz.
        import joblib

        buf = io.BytesIO()
        joblib.dump({"format": MODEL_FORMAT, "pipeline": model.pipeline}, buf)
        files["model.joblib"] = buf.getvalue()
        doc["pickle"] = {"file": "model.joblib",
                         "sha256": hashlib.sha256(files["model.joblib"]).hexdigest()}
        if extra_arrays:
            data = npz_bytes(extra_arrays)
            files["model.npz"] = data
            doc["extra_arrays"] = {"file": "model.npz", "sha256": hashlib.sha256(data).hexdigest()}
    doc = modelstore.seal(doc)
    pointer = modelstore.write_model(path, doc, files)
    model.meta = dict(doc, model_sha256=doc["digest"])
    return pointer


def link_model(path: os.PathLike | str, target: os.PathLike | str) -> Path:
    """Make the name ``path`` (e.g. ``models/best``) load the model saved as ``target``, with
    one atomic replace of ``PATH.json``; returns it. See :func:`animefaces.modelstore.link`."""
    from .modelstore import link

    return link(path, target)


def resolve_model_path(path: os.PathLike | str) -> Path:
    """The file a model name resolves to, for messages: ``models/best.json`` for ``models/best``
    (a pointer), a model folder's ``model.json``, or an earlier-format ``NAME.json``.

    Raises:
        AnimeFacesError: no model there (the message says what was looked for).
    """
    from .modelstore import find

    return find(path).shown


def _pickle_refused(where, what: str) -> AnimeFacesError:
    return AnimeFacesError(
        f"model {where} is stored only as a pickle ({what}); loading a pickle can run any code "
        f"in it, so it is not loaded by default. If you made it or trust whoever did, pass "
        f"--allow-pickle (command line) or allow_pickle=True (Python); or retrain with "
        f"`animefaces sweep` to get a pickle-free model")


def load_model(path: os.PathLike | str, *, trust: bool = True,
               allow_pickle: bool = False) -> TrainedModel:
    """Load a model saved by :func:`save_model` (``models/best``, ``models/best.json``, a model
    folder), checking its digest, the sha256 of its files and every value that decides an answer.

    Args:
        allow_pickle: load a model that exists only as a joblib pickle (a pipeline that arrays
            cannot hold, or a model saved by an early animefaces). Loading a pickle can run any
            code in it: only for models you made or trust. Models with arrays never unpickle.

    Raises:
        AnimeFacesError / ModelMismatchError: missing files, a changed or damaged model, a
            value out of range, a pickle without ``allow_pickle``.
    """
    from . import modelstore

    found = modelstore.find(path)
    if found.folder is None:
        return _load_legacy(found, allow_pickle=allow_pickle)
    modelstore.check_digest(found)
    doc = found.doc
    arrays = {}
    for part in ("arrays", "extra_arrays"):
        if isinstance(doc.get(part), dict):
            arrays = _read_npz(found, doc[part])
    if isinstance(doc.get("arrays"), dict):
        pipeline = _from_arrays(found, doc["arrays"], arrays)
    elif isinstance(doc.get("pickle"), dict):
        if not allow_pickle:
            raise _pickle_refused(found.shown, f"{found.folder.name}/{doc['pickle'].get('file')}")
        pipeline = _unpickle(found.file(str(doc["pickle"].get("file"))), doc["pickle"].get("sha256"),
                             found)["pipeline"]
    else:
        raise AnimeFacesError(f"model {found.json_path} names neither arrays nor a pickle; "
                              f"restore it or retrain with `animefaces sweep`")
    from .safemodel import join_extras

    model = TrainedModel(pipeline=pipeline, platt=tuple(doc.get("platt") or (0.0, 0.0)),
                         meta=dict(doc, model_sha256=doc.get("digest")),
                         extras=join_extras(doc.get("extras") or {}, arrays))
    check_answers(model, where=found.json_path)
    return model


def _read_npz(found, part: dict) -> dict:
    """The arrays of ``part`` (``{"file", "sha256"}``), hashed from the bytes that are read."""
    import hashlib
    import io

    fname = str(part.get("file"))
    if "/" in fname or "\\" in fname or fname in ("", ".", ".."):
        raise AnimeFacesError(f"model {found.json_path} names the arrays file {fname!r}; expected "
                              f"a file name in its folder")
    arrays_file = found.file(fname)
    try:
        data = arrays_file.read_bytes()
    except FileNotFoundError:
        raise AnimeFacesError(f"model arrays {arrays_file} are missing (named in "
                              f"{found.json_path.name}); restore the file or retrain with "
                              f"`animefaces sweep`") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != part.get("sha256"):
        raise ModelMismatchError(f"model file {arrays_file} has sha256 {digest[:16]}..., but "
                                 f"{found.json_path.name} says {str(part.get('sha256'))[:16]}...: "
                                 f"the file was changed or damaged; restore it or retrain")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError) as exc:
        raise AnimeFacesError(f"cannot read model arrays {arrays_file}: {exc}") from None


def _from_arrays(found, info: dict, arrays: dict):
    from .safemodel import from_arrays

    try:
        return from_arrays(info, arrays)
    except ValueError as exc:
        raise AnimeFacesError(f"model {found.json_path}: {exc}; the file is damaged or was edited: "
                              f"restore it or retrain with `animefaces sweep`") from None


def _unpickle(model_file: Path, sha256, found) -> dict:
    import joblib

    _check_sha256(model_file, sha256, found.json_path.name)
    try:
        blob = joblib.load(model_file)
    except Exception as exc:  # noqa: BLE001 - corrupt pickles raise anything
        raise AnimeFacesError(f"cannot load model {model_file}: {exc}") from None
    if (not isinstance(blob, dict) or blob.get("format") != MODEL_FORMAT
            or not hasattr(blob.get("pipeline"), "decision_function")):
        raise AnimeFacesError(f"{model_file} is not an animefaces model ({MODEL_FORMAT} with a "
                              f"fitted pipeline)")
    return blob


def _load_legacy(found, *, allow_pickle: bool) -> TrainedModel:
    """A model of the earlier side-by-side format: ``NAME.json`` + ``NAME.npz`` [+ ``.joblib``].
    Its JSON numbers have no digest; they are checked for range, and a note says so."""
    import sys

    meta = found.doc
    info = meta.get("arrays")
    model_file = found.file(str(meta.get("model_file") or found.json_path.with_suffix(".joblib").name))
    if isinstance(info, dict):
        arrays = _read_npz(found, {"file": info.get("file"), "sha256": info.get("sha256")})
        pipeline = _from_arrays(found, info, arrays)
        from .safemodel import join_extras

        model = TrainedModel(pipeline=pipeline, platt=tuple(info.get("platt") or (0.0, 0.0)),
                             meta=meta, extras=join_extras(info.get("extras") or {}, arrays))
    else:
        if not allow_pickle:
            raise _pickle_refused(found.json_path.with_suffix(""), model_file.name)
        blob = _unpickle(model_file, meta.get("model_sha256"), found)
        model = TrainedModel(pipeline=blob["pipeline"], platt=tuple(blob["platt"]), meta=meta,
                             extras=blob.get("extras", {}))
    check_answers(model, where=found.json_path)
    print(f"animefaces: model {found.json_path} was saved by an earlier animefaces: the numbers "
          f"in its JSON have no digest; save it again (animefaces.svm.save_model(load_model(p), "
          f"p)) or retrain to protect them", file=sys.stderr)
    return model


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))


def _walk_numbers(obj, prefix: str):
    """(dotted name, value) of every number inside a JSON-like object."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk_numbers(v, f"{prefix}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _walk_numbers(v, f"{prefix}[{i}]")
    elif isinstance(obj, (int, float, np.number)) and not isinstance(obj, bool):
        yield prefix, obj


def check_answers(model: TrainedModel, *, where) -> None:
    """Refuse a model whose answer-deciding values are out of range: the Platt sigmoid, the
    calibrator, the abstain band, the OOD guard's thresholds, the task's classes, the feature
    width (the SVM's own numbers are checked by safemodel.from_arrays).

    Raises:
        AnimeFacesError: naming the value, what was expected and the fix.
    """
    from .safemodel import n_features, n_outputs

    def bad(name, value, want):
        raise AnimeFacesError(f"model {where}: {name} = {value!r}; expected {want}; the file is "
                              f"damaged or was edited: restore it or retrain with `animefaces sweep`")

    platt = model.platt
    if len(platt) != 2 or not all(_finite(v) for v in platt):
        bad("platt", list(platt), "two finite numbers (a, b)")
    ex = model.extras or {}
    cal = ex.get("calibration")
    if cal:
        if not isinstance(cal, dict) or cal.get("method") not in ("platt", "isotonic"):
            bad("extras.calibration.method", cal.get("method") if isinstance(cal, dict) else cal,
                "platt or isotonic")
        if cal["method"] == "platt":
            for k in ("a", "b"):
                if not _finite(cal.get(k)):
                    bad(f"extras.calibration.{k}", cal.get(k), "a finite number")
        else:
            x, y = cal.get("x"), cal.get("y")
            if (not isinstance(x, list) or not isinstance(y, list) or not x or len(x) != len(y)
                    or not all(_finite(v) for v in x + y)):
                bad("extras.calibration.x/y", "...", "two equally long lists of finite numbers")
            if np.any(np.diff(x) < 0) or not all(0.0 <= v <= 1.0 for v in y):
                bad("extras.calibration", "x/y", "x non-decreasing and every y in [0, 1]")
        clip = cal.get("clip", (0.0, 1.0))
        if (not isinstance(clip, (list, tuple)) or len(clip) != 2 or not all(_finite(v) for v in clip)
                or not 0.0 <= clip[0] <= clip[1] <= 1.0):
            bad("extras.calibration.clip", clip, "[lo, hi] with 0 <= lo <= hi <= 1")
    abstain = ex.get("abstain") or {}
    band = abstain.get("band") if isinstance(abstain, dict) else abstain
    if band is not None and (not isinstance(band, (list, tuple)) or len(band) != 2
                             or not all(_finite(v) for v in band)
                             or not 0.0 <= band[0] <= band[1] <= 1.0):
        bad("extras.abstain.band", band, "[lo, hi] with 0 <= lo <= hi <= 1, or null")
    ood = ex.get("ood")
    if ood:
        if not isinstance(ood, dict):
            bad("extras.ood", type(ood).__name__, "a table of the guard's settings")
        for name, v in _walk_numbers({k: v for k, v in ood.items() if k not in ("info", "train")},
                                     "extras.ood"):
            if not np.isfinite(v):
                bad(name, v, "a finite number")
        for k in ("quantile", "weak_quantile", "max_weak_rate"):
            if k in ood and not (_finite(ood[k]) and 0.0 <= ood[k] <= 1.0):
                bad(f"extras.ood.{k}", ood[k], "a number in [0, 1]")
        if "k" in ood and not (isinstance(ood["k"], int) and not isinstance(ood["k"], bool)
                               and ood["k"] >= 1):
            bad("extras.ood.k", ood["k"], "an integer >= 1")
        train = ood.get("train")
        d = n_features(model.pipeline)
        if train is not None:
            t = np.asarray(train)
            if t.ndim != 2 or (d is not None and t.shape[1] != d) or not np.isfinite(t).all():
                bad("extras.ood.train", f"{t.dtype} {t.shape}",
                    f"finite reference features of shape (n, {d if d is not None else 'd'})")
    meta = model.meta
    task = meta.get("task", "face")
    if task not in ("face", "character"):
        bad("task", task, "face or character")
    k = n_outputs(model.pipeline)
    if task == "character":
        classes = meta.get("classes")
        if (not isinstance(classes, list) or not all(isinstance(c, str) for c in classes)
                or len(set(classes)) != len(classes) or (k is not None and len(classes) != k)):
            bad("classes", classes, f"a list of {k or 'n'} distinct character names")
    elif k is not None and k != 2:
        bad("task", task, f"character (the SVM tells {k} classes apart)")
    feats = meta.get("features", {})  # required by load_with_extractor, not by load_model
    if not isinstance(feats, dict):
        bad("features", type(feats).__name__, "a table describing the features")
    if "backbone" in feats and not isinstance(feats["backbone"], str):
        bad("features.backbone", feats["backbone"], "the name of the backbone it was trained on")
    dim, d = feats.get("feature_dim"), n_features(model.pipeline)
    if dim is not None and d is not None and dim != d:
        bad("features.feature_dim", dim, f"{d}, the width of the model's support vectors")


def _check_sha256(model_file: Path, expected, meta_name: str) -> None:
    """ModelMismatchError unless ``model_file`` hashes to what its JSON (``meta_name``) says."""
    from .weights import sha256_file

    try:
        digest = sha256_file(model_file)
    except FileNotFoundError:
        raise AnimeFacesError(f"model file {model_file} is missing (named in {meta_name}); "
                              f"restore it or retrain with `animefaces sweep`") from None
    if expected != digest:
        raise ModelMismatchError(f"model file {model_file} has sha256 {digest[:16]}..., but "
                                 f"{meta_name} says {str(expected)[:16]}...: "
                                 f"the file was changed or damaged; restore it or retrain")
