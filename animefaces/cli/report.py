"""``animefaces report RUN_DIR`` and ``animefaces trust-check``: thin calls into the API."""

from __future__ import annotations

import json
import sys


def cmd_report(args) -> int:
    from ..report.html import write_html_report

    path = write_html_report(args.run_dir, args.output)
    print(path)
    return 0


def cmd_trust_check(args) -> int:
    """Out-of-domain catch rate on non-anime probe images (scikit-image / scikit-learn photos,
    generated frames) for a saved model."""
    from ..api import FaceClassifier
    from ..classify.probes import evaluate_probes, heldout_probes, probe_images
    from ..errors import AnimeFacesError

    clf = FaceClassifier.load(args.model, device=args.device,
                              **({"allow_pickle": True} if args.allow_pickle else {}))
    if clf.guard is None:
        raise AnimeFacesError(f"model {clf.path} has no out-of-domain guard; retrain it with "
                              f"`animefaces sweep` ([trust] ood = true)")
    try:
        probes = probe_images(seed=args.seed, include_lfw=not args.no_lfw)
    except ImportError as exc:
        raise AnimeFacesError(str(exc)) from None
    held = [] if args.no_heldout else heldout_probes()
    res = evaluate_probes(clf.guard, clf.extractor, probes + held)
    if args.json:
        json.dump(res, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    total_n = total_c = 0
    print(f"{'kind':<22}{'caught':>8}{'n':>5}{'rate':>8}  missed")
    # The probe set: everything but the extra LFW faces and the held-out images.
    extra = [kind for kind in res["kinds"] if kind == "lfw-face-upscaled" or kind.startswith("held-out")]
    for kind, k in res["kinds"].items():
        if kind in extra:
            continue
        total_n += k["n"]
        total_c += k["caught"]
        print(f"{kind:<22}{k['caught']:>8}{k['n']:>5}{k['rate']:>8.2f}  {', '.join(k['missed'])}")
    print(f"{'all of the above':<22}{total_c:>8}{total_n:>5}{total_c / max(1, total_n):>8.2f}")
    for kind in extra:
        k = res["kinds"][kind]
        print(f"{kind:<22}{k['caught']:>8}{k['n']:>5}{k['rate']:>8.2f}  {', '.join(k['missed'])}")
    return 0


def register(subparsers) -> None:
    r = subparsers.add_parser("report", help="write a self-contained report.html for a sweep run folder",
                              description="Write report.html (tables, per-group accuracy, confusion "
                                          "matrices, ROC / PR, reliability, risk-coverage, worst "
                                          "errors; images embedded) for a run folder under reports/.")
    r.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by `animefaces sweep`")
    r.add_argument("--output", "-o", default=None, help="write here instead of RUN_DIR/report.html")
    r.set_defaults(func=cmd_report)

    t = subparsers.add_parser("trust-check", help="measure the out-of-domain guard on non-anime images",
                              description="Run a saved model's out-of-domain guard on photos shipped "
                                          "with scikit-image and scikit-learn and on generated blank, "
                                          "gradient, noise and text-slide frames; print the catch rate "
                                          "per kind (the issue's 60 probes summed), then upscaled LFW "
                                          "faces and held-out images shipped with matplotlib and "
                                          "networkx. Needs scikit-image.")
    t.add_argument("--model", default=None, help="model saved by sweep (default: models/best)")
    t.add_argument("--device", default="auto")
    from ._args import add_allow_pickle

    add_allow_pickle(t)
    t.add_argument("--seed", type=int, default=1, help="seed of the generated frames (default 1)")
    t.add_argument("--no-lfw", action="store_true", help="leave out the upscaled LFW face photos")
    t.add_argument("--no-heldout", action="store_true",
                   help="leave out the held-out images (matplotlib sample data, networkx drawings)")
    t.add_argument("--json", action="store_true", help="print every probe's result as JSON")
    t.set_defaults(func=cmd_trust_check)
