"""The sweep: extract (through the cache) -> fit the SVM grid -> choose on val -> save -> report.

This module only orchestrates; extraction, fitting and writing tables live in their own modules.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from ..config import SweepConfig, load_config, streams
from ..data.datasets import Dataset, load_dataset, without_bad
from ..errors import AnimeFacesError, WeightsMismatchError, WeightsNotFoundError
from ..features.dataset import extract_dataset, make_extractor
from .common import (SweepResult, backbones_to_run, clean_incomplete, finish_run_dir,
                     staged_run_dir, with_features)

POSITIVE = "face"


def _log(msg: str, progress: bool) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


# Settings that change how fast a sweep runs or where it writes, not which model it chooses.
_NOT_THE_MODEL = {"features": {"cache_dir", "device", "batch_size"},
                  "svm": {"n_jobs", "cache_size", "stream"}, "output": None}


def _model_settings(raw: dict) -> dict:
    out = {}
    for section, table in raw.items():
        ignored = _NOT_THE_MODEL.get(section, set())
        if ignored is None:
            continue
        out[section] = ({k: v for k, v in table.items() if k not in ignored}
                        if isinstance(table, dict) else table)
    return out


def replaces_best(cfg: SweepConfig, set_best: bool | None, *, backbones=None,
                  weights=None) -> tuple[bool, str]:
    """Whether a run saves its model as the models folder's ``best`` too, and why (not).

    ``best`` is what ``predict`` and ``FaceClassifier.load()`` use by default, so only a run
    with the default config (the settings that choose the model as in configs/default.toml;
    cache, device, batch size and output folders may differ) replaces it, or one told to with
    ``set_best=True`` (``--set-best``); ``set_best=False`` never does.
    """
    if set_best is not None:
        return bool(set_best), "--set-best" if set_best else "set_best=False"
    from ..config import load_config

    changed = [name for name, v in (("--backbones", backbones), ("--weights", weights)) if v]
    if _model_settings(cfg.raw) != _model_settings(load_config(None).raw):
        return False, f"config {Path(cfg.source).name or cfg.source} is not the default one"
    if changed:
        return False, f"the default config with {' and '.join(changed)} given"
    return True, "the default config"


def run_sweep(data, *, config: SweepConfig | os.PathLike | str | None = None,
              backbones: list[str] | None = None, weights: dict[str, str] | str | None = None,
              device: str | None = None, out_dir: os.PathLike | None = None,
              models_dir: os.PathLike | None = None, cache_dir: os.PathLike | None = None,
              skip_bad: bool | None = None, precision: str | None = None,
              pooling: str | None = None, batch_size: int | None = None,
              allow_outside: bool = False, set_best: bool | None = None,
              progress: bool = True, ray=None, train_also=None) -> SweepResult:
    """Run the whole method on a dataset and write Table 1 / Table 2.

    Args:
        data: manifest CSV or folder tree with train and val (test / distinct optional; data
            without splits gets a seeded stratified 60/20/20 split, noted in the report).
        config: a :class:`SweepConfig`, a TOML path, a built-in name (``paper``) or None (default).
        backbones: override the config's backbone list.
        weights: ``{backbone: path_or_"random"}``, or one value for every backbone.
        device, cache_dir, skip_bad, precision, pooling, batch_size: override the config's
            ``[features]`` (same names and meaning as ``animefaces extract``).
        out_dir: reports root (default: the config's ``reports_dir``); a run folder is made in it
            when the reports are written (``<run>.incomplete`` until they all are: a sweep that
            fails leaves no run folder; one that was killed leaves one the next sweep removes).
        models_dir: where the best model is saved (default: the config's ``models_dir``).
        allow_outside: accept manifest paths outside the manifest's folder (refused by default).
        train_also: more labelled data sets (a path or a list) whose every image joins the train
            split (their splits ignored; images of a group that ``data`` measures as unseen are
            left out); their groups are held out like any other in the group cross-validation,
            whose numbers the report gives per data set.
        ray: a :class:`~animefaces.features.distributed.RayOptions`: extract on Ray (same
            features, same cache); None: in this process.
        set_best: also make the model the folder's ``best`` (what ``predict`` loads by default).
            None (default): only when the run uses the default config (see
            :func:`replaces_best`); every run saves its own ``<run>-<backbone>-<kernel>``.

    Returns:
        :class:`SweepResult` with the run folder and the best model's path. The run folder also
        gets predictions.csv (the best model's per-image scores) and report.html (needs
        matplotlib); the model carries its calibrator, abstain band and out-of-domain guard.
    """
    from .. import __version__
    from .._io import utc_now, utc_stamp, versions
    from ..classify.calibration import platt_fit, summarize
    from ..classify.persist import TrainedModel, save_model
    from ..classify.scalable import select_rows
    from ..classify.svm import (degenerate_flags, fit_grid, link_model, one_se_pick, refit,
                                select_per_row)
    from ..report.tables import write_predictions, write_reports
    from .groups import CV, add_group_cv
    from .trust import fit_ood, fit_trust, record_sources

    t_start = time.perf_counter()
    cfg = config if isinstance(config, SweepConfig) else load_config(config)
    overrides = {k: v for k, v in (("precision", precision), ("pooling", pooling),
                                   ("batch_size", batch_size)) if v is not None}
    if overrides:
        cfg = with_features(cfg, overrides)
    device = device or cfg.device
    cache_dir = Path(cache_dir or cfg.cache_dir)
    skip_bad = cfg.skip_bad if skip_bad is None else skip_bad
    ds = load_dataset(data, require_splits=True, seed=cfg.seed, allow_outside=allow_outside)
    added: dict[str, list[Path]] = {}
    if train_also:
        from ..data.datasets import with_extra_training

        extra = [train_also] if isinstance(train_also, (str, os.PathLike)) else list(train_also)
        ds, added = with_extra_training(ds, [load_dataset(p, allow_outside=allow_outside)
                                             for p in extra])
    for needed in ("train", "val"):
        if needed not in ds.splits:
            raise AnimeFacesError(f"{ds.source}: no {needed!r} split; the sweep trains on train and "
                                  f"chooses models on val (splits found: {', '.join(ds.splits)})")
    names = backbones_to_run(cfg, backbones)
    rows = cfg.kernel_rows()
    stream = streams(cfg)
    reports_root = Path(out_dir or cfg.reports_dir)
    run_name = f"{utc_stamp()}-{Path(cfg.source).stem or 'sweep'}"
    clean_incomplete(reports_root, log=lambda m: _log(m, progress))
    _log(f"[sweep] data {ds.source}: " + ", ".join(f"{s} {sum(c.values())}" for s, c in ds.counts().items())
         + f"; reports go under {reports_root}", progress)

    backbone_info: dict[str, dict] = {}
    fits: list[dict] = []
    bad_files: dict[str, str] = {}
    candidates = []  # (val_acc, order, backbone, FitResult, features)
    extract_seconds = fit_seconds = calib_seconds = 0.0
    # "available" means found on this machine: discovery does not start downloads (a backbone
    # named explicitly still gets torchvision's download as the last resort).
    discover = backbones is None and cfg.backbones == "available"
    for b_index, name in enumerate(names):
        w = weights.get(name) if isinstance(weights, dict) else weights
        try:
            if discover and w is None:
                from ..features.backbones import get_backbone
                from ..features.weights import resolve_weights

                resolve_weights(get_backbone(name), download=False)
            fx = make_extractor(name, weights=w, device=device, precision=cfg.precision,
                                pooling=cfg.pooling, batch_size=cfg.batch_size)
        except (WeightsNotFoundError, WeightsMismatchError) as exc:
            backbone_info[name] = {"status": "skipped", "reason": str(exc)}
            # one line here; the full fix is in report.md and `animefaces backbones -v`
            _log(f"[sweep] skip {name}: {_first_clause(exc)}", progress)
            continue
        feats = extract_dataset(ds, extractor=fx, cache_dir=cache_dir, skip_bad=skip_bad,
                                progress=progress, ray=ray, stream=stream)
        extract_seconds += feats.seconds
        for p, reason in feats.bad:
            bad_files[str(p)] = reason
        if feats.bad:
            # What is left must still be a dataset the sweep can measure (the manifest's checks
            # again), or it would choose on, say, a val split of faces only.
            kept = without_bad(ds, feats.records, feats.bad)
            _log(f"[sweep] {name}: {len(feats.bad)} unreadable image(s) left out (--skip-bad); "
                 + ", ".join(f"{s} {sum(c.values())}" for s, c in kept.counts().items()), progress)
        y_all = np.array([r.label == POSITIVE for r in feats.records], dtype=np.int64)
        split_of = np.array([r.split for r in feats.records])
        # Streamed: every split is a view of the cache's rows (read a chunk at a time).
        X = {s: select_rows(feats.X, split_of == s) for s in ds.splits}
        y = {s: y_all[split_of == s] for s in ds.splits}
        _log(f"[sweep] {name}: features {feats.X.shape[1]}-d for {len(feats.records)} images in "
             f"{feats.seconds:.1f}s ({feats.computed} computed, the rest from the cache); "
             f"fitting {sum(len(c) for _, _, c in rows)} SVMs"
             + ("; features streamed from the cache (svm.stream)" if stream else ""), progress)
        t0 = time.perf_counter()
        results = fit_grid(X, y, rows, scaling=cfg.scaling, cache_size=cfg.cache_size,
                           seed=cfg.seed, n_jobs=cfg.n_jobs)
        group_cv = None
        if cfg.select_on == "groups":
            # Held-out-group scores of every parameter set: what the model is chosen and
            # calibrated on (val comes from the same anime as train).
            group_cv = add_group_cv(results, feats.X, y_all, split_of,
                                    [r.group for r in feats.records], y, cfg, rows)
            _log(f"[sweep] {name}: " + (f"group cross-validation, {group_cv['note']}"
                                        if group_cv["used"] else f"note: {group_cv['note']}"), progress)
        select_on = CV if group_cv and group_cv["used"] else "val"
        fit_seconds += time.perf_counter() - t0
        best_rows = select_per_row(results, on=select_on, n=len(y[select_on]))
        backbone_info[name] = {"status": "ok", "features": feats.meta, "selected_on": select_on,
                               **({"group_cv": group_cv} if group_cv else {}),
                               "extract_seconds": round(feats.seconds, 3),
                               "computed": feats.computed, "n_images": len(feats.records),
                               "n_bad": len(feats.bad),
                               "random_weights": feats.meta["random_weights"]}
        for r in results:
            flags, flag_details = degenerate_flags(r, y, on=select_on)
            fits.append({"backbone": name, "kernel": r.row, "params": r.params,
                         "accuracy": r.accuracy, "positive_rate": r.positive_rate,
                         "fit_seconds": round(r.fit_seconds, 4),
                         "selected": best_rows[r.row] is r, "flags": flags})
            if flag_details:
                fits[-1]["degenerate"] = flag_details
            if best_rows[r.row] is r:
                # Calibration of every table row (on held-out groups or val), measured on
                # every split.
                t0 = time.perf_counter()
                fits[-1]["calibration"] = summarize(
                    r.decision, y, method=cfg.calibration, folds=cfg.calibration_folds,
                    n_bins=cfg.ece_bins, seed=cfg.seed, fit_on=select_on)[2]
                calib_seconds += time.perf_counter() - t0
        for row_name, r in best_rows.items():
            candidates.append((name, r, X, y, feats, select_on))

    if not candidates:
        raise AnimeFacesError("no backbone could run: " + "; ".join(
            f"{n}: {i['reason']}" for n, i in backbone_info.items()))

    # Best model on held-out groups (or val), by the one-SE rule: ties go to the earlier
    # backbone / row in the config (the default config lists RBF first, then linear, then
    # polynomials by degree). Backbones share the records and so the choice of split, unless
    # unreadable images left one with too few groups: then all are compared on val.
    select_on = CV if all(c[5] == CV for c in candidates) else "val"
    best_name, best, X, y, feats, _ = one_se_pick(
        candidates, acc=lambda c: c[1].accuracy[select_on], n=len(candidates[0][3][select_on]))
    group_cv = backbone_info[best_name].get("group_cv")
    t0 = time.perf_counter()
    # The out-of-domain guard needs the chosen backbone's features, not the model: it is fitted
    # in a thread while libsvm refits the model on one core (both release the GIL).
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        ood_job = pool.submit(fit_ood, cfg, feats, cache_dir) if cfg.ood else None
        pipeline = refit(best.params, X["train"], y["train"], scaling=cfg.scaling,
                         cache_size=cfg.cache_size, seed=cfg.seed)
        dec_val = _decisions(pipeline, X["val"])
        platt = platt_fit(best.decision[CV] if select_on == CV else dec_val, y[select_on])
        refit_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()  # trust time: waiting for the guard, then the rest
        ood = ood_job.result() if ood_job is not None else None
    grid_dec = _grid_decisions(best, dec_val)
    dec = grid_dec if grid_dec is not None else {s: _decisions(pipeline, X[s]) for s in X}
    if select_on == CV:
        dec[CV] = best.decision[CV]
    extras, trust, per_image = fit_trust(cfg, dec, y, feats, progress, ood=ood, fit_on=select_on,
                                         sources=record_sources(feats.records, ds.source, added))
    trust_seconds = time.perf_counter() - t0
    measured = without_bad(ds, feats.records, feats.bad)  # checked when extracted
    # The run folder is made only now, as <name>.incomplete, and renamed when every report is
    # in it: a sweep that fails leaves none (a killed one leaves one the next sweep removes).
    run_dir, final_dir = staged_run_dir(reports_root, run_name)
    staging = run_dir
    try:
        run_id = final_dir.name
        model_meta = {
            "run_id": run_id, "backbone": best_name, "kernel": best.row, "params": best.params,
            "scaling": cfg.scaling, "features": feats.meta, "accuracy": best.accuracy,
            "selected_on": select_on, "labels": {"1": "face", "0": "no_face"},
            "trained_on": {"data": ds.source, "split": "train", "n": int(len(y["train"])),
                           **({"also": sorted(added)} if added else {})},
            "created": utc_now(),
        }
        model_meta["trust"] = {k: dict(trust[k]) for k in ("calibration", "abstain", "ood") if k in trust}
        model_meta["trust"].get("abstain", {}).pop("risk_coverage", None)
        model = TrainedModel(pipeline=pipeline, platt=platt, meta=model_meta, extras=extras)
        models_root = Path(models_dir or cfg.models_dir)
        model_path = save_model(model, models_root / f"{run_id}-{best_name}-{best.row}")
        to_best, why = replaces_best(cfg, set_best, backbones=backbones, weights=weights)
        # One pointer replaced atomically: readers of best see the old model or this one.
        best_path = link_model(models_root / "best", model_path) if to_best else None
        results_doc = {
            "run_id": run_id,
            "created": model_meta["created"],
            "config_source": cfg.source,
            "config": cfg.raw,
            "scaling": cfg.scaling,
            # how the chosen backbone's features were computed (same answers need the same precision)
            "runtime": _runtime(feats.meta),
            # the images measured: after --skip-bad, what is left (the counts as read beside it)
            "data": {"source": ds.source, "layout": ds.layout, "counts": measured.counts(),
                     "notes": ds.notes,
                     **({"counts_before_skip": ds.counts(), "n_left_out": len(feats.bad)}
                        if feats.bad else {})},
            "backbones": backbone_info,
            "kernels": [r for r, _, _ in rows],
            "fits": fits,
            "selection": (("accuracy on held-out groups (group cross-validation over train + val)"
                           if select_on == CV else "accuracy on val")
                          + ", one-standard-error rule; ties go to the earlier backbone / kernel / C "
                            "in config order"),
            "selected_on": select_on,
            "streamed": stream,
            "group_cv": group_cv,
            "best": {"backbone": best_name, "kernel": best.row, "params": best.params,
                     "accuracy": best.accuracy, "model": str(model_path),
                     "also_saved_as": str(best_path) if best_path else None,
                     "best_replaced": {"done": bool(best_path), "why": why,
                                       "best": str(models_root / "best")},
                     "platt": list(platt),
                     # where the decision values behind trust / predictions.csv came from
                     "decision_values": "grid fit (equal to the refit on val)" if grid_dec is not None
                                        else "refit model"},
            "trust": trust,
            "footnotes": _flag_footnotes(fits),
            "bad_files": [{"path": p, "reason": r} for p, r in sorted(bad_files.items())],
            # fit: the SVM grid; refit: the chosen model on the real kernel + Platt, with the OOD
            # guard fitted meanwhile in a thread (ood_seconds, overlapping refit_seconds);
            # calibration: per-row calibration summaries; trust: the wait for the guard after the
            # refit, calibrator, abstain band and per-image rows of the best model; report: report.md / .csv / results.json / report.html.
            "timings": {"extract_seconds": round(extract_seconds, 3),
                        "fit_seconds": round(fit_seconds, 3),
                        "refit_seconds": round(refit_seconds, 3),
                        "calibration_seconds": round(calib_seconds, 3),
                        "trust_seconds": round(trust_seconds, 3),
                        "ood_seconds": (trust.get("ood") or {}).get("seconds", 0.0)},
            "versions": dict(versions(), animefaces=__version__),
        }
        t0 = time.perf_counter()
        results_doc["timings"]["total_seconds"] = round(t0 - t_start, 3)  # before the reports
        write_predictions(run_dir / "predictions.csv", per_image, root=_data_root(ds))
        results_doc["predictions"] = {"file": "predictions.csv", "data_root": str(_data_root(ds))}
        try:
            from ..report.html import write_html_report

            write_html_report(run_dir, results=results_doc)
        except ImportError as exc:  # matplotlib is the optional 'report' extra
            _log(f"[sweep] no report.html ({exc}); pip install 'animefaces[report]'", progress)
        results_doc["timings"]["report_seconds"] = round(time.perf_counter() - t0, 3)
        results_doc["timings"]["total_with_reports_seconds"] = round(time.perf_counter() - t_start, 3)
        write_reports(results_doc, run_dir)  # results.json (with the report time), md, csv
        run_dir = finish_run_dir(run_dir, final_dir)
        _log(f"[sweep] best on {'held-out groups' if select_on == CV else 'val'}: "
             f"{best_name} {best.row} {best.params} -> "
             + ", ".join(f"{s} {a:.3f}" for s, a in best.accuracy.items())
             + f"; model {model_path}", progress)
        return SweepResult(run_dir=run_dir, best_model=model_path, results=results_doc)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # gone already once renamed
        raise


def _decisions(pipeline, X) -> np.ndarray:
    """(n,) float64 decision values; rows read in chunks (a streamed sweep) a chunk at a time."""
    if hasattr(X, "chunk"):
        from ..classify.scalable import decision_function

        return decision_function(pipeline, X)
    return pipeline.decision_function(X).astype(np.float64)


def _first_clause(exc: Exception) -> str:
    """The first clause of a (long) error message, for one console line."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    for sep in ("; ", ": put", ". "):
        if sep in text[20:]:
            text = text[:20 + text[20:].index(sep)]
            break
    return text if len(text) <= 110 else text[:107] + "..."


def _runtime(meta: dict) -> dict:
    from .._runtime import cpu_flags, cpu_has_bf16

    cpu = {}
    if str(meta.get("device", "cpu")).startswith("cpu"):
        flags = cpu_flags()
        model = ""
        try:
            with open("/proc/cpuinfo") as f:
                model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
        except OSError:
            pass
        cpu = {"model": model, "avx2": "avx2" in flags, "avx512f": "avx512f" in flags,
               "bf16_units": cpu_has_bf16()}
        torch = sys.modules.get("torch")  # imported when features were computed in this run
        if torch is not None:
            cpu["torch_kernels"] = torch.backends.cpu.get_cpu_capability()
    return {"precision": meta.get("precision"), "device": meta.get("device"),
            "batch_size": meta.get("batch_size"), "pooling": meta.get("pooling"),
            "channels_last": meta.get("channels_last"), "cpu": cpu}


def _data_root(ds: Dataset) -> Path:
    src = Path(ds.source)
    return (src.parent if src.suffix.lower() == ".csv" else src).resolve()


def _flag_footnotes(fits: list[dict]) -> list[str]:
    """One footnote per kind of degenerate-model flag shown in the tables."""
    from ..classify.svm import FLAG_NEAR_MAJORITY, FLAG_ONE_CLASS
    from ..report.tables import FLAG_MARKERS

    shown = {f for fit in fits if fit["selected"] for f in fit.get("flags", [])}
    hidden = sum(1 for fit in fits if not fit["selected"] and fit.get("flags"))
    notes = []
    if FLAG_ONE_CLASS in shown:
        notes.append(f"{FLAG_MARKERS[FLAG_ONE_CLASS]} degenerate: predicts one class for >= 95% of "
                     f"a balanced split (see results.json fits[].degenerate)")
    if FLAG_NEAR_MAJORITY in shown:
        notes.append(f"{FLAG_MARKERS[FLAG_NEAR_MAJORITY]} degenerate: val accuracy within 5 points "
                     f"of always answering the majority label")
    if hidden:
        notes.append(f"{hidden} other fitted parameter set(s), not chosen for the tables, are "
                     f"flagged as degenerate in results.json")
    return notes


def _grid_decisions(best, dec_val: np.ndarray) -> dict | None:
    """The grid fit's decision values of every split, when they are the refitted model's.

    The grid trains on a precomputed kernel and the saved model is refitted on the real one:
    libsvm sees the same numbers, so both give the same decision values up to rounding, and
    computing them again on every split (kernel rows against every support vector: as costly
    as scoring the grid) is wasted. Checked on val, which the refit scores anyway for Platt;
    None (recompute) if they differ by more than rounding.
    """
    grid_val = best.decision.get("val")
    if grid_val is None or grid_val.shape != dec_val.shape:
        return None
    tol = 1e-6 * (1.0 + float(np.max(np.abs(dec_val), initial=0.0)))
    if float(np.max(np.abs(grid_val - dec_val), initial=0.0)) > tol:
        return None
    return dict(best.decision, val=dec_val)
