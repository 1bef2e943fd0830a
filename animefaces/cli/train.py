"""``animefaces extract`` and ``animefaces sweep``: thin calls into features and train."""

from __future__ import annotations

import argparse
import sys

from ..errors import AnimeFacesError
from ..features.backbones import DEFAULT_BACKBONE
from ._args import add_feature_options, weights_arg


def cmd_extract(args) -> int:
    from ..features.dataset import extract_dataset

    backbone = args.backbone
    if args.model_alias:
        print("warning: `extract --model` is deprecated: use --backbone (--model names a trained "
              "classifier everywhere else)", file=sys.stderr)
        if backbone and backbone != args.model_alias:
            raise AnimeFacesError(f"--backbone {backbone} and --model {args.model_alias} disagree; "
                                  f"give only --backbone")
        backbone = backbone or args.model_alias
    from ._ray import ray_options

    feats = extract_dataset(args.data, backbone=backbone or DEFAULT_BACKBONE, weights=args.weights,
                            cache_dir=args.cache_dir, device=args.device, precision=args.precision,
                            pooling=args.pooling, batch_size=args.batch_size,
                            skip_bad=args.skip_bad, progress=not args.quiet,
                            checkpoint_every=args.checkpoint_every,
                            allow_outside=args.allow_outside_paths, ray=ray_options(args))
    m = feats.meta
    print(f"{m['backbone']}: {len(feats.records)} images -> {feats.X.shape[1]}-d features "
          f"({feats.computed} computed, {len(feats.records) - feats.computed} from the cache) in "
          f"{feats.seconds:.1f}s; cache {args.cache_dir}/{m['backbone']}-{m['fingerprint'][:12]}"
          + ("; RANDOM weights" if m["random_weights"] else ""))
    if feats.bad:
        print(f"{len(feats.bad)} unreadable image(s) left out:")
        for p, reason in feats.bad:
            print(f"  {p}: {reason}")
    return 0


def cmd_sweep(args) -> int:
    from ..train.sweep import run_sweep

    backbones = [b.strip() for b in args.backbones.split(",")] if args.backbones else None
    from ._ray import ray_context, ray_options

    ray = ray_options(args)
    if args.task == "character":
        from ..train.character import run_character_sweep

        if ray is not None:
            raise AnimeFacesError("--ray works with --task face for now: run `animefaces extract "
                                  "--ray` first (the character sweep then finds the features "
                                  "cached), then the sweep without --ray")

        if args.train_also:
            raise AnimeFacesError("--train-also works with --task face only; merge the data sets "
                                  "into one manifest for the character task")
        if args.allow_outside_paths:  # not silently ignored: character.py does not take it yet
            raise AnimeFacesError("--allow-outside-paths works with --task face only for now; move "
                                  "the images under the manifest's folder for the character task")

        groups = [g.strip() for g in args.groups.split(",")] if args.groups else None
        config = args.config
        overrides = {k: v for k in ("precision", "pooling", "batch_size")
                     if (v := getattr(args, k)) is not None}
        if overrides:
            from ..config import load_config
            from ..train.common import with_features

            config = with_features(load_config(config), overrides)
        res = run_character_sweep(args.data, config=config, groups=groups,
                                  min_per_class=args.min_per_class, backbones=backbones,
                                  weights=weights_arg(args.weights), device=args.device,
                                  out_dir=args.out, cache_dir=args.cache_dir,
                                  models_dir=args.models_dir, set_best=args.set_best,
                                  progress=not args.quiet)
        print((res.run_dir / "report.md").read_text())
        print(f"Reports: {res.run_dir}")
        return 0
    with ray_context(ray):  # one Ray session for every backbone
        res = run_sweep(args.data, config=args.config, backbones=backbones,
                        weights=weights_arg(args.weights), device=args.device, out_dir=args.out,
                        models_dir=args.models_dir, cache_dir=args.cache_dir,
                        skip_bad=True if args.skip_bad else None, precision=args.precision,
                        pooling=args.pooling, batch_size=args.batch_size,
                        allow_outside=args.allow_outside_paths, set_best=args.set_best,
                        progress=not args.quiet, ray=ray, train_also=args.train_also)
    print(_sweep_summary(res.results, res.run_dir))
    return 0


def _sweep_summary(results: dict, run_dir) -> str:
    """A few lines for the console: the chosen model and its numbers, how the features were
    computed, what was skipped, where the reports and the model are (report.md has the rest)."""
    from ..report.tables import runtime_line

    best = results["best"]
    acc = best.get("accuracy", {})
    on = "held-out groups" if results.get("selected_on") == "cv" else "val"
    lines = [f"Chosen on {on}: {best['backbone']} {best['kernel']} ("
             + ", ".join(f"{k}={v}" for k, v in best.get("params", {}).items()) + ")",
             "  accuracy: " + ", ".join(f"{'new groups (CV)' if s == 'cv' else s} {a:.3f}"
                                        for s, a in acc.items())]
    if results.get("runtime"):
        lines.append("  features: " + runtime_line(results["runtime"]))
    skipped = [n for n, i in results.get("backbones", {}).items() if i.get("status") != "ok"]
    if skipped:
        lines.append(f"  skipped (no weights here): {', '.join(skipped)}; "
                     f"`animefaces backbones -v` says where to put each file")
    if results.get("bad_files"):
        lines.append(f"  {len(results['bad_files'])} unreadable image(s) left out: see bad_files.csv")
    lines.append(f"Reports: {run_dir}/report.md (Table 1 / Table 2), report.html")
    lines.append(f"Model:   {_model_name(best['model'])}")
    also = best.get("also_saved_as")
    replaced = best.get("best_replaced") or {}
    if also:
        lines.append(f"         {_model_name(also)} now loads it too")
    elif replaced.get("best"):
        lines.append(f"         {replaced['best']} unchanged ({replaced.get('why')}; "
                     f"--set-best replaces it)")
    lines.append(f"Use it:  animefaces predict FRAMES --model {_model_name(also or best['model'])}")
    return "\n".join(lines)


def _model_name(path) -> str:
    """``models/best`` for ``models/best.json`` (and an earlier ``.joblib``): what to type."""
    text = str(path)
    for suffix in (".json", ".joblib"):
        if text.endswith(suffix):
            return text[:-len(suffix)]
    return text


def register(sub) -> None:
    e = sub.add_parser("extract", help="extract features for every image once, into the cache",
                       description="Extract pooled CNN features for every image of a dataset into "
                                   "the feature cache. Already cached images (by content hash) are "
                                   "not recomputed; an interrupted run resumes.")
    e.add_argument("--backbone", dest="backbone", default=None,
                   help="backbone name (see `animefaces backbones`; default mobilenet_v2)")
    # --model meant the backbone here but the trained classifier everywhere else
    e.add_argument("--model", dest="model_alias", default=None, help=argparse.SUPPRESS)
    e.add_argument("--data", required=True, help="manifest CSV (path,label,split[,group]) or folder tree")
    e.add_argument("--weights", default=None,
                   help="weights file for the backbone, or 'random' (tests only)")
    e.add_argument("--checkpoint-every", type=int, default=256, metavar="N",
                   help="save finished features every N images (an interrupted run resumes there)")
    add_feature_options(e)
    e.set_defaults(func=cmd_extract)

    s = sub.add_parser("sweep", help="train the SVM grid and write Table 1 / Table 2",
                       description="Extract what is missing, fit the SVM grid for every backbone "
                                   "whose weights are available, choose the best on held-out "
                                   "groups (group cross-validation over train + val; val when "
                                   "there are fewer than 3 groups), save it "
                                   "under models/ and write Table 1 / Table 2 (Markdown, CSV) and "
                                   "results.json into a run folder under reports/.")
    s.add_argument("--data", required=True, help="manifest CSV or folder tree")
    s.add_argument("--train-also", action="append", default=None, metavar="DATA",
                   help="face task: another labelled data set (manifest or folder tree) whose "
                        "every image joins train, its splits ignored (repeatable); images of a "
                        "group --data measures as unseen (distinct, evaluation-only splits) are "
                        "left out, and report.md gives the held-out-group numbers per data set")
    s.add_argument("--config", default=None,
                   help="TOML config, or a built-in name: default, paper (default: configs/default.toml)")
    s.add_argument("--backbones", default=None, help="comma-separated backbones (overrides the config)")
    s.add_argument("--weights", action="append", default=None, metavar="[NAME=]PATH|random",
                   help="weights for all backbones, or NAME=PATH per backbone (repeatable)")
    s.add_argument("--task", choices=["face", "character"], default="face",
                   help="face: face / no_face (Table 1 / 2); character: identify characters, "
                        "classes from the group column of face rows or CHARACTER/ folders")
    s.add_argument("--groups", default=None, metavar="PATTERNS",
                   help="character task: comma-separated glob patterns of classes to keep "
                        "(e.g. 'sytwu:*,ao7108:*')")
    s.add_argument("--min-per-class", type=int, default=5,
                   help="character task: leave out classes with fewer training images (default 5)")
    s.add_argument("--out", default=None, help="reports folder (default: reports/)")
    s.add_argument("--models-dir", default=None, help="where the best model goes (default: models/)")
    s.add_argument("--set-best", action="store_true", default=None,
                   help="also make the chosen model the folder's best (models/best, or "
                        "models/character-best), which predict loads by default; without it only "
                        "a run with the default config replaces it (every run saves its own "
                        "models/<run>-<backbone>-<kernel>)")
    add_feature_options(s)
    s.set_defaults(func=cmd_sweep)
