"""Group cross-validation of the SVM grid: how each parameter set does on groups (series,
sources, videos) it was not trained on.

A val split drawn from the same anime as train measures "more of the same" (0.996-1.000 for
every kernel on the shared mini set), so model selection, calibration and the abstain band
fitted on it learn the confidence of same-anime answers. Here every image of the pool (train +
val) is scored by models that saw none of its group: the out-of-fold decision values are what
selection, Platt / isotonic, the abstain band and the degenerate-model flag are fitted on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Below this many groups a "held-out group" fold is one or two series: too few to choose on.
MIN_GROUPS = 3


@dataclass
class GroupFolds:
    """Fold assignment of the pool, or why there is none.

    Attributes:
        folds: ``[(train_idx, test_idx)]`` into the pool, or None (fall back to val).
        method: ``StratifiedGroupKFold`` / ``GroupKFold`` / None.
        n_groups: distinct groups in the pool (images without a group count one each).
        n_ungrouped: images without a group (each its own group: not leave-series-out).
        note: one sentence for the report.
    """

    folds: list | None
    method: str | None
    n_groups: int
    n_ungrouped: int
    note: str


def pool_groups(groups) -> tuple[np.ndarray, int]:
    """Group labels for the pool, with an image without a group standing for itself.

    Returns:
        ((n,) object array of group names, number of images without a group).
    """
    g = np.array([("" if x is None else str(x)) for x in groups], dtype=object)
    missing = g == ""
    g[missing] = [f"\0image-{i}" for i in np.flatnonzero(missing)]
    return g, int(missing.sum())


def group_folds(y, groups, *, n_folds: int = 5, seed: int = 0) -> GroupFolds:
    """Folds that hold out whole groups, stratified by label where the groups allow it.

    ``StratifiedGroupKFold`` first (each fold's class balance close to the pool's); if one of its
    training parts would lack a class, plain ``GroupKFold``; if that fails too, or there are
    fewer than :data:`MIN_GROUPS` real groups, no folds (the sweep falls back to val).

    Args:
        y: (n,) 0/1 labels of the pool.
        groups: (n,) group names (None / "" for images without one).
        n_folds: at most this many folds (fewer when there are fewer groups).
    """
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    y = np.asarray(y)
    g, n_missing = pool_groups(groups)
    n_real = len({x for x in g.tolist() if not x.startswith("\0")})
    n_groups = len(set(g.tolist()))
    if n_real < MIN_GROUPS:
        return GroupFolds(None, None, n_groups, n_missing,
                          f"{n_real} group(s) in train + val, fewer than {MIN_GROUPS}: models chosen "
                          f"and calibrated on the val split (same groups as train)")
    k = int(min(n_folds, n_groups))

    def usable(folds) -> bool:
        return all(len(np.unique(y[tr])) == 2 and len(te) for tr, te in folds)

    for name, splitter in (
            ("StratifiedGroupKFold", StratifiedGroupKFold(k, shuffle=True, random_state=seed)),
            ("GroupKFold", GroupKFold(k))):
        try:
            folds = list(splitter.split(np.zeros(len(y)), y, g))
        except ValueError:
            continue
        if usable(folds):
            note = (f"{k}-fold {name} over {n_real} groups of train + val: every image scored by "
                    f"a model that saw none of its group")
            if n_missing:
                note += (f"; {n_missing} image(s) without a group count as one group each (that "
                         f"part is not leave-series-out)")
            return GroupFolds(folds, name, n_groups, n_missing, note)
    return GroupFolds(None, None, n_groups, n_missing,
                      f"no {k}-fold split by group leaves both classes in every training part: "
                      f"models chosen and calibrated on the val split")


@dataclass
class CVResult:
    """One parameter set's out-of-fold results on the pool."""

    row: str
    params: dict
    accuracy: float
    positive_rate: float
    decision: np.ndarray = field(repr=False)  # (n_pool,) out-of-fold decision values


def cross_validate_grid(X, y, folds, rows, *, scaling: str = "l2", cache_size: float = 2000,
                        seed: int = 0, n_jobs: int = 0) -> list[CVResult]:
    """Out-of-fold decision values of every parameter set of ``rows`` on the pool.

    Each fold is one :func:`animefaces.classify.svm.fit_grid` call (the scaler and ``gamma =
    "scale"`` fitted on that fold's training part, as a model trained there would be).

    Args:
        X: (n, d) pool features (or, for the scalable kernels, rows read in chunks); y: (n,)
            0/1; folds: from :func:`group_folds`.
        rows: ``SweepConfig.kernel_rows()``.

    Returns:
        One :class:`CVResult` per parameter set, in the order :func:`fit_grid` returns them.
    """
    from .scalable import select_rows
    from .svm import fit_grid

    X = X if hasattr(X, "chunk") else np.asarray(X)  # rows read in chunks stay a view
    y = np.asarray(y)
    oof: list[np.ndarray] | None = None
    meta = None
    for tr, te in folds:
        res = fit_grid({"train": select_rows(X, tr), "heldout": select_rows(X, te)},
                       {"train": y[tr], "heldout": y[te]}, rows, scaling=scaling,
                       cache_size=cache_size, seed=seed, n_jobs=n_jobs)
        if oof is None:
            oof = [np.full(len(y), np.nan) for _ in res]
            meta = [(r.row, r.params) for r in res]
        for o, r in zip(oof, res):
            o[te] = r.decision["heldout"]
    out = []
    for (row, params), d in zip(meta, oof):
        pred = (d > 0).astype(np.int64)
        out.append(CVResult(row=row, params=params, accuracy=float(np.mean(pred == y)),
                            positive_rate=float(np.mean(pred == 1)), decision=d))
    return out
