"""Calibrated P(face), calibration metrics, and the abstain band.

An SVM's decision value is a margin, not a probability. This module maps it to P(face) with a
calibrator fitted on the validation split (never on test or distinct): Platt's sigmoid or an
isotonic (monotone step) map, chosen by out-of-fold Brier score on val. It also measures how far
probabilities can be trusted (ECE, Brier, reliability bins, risk-coverage) and chooses the band
of P(face) inside which a prediction is answered ``unsure``.

Calibrators are stored as plain numbers (``{"method": "platt", "a": .., "b": ..}`` or
``{"method": "isotonic", "x": [..], "y": [..]}``), so a saved model does not depend on a
scikit-learn class layout.
"""

from __future__ import annotations

import numpy as np

METHODS = ("auto", "platt", "isotonic")


# -- metrics ---------------------------------------------------------------------------------------
def ece(p, y, *, n_bins: int = 15) -> float:
    """Expected calibration error of P(face): ``sum_b n_b / n * |mean(y_b) - mean(p_b)|`` over
    ``n_bins`` equal-width bins of P(face) in [0, 1] (the binary, class-1 form).

    Args:
        p: (n,) P(face) in [0, 1].
        y: (n,) 1 = face, 0 = no face.
    """
    p = np.asarray(p, np.float64)
    y = np.asarray(y, np.float64)
    if len(p) == 0:
        return float("nan")
    b = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    n = np.bincount(b, minlength=n_bins)
    sp = np.bincount(b, weights=p, minlength=n_bins)
    sy = np.bincount(b, weights=y, minlength=n_bins)
    return float(np.sum(np.abs(sy - sp)) / len(p))


def brier(p, y) -> float:
    """Mean squared error of P(face) against the 0/1 label (0 is perfect; 0.25 is a coin)."""
    p = np.asarray(p, np.float64)
    return float(np.mean((p - np.asarray(y, np.float64)) ** 2)) if len(p) else float("nan")


def reliability(p, y, *, n_bins: int = 15) -> dict:
    """Per-bin counts, mean P(face) and fraction of faces (for reliability diagrams)."""
    p = np.asarray(p, np.float64)
    y = np.asarray(y, np.float64)
    b = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    n = np.bincount(b, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(b, weights=p, minlength=n_bins) / n
        frac = np.bincount(b, weights=y, minlength=n_bins) / n
    return {"edges": np.linspace(0, 1, n_bins + 1).tolist(), "count": n.tolist(),
            "mean_p": [None if not c else float(v) for c, v in zip(n, mean_p)],
            "frac_face": [None if not c else float(v) for c, v in zip(n, frac)]}


def sigmoid(z) -> np.ndarray:
    """The logistic function 1 / (1 + e^-z), (n,) float64; z clipped to +-500 (no overflow)."""
    return 1.0 / (1.0 + np.exp(-np.clip(np.asarray(z, np.float64), -500, 500)))


def raw_probability(decision) -> np.ndarray:
    """The uncalibrated baseline: the logistic function of the SVM decision value."""
    return sigmoid(decision)


# -- calibrators -----------------------------------------------------------------------------------
def _fit_platt(s, y, w=None) -> dict:

    a, b = platt_fit(np.asarray(s, np.float64), np.asarray(y), weights=w)
    return {"method": "platt", "a": a, "b": b}


def _fit_isotonic(s, y, w=None) -> dict:
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
    iso.fit(np.asarray(s, np.float64), np.asarray(y, np.float64), sample_weight=w)
    return {"method": "isotonic", "x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()}


# Isotonic regression needs errors to learn from: on a val split the model (almost) separates, it
# fits a step from exactly 0 to exactly 1, and every image of an unseen anime on the wrong side
# then shows P = 0.000 or 1.000. ``auto`` therefore considers isotonic only with at least this
# many val errors (misclassified at decision 0); below that, Platt's two parameters.
ISOTONIC_MIN_ERRORS = 10


# P(face) is kept inside [P_CLIP, 1 - P_CLIP]: a calibrator must not claim certainty (exactly 0 or
# 1) for an image far from the boundary, which for an image of an anime never seen may well be
# wrong. Fixed rather than tied to the val size: a (n+1)/(n+2) bound put every answer of a model
# with a small val split inside the abstain band.
P_CLIP = 1e-4


def _clip_range(y) -> list[float]:
    return [P_CLIP, 1.0 - P_CLIP]


def apply_calibrator(cal: dict, decision) -> np.ndarray:
    """P(face) for SVM decision values, (n,) float64, inside the calibrator's ``clip`` range."""
    s = np.asarray(decision, np.float64)
    if cal["method"] == "platt":
        p = sigmoid(-(cal["a"] * s + cal["b"]))  # Platt's P = 1 / (1 + exp(a*s + b))
    elif cal["method"] == "isotonic":
        # The same piecewise-linear map (clipped at both ends) as IsotonicRegression.predict.
        p = np.interp(s, np.asarray(cal["x"]), np.asarray(cal["y"]))
    else:
        raise ValueError(f"unknown calibrator {cal.get('method')!r}; choose one of: platt, isotonic")
    lo, hi = cal.get("clip", (0.0, 1.0))
    return np.clip(p, lo, hi)


_FITTERS = {"platt": _fit_platt, "isotonic": _fit_isotonic}


def out_of_fold(decision, y, *, method: str, folds: int = 5, seed: int = 0,
                weights=None) -> np.ndarray | None:
    """P(face) for each val image from a calibrator fitted on the other folds (stratified),
    with per-image ``weights`` in the fits when given.

    Returns None when a class has fewer images than ``folds`` (too few to cross-validate).
    """
    from sklearn.model_selection import StratifiedKFold

    s = np.asarray(decision, np.float64)
    y = np.asarray(y)
    if min(np.sum(y == 0), np.sum(y == 1)) < folds or folds < 2:
        return None
    oof = np.empty(len(s))
    for tr, te in StratifiedKFold(folds, shuffle=True, random_state=seed).split(s.reshape(-1, 1), y):
        oof[te] = apply_calibrator(_FITTERS[method](s[tr], y[tr], None if weights is None
                                                    else np.asarray(weights)[tr]), s[te])
    return oof


def fit_calibrator(decision, y, *, method: str = "auto", folds: int = 5, seed: int = 0,
                   weights=None):
    """Fit the score-to-P(face) map on validation decision values.

    ``auto`` compares Platt and isotonic by out-of-fold Brier score on val (``folds``-fold,
    stratified, seeded) and keeps Platt (2 parameters) unless isotonic is better by more than one
    standard error of the paired per-image difference: the one-SE rule used for model selection.
    The chosen method is then refitted on all of val.

    Args:
        decision: (n,) SVM decision values on val.
        y: (n,) 1 = face.
        method: ``auto``, ``platt`` or ``isotonic``.
        weights: (n,) per-image weights for the fits and the Brier comparison (e.g. each group
            of held-out series weighing the same), or None.

    Returns:
        (calibrator dict, info dict with the out-of-fold Brier scores, the reason for the choice,
        and ``oof``: the chosen method's out-of-fold P(face) on val, or None).
    """
    if method not in METHODS:
        raise ValueError(f"calibration method {method!r}; choose one of: {', '.join(METHODS)}")
    s = np.asarray(decision, np.float64)
    y = np.asarray(y)
    w = np.ones(len(s)) if weights is None else np.asarray(weights, np.float64) * len(s) / np.sum(weights)
    oof = {m: out_of_fold(s, y, method=m, folds=folds, seed=seed, weights=weights)
           for m in ("platt", "isotonic")}
    cv = {m: (float(np.average((o - y) ** 2, weights=w)) if o is not None else None)
          for m, o in oof.items()}
    errors = int(np.sum((s > 0) != (y == 1)))
    if method == "auto":
        if oof["platt"] is None:
            chosen, why = "platt", f"val too small to cross-validate ({folds} folds); Platt (2 parameters) by default"
        elif errors < ISOTONIC_MIN_ERRORS:
            chosen, why = "platt", (f"{errors} val error(s), fewer than the {ISOTONIC_MIN_ERRORS} "
                                    f"isotonic needs (it would map a separable val split to 0 / 1); "
                                    f"Platt (2 parameters)")
        else:
            d = ((oof["isotonic"] - y) ** 2 - (oof["platt"] - y) ** 2) * w
            se = float(np.std(d, ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0
            if d.mean() < -se:
                chosen, why = "isotonic", (f"isotonic beats Platt on out-of-fold val Brier by "
                                           f"{-d.mean():.5f} > 1 SE ({se:.5f})")
            else:
                chosen, why = "platt", (f"isotonic is not better than Platt by more than 1 SE on "
                                        f"out-of-fold val Brier ({cv['isotonic']:.5f} vs "
                                        f"{cv['platt']:.5f}, SE {se:.5f})")
    else:
        chosen, why = method, "set in the config"
    cal = dict(_FITTERS[chosen](s, y, weights), clip=_clip_range(y))
    chosen_oof = oof[chosen]
    if chosen_oof is not None:
        chosen_oof = np.clip(chosen_oof, *cal["clip"])
    return cal, {"method": chosen, "reason": why, "folds": folds, "cv_brier": cv,
                 "val_errors": errors, "oof": chosen_oof}


def evaluate(decision: dict, y: dict, cal: dict, *, n_bins: int = 15,
             splits=("val", "test", "distinct"), fit_on: str = "val") -> dict:
    """ECE and Brier per split, before (logistic of the raw score) and after calibration, plus
    Platt and isotonic fitted on ``fit_on`` for comparison. ``fit_on`` numbers are in-sample for
    the calibrators."""
    out = {}
    alt = {}
    for m in ("platt", "isotonic"):
        try:
            alt[m] = _FITTERS[m](decision[fit_on], y[fit_on])
        except ValueError:
            pass
    for s in splits:
        if s not in decision or not len(decision[s]):
            continue
        probs = {"raw": raw_probability(decision[s]), "calibrated": apply_calibrator(cal, decision[s])}
        probs.update({m: apply_calibrator(c, decision[s]) for m, c in alt.items()})
        out[s] = {k: {"ece": round(ece(p, y[s], n_bins=n_bins), 5), "brier": round(brier(p, y[s]), 5)}
                  for k, p in probs.items()}
        out[s]["n"] = int(len(y[s]))
    return out


# -- abstention -----------------------------------------------------------------------------------
def choose_band(p_val, y_val, *, target: float, threshold: float = 0.5) -> tuple[tuple[float, float], str]:
    """The P(face) band ``(lo, hi)`` inside which a prediction is answered ``unsure``.

    Two conditions, each enforced on its side of ``threshold``:

    1. per prediction: answer only when the calibrated chance of being right is at least
       ``target`` (``p >= target`` for face, ``p <= 1 - target`` for no face);
    2. on val (pass out-of-fold P(face), so the calibrator has not seen the image): the answered
       predictions on each side must reach precision ``target``; the band widens until they do.
       Only checked when a side has at least ``1 / (1 - target)`` answered val images, the fewest
       at which one error is measurable.

    Returns:
        ((lo, hi), a sentence saying how the band was chosen).
    """
    if not 0.5 <= target < 1.0:
        raise ValueError(f"abstain target precision {target!r}: use a number in [0.5, 1)")
    hi, lo = max(target, threshold), min(1.0 - target, threshold)
    notes = [f"answer only when calibrated P(correct) >= {target:g}"]
    if p_val is not None and len(p_val):
        p = np.asarray(p_val, np.float64)
        y = np.asarray(y_val)
        need = int(np.ceil(1.0 / (1.0 - target)))
        for side in ("face", "no_face"):
            # The band's own edge first; widen only when precision there misses the target.
            edge = hi if side == "face" else lo
            rest = np.unique(p[p > hi]) if side == "face" else np.unique(p[p < lo])[::-1]
            cand = np.concatenate([[edge], rest])
            for t in cand:
                acc = p >= t if side == "face" else p <= t
                if acc.sum() < need:
                    break
                prec = np.mean(y[acc] == (1 if side == "face" else 0))
                if prec >= target:
                    if side == "face" and t > hi:
                        notes.append(f"face side raised to {t:.4f} for val precision {prec:.3f}")
                        hi = float(t)
                    if side == "no_face" and t < lo:
                        notes.append(f"no-face side lowered to {t:.4f} for val precision {prec:.3f}")
                        lo = float(t)
                    break
            else:
                if len(cand) and np.sum(p >= hi if side == "face" else p <= lo) >= need:
                    notes.append(f"{side} side: val precision never reaches {target:g}")
    return (float(lo), float(hi)), "; ".join(notes)


def choose_risk_band(p_oof, y, *, max_risk: float, weights=None) -> tuple[tuple[float, float], str]:
    """The band ``(1 - c, c)`` that answers the most out-of-fold predictions (the most confident
    first, confidence ``max(p, 1 - p)``) while their error rate stays <= ``max_risk``.

    Fitted on held-out groups, this is the rule "answer as many frames of unseen series as
    possible, at a measured error rate among the answered": where the precision rule of
    :func:`choose_band` (every answer at calibrated P(correct) >= 0.95) answered 72% of the
    held-out episode frames, this one answers where the calibrated scores are still almost
    always right.

    Args:
        p_oof: (n,) out-of-fold P(face) (each image scored by a calibrator that did not see it).
        y: (n,) 0/1 labels.
        max_risk: the error rate allowed among the answered, in (0, 0.5).
        weights: (n,) per-image weights of the error rate (e.g. each held-out group weighing the
            same), or None.

    Returns:
        ((lo, hi), a sentence saying how the band was chosen).
    """
    if not 0.0 < max_risk < 0.5:
        raise ValueError(f"abstain risk {max_risk!r}: use a number in (0, 0.5)")
    p = np.asarray(p_oof, np.float64)
    y = np.asarray(y)
    if not len(p):
        return (0.5, 0.5), "no out-of-fold predictions: answer everything"
    conf = np.maximum(p, 1.0 - p)
    order = np.argsort(-conf, kind="stable")
    c_sorted = conf[order]
    w = np.ones(len(p)) if weights is None else np.asarray(weights, np.float64)[order]
    err = ((p[order] >= 0.5).astype(int) != y[order]).astype(np.float64)
    risk = np.cumsum(err * w) / np.cumsum(w)
    # Cut only between distinct confidences: every image at the cut's confidence is answered.
    last = np.r_[c_sorted[1:] < c_sorted[:-1], True]
    ok = np.flatnonzero(last & (risk <= max_risk))
    if not len(ok):
        k = int(np.flatnonzero(last)[0])
        c = float(c_sorted[k])
        return (1.0 - c, c), (f"no answered share reaches error rate {max_risk:g} out of fold; "
                              f"answer only the most confident ({k + 1} of {len(p)})")
    k = int(ok[-1])
    c = float(c_sorted[k])
    if k == len(p) - 1:
        return (0.5, 0.5), (f"answering every out-of-fold prediction errs on {risk[k]:.2%} <= "
                            f"{max_risk:g}: no abstention")
    return (1.0 - c, c), (f"answer when P(face) >= {c:.4f} or <= {1 - c:.4f}: the most out-of-fold "
                          f"predictions ({k + 1} of {len(p)}, {(k + 1) / len(p):.1%}) answered at "
                          f"error rate {risk[k]:.2%} <= {max_risk:g}")


def apply_band(p, band, *, threshold: float = 0.5) -> np.ndarray:
    """Labels 1 (face), 0 (no face) or -1 (unsure) for P(face) values and a band (lo, hi):
    unsure when lo < p < hi."""
    p = np.asarray(p, np.float64)
    lab = (p >= threshold).astype(np.int64)
    if band is not None:
        lo, hi = band
        lab[(p > lo) & (p < hi)] = -1
    return lab


def selective(p, y, band, *, threshold: float = 0.5) -> dict:
    """Coverage (answered fraction) and risk (error rate among answered) with a band."""
    lab = apply_band(p, band, threshold=threshold)
    y = np.asarray(y)
    ans = lab >= 0
    return {"coverage": round(float(ans.mean()), 5) if len(y) else None,
            "risk": round(float(np.mean(lab[ans] != y[ans])), 5) if ans.any() else None,
            "n": int(len(y)), "answered": int(ans.sum())}


def risk_coverage(p, y, *, points: int = 21) -> dict:
    """The risk-coverage curve: answer the most confident fraction first (confidence
    ``max(p, 1 - p)``) and record the error rate among the answered.

    Returns:
        ``{"coverage": [...], "risk": [...], "aurc": area under the curve}``, ``points`` samples
        from the most confident 1/n to full coverage (AURC from all n points).
    """
    p = np.asarray(p, np.float64)
    y = np.asarray(y)
    n = len(p)
    if n == 0:
        return {"coverage": [], "risk": [], "aurc": None}
    conf = np.maximum(p, 1 - p)
    order = np.argsort(-conf, kind="stable")
    err = ((p[order] >= 0.5).astype(int) != y[order]).astype(np.float64)
    risk = np.cumsum(err) / np.arange(1, n + 1)
    cov = np.arange(1, n + 1) / n
    idx = np.unique(np.round(np.linspace(0, n - 1, min(points, n))).astype(int))
    return {"coverage": [round(float(c), 5) for c in cov[idx]],
            "risk": [round(float(r), 5) for r in risk[idx]], "aurc": round(float(risk.mean()), 6)}


# -- what a sweep records --------------------------------------------------------------------------
def summarize(decision: dict, y: dict, *, method: str = "auto", folds: int = 5, n_bins: int = 15,
              seed: int = 0, fit_on: str = "val", weights=None) -> tuple[dict, dict, dict]:
    """Fit the calibrator on ``fit_on`` and measure it on every split.

    Args:
        decision: {split: (n,) decision values}; y: {split: (n,) 0/1}. Must include ``fit_on``:
            ``val``, or ``cv`` (the out-of-fold decision values of held-out groups).
        fit_on: the split the calibrator is fitted on. For ``cv`` its "calibrated" numbers are
            out of fold (each image's P(face) from a calibrator fitted on the other folds) when
            there are enough images to cross-validate, marked ``"calibrated_is": "out-of-fold"``.
        weights: per-image weights of the ``fit_on`` images in the fit (see
            :func:`fit_calibrator`); the measurements stay per image.

    Returns:
        (calibrator, info from :func:`fit_calibrator` (with ``oof``), a JSON-ready summary with
        the method, the reason, the out-of-fold Brier scores, and ECE / Brier per split before
        (``raw``) and after (``calibrated``) calibration).
    """
    cal, info = fit_calibrator(decision[fit_on], y[fit_on], method=method, folds=folds, seed=seed,
                               weights=weights)
    splits = [s for s in decision if s not in ("val", "cv")]
    splits = ([s for s in ("train", "val", "cv") if s in decision]
              + [s for s in ("test", "distinct") if s in splits]
              + [s for s in splits if s not in ("train", "test", "distinct")])
    summary = {"method": info["method"], "reason": info["reason"], "folds": folds,
               "fitted_on": fit_on,
               "cv_brier": {k: (None if v is None else round(v, 6)) for k, v in info["cv_brier"].items()},
               "ece_bins": n_bins,
               "splits": evaluate(decision, y, cal, n_bins=n_bins, splits=splits, fit_on=fit_on)}
    if fit_on == "cv" and info["oof"] is not None and fit_on in summary["splits"]:
        p = info["oof"]
        summary["splits"][fit_on]["calibrated"] = {"ece": round(ece(p, y[fit_on], n_bins=n_bins), 5),
                                                   "brier": round(brier(p, y[fit_on]), 5)}
        summary["splits"][fit_on]["calibrated_is"] = "out-of-fold"
    return cal, info, summary


def abstain_summary(band, how: str, probs: dict, y: dict, *, target: float | None) -> dict:
    """JSON-ready: the band, how it was chosen, coverage / risk with it and the risk-coverage
    curve per split (``probs``: {split: calibrated P(face)})."""
    return {"band": None if band is None else [round(band[0], 6), round(band[1], 6)],
            "target": target, "how": how,
            "splits": {s: dict(selective(p, y[s], band), full_risk=selective(p, y[s], None)["risk"])
                       for s, p in probs.items()},
            "risk_coverage": {s: risk_coverage(p, y[s]) for s, p in probs.items()}}


def platt_fit(scores: np.ndarray, y: np.ndarray, weights=None) -> tuple[float, float]:
    """Sigmoid ``P = 1 / (1 + exp(a*s + b))`` fitted to decision scores (Platt 1999, with his
    target smoothing). Returns (a, b). ``weights``: per-score weights of the likelihood (None:
    all 1).

    Newton's method with backtracking on the two parameters, as in Lin, Lin & Weng (2007), "A
    note on Platt's probabilistic outputs for support vector machines" (the algorithm libsvm
    uses): a few milliseconds, where a general L-BFGS logistic regression took ~0.1 s per fit
    (the sweep fits dozens: one per kernel row plus the cross-validated calibration folds).
    """
    f = np.asarray(scores, np.float64).ravel()
    y = np.asarray(y).ravel()
    w = np.ones(len(f)) if weights is None else np.asarray(weights, np.float64).ravel()
    w = w * len(f) / max(float(w.sum()), 1e-300)  # mean 1: the smoothing keeps its meaning
    n_pos, n_neg = float(np.sum(w[y == 1])), float(np.sum(w[y == 0]))
    t = np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    a, b = 0.0, float(np.log((n_neg + 1) / (n_pos + 1)))

    def nll(a, b):
        z = a * f + b
        # sum of t*z + log(1 + exp(-z)), written stably for both signs of z
        return float(np.sum(w * np.where(z >= 0, t * z + np.log1p(np.exp(-z)),
                                         (t - 1) * z + np.log1p(np.exp(z)))))

    val = nll(a, b)
    for _ in range(100):
        z = a * f + b
        p = np.where(z >= 0, np.exp(-z) / (1 + np.exp(-z)), 1 / (1 + np.exp(z)))  # 1 / (1 + e^z)
        q = 1 - p
        d1, d2 = w * (t - p), w * p * q
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
    return sigmoid(-(a * np.asarray(scores, np.float64) + b))
