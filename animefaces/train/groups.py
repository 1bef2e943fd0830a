"""The sweep's group cross-validation: held-out-group scores of every parameter set, stored as
the pseudo-split ``cv`` of each fit (accuracy, positive rate, decision values), so selection,
calibration, the abstain band and the degenerate-model flag read them like a split.
"""

from __future__ import annotations

import numpy as np

from ..config import SweepConfig

POOL = ("train", "val")
CV = "cv"


def pool_mask(split_of: np.ndarray) -> np.ndarray:
    """(n,) bool: the records of the cross-validation pool (train + val), in record order."""
    return np.isin(split_of, POOL)


def add_group_cv(results, feats_X, y_all: np.ndarray, split_of: np.ndarray,
                 groups, y: dict, cfg: SweepConfig, rows) -> dict:
    """Cross-validate the grid by group over train + val and store it as split ``cv``.

    Args:
        results: the grid's :class:`~animefaces.classify.svm.FitResult` list (changed in place:
            ``accuracy["cv"]``, ``positive_rate["cv"]``, ``decision["cv"]``).
        feats_X, y_all, split_of, groups: every record's features (an array, or rows read in
            chunks for a streamed sweep), 0/1 label, split and group.
        y: the sweep's {split: labels}; ``y["cv"]`` is set (pool order: record order).
        rows: ``cfg.kernel_rows()``.

    Returns:
        JSON-ready description: ``used`` (bool: selection is on ``cv``), the fold method, counts
        and the note for the report (why it fell back to val, when it did).
    """
    from ..classify.groupcv import cross_validate_grid, group_folds

    pool = pool_mask(split_of)
    g = [groups[i] for i in np.flatnonzero(pool)]
    gf = group_folds(y_all[pool], g, n_folds=cfg.cv_folds, seed=cfg.seed)
    info = {"used": gf.folds is not None, "method": gf.method, "n_folds": len(gf.folds or []),
            "n_pool": int(pool.sum()), "n_groups": gf.n_groups, "n_ungrouped": gf.n_ungrouped,
            "note": gf.note}
    if gf.folds is None:
        return info
    from ..classify.scalable import select_rows

    cv = cross_validate_grid(select_rows(feats_X, pool), y_all[pool], gf.folds, rows,
                             scaling=cfg.scaling, cache_size=cfg.cache_size, seed=cfg.seed,
                             n_jobs=cfg.n_jobs)
    for r, c in zip(results, cv):
        if (r.row, r.params) != (c.row, c.params):  # same grid, same order: a bug otherwise
            raise RuntimeError(f"group CV result {c.row} {c.params} does not match {r.row} {r.params}")
        r.accuracy[CV] = c.accuracy
        r.positive_rate[CV] = c.positive_rate
        r.decision[CV] = c.decision
    y[CV] = y_all[pool]
    fold_of = np.zeros(int(pool.sum()), np.int64)
    for k, (_, te) in enumerate(gf.folds):
        fold_of[te] = k
    info["fold_sizes"] = np.bincount(fold_of, minlength=len(gf.folds)).tolist()
    return info


def by_source(decision: np.ndarray, p: np.ndarray | None, y: np.ndarray, sources: np.ndarray,
              band) -> dict:
    """Held-out-group accuracy, coverage and risk per data source of the pool (the main data
    set and each ``--train-also`` one): leave-series-out numbers per source."""
    from ..classify.calibration import ece, selective

    out = {}
    for s in dict.fromkeys(sources.tolist()):
        m = sources == s
        entry = {"n": int(m.sum()), "accuracy": round(float(np.mean((decision[m] > 0) == (y[m] == 1))), 5)}
        if p is not None:
            entry.update(selective(p[m], y[m], band), ece=round(ece(p[m], y[m]), 5))
        out[s] = entry
    return out
