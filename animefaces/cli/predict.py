"""``animefaces predict``: classify image files or folders with a trained model."""

from __future__ import annotations

import csv
import json
import sys

from ._args import add_allow_pickle


def cmd_predict(args) -> int:
    import os

    from ..api import DEFAULT_MODEL, FaceClassifier, model_task

    model = args.model or os.environ.get("ANIMEFACES_MODEL") or DEFAULT_MODEL
    if model_task(model) == "character":
        return _predict_characters(args, model)
    clf = FaceClassifier.load(model, device=args.device, threshold=args.threshold,
                              abstain=args.abstain, ood=not args.no_ood,
                              cache_dir=None if args.cache_dir in ("", "none") else args.cache_dir,
                              allow_pickle=args.allow_pickle)
    from ..api import Prediction

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
    from ..character_api import CharacterClassifier, CharacterPrediction

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
    from ..data.datasets import records_from_paths

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


def register(sub) -> None:
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
