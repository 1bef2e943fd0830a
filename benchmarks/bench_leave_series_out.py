"""Leave-series-out measurement of the whole method on real TV-episode frames (issue 14).

Every number this prints on ``anime-episodes`` comes from a model that saw none of the series it
is scored on:

* ``episodes, leave-series-out``: the episode series are split into ``--folds`` group folds; for
  each fold the full sweep (group cross-validation, calibration, abstain band, out-of-domain
  guard; the default config) is run on the mini set's train + val and the episodes of the other
  folds (``--train-also``), with every group of the held-out fold removed from both, and the
  saved model answers the held-out frames through ``FaceClassifier.predict_many`` (labels,
  abstentions and out-of-domain flags as a user gets them);
* ``episodes, never seen``: the model trained on the mini set only (what ``bash run.sh`` trained
  before) on every episode frame;
* ``distinct`` / ``test``: the model trained as ``bash run.sh`` trains it (mini train + val and
  every episode frame whose series is not in distinct), from that sweep's own report.

Nothing here chooses anything: the sweep's choices are made on its own training data. Results go
to ``benchmarks/results/leave_series_out.json``; the README's "How far to trust it" quotes them.

    .venv/bin/python benchmarks/bench_leave_series_out.py            # about 5-15 min on 2 cores
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _write_manifest(path: Path, records, *, split=None) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split", "group"])
        for r in records:
            w.writerow([str(Path(r.path).resolve()), r.label, split or r.split or "", r.group or ""])
    return path


def _metrics(rows: list[dict]) -> dict:
    """accuracy (score >= 0.5, every frame), answered share, error among answered, out-of-domain
    share, ECE (15 bins) of P(face)."""
    from animefaces.classify.calibration import ece

    y = np.array([r["y"] for r in rows])
    p = np.array([r["p"] for r in rows])
    lab = np.array([r["label"] for r in rows])
    answered = np.isin(lab, ("face", "no_face"))
    wrong = (lab == "face") != (y == 1)
    return {"n": int(len(y)), "accuracy": round(float(np.mean((p >= 0.5) == (y == 1))), 4),
            "answered": round(float(answered.mean()), 4),
            "error_among_answered": round(float(wrong[answered].mean()), 4) if answered.any() else None,
            "out_of_domain": round(float(np.mean(lab == "out_of_domain")), 4),
            "unsure": round(float(np.mean(lab == "unsure")), 4),
            "ece": round(ece(p, y, n_bins=15), 4)}


def _answer(model: Path, records, cache: Path) -> list[dict]:
    from animefaces import FaceClassifier

    clf = FaceClassifier.load(model, cache_dir=cache)
    preds = clf.predict_many([r.path for r in records])
    return [{"path": str(r.path), "group": r.group, "source": (r.group or "").split(":")[0],
             "y": int(r.label == "face"), "p": float(pr.score), "label": pr.label,
             "ood_reason": pr.ood_reason or ""} for r, pr in zip(records, preds)]


def _sweep(tmp: Path, name: str, data: Path, also, cache: Path):
    from animefaces.train.sweep import run_sweep

    return run_sweep(data, train_also=also, allow_outside=True, out_dir=tmp / name / "reports",
                     models_dir=tmp / name / "models", cache_dir=cache, set_best=False,
                     progress=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mini", default=str(ROOT.parent / "shared/data/animefaces-mini"))
    ap.add_argument("--episodes", default=str(ROOT.parent / "shared/data/anime-episodes"))
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--cache-dir", default=str(ROOT / "features"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/leave_series_out.json"))
    args = ap.parse_args()

    from sklearn.model_selection import GroupKFold

    from animefaces.data.datasets import load_dataset

    t0 = time.perf_counter()
    cache = Path(args.cache_dir)
    mini = load_dataset(args.mini)
    ep = load_dataset(args.episodes)
    ep_groups = np.array([r.group for r in ep.records], dtype=object)
    doc: dict = {"mini": mini.source, "episodes": ep.source, "folds": args.folds}
    with tempfile.TemporaryDirectory(prefix="lso-") as tmpname:
        tmp = Path(tmpname)
        rows: list[dict] = []
        fold_info = []
        folds = GroupKFold(args.folds).split(np.zeros(len(ep_groups)), groups=ep_groups)
        for k, (tr, te) in enumerate(folds):
            held = set(ep_groups[te].tolist())
            # every image of a held-out series leaves the training data, the mini set's too
            train_mini = [r for r in mini.records if r.split in ("train", "val") and r.group not in held]
            d = tmp / f"fold{k}"
            d.mkdir()
            m = _write_manifest(d / "mini.csv", train_mini)
            e = _write_manifest(d / "episodes.csv", [ep.records[i] for i in tr], split="train")
            res = _sweep(tmp, f"fold{k}", m, [e], cache)
            got = _answer(res.best_model, [ep.records[i] for i in te], cache)
            for g in got:
                g["fold"] = k
            rows += got
            best = res.results["best"]
            fold_info.append({"fold": k, "held_out_groups": sorted(held), "n_held_out": len(te),
                              "model": f"{best['kernel']} {best['params']}",
                              "band": res.results["trust"]["abstain"]["band"],
                              "cv_accuracy": best["accuracy"].get("cv"),
                              "metrics": _metrics(got)})
            print(f"fold {k}: {fold_info[-1]['model']}, held out {len(te)} frames of "
                  f"{len(held)} series: {fold_info[-1]['metrics']}", flush=True)
        doc["episodes_leave_series_out"] = _metrics(rows)
        doc["episodes_leave_series_out_by_source"] = {
            s: _metrics([r for r in rows if r["source"] == s])
            for s in sorted({r["source"] for r in rows})}
        doc["episodes_leave_series_out_ood_reasons"] = sorted(
            {r["ood_reason"].split(":")[0] for r in rows if r["label"] == "out_of_domain"})
        doc["folds_detail"] = fold_info

        # The mini-only model (episodes never seen) and the model bash run.sh trains (both sets).
        only = _sweep(tmp, "mini-only", Path(mini.source), None, cache)
        doc["episodes_never_seen_mini_only_model"] = _metrics(_answer(only.best_model, ep.records, cache))
        both = _sweep(tmp, "both", Path(mini.source), [Path(ep.source)], cache)
        for name, res in (("mini_only_model", only), ("run_sh_model", both)):
            t = res.results["trust"]
            cal = t["calibration"]["splits"]
            doc[name] = {
                "model": f"{res.results['best']['kernel']} {res.results['best']['params']}",
                "band": t["abstain"]["band"],
                "accuracy": res.results["best"]["accuracy"],
                "abstain": {s: v for s, v in t["abstain"]["splits"].items()},
                "ece": {s: v["calibrated"]["ece"] for s, v in cal.items()},
                "ood_false_flags": {s: v["rate"] for s, v in t["ood"]["false_flags"].items()},
                "cv_by_source": t.get("cv_by_source")}
        # Out-of-domain probes (trust-check) on the run.sh model
        try:
            from animefaces import FaceClassifier
            from animefaces.classify.probes import evaluate_probes, heldout_probes, probe_images

            clf = FaceClassifier.load(both.best_model)
            probes = probe_images(seed=1, include_lfw=True) + heldout_probes()
            res = evaluate_probes(clf.guard, clf.extractor, probes)
            main_kinds = {k: v for k, v in res["kinds"].items()
                          if k != "lfw-face-upscaled" and not k.startswith("held-out")}
            doc["probes_run_sh_model"] = {
                "caught": sum(v["caught"] for v in main_kinds.values()),
                "n": sum(v["n"] for v in main_kinds.values()),
                "missed": [n for v in main_kinds.values() for n in v["missed"]],
                "extra": {k: {"caught": v["caught"], "n": v["n"], "missed": v["missed"]}
                          for k, v in res["kinds"].items() if k not in main_kinds}}
        except ImportError as exc:
            doc["probes_run_sh_model"] = f"not measured: {exc}"
    doc["seconds"] = round(time.perf_counter() - t0, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(json.dumps({k: v for k, v in doc.items() if k != "folds_detail"}, indent=2, default=str))


if __name__ == "__main__":
    main()
