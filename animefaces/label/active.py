"""Active learning on cached features: refit, choose the next frames, estimate accuracy honestly.

The loop (used by the labelling page and by ``benchmarks/bench_active_learning.py``):

1. fit an SVM on the frames labelled so far (:func:`fit_svm`: RBF, C=1 on L2-normalised
   features, the sweep's default choice; about a second for a thousand labels on one core);
2. rank the unlabelled frames (:func:`choose`): closest to the decision boundary first
   (``uncertain``), frames on which a second, linear SVM disagrees before those
   (``disagreement``), and every k-th pick drawn at random (``random``, share 0.2 by default);
3. estimate accuracy (:func:`estimate`) on labelled frames **held out from fitting**, by group
   (series / episode) when there are several, counting only frames that were not chosen for being
   hard: uncertainty sampling picks the frames the model gets wrong, so scoring them would
   understate accuracy, and scoring the training frames would overstate it. The random share
   exists so that this estimate has frames to stand on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

PARAMS = {"kernel": "rbf", "C": 1.0, "gamma": "scale"}
COMMITTEE = {"kernel": "linear", "C": 1.0}
# ``picked`` values whose frames are an unbiased sample of the pool: the random share, labels
# that were in the manifest before (no column), and labels taken from folder names.
HONEST = frozenset({"random", "", "folder"})
MIN_PER_CLASS = 2


def can_fit(y: np.ndarray) -> bool:
    """True when ``y`` (0 / 1) has at least two frames of each class."""
    y = np.asarray(y)
    return bool(np.sum(y == 1) >= MIN_PER_CLASS and np.sum(y == 0) >= MIN_PER_CLASS)


def fit_svm(X: np.ndarray, y: np.ndarray, *, params: dict | None = None, seed: int = 0):
    """A fitted ``Pipeline(l2, SVC)`` on (n, d) features and 0 / 1 labels (1 = face)."""
    from ..classify.svm import refit

    return refit(dict(params or PARAMS), np.asarray(X, np.float32), np.asarray(y, int),
                 scaling="l2", cache_size=500, seed=seed)


@dataclass
class Estimate:
    """Accuracy of the current way of fitting, measured on held-out labelled frames.

    Attributes:
        acc, n, se: on the unbiased (``HONEST``) labelled frames that got a held-out prediction
            (acc None when there are none); se: binomial, Laplace-smoothed, >= 1/n.
        acc_all, n_all: the same over every labelled frame (pessimistic: includes the hard ones
            uncertainty sampling chose).
        per_group: {group: {"acc": float, "n": int}} on the unbiased frames.
        how: how frames were held out (``"5-fold by group"``...).
        decision: (n_labelled,) held-out decision values (nan where none), for calibration.
    """

    acc: float | None
    n: int
    se: float
    acc_all: float | None
    n_all: int
    per_group: dict
    how: str
    decision: np.ndarray = field(repr=False, default=None)

    def to_dict(self) -> dict:
        return {"acc": self.acc, "n": self.n, "se": self.se, "acc_all": self.acc_all,
                "n_all": self.n_all, "per_group": self.per_group, "how": self.how}


def _folds(y: np.ndarray, groups: np.ndarray, *, folds: int, seed: int):
    """(train, test) index pairs and how they were made: by group when there are >= 2 groups,
    else stratified by label."""
    from sklearn.model_selection import GroupKFold, StratifiedKFold

    n_groups = len(set(groups.tolist()))
    if n_groups >= 2:
        k = min(folds, n_groups)
        return list(GroupKFold(n_splits=k).split(y, y, groups)), f"{k}-fold by group"
    k = min(folds, int(np.sum(y == 1)), int(np.sum(y == 0)))
    if k < 2:
        return [], "too few labels to hold any out"
    cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return list(cv.split(y, y)), f"{k}-fold stratified (one group only)"


def estimate(X: np.ndarray, y: np.ndarray, groups, honest, *, params: dict | None = None,
             folds: int = 5, seed: int = 0) -> Estimate:
    """Cross-validated accuracy of :func:`fit_svm` on the labelled frames.

    Args:
        X: (n, d) features of the labelled frames; y: (n,) 0 / 1.
        groups: (n,) group of each frame (series, episode; ``""`` when unknown).
        honest: (n,) bool, frames that are an unbiased sample (see ``HONEST``).
    """
    from ..classify.svm import accuracy_se

    y = np.asarray(y, int)
    groups = np.asarray([g or "" for g in groups], dtype=object)
    honest = np.asarray(honest, bool)
    dec = np.full(len(y), np.nan)
    splits, how = _folds(y, groups, folds=folds, seed=seed) if can_fit(y) else ([], "too few labels")
    for tr, te in splits:
        if can_fit(y[tr]):
            dec[te] = fit_svm(X[tr], y[tr], params=params, seed=seed).decision_function(X[te])
    done = ~np.isnan(dec)
    right = (dec >= 0).astype(int) == y
    mask = done & honest
    n = int(mask.sum())
    acc = float(right[mask].mean()) if n else None
    per_group = {}
    for g in sorted(set(groups[mask].tolist())):
        m = mask & (groups == g)
        per_group[g or "(none)"] = {"acc": float(right[m].mean()), "n": int(m.sum())}
    n_all = int(done.sum())
    return Estimate(acc=acc, n=n, se=accuracy_se(acc, n) if n else 0.0,
                    acc_all=float(right[done].mean()) if n_all else None, n_all=n_all,
                    per_group=per_group, how=how, decision=dec)


def start_model_estimate(decision: np.ndarray, y: np.ndarray, groups, honest) -> Estimate:
    """The same numbers for a model trained elsewhere (``--model``): every labelled frame is
    held out from its fitting already."""
    from ..classify.svm import accuracy_se

    y = np.asarray(y, int)
    groups = np.asarray([g or "" for g in groups], dtype=object)
    honest = np.asarray(honest, bool)
    right = (np.asarray(decision) >= 0).astype(int) == y
    n = int(honest.sum())
    acc = float(right[honest].mean()) if n else None
    per_group = {(g or "(none)"): {"acc": float(right[honest & (groups == g)].mean()),
                                   "n": int((honest & (groups == g)).sum())}
                 for g in sorted(set(groups[honest].tolist()))}
    return Estimate(acc=acc, n=n, se=accuracy_se(acc, n) if n else 0.0,
                    acc_all=float(right.mean()) if len(y) else None, n_all=len(y),
                    per_group=per_group, how="the model was trained elsewhere: every labelled "
                                             "frame is held out", decision=np.asarray(decision))


def choose(decision: np.ndarray | None, available: np.ndarray, *, n: int,
           random_share: float = 0.2, rng: np.random.Generator | None = None,
           committee: np.ndarray | None = None) -> list[tuple[int, str]]:
    """The next ``n`` frames to label, with why each was chosen.

    Args:
        decision: (N,) the current model's decision values for every frame (> 0 leans to
            face), or None before there is a model (then every pick is random).
        available: (N,) bool, frames that may be chosen (not labelled, readable).
        random_share: fraction of picks drawn at random (every ``round(1 / share)``-th pick).
        rng: for the random picks.
        committee: (N,) decision values of a second model; frames where its sign differs from
            ``decision`` come first (``disagreement``), then the smallest ``|decision|``.

    Returns:
        ``[(index, reason)]``, reason one of ``uncertain``, ``disagreement``, ``random``.
    """
    rng = rng or np.random.default_rng(0)
    idx = np.flatnonzero(np.asarray(available, bool))
    if not len(idx) or n <= 0:
        return []
    shuffled = rng.permutation(idx)
    if decision is None:
        return [(int(i), "random") for i in shuffled[:n]]
    d = np.asarray(decision, np.float64)[idx]
    disagree = (np.zeros(len(idx), bool) if committee is None
                else (np.asarray(committee)[idx] >= 0) != (d >= 0))
    ranked = idx[np.lexsort((np.abs(d), ~disagree))]
    reason = dict(zip(idx.tolist(), np.where(disagree, "disagreement", "uncertain").tolist()))
    every = 0 if random_share <= 0 else max(1, round(1 / min(1.0, random_share)))
    out: list[tuple[int, str]] = []
    taken: set[int] = set()
    r_iter, a_iter = iter(shuffled.tolist()), iter(ranked.tolist())
    while len(out) < min(n, len(idx)):
        want_random = every and (len(out) % every == every - 1)
        src, why = (r_iter, "random") if want_random else (a_iter, None)
        i = next((j for j in src if j not in taken), None)
        if i is None:  # that source ran dry: take from the other
            src, why = (a_iter, None) if want_random else (r_iter, "random")
            i = next((j for j in src if j not in taken), None)
            if i is None:
                break
        taken.add(i)
        out.append((i, why or reason[i]))
    return out


def plateau(history: list[dict], *, window: int = 3, min_n: int = 30) -> str | None:
    """A "good enough?" hint when the estimate stopped rising, else None.

    Args:
        history: estimates after each refit, oldest first: ``{"labels", "acc", "n", "se"}``.
        window: how many refits must agree with the latest (within its standard error, and
            within 0.01 when that is smaller).
        min_n: the latest estimate must stand on at least this many unbiased frames.
    """
    pts = [h for h in history if h.get("acc") is not None]
    if len(pts) < window + 1 or pts[-1]["n"] < min_n:
        return None
    last = pts[-1]
    tol = max(last["se"], 0.01)
    recent = pts[-(window + 1):]
    if max(p["acc"] for p in recent) - min(p["acc"] for p in recent) > tol:
        return None
    since = last["labels"] - recent[0]["labels"]
    return (f"accuracy has stayed at {last['acc']:.3f} ± {last['se']:.3f} over the last {since} "
            f"labels: good enough? Export and run the sweep, or label on to be sure")
