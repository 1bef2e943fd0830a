"""Character identification (the GochiUsa_Faces task): same features and SVMs, labels = character.

Classes come from a manifest's ``group`` column (for face rows) or from ``CHARACTER/`` folders.
Outputs: accuracy per backbone x kernel, per-class precision / recall, the confusion matrix of
the chosen model (CSV + PNG), and the model itself (``models/character-best``; see
:mod:`animefaces.character_api`).
"""

from __future__ import annotations

import csv
import fnmatch
import io
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from ..config import SweepConfig, load_config
from ..data.datasets import Dataset, Record, load_dataset
from ..errors import AnimeFacesError, DatasetError, WeightsMismatchError, WeightsNotFoundError
from .common import SweepResult


def character_dataset(data, *, groups: list[str] | None = None, min_per_class: int = 5,
                      seed: int = 0) -> Dataset:
    """Relabel a dataset by character.

    Args:
        data: manifest CSV / folder. With face / no_face labels, face rows are relabelled by
            their ``group``; otherwise the labels (folder names) are the characters.
        groups: glob patterns of classes to keep (e.g. ``["sytwu:*", "ao7108:*"]``).
        min_per_class: classes with fewer training images are left out (and reported).

    Raises:
        DatasetError: fewer than two classes remain, or rows lack a group.
    """
    ds = load_dataset(data, labels=None, require_splits=True, seed=seed)
    labels = {r.label for r in ds.records}
    notes = list(ds.notes)
    if labels <= {"face", "no_face"}:
        faces = [r for r in ds.records if r.label == "face"]
        missing = [r for r in faces if not r.group]
        if missing:
            raise DatasetError(f"{ds.source}: {len(missing)} face row(s) have no group (e.g. "
                               f"{missing[0].path.name}); the character task needs the group column")
        recs = [Record(r.path, r.group, r.split, r.group) for r in faces]
        notes.append("classes = the group column of face rows")
    else:
        recs = list(ds.records)
    if groups:
        recs = [r for r in recs if any(fnmatch.fnmatchcase(r.label, g) for g in groups)]
        notes.append(f"classes kept by pattern: {', '.join(groups)}")
    train_counts = Counter(r.label for r in recs if r.split == "train")
    small = sorted(c for c in {r.label for r in recs} if train_counts[c] < min_per_class)
    if small:
        notes.append(f"left out (fewer than {min_per_class} training images, or none): "
                     f"{', '.join(small[:20])}{' ...' if len(small) > 20 else ''}")
    recs = [r for r in recs if r.label not in small]
    classes = sorted({r.label for r in recs})
    if len(classes) < 2:
        raise DatasetError(f"{ds.source}: fewer than two characters with >= {min_per_class} "
                           f"training images{' matching ' + ', '.join(groups) if groups else ''}")
    for split in ("val",):
        if not any(r.split == split for r in recs):
            raise DatasetError(f"{ds.source}: no {split} images for the kept characters")
    return Dataset(records=recs, source=ds.source, layout=ds.layout, notes=notes)


def _confusion_png(cm: np.ndarray, classes: list[str], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(classes)
    fig, ax = plt.subplots(figsize=(2 + 0.45 * n, 1.5 + 0.45 * n), dpi=100)
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=90, fontsize=8)
    ax.set_yticks(range(n), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    for i in range(n):
        for j in range(n):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if cm[i, j] > cm.max() / 2 else "black")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def run_character_sweep(data, *, config: SweepConfig | str | None = None, groups=None,
                        min_per_class: int = 5, backbones=None, weights=None, device=None,
                        out_dir=None, cache_dir=None, models_dir=None, set_best: bool | None = None,
                        progress: bool = True) -> SweepResult:
    """Fit the SVM grid to identify characters; write tables, per-class metrics and confusion
    matrices into a run folder, and save the best model (chosen on val) as
    ``models_dir/<run>-<backbone>-<kernel>`` (pickle-free, like face models), and point
    ``models_dir/character-best`` at it when the run uses the default config or ``set_best`` is
    True (see :func:`animefaces.train.sweep.replaces_best`). Load it with
    :class:`animefaces.CharacterClassifier`. Returns a :class:`SweepResult` (run folder, model,
    and the results document, also saved as results.json)."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    from .._io import atomic_write_bytes, atomic_write_json, utc_now, utc_stamp, versions
    from ..classify.persist import TrainedModel, save_model
    from ..classify.svm import fit_grid, link_model, one_se_pick, refit, select_per_row
    from ..features.dataset import extract_dataset, make_extractor
    from .common import (backbones_to_run, clean_incomplete, finish_run_dir,
                         staged_run_dir)
    from .sweep import replaces_best

    t0 = time.perf_counter()
    cfg = config if isinstance(config, SweepConfig) else load_config(config)
    ds = character_dataset(data, groups=groups, min_per_class=min_per_class, seed=cfg.seed)
    classes = sorted({r.label for r in ds.records})
    index = {c: i for i, c in enumerate(classes)}
    reports_root = Path(out_dir or cfg.reports_dir)
    clean_incomplete(reports_root,
                     log=(lambda m: print(m, file=sys.stderr)) if progress else (lambda m: None))
    # written as <name>.incomplete and renamed when complete: a failed run leaves no folder
    run_dir, final_dir = staged_run_dir(reports_root, f"{utc_stamp()}-character")
    run_id = final_dir.name
    try:
        if progress:
            print(f"[character] {len(classes)} characters, {len(ds.records)} images; run folder {run_dir}",
                  file=sys.stderr)
        rows = cfg.kernel_rows()
        table, skipped, chosen = [], {}, []
        for name in backbones_to_run(cfg, backbones):
            w = weights.get(name) if isinstance(weights, dict) else weights
            try:
                fx = make_extractor(name, weights=w, device=device or cfg.device, precision=cfg.precision,
                                    pooling=cfg.pooling, batch_size=cfg.batch_size)
            except (WeightsNotFoundError, WeightsMismatchError) as exc:
                skipped[name] = str(exc)
                continue
            feats = extract_dataset(ds, extractor=fx, cache_dir=cache_dir or cfg.cache_dir,
                                    skip_bad=cfg.skip_bad, progress=progress, labels=None)
            split_of = np.array([r.split for r in feats.records])
            y_all = np.array([index[r.label] for r in feats.records])
            X = {s: feats.X[split_of == s] for s in ("train", "val", "test") if np.any(split_of == s)}
            y = {s: y_all[split_of == s] for s in X}
            results = fit_grid(X, y, rows, scaling=cfg.scaling, cache_size=cfg.cache_size,
                               seed=cfg.seed, n_jobs=cfg.n_jobs)
            best_rows = select_per_row(results, on="val", n=len(y["val"]))
            for row, r in best_rows.items():
                table.append({"backbone": name, "kernel": row, "params": r.params,
                              "random_weights": feats.meta["random_weights"], **r.accuracy})
                chosen.append((name, r, X, y, feats.meta))
        if not chosen:
            raise AnimeFacesError("no backbone could run: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
        name, best, X, y, meta = one_se_pick(chosen, acc=lambda c: c[1].accuracy["val"],
                                             n=len(chosen[0][3]["val"]))
        pipe = refit(best.params, X["train"], y["train"], scaling=cfg.scaling, cache_size=cfg.cache_size,
                     seed=cfg.seed)

        model_meta = {
            "task": "character", "classes": classes, "run_id": run_id, "backbone": name,
            "kernel": best.row, "params": best.params, "scaling": cfg.scaling, "features": meta,
            "accuracy": best.accuracy, "selected_on": "val",
            "trained_on": {"data": ds.source, "split": "train", "n": int(len(y["train"]))},
            "created": utc_now(),
        }
        model = TrainedModel(pipeline=pipe, platt=(0.0, 0.0), meta=model_meta)
        models_root = Path(models_dir or cfg.models_dir)
        model_path = save_model(model, models_root / f"{run_id}-{name}-{best.row}")
        to_best, why = replaces_best(cfg, set_best, backbones=backbones, weights=weights)
        best_path = link_model(models_root / "character-best", model_path) if to_best else None
        use = best_path or model_path
        eval_split = "test" if "test" in X else "val"
        pred = pipe.predict(X[eval_split])
        labels_idx = list(range(len(classes)))
        cm = confusion_matrix(y[eval_split], pred, labels=labels_idx)
        prec, rec, f1, support = precision_recall_fscore_support(y[eval_split], pred, labels=labels_idx,
                                                                 zero_division=0)
        per_class = [{"class": c, "precision": float(p), "recall": float(r), "f1": float(f),
                      "support": int(n)} for c, p, r, f, n in zip(classes, prec, rec, f1, support)]
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["true \\ predicted"] + classes)
        for c, row in zip(classes, cm):
            w.writerow([c] + [int(v) for v in row])
        atomic_write_bytes(run_dir / f"confusion_{eval_split}.csv", buf.getvalue().encode())
        atomic_write_bytes(run_dir / f"confusion_{eval_split}.png",
                           _confusion_png(cm, classes, f"{name} {best.row}: {eval_split}"))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=["class", "precision", "recall", "f1", "support"], lineterminator="\n")
        w.writeheader()
        w.writerows([{k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in r.items()} for r in per_class])
        atomic_write_bytes(run_dir / "per_class.csv", buf.getvalue().encode())
        md = ["| backbone | kernel | train | val | test |", "|---|---|---|---|---|"]
        for r in table:
            mark = "**" if (r["backbone"], r["kernel"]) == (name, best.row) else ""
            nm = r["backbone"] + (" (random weights)" if r["random_weights"] else "")
            md.append(f"| {nm} | {r['kernel']} | " + " | ".join(
                f"{mark}{r[s]:.3f}{mark}" if s in r else "n/a" for s in ("train", "val", "test")) + " |")
        report = [f"# Character identification {run_id}", "",
                  f"- data: `{ds.source}`: {len(classes)} characters, " + ", ".join(
                      f"{s} {int(np.sum([r.split == s for r in ds.records]))}" for s in ("train", "val", "test")),
                  f"- best on val: **{name} {best.row}** -> " + ", ".join(f"{s} {a:.3f}" for s, a in best.accuracy.items()),
                  f"- model: `{model_path}`" + (f" (also `{best_path}`)" if best_path else
                                                 f"; `{models_root / 'character-best'}` unchanged "
                                                 f"({why}; --set-best replaces it)")
                  + f"; use it with `animefaces predict --model {use.with_suffix('')} IMAGES`",
                  *[f"- note: {n}" for n in ds.notes], "", "## Accuracy", "", *md, "",
                  f"## Per-class precision / recall ({eval_split}, best model)", "",
                  "| character | precision | recall | support |", "|---|---|---|---|",
                  *[f"| {r['class']} | {r['precision']:.3f} | {r['recall']:.3f} | {r['support']} |" for r in per_class],
                  "", f"Confusion matrix: `confusion_{eval_split}.csv`, `confusion_{eval_split}.png`", ""]
        if skipped:
            report += ["## Skipped backbones", ""] + [f"- **{k}**: {v}" for k, v in skipped.items()] + [""]
        atomic_write_bytes(run_dir / "report.md", "\n".join(report).encode())
        results = {"run_id": run_id, "task": "character", "classes": classes, "data": ds.source,
                   "notes": ds.notes, "table": table, "skipped": skipped,
                   "best": {"backbone": name, "kernel": best.row, "params": best.params,
                            "accuracy": best.accuracy, "eval_split": eval_split,
                            "model": str(model_path),
                            "also_saved_as": str(best_path) if best_path else None,
                            "best_replaced": {"done": bool(best_path), "why": why,
                                              "best": str(models_root / "character-best")}},
                   "per_class": per_class, "confusion": cm.tolist(), "features": meta,
                   "versions": versions(), "seconds": round(time.perf_counter() - t0, 3),
                   "run_dir": str(final_dir)}
        atomic_write_json(run_dir / "results.json", results)
        run_dir = finish_run_dir(run_dir, final_dir)
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return SweepResult(run_dir=run_dir, best_model=model_path, results=results)
