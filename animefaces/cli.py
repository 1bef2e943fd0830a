"""The command line: a thin layer over the Python API (parse, call, print).

    animefaces backbones
    animefaces extract --backbone vgg16 --data DIR_OR_MANIFEST
    animefaces sweep --data DIR_OR_MANIFEST [--config paper]
    animefaces predict FILES_OR_DIRS --model models/best [--format csv|json]
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import sys
from pathlib import Path

from . import __version__
from .errors import AnimeFacesError

# Subcommands that live in their own modules (each has register(subparsers)).
_PLUGIN_MODULES = ("cli_video", "cli_bench", "cli_report", "cli_scan")


def _weights_arg(values):
    """``--weights PATH|random`` (all backbones) or ``--weights NAME=PATH`` (repeatable)."""
    if not values:
        return None
    per, common = {}, None
    for v in values:
        if "=" in v:
            name, path = v.split("=", 1)
            per[name] = path
        else:
            common = v
    if per and common is not None:
        raise AnimeFacesError("--weights: give either one PATH|random for all backbones, or "
                              "NAME=PATH pairs, not both")
    return per or common


def add_allow_pickle(parser) -> None:
    """``--allow-pickle``, on every command that loads a trained model."""
    parser.add_argument("--allow-pickle", action="store_true",
                        help="also load a model stored only as a pickle (.joblib: saved by an "
                             "early animefaces); loading a pickle can run any code in it, so "
                             "only for models you made or trust (refused by default)")


def cmd_backbones(args) -> int:
    from .backbones import get_backbone, list_backbones
    from .errors import WeightsMismatchError, WeightsNotFoundError
    from .weights import resolve_weights

    print(f"{'name':<14}{'dim':>6}  {'weights':<10} description")
    for name in list_backbones(include_test=args.all):
        spec = get_backbone(name)
        try:
            status = (resolve_weights(spec, download=False).source if spec.weights or not spec.needs_weights
                      else "random only")
        except (WeightsNotFoundError, WeightsMismatchError) as exc:
            status = "missing" if isinstance(exc, WeightsNotFoundError) else "BAD FILE"
        print(f"{name:<14}{spec.feature_dim:>6}  {status:<10} {spec.description}")
        if args.verbose and status in ("missing", "BAD FILE") and spec.weights:
            from .weights import missing_weights_message

            print(f"{'':<22}fix: {missing_weights_message(spec)}")
    return 0


def cmd_extract(args) -> int:
    from .sweep import extract_dataset

    backbone = args.backbone
    if args.model_alias:
        print("warning: `extract --model` is deprecated: use --backbone (--model names a trained "
              "classifier everywhere else)", file=sys.stderr)
        if backbone and backbone != args.model_alias:
            raise AnimeFacesError(f"--backbone {backbone} and --model {args.model_alias} disagree; "
                                  f"give only --backbone")
        backbone = backbone or args.model_alias
    feats = extract_dataset(args.data, backbone=backbone or "mobilenet_v2", weights=args.weights,
                            cache_dir=args.cache_dir, device=args.device, precision=args.precision,
                            pooling=args.pooling, batch_size=args.batch_size,
                            skip_bad=args.skip_bad, progress=not args.quiet,
                            checkpoint_every=args.checkpoint_every,
                            allow_outside=args.allow_outside_paths)
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
    from .sweep import run_sweep

    backbones = [b.strip() for b in args.backbones.split(",")] if args.backbones else None
    if args.task == "character":
        from .character import run_character_sweep

        if args.allow_outside_paths:  # not silently ignored: character.py does not take it yet
            raise AnimeFacesError("--allow-outside-paths works with --task face only for now; move "
                                  "the images under the manifest's folder for the character task")

        groups = [g.strip() for g in args.groups.split(",")] if args.groups else None
        config = args.config
        overrides = {k: v for k in ("precision", "pooling", "batch_size")
                     if (v := getattr(args, k)) is not None}
        if overrides:
            from .config import load_config
            from .sweep import _with_features

            config = _with_features(load_config(config), overrides)
        res = run_character_sweep(args.data, config=config, groups=groups,
                                  min_per_class=args.min_per_class, backbones=backbones,
                                  weights=_weights_arg(args.weights), device=args.device,
                                  out_dir=args.out, cache_dir=args.cache_dir,
                                  models_dir=args.models_dir, set_best=args.set_best,
                                  progress=not args.quiet)
        print((Path(res["run_dir"]) / "report.md").read_text())
        print(f"Reports: {res['run_dir']}")
        return 0
    res = run_sweep(args.data, config=args.config, backbones=backbones,
                    weights=_weights_arg(args.weights), device=args.device, out_dir=args.out,
                    models_dir=args.models_dir, cache_dir=args.cache_dir,
                    skip_bad=True if args.skip_bad else None, precision=args.precision,
                    pooling=args.pooling, batch_size=args.batch_size,
                    allow_outside=args.allow_outside_paths, set_best=args.set_best,
                    progress=not args.quiet)
    print(_sweep_summary(res.results, res.run_dir))
    return 0


def _sweep_summary(results: dict, run_dir) -> str:
    """A few lines for the console: the chosen model and its numbers, how the features were
    computed, what was skipped, where the reports and the model are (report.md has the rest)."""
    from .report import runtime_line

    best = results["best"]
    acc = best.get("accuracy", {})
    lines = [f"Chosen on val: {best['backbone']} {best['kernel']} ("
             + ", ".join(f"{k}={v}" for k, v in best.get("params", {}).items()) + ")",
             "  accuracy: " + ", ".join(f"{s} {a:.3f}" for s, a in acc.items())]
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


def cmd_predict(args) -> int:
    import os

    from .api import DEFAULT_MODEL, FaceClassifier, model_task

    model = args.model or os.environ.get("ANIMEFACES_MODEL") or DEFAULT_MODEL
    if model_task(model) == "character":
        return _predict_characters(args, model)
    clf = FaceClassifier.load(model, device=args.device, threshold=args.threshold,
                              abstain=args.abstain, ood=not args.no_ood,
                              cache_dir=None if args.cache_dir in ("", "none") else args.cache_dir,
                              allow_pickle=args.allow_pickle)
    from .api import Prediction

    rows = _predict_rows(args, clf, lambda p, why: Prediction(source=str(p), label="error",
                                                              score=float("nan"), error=why))
    header = list(rows[0]) if rows else ["source"]

    def line(r):
        if r["label"] == "error":
            return f"{r['source']}\terror\t{r['error']}"
        if r.get("out_of_domain"):
            return f"{r['source']}\tout_of_domain\t{r['score']:.3f}\t{r.get('ood_reason') or ''}"
        return f"{r['source']}\t{r['label']}\t{r['score']:.3f}"

    return _emit(args, rows, csv_header=header, csv_row=lambda r: [r[k] for k in header],
                 line=line, n_err=sum(r["label"] == "error" for r in rows),
                 table_header="source\tlabel\tP(face)\tnote")


def _predict_characters(args, model) -> int:
    """``animefaces predict`` with a character model: one character per image."""
    from .character_api import CharacterClassifier, CharacterPrediction

    clf = CharacterClassifier.load(model, device=args.device, allow_pickle=args.allow_pickle)
    rows = _predict_rows(args, clf, lambda p, why: CharacterPrediction(source=str(p), character=None,
                                                                       error=why))

    def line(r):
        if r["error"]:
            return f"{r['source']}\terror\t{r['error']}"
        runners = ", ".join(f"{c} {s:.2f}" for c, s in r["ranking"][1:])
        top = r["ranking"][0][1] if r["ranking"] else float("nan")
        return f"{r['source']}\t{r['character']}\t{top:.2f}\t{runners or '-'}"

    return _emit(args, rows, csv_header=["source", "character", "ranking", "error"],
                 csv_row=lambda r: [r["source"], r["character"] or "error",
                                    " ".join(f"{c}={s:.3f}" for c, s in r["ranking"]),
                                    r["error"] or ""],
                 line=line, n_err=sum(1 for r in rows if r["error"]),
                 table_header="source\tcharacter\tscore\trunners-up (score)",
                 table_note="score: the SVM's one-vs-rest decision value (one-vs-one votes "
                            "plus a confidence below 1); higher is more likely, but it is not a "
                            "probability")


def _predict_rows(args, clf, error_row) -> list[dict]:
    """predict's rows, one per image in input order: a missing input or a folder without images
    is an error row like an unreadable image (it does not stop the others)."""
    from .datasets import records_from_paths

    problems: dict = {}
    paths = records_from_paths(args.inputs, problems=problems)
    readable = [p for p in paths if p not in problems]
    answers = iter(clf.predict_many(readable, on_error="report", progress=not args.quiet)
                   if readable else [])
    return [(error_row(p, problems[p]) if p in problems else next(answers)).to_dict() for p in paths]


def _emit(args, rows, *, csv_header, csv_row, line, n_err: int, table_header: str = "",
          table_note: str = "") -> int:
    """Write predict's rows as JSON, CSV or a table (stdout or --output); exit code 1 when
    some inputs could not be read."""
    out = open(args.output, "w", newline="") if args.output else sys.stdout
    try:
        if args.format == "json":
            json.dump(rows, out, indent=2)
            out.write("\n")
        elif args.format == "csv":
            w = csv.writer(out, lineterminator="\n")
            w.writerow(csv_header)
            w.writerows(csv_row(r) for r in rows)
        else:
            if table_header:
                out.write(table_header + "\n")
            for r in rows:
                out.write(line(r) + "\n")
            if table_note and rows:
                print(table_note, file=sys.stderr)
    finally:
        if args.output:
            out.close()
    if n_err:
        print(f"{n_err} of {len(rows)} image(s) could not be read ('error' above)", file=sys.stderr)
    return 1 if n_err else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="animefaces",
        description="Tell whether anime frames show a character's face: pretrained CNN features "
                    "(cached on disk) + SVMs, after 'Detecting Faces in Animes Using Supervised "
                    "Domain Adaptation'.")
    p.add_argument("--version", action="version", version=f"animefaces {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    b = sub.add_parser("backbones", help="list backbones, feature sizes and whether weights are found")
    b.add_argument("--all", action="store_true", help="include test-only backbones")
    b.add_argument("-v", "--verbose", action="store_true", help="print the fix for missing weights")
    b.set_defaults(func=cmd_backbones)

    def add_feature_opts(sp):
        # The same names and meaning on extract and sweep; on sweep, unset means "the config's".
        sweep = sp.prog.endswith("sweep")
        sp.add_argument("--cache-dir", default=None if sweep else "features",
                        help="feature cache folder (default: features/)")
        sp.add_argument("--device", default=None if sweep else "auto",
                        help="auto (CUDA if present), cpu, cuda, cuda:N")
        sp.add_argument("--precision", default=None if sweep else "auto",
                        choices=["auto", "fp32", "bf16", "fp16"],
                        help="auto: fp32 on every CPU (the same answers on any CPU), fp16 on CUDA; "
                             "bf16: ~2x faster on CPUs with bf16 units, slightly different "
                             "features (cached separately)")
        sp.add_argument("--pooling", default=None if sweep else "auto",
                        choices=["auto", "max", "avg", "maxavg"],
                        help="spatial pooling of the feature map (auto: the backbone's default)")
        sp.add_argument("--batch-size", type=int, default=None,
                        help="images per forward pass (default: the backbone's measured best)")
        sp.add_argument("--skip-bad", action="store_true",
                        help="leave unreadable images out (listed in the output) instead of stopping")
        sp.add_argument("--allow-outside-paths", action="store_true",
                        help="accept manifest paths outside the manifest's folder (absolute, or "
                             "../ above it); refused by default")
        sp.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

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
    add_feature_opts(e)
    e.set_defaults(func=cmd_extract)

    s = sub.add_parser("sweep", help="train the SVM grid and write Table 1 / Table 2",
                       description="Extract what is missing, fit the SVM grid for every backbone "
                                   "whose weights are available, choose the best on val, save it "
                                   "under models/ and write Table 1 / Table 2 (Markdown, CSV) and "
                                   "results.json into a run folder under reports/.")
    s.add_argument("--data", required=True, help="manifest CSV or folder tree")
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
    add_feature_opts(s)
    s.set_defaults(func=cmd_sweep)

    pr = sub.add_parser("predict", help="classify image files or folders with a trained model",
                        description="Classify image files, and the images in folders (recursively), "
                                    "with a model saved by `animefaces sweep`. An input that cannot "
                                    "be read (missing, a folder without images, not a regular file, "
                                    "not an image, corrupt) gets a row with label 'error' and the "
                                    "reason; the other inputs are still answered.",
                        epilog="exit status: 0 every input answered; 1 some inputs could not be read "
                               "(their rows say 'error'); 2 nothing was classified (bad model, "
                               "option or setup: the message says why).")
    pr.add_argument("inputs", nargs="+", metavar="FILE_OR_DIR")
    pr.add_argument("--model", default=None,
                    help="model saved by sweep (default: models/best); a character model "
                         "(sweep --task character: models/character-best) names the character "
                         "in each image instead")
    pr.add_argument("--format", choices=["table", "csv", "json"], default="table")
    pr.add_argument("--output", "-o", default=None, help="write to this file instead of stdout")
    pr.add_argument("--threshold", type=float, default=0.5, help="P(face) threshold (default 0.5)")
    pr.add_argument("--abstain", default="auto", metavar="auto|off|LO,HI",
                    help="answer 'unsure' when LO < P(face) < HI (auto: the band chosen on val "
                         "and saved with the model; off: always answer)")
    pr.add_argument("--no-ood", action="store_true",
                    help="do not flag non-anime inputs (photos, blank or text frames, thumbnails) "
                         "as out_of_domain")
    pr.add_argument("--device", default="auto")
    add_allow_pickle(pr)
    pr.add_argument("--cache-dir", default="features",
                    help="feature cache shared with extract / sweep: cached images are not run "
                         "through the CNN again, new ones are added (default: features/; "
                         "'none': keep nothing on disk)")
    pr.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    pr.set_defaults(func=cmd_predict)

    for name in _PLUGIN_MODULES:
        try:
            mod = importlib.import_module(f".{name}", __package__)
        except ModuleNotFoundError as exc:
            if exc.name == f"{__package__}.{name}":
                continue
            raise
        mod.register(sub)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except AnimeFacesError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # A write the file system refused somewhere without its own message (a report file):
        # one line, not a traceback. Model and cache writes say more (see _io.write_failed).
        import errno

        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        where = f" at {exc.filename}" if exc.filename else ""
        print(f"error: {exc.strerror} ({errno.errorcode[exc.errno]}){where}; finished work is "
              f"kept (cached features, saved models); free some space or fix the folder's "
              f"permissions (or choose another with --out / --models-dir / --cache-dir), then "
              f"run again", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished work is saved (features in the cache); run the same command "
              "again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
