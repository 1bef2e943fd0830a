"""The command line: a thin layer over the Python API (parse, call, print).

    animefaces backbones
    animefaces extract --backbone vgg16 --data DIR_OR_MANIFEST
    animefaces sweep --data DIR_OR_MANIFEST [--config paper]
    animefaces predict FILES_OR_DIRS --model models/best [--format csv|json]
"""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from ..errors import AnimeFacesError
from . import video as cli_video, bench as cli_bench, report as cli_report, scan as cli_scan
from ._args import add_allow_pickle
from .backbones import cmd_backbones
from .predict import cmd_predict
from .train import cmd_extract, cmd_sweep

# Subcommands that live in their own modules (each has register(subparsers)).
_COMMAND_GROUPS = (cli_video, cli_bench, cli_report, cli_scan)


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

    for group in _COMMAND_GROUPS:
        group.register(sub)
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
