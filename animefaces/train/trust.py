"""The sweep's trust layer for the chosen model: the out-of-domain guard, the calibrator, the
abstain band, what they measure on every split and on held-out groups, and the per-image rows
of predictions.csv.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

from ..config import SweepConfig
from ..features.dataset import ExtractedFeatures
from .groups import CV, by_source, pool_mask


def _log(msg: str, progress: bool) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


def fit_ood(cfg: SweepConfig, feats: ExtractedFeatures, cache_dir: Path) -> dict:
    """The out-of-domain guard fitted on the train + val features and image statistics, its
    flags on every image (record order), and its flags on train + val with each image's own
    group left out (``false_flags["cv"]``: the rate on series it has not seen).

    The reference is every train + val image, or a seeded sample of ``cfg.ood_max_reference``
    of them when there are more (the guard keeps its reference in the model, and its fit
    compares every reference image with every other). Features streamed from the cache are
    read a chunk at a time. ``cv_flag`` (held-out-group flags of the pool, pool order): the
    sampled images scored with their own group left out, the others by the fitted guard.
    """
    from ..classify.ood import OODGuard, flag_summary, is_gray, stats_for_files

    t0 = time.perf_counter()
    split_of = np.array([r.split for r in feats.records])
    stats = stats_for_files([r.path for r in feats.records], cache_dir=cache_dir / "image-stats",
                            n_jobs=min(2, os.cpu_count() or 1))
    groups = np.array([r.group or "" for r in feats.records], dtype=object)
    guard = OODGuard(min_side=cfg.ood_min_side, flat_resid=cfg.ood_flat,
                     noise_autocorr=cfg.ood_noise, k=cfg.ood_k, quantile=cfg.ood_quantile,
                     text=cfg.ood_text, weak_quantile=cfg.ood_weak_quantile,
                     gray_quantile=cfg.ood_gray_quantile, subspace=cfg.ood_subspace,
                     subspace_quantile=cfg.ood_subspace_quantile)
    # The reference is train + val: every image the model may learn the look of anime from.
    pool = np.flatnonzero(pool_mask(split_of))
    ref = reference_sample(pool, cfg.ood_max_reference, cfg.seed)
    guard.fit(_feature_rows(feats.X, ref), groups_train=groups[ref],
              gray_train=is_gray(stats[ref]), stats_train=stats[ref])
    flag, reason, dist = _chunked_flags(guard, feats.X, stats)
    false_flags = flag_summary(flag, reason, split_of, groups)
    ref_flag, ref_reason, _ = guard.reference_flags(stats[ref])
    false_flags[CV] = flag_summary(ref_flag, ref_reason, np.array([CV] * len(ref)), groups[ref])[CV]
    cv_flag = np.asarray(flag)[pool].copy()
    cv_flag[np.searchsorted(pool, ref)] = ref_flag
    summary = dict(guard.describe(), false_flags=false_flags,
                   seconds=round(time.perf_counter() - t0, 3))
    if len(ref) < len(pool):
        summary["reference_sample"] = {
            "n": int(len(ref)), "of": int(len(pool)), "seed": cfg.seed,
            "note": f"a seeded sample of {len(ref):,} of the {len(pool):,} train + val images "
                    f"(trust.ood_max_reference); the new-groups (CV) rate is measured on it"}
    return {"guard": guard, "flag": flag, "reason": reason, "distance": dist, "summary": summary,
            "cv_flag": cv_flag}


def reference_sample(pool: np.ndarray, cap: int, seed: int) -> np.ndarray:
    """``pool`` (sorted record indices), or a seeded sorted sample of ``cap`` of them."""
    if len(pool) <= cap:
        return pool
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(pool, size=cap, replace=False))


def _feature_rows(X, idx: np.ndarray) -> np.ndarray:
    """Rows ``idx`` in memory (float32), from an array or rows read in chunks."""
    return X[idx] if isinstance(X, np.ndarray) else X.take(idx).astype(np.float32)


OOD_CHUNK_ROWS = 16384


def _chunked_flags(guard, X, stats):
    """``guard.flags`` on every row; rows read in chunks are scored ``OOD_CHUNK_ROWS`` at a time."""
    from ..classify.scalable import _spans

    if isinstance(X, np.ndarray):
        return guard.flags(X, stats)
    spans = _spans(len(X), OOD_CHUNK_ROWS)
    if not spans:  # no rows
        return guard.flags(_feature_rows(X, np.arange(0)), stats)
    parts = [guard.flags(X.chunk(a, b).astype(np.float32), stats[a:b]) for a, b in spans]
    return (np.concatenate([f for f, _, _ in parts]), [r for _, rs, _ in parts for r in rs],
            np.concatenate([d for _, _, d in parts]))


def fit_trust(cfg: SweepConfig, dec: dict, y: dict, feats: ExtractedFeatures,
              progress: bool, ood: dict | None = None, *, fit_on: str = "val",
              sources: np.ndarray | None = None):
    """Calibrator and abstain band for the chosen model, their measurements on every split, the
    out-of-domain guard's results, and per-image rows for predictions.csv.

    Args:
        dec: the model's decision values per split, (n,) float64 each, in record order; with
            ``fit_on="cv"`` also ``dec["cv"]``, the held-out-group decision values of train +
            val (record order).
        ood: :func:`fit_ood`'s result (None: the guard is off).
        fit_on: ``cv`` (calibrator and band fitted on held-out groups) or ``val``.
        sources: (n,) the data set each record came from (for per-source CV numbers).

    Returns:
        (model extras, the ``trust`` section of results.json, per-image rows).
    """
    from ..classify.calibration import (abstain_summary, apply_band, apply_calibrator, choose_band,
                                        choose_risk_band, summarize)

    split_of = np.array([r.split for r in feats.records])
    # Every image weighs the same: weighting each held-out group the same (1 / its size) was
    # measured and dropped: on the shared sets' own held-out groups the band then answered 95%
    # at an error rate of 4.3% per image, over the 2% it is set for (docs/trust.md).
    cal, info, cal_summary = summarize(dec, y, method=cfg.calibration, folds=cfg.calibration_folds,
                                       n_bins=cfg.ece_bins, seed=cfg.seed, fit_on=fit_on)
    probs = {s: apply_calibrator(cal, d) for s, d in dec.items()}
    if fit_on == CV and info["oof"] is not None:
        # Held-out groups' P(face) from calibrators that did not see them either.
        probs[CV] = np.asarray(info["oof"])
    if cfg.abstain == "off":
        band, how = None, "abstention off in the config"
    elif isinstance(cfg.abstain, list):
        band, how = tuple(cfg.abstain), "fixed in the config"
    elif cfg.abstain == "risk" and info["oof"] is not None:
        band, how = choose_risk_band(info["oof"], y[fit_on], max_risk=cfg.abstain_risk)
        how += "; on held-out groups" if fit_on == CV else "; on val"
    else:
        band, how = choose_band(info["oof"], y[fit_on], target=cfg.abstain_target)
        how += "; on held-out groups (out of fold)" if fit_on == CV else "; on val (out of fold)"
        if cfg.abstain == "risk":
            how = f"too few images to cross-validate the calibrator for the risk rule; {how}"
    extras = {"calibration": cal,
              "abstain": {"band": None if band is None else list(band), "target": cfg.abstain_target,
                          "how": how, **({"max_risk": cfg.abstain_risk} if cfg.abstain == "risk" else {})}}
    trust = {"calibration": cal_summary,
             "abstain": abstain_summary(band, how, probs, y,
                                        target=cfg.abstain_target if cfg.abstain == "auto" else None)}
    if cfg.abstain == "risk":
        trust["abstain"]["max_risk"] = cfg.abstain_risk
    n = len(feats.records)
    pool = pool_mask(split_of)
    ood_flag = np.zeros(n, bool)
    ood_reason: list = [None] * n
    ood_dist = np.full(n, np.nan)
    if ood is not None:
        ood_flag, ood_reason, ood_dist = ood["flag"], ood["reason"], ood["distance"]
        extras["ood"] = ood["guard"].to_dict()
        trust["ood"] = ood["summary"]
        _log("[sweep] out-of-domain guard: flags " + ", ".join(
            f"{'new groups (CV)' if s == CV else s} {v['rate']:.1%}"
            for s, v in trust["ood"]["false_flags"].items()) + " of the (in-domain) data", progress)
    if fit_on == CV and sources is not None and len(set(sources[pool].tolist())) > 1:
        per = by_source(dec[CV], probs.get(CV), y[CV], sources[pool], band)
        if ood is not None:
            for s, entry in per.items():
                entry["out_of_domain"] = round(float(np.mean(ood["cv_flag"][sources[pool] == s])), 5)
        trust["cv_by_source"] = per
    # Per-image rows in record order (each split's values keep record order within it); train
    # and val rows also get their held-out-group decision value and P(face).
    pos = {s: 0 for s in dec}
    rows = []
    band_labels = {s: apply_band(probs[s], band) for s in probs}
    for i, r in enumerate(feats.records):
        s = r.split
        j = pos[s]
        pos[s] += 1
        lab = int(band_labels[s][j])
        row = {"path": r.path, "split": s, "group": r.group or "", "y": int(y[s][j]),
               "decision": float(dec[s][j]), "p": float(probs[s][j]),
               "pred": {1: "face", 0: "no_face", -1: "unsure"}[lab],
               "ood": int(ood_flag[i]), "ood_reason": ood_reason[i] or "",
               "ood_distance": float(ood_dist[i])}
        if CV in dec and pool[i]:
            k = pos[CV]
            pos[CV] += 1
            row["cv_decision"] = float(dec[CV][k])
            row["cv_p"] = float(probs[CV][k])
            row["cv_ood"] = int(ood["cv_flag"][k]) if ood is not None else 0
        rows.append(row)
    return extras, trust, rows


def record_sources(records, main: str, added: dict) -> np.ndarray:
    """(n,) the data set each record came from: ``main`` or a ``--train-also`` source."""
    where = {Path(os.path.normpath(p)): src for src, paths in added.items() for p in paths}
    return np.array([where.get(Path(os.path.normpath(r.path)), main) for r in records], dtype=object)
