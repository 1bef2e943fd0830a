"""SVMs for a season archive: linear and approximate-kernel SVMs whose cost grows linearly with
the number of training images, fitted on features read in chunks.

An exact kernel SVM needs the (n, n) kernel matrix (the grid precomputes it; libsvm caches its
rows): at 50,000 training frames that is 20 GB of float64 and hours of SMO on two cores (see
``benchmarks/bench_svm_scale.py``). The kernels here (:data:`~.kernels.SCALABLE_KERNELS`) never
form it:

* ``linear_svc``: liblinear's L2-regularised, L2-loss linear SVM on the scaled features;
* ``sgd``: a hinge-loss linear SVM trained by averaged SGD, ``epochs`` passes over the training
  rows in chunks (``alpha = 1 / (C * n)``, so ``C`` means what it means for the SVC);
* ``nystroem``: the RBF kernel's Nystroem map from ``n_components`` training rows chosen at
  random (seeded), then a linear SVM (``solver``: ``liblinear`` in memory, or ``sgd``);
* ``poly_sketch``: PolynomialCountSketch of ``(gamma x.y + coef0)^degree``, then a linear SVM.

Features come as an array, a memory map or anything with ``len()``, ``n_features``,
``chunk(start, stop)`` and ``take(indices)`` (:class:`animefaces.features.stream.CachedRows`
reads them from the feature cache's shards without loading them whole). Memory: the ``sgd``
solver holds one chunk (a mapped training set is written once to a temporary file and read
back in chunks); ``liblinear`` holds the (n, width) training matrix, which liblinear copies again
(16 bytes a value): what that solver needs.

The result is a plain scikit-learn ``Pipeline(scale, map, svm)``, binary (classes 0 / 1),
saved pickle-free by :mod:`.linear`.
"""

from __future__ import annotations

import tempfile
import time
import warnings

import numpy as np

from ..errors import ConfigError
from .kernels import SCALABLE_KERNELS, gamma_value

CHUNK_ROWS = 16384
DEFAULT_COMPONENTS = {"nystroem": 1000, "poly_sketch": 2048}
DEFAULT_EPOCHS = 10


class ArrayRows:
    """Rows of an in-memory or memory-mapped (n, d) array, handed out in float64 chunks."""

    def __init__(self, X):
        self.X = X

    def __len__(self) -> int:
        return len(self.X)

    @property
    def n_features(self) -> int:
        return int(self.X.shape[1])

    def chunk(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self.X[start:stop], np.float64)

    def take(self, indices) -> np.ndarray:
        return np.asarray(self.X[np.asarray(indices)], np.float64)


class _FileRows:
    """Rows written once to a float32 file and read back a chunk at a time with plain reads
    (not a memory map, whose touched pages would count as this process's memory)."""

    def __init__(self, path: str, width: int):
        self.path, self.width, self.n = path, width, 0
        self._f = open(path, "wb")

    def append(self, Z: np.ndarray) -> None:
        self._f.write(np.ascontiguousarray(Z, np.float32).tobytes())
        self.n += len(Z)

    def close(self) -> None:
        self._f.close()

    def __len__(self) -> int:
        return self.n

    @property
    def n_features(self) -> int:
        return self.width

    def chunk(self, start: int, stop: int) -> np.ndarray:
        rows = np.fromfile(self.path, dtype=np.float32, count=(stop - start) * self.width,
                           offset=start * self.width * 4)
        return rows.reshape(stop - start, self.width).astype(np.float64)


def select_rows(X, indices):
    """Rows ``indices`` (ints or a bool mask) of an array, or a view of them for rows read in
    chunks (:meth:`~animefaces.features.stream.CachedRows.subset`: nothing is read)."""
    return X.subset(indices) if hasattr(X, "subset") else X[indices]


def as_rows(X):
    """``X`` as rows readable in chunks (arrays and memory maps are wrapped)."""
    return X if hasattr(X, "chunk") else ArrayRows(X)


def _spans(n: int, size: int):
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def _fit_scaler(scaling: str, rows, chunk_rows: int):
    from sklearn.preprocessing import Normalizer, StandardScaler

    if scaling == "none":
        return None
    if scaling == "l2":
        return Normalizer(norm="l2").fit(rows.chunk(0, min(len(rows), 2)))
    scaler = StandardScaler()
    for a, b in _spans(len(rows), chunk_rows):
        scaler.partial_fit(rows.chunk(a, b))
    return scaler


def _variance(rows, scaler, chunk_rows: int) -> float:
    """Var of every value of the scaled training matrix (what SVC's gamma="scale" uses)."""
    total = sq = 0.0
    for a, b in _spans(len(rows), chunk_rows):
        Z = rows.chunk(a, b) if scaler is None else scaler.transform(rows.chunk(a, b))
        total += float(Z.sum())
        sq += float(np.einsum("ij,ij->", Z, Z))
    count = len(rows) * rows.n_features
    return max(sq / count - (total / count) ** 2, 0.0)


def _fit_map(params: dict, rows, scaler, seed: int, chunk_rows: int):
    """The fitted feature map of ``params`` (None for the linear kernels)."""
    kernel = params["kernel"]
    if kernel in ("linear_svc", "sgd"):
        return None
    from sklearn.kernel_approximation import Nystroem, PolynomialCountSketch

    n, d = len(rows), rows.n_features
    gamma = params.get("gamma", "scale")
    if gamma in ("scale", "auto"):
        gamma = gamma_value(gamma, n_features=d,
                            variance=_variance(rows, scaler, chunk_rows) if gamma == "scale" else 0)
    m = int(params.get("n_components", DEFAULT_COMPONENTS[kernel]))

    def scale(Z):
        return Z if scaler is None else scaler.transform(Z)

    if kernel == "nystroem":
        # The basis: m training rows, chosen with the seed (read directly, not the whole set).
        rng = np.random.RandomState(seed)
        idx = np.sort(rng.choice(n, size=min(m, n), replace=False))
        return Nystroem(kernel="rbf", gamma=float(gamma), n_components=len(idx),
                        random_state=seed).fit(scale(rows.take(idx)))
    return PolynomialCountSketch(degree=int(params.get("degree", 3)), gamma=float(gamma),
                                 coef0=float(params.get("coef0", 0.0)), n_components=m,
                                 random_state=seed).fit(scale(rows.chunk(0, min(n, 2))))


def _transform(scaler, mapper, Z: np.ndarray) -> np.ndarray:
    if scaler is not None:
        Z = scaler.transform(Z)
    return Z if mapper is None else mapper.transform(Z)


def _check_labels(y: np.ndarray, n: int) -> np.ndarray:
    y = np.asarray(y)
    if len(y) != n:
        raise ValueError(f"{len(y)} labels for {n} feature rows")
    labels = set(np.unique(y).tolist())
    if labels != {0, 1}:
        raise ConfigError(f"the scalable kernels ({', '.join(SCALABLE_KERNELS)}) tell two classes "
                         f"apart (labels 0 and 1); got labels {sorted(labels)}: use an exact "
                         f"kernel (linear, rbf, poly, sigmoid) for more classes")
    return y.astype(np.int64)


def fit(params: dict, X, y, *, scaling: str = "l2", seed: int = 0,
        chunk_rows: int = CHUNK_ROWS):
    """Fit one scalable parameter set (``{"kernel": "nystroem", "C": 1.0, ...}``).

    Args:
        X: (n, d) features: an array, a memory map, or rows readable in chunks (see
            :func:`as_rows`).
        y: (n,) labels, 0 / 1 (1 = face).
        scaling: ``l2``, ``standard`` or ``none``, as for the exact SVMs.
        chunk_rows: rows per chunk read from ``X``.

    Returns:
        A fitted ``Pipeline([("scale", ...), ("map", ...), ("svm", LinearSVC | SGDClassifier)])``.
    """
    from sklearn.linear_model import SGDClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.svm import LinearSVC

    kernel = params["kernel"]
    if kernel not in SCALABLE_KERNELS:
        raise ValueError(f"kernel {kernel!r} is not a scalable one; choose one of: "
                         f"{', '.join(SCALABLE_KERNELS)}")
    rows = as_rows(X)
    n = len(rows)
    y = _check_labels(y, n)
    scaler = _fit_scaler(scaling, rows, chunk_rows)
    mapper = _fit_map(params, rows, scaler, seed, chunk_rows)
    C = float(params.get("C", 1.0))
    solver = {"linear_svc": "liblinear", "sgd": "sgd"}.get(kernel, params.get("solver", "liblinear"))
    spans = _spans(n, chunk_rows)
    if solver == "liblinear":
        Z = np.concatenate([_transform(scaler, mapper, rows.chunk(a, b)) for a, b in spans])
        clf = LinearSVC(C=C, dual="auto", random_state=seed, max_iter=5000)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning: visible in the accuracies
            clf.fit(Z, y)
        del Z
    else:
        clf = SGDClassifier(loss="hinge", alpha=1.0 / (C * n), average=True, random_state=seed,
                            learning_rate="optimal")
        epochs = int(params.get("epochs", DEFAULT_EPOCHS))
        rng = np.random.default_rng(seed)
        with tempfile.TemporaryDirectory(prefix="animefaces-sgd-") as tmp:
            source = rows
            if mapper is not None or scaler is not None:
                # Map (and scale) once into a temporary file, not once per epoch.
                source = _FileRows(f"{tmp}/z.f32", mapper.n_components if mapper is not None
                                   else rows.n_features)
                for a, b in spans:
                    source.append(_transform(scaler, mapper, rows.chunk(a, b)))
                source.close()
            for _ in range(epochs):
                for k in rng.permutation(len(spans)):
                    a, b = spans[k]
                    perm = rng.permutation(b - a)
                    clf.partial_fit(source.chunk(a, b)[perm], y[a:b][perm], classes=[0, 1])
            del source
    steps = [("scale", scaler if scaler is not None else "passthrough"),
             ("map", mapper if mapper is not None else "passthrough"), ("svm", clf)]
    return Pipeline(steps)


def decision_function(pipeline, X, *, chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
    """(n,) float64 decision values of a fitted pipeline on rows read in chunks."""
    rows = as_rows(X)
    if not len(rows):
        return np.zeros(0)
    return np.concatenate([pipeline.decision_function(rows.chunk(a, b)).astype(np.float64)
                           for a, b in _spans(len(rows), chunk_rows)])


def fit_and_score(params: dict, X: dict, y: dict, *, scaling: str = "l2", seed: int = 0,
                  chunk_rows: int = CHUNK_ROWS) -> dict:
    """Fit on ``X["train"]`` and score every split (for the grid).

    Returns:
        ``{"pipeline", "fit_seconds", "predict_seconds", "accuracy", "positive_rate",
        "decision"}`` (the last three per split, decision values (n,) float64).
    """
    t0 = time.perf_counter()
    pipe = fit(params, X["train"], y["train"], scaling=scaling, seed=seed, chunk_rows=chunk_rows)
    t1 = time.perf_counter()
    acc, pos, dec = {}, {}, {}
    for split, Xs in X.items():
        if len(Xs):
            d = decision_function(pipe, Xs, chunk_rows=chunk_rows)
            pred = (d > 0).astype(np.int64)
            acc[split] = float(np.mean(pred == np.asarray(y[split])))
            pos[split] = float(np.mean(pred == 1))
            dec[split] = d
    return {"pipeline": pipe, "fit_seconds": t1 - t0, "predict_seconds": time.perf_counter() - t1,
            "accuracy": acc, "positive_rate": pos, "decision": dec}
