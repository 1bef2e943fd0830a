"""SVM grids on cached features: build, fit (in parallel), score, and persist classifiers.

Scaling (``l2`` / ``standard`` / ``none``) is part of the saved pipeline, so a loaded model applies
exactly what it was trained with. Scores are turned into P(face) by a sigmoid fitted on the
validation split (Platt scaling), never on test data.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .kernels import from_gram, gamma_value, is_exact


def make_pipeline(params: dict, *, scaling: str = "l2", cache_size: float = 2000, seed: int = 0):
    """An unfitted ``Pipeline(scale, SVC)`` for one parameter set (e.g. ``{"kernel": "rbf", "C": 1}``);
    exact kernels only (the scalable ones are fitted in chunks: :func:`refit`)."""
    if not is_exact(params.get("kernel", "rbf")):
        raise ValueError(f"kernel {params['kernel']!r} is fitted in chunks, not as one pipeline: "
                         f"use refit(params, X, y) or animefaces.classify.scalable.fit")
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
    return gamma_value(gamma, n_features=Xtrain.shape[1], variance=float(Xtrain.var()))


def _fit_precomputed(row, params, Xs, y, grams, sq, cache_size, seed):
    import warnings

    from sklearn.svm import SVC

    gamma = _gamma(params.get("gamma", "scale"), Xs["train"])
    t0 = time.perf_counter()
    K = {s: from_gram(params["kernel"], grams[s], sq[s], sq["train"], gamma=gamma,
                      degree=params.get("degree", 3), coef0=params.get("coef0", 0.0)) for s in Xs}
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

    Scalable rows (``linear_svc``, ``sgd``, ``nystroem``, ``poly_sketch``; see
    :mod:`.scalable`) never form a kernel matrix: they are fitted one after another on features
    read in chunks, and when the grid has only such rows no Gram matrix is computed. Exact rows
    whose kernel matrices would not fit in memory are refused (ConfigError) before any fit.

    Args:
        X: {split: (n, d) float32}; must contain ``train`` and ``val``.
        y: {split: (n,) int} with 1 = face.
        rows: ``SweepConfig.kernel_rows()``.
        n_jobs: parallel fits (0 = one per CPU core).
    """
    from joblib import Parallel, delayed

    jobs = [(row, p) for row, _fixed, combos in rows for p in combos]
    exact = [i for i, (_, p) in enumerate(jobs) if is_exact(p["kernel"])]
    if exact:
        _check_exact_size(X, n_jobs)  # before any fit: a refusal costs nothing
    back = [None] * len(jobs)
    for i in range(len(jobs)):
        if i not in exact:
            back[i] = _fit_scalable(jobs[i][0], jobs[i][1], X, y, scaling, seed)
    if not exact:
        return back  # no Gram matrix: the scalable kernels never form one
    Xs = _scaled(X, scaling)
    grams = {s: Xs[s] @ Xs["train"].T for s in Xs}
    sq = {s: np.einsum("ij,ij->i", Xs[s], Xs[s]) for s in Xs}
    n = (os.cpu_count() or 1) if n_jobs == 0 else n_jobs
    # Slow fits (high-degree polynomials) first, so the pool does not end on a straggler.
    order = sorted(exact, key=lambda i: -jobs[i][1].get("degree", 1))
    out = Parallel(n_jobs=min(n, len(order)), prefer="threads")(
        delayed(_fit_precomputed)(jobs[i][0], jobs[i][1], Xs, y, grams, sq, cache_size, seed)
        for i in order)
    for i, res in zip(order, out):
        back[i] = res
    return back


def _fit_scalable(row, params, X, y, scaling, seed) -> FitResult:
    from .scalable import fit_and_score

    r = fit_and_score(params, X, y, scaling=scaling, seed=seed)
    return FitResult(row=row, params=params, accuracy=r["accuracy"], fit_seconds=r["fit_seconds"],
                     predict_seconds=r["predict_seconds"], positive_rate=r["positive_rate"],
                     decision=r["decision"])


def _check_exact_size(X: dict, n_jobs: int) -> None:
    """Refuse exact-kernel rows whose kernel matrices would not fit in memory (a clear error
    instead of the machine swapping or the process being killed)."""
    n_train = len(X["train"])
    n_all = sum(len(v) for v in X.values())
    threads = min(2, (os.cpu_count() or 1) if n_jobs == 0 else max(n_jobs, 1))
    need = 8.0 * n_all * n_train * (1 + threads)  # the Gram matrices + one kernel per fit in flight
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if need > 0.6 * have:
        from ..errors import ConfigError

        raise ConfigError(
            f"exact-kernel SVMs on {n_train:,} training images need their {n_all:,} x "
            f"{n_train:,} kernel matrices ({need / 2**30:.0f} GiB; this machine has "
            f"{have / 2**30:.0f} GiB): use the scalable kernels in the [[svm.grid]] (linear_svc, "
            f"sgd, nystroem, poly_sketch: README 'SVMs at scale'), or fewer training images")


def refit(params: dict, X_train: np.ndarray, y_train: np.ndarray, *, scaling="l2",
          cache_size=2000, seed=0):
    """A stand-alone fitted ``Pipeline(scale, SVC)`` for one parameter set (for saving); for a
    scalable kernel the ``Pipeline(scale, map, linear SVM)`` of :func:`.scalable.fit` (the same
    model as the grid's, seeded)."""
    import warnings

    if not is_exact(params.get("kernel", "rbf")):
        from .scalable import fit

        return fit(params, X_train, y_train, scaling=scaling, seed=seed)

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
                     balanced: float = 0.4, margin: float = 0.05,
                     on: str = "val") -> tuple[list[str], dict]:
    """Flags for a model that has learnt (almost) nothing.

    ``one_class``: on some balanced split (the rarer label is at least ``balanced`` of it) the
    model predicts one class for at least ``one_class`` of the images. ``near_majority``: its
    accuracy on ``on`` (``val``, or ``cv``: held-out groups) is within ``margin`` of always
    answering the majority label there.

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
    if on in result.accuracy and y.get(on) is not None and len(y[on]):
        majority = float(max(np.mean(y[on] == 1), np.mean(y[on] == 0)))
        if result.accuracy[on] <= majority + margin:
            flags.append(FLAG_NEAR_MAJORITY)
            details[FLAG_NEAR_MAJORITY] = {f"{on}_accuracy": round(result.accuracy[on], 4),
                                           f"{on}_majority_rate": round(majority, 4)}
    return flags, details


def link_model(path: os.PathLike | str, target: os.PathLike | str) -> Path:
    """Make the name ``path`` (e.g. ``models/best``) load the model saved as ``target``, with
    one atomic replace of ``PATH.json``; returns it. See :func:`animefaces.classify.modelstore.link`."""
    from .modelstore import link

    return link(path, target)
