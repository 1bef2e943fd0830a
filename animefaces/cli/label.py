"""``animefaces label`` (the labelling page) and ``label-export`` / ``label-import`` /
``label-sweep`` (registered by :mod:`animefaces.cli`).

    animefaces label frames/ [--model models/best] [--every 20]
    animefaces label-export frames/ -o tasks.json     # Label Studio JSON (or .csv)
    animefaces label-import frames/ tasks-export.json
    animefaces label-sweep frames/                     # labelled frames -> animefaces sweep

Importing this module is cheap: the web stack, torch and scikit-learn load when a command runs.
"""

from __future__ import annotations

import subprocess
import sys

from ._args import add_allow_pickle, weights_arg

_LABEL_HELP = """\
Serve a local labelling page for DATA (a folder written by `animefaces frames`, a manifest CSV,
or any folder of images: a manifest.csv is written into it) and print its address. Keys: F
face, N no_face, U unsure / skip, arrows back / next, Z undo, G grid. Every label is written to
the manifest at once (a temporary file renamed over it): a crash, a killed server or a closed tab
loses nothing. A second labelling process on the same manifest is refused, and so is a write
after another program or page changed the file. Features come from the feature cache (computed
on demand); every --every labels the SVM is refitted in the background and the next frames are
the most uncertain ones, with a share of random ones that keep the accuracy estimate honest.
"""


def _data_store(args):
    from ..label.store import LabelStore, resolve_manifest

    return LabelStore(resolve_manifest(args.data), allow_outside=args.allow_outside_paths)


def _session(args, store, *, progress: bool):
    from ..label.session import LabelSession

    return LabelSession(store, model=args.model, backbone=args.backbone,
                        weights=weights_arg(args.weights), device=args.device,
                        cache_dir=args.cache_dir, every=getattr(args, "every", 20),
                        random_share=getattr(args, "random_share", 0.2), progress=progress,
                        allow_pickle=args.allow_pickle)


def _sweep_args(args) -> list[str]:
    out = ["--cache-dir", args.cache_dir]
    if args.model is None and args.backbone != "mobilenet_v2":
        out += ["--backbones", args.backbone]
    return out


def cmd_label(args) -> int:
    from ..label.server import serve

    store = _data_store(args)
    session = _session(args, store, progress=not args.quiet)
    try:
        serve(session, host=args.host, port=args.port, sweep_args=_sweep_args(args))
    except KeyboardInterrupt:
        pass
    print(f"stopped; every label is in {store.path}", file=sys.stderr)
    return 0


def cmd_export(args) -> int:
    from ..label.interop import export_labels

    store = _data_store(args)
    scores, version = None, None
    if not args.no_scores:
        session = _session(args, store, progress=not args.quiet)
        session.start(wait=True)
        session.wait_idle(timeout=3600)
        if session.current != "none":
            scores = session.scores()
            version = (f"animefaces {session.model_path}" if session.current == "start"
                       else f"animefaces refit on {session.labels_at_fit} labels")
    written = export_labels(store, args.output, fmt=args.format, scores=scores,
                            model_version=version or "animefaces", url_prefix=args.url_prefix)
    n = sum(1 for r in store.rows if r["label"])
    what = "with the model's P(face)" if scores is not None else "without scores (no model yet)"
    print(f"{len(store.rows)} frames ({n} labelled) {what} -> {', '.join(map(str, written))}")
    return 0


def cmd_import(args) -> int:
    from ..label.interop import import_labels

    store = _data_store(args)
    store.acquire(owner="animefaces label-import")
    try:
        rep = import_labels(store, args.source, fmt=args.format, keep_existing=args.keep_existing)
    finally:
        store.release()
    print(f"{rep['read']} labels read, {rep['matched']} matched a frame: {rep['new']} new, "
          f"{len(rep['changed'])} changed, {rep['same']} unchanged, {rep['kept']} kept "
          f"(--keep-existing) -> {store.path}")
    for path, old, new in rep["changed"][:10]:
        print(f"  changed {path}: {old} -> {new}")
    if rep["unmatched"]:
        print(f"  {len(rep['unmatched'])} not in the manifest, e.g. {', '.join(rep['unmatched'][:5])}",
              file=sys.stderr)
    if rep["bad_labels"]:
        print(f"  {len(rep['bad_labels'])} with a label other than face / no_face / unsure, e.g. "
              f"{rep['bad_labels'][0]}", file=sys.stderr)
    return 0 if not rep["unmatched"] and not rep["bad_labels"] else 1


def cmd_sweep(args) -> int:
    from ..label.interop import write_sweep_manifest

    store = _data_store(args)
    out, how, n = write_sweep_manifest(store, args.out, seed=args.seed)
    print(f"{n} labelled frames -> {out} (splits: {how})")
    if args.no_run:
        print(f"next: animefaces sweep --data {out}")
        return 0
    cmd = [sys.executable, "-m", "animefaces.cli", "sweep", "--data", str(out), *args.sweep_args]
    print("running: animefaces " + " ".join(cmd[3:]), flush=True)
    rc = subprocess.call(cmd)
    if rc == 0:
        print("then: animefaces scan EPISODE.mkv ... --model models/best --out scan/  "
              "(or the models/<run> the sweep named above)")
    return rc


def register(subparsers) -> None:
    def common(p, *, model=True):
        p.add_argument("data", metavar="DATA",
                       help="frames folder (animefaces frames), manifest CSV, or image folder")
        p.add_argument("--allow-outside-paths", action="store_true",
                       help="accept manifest paths outside the manifest's folder")
        if model:
            p.add_argument("--model", default=None,
                           help="start from this saved model (e.g. models/best); default: from "
                                "nothing, a model is fitted once both classes have 2 labels")
            p.add_argument("--backbone", default="mobilenet_v2",
                           help="feature backbone without --model (default mobilenet_v2)")
            p.add_argument("--weights", action="append", default=None, metavar="PATH|random",
                           help="backbone weights (default: found as for extract)")
            p.add_argument("--cache-dir", default="features", help="feature cache (default features/)")
            p.add_argument("--device", default="auto")
            add_allow_pickle(p)
            p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    p = subparsers.add_parser("label", help="label frames in a local web page, with active learning",
                              description=_LABEL_HELP)
    common(p)
    p.add_argument("--every", type=int, default=20, metavar="N",
                   help="refit the SVM after every N new labels (default 20)")
    p.add_argument("--random-share", type=float, default=0.2, metavar="F",
                   help="share of frames shown at random instead of by uncertainty (default 0.2)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; anything "
                        "else lets others on the network label, without a login: a warning)")
    p.add_argument("--port", type=int, default=0, help="port (default 0: a free one)")
    p.set_defaults(func=cmd_label)

    e = subparsers.add_parser("label-export", help="write labels as Label Studio JSON or CSV",
                              description="Write every frame of DATA with its label as Label "
                                          "Studio tasks (.json, with the model's P(face) as "
                                          "predictions; the labelling config goes beside it as "
                                          ".config.xml) or as CSV.")
    common(e)
    e.add_argument("-o", "--output", required=True, help="OUT.json (Label Studio) or OUT.csv")
    e.add_argument("--format", default="auto", choices=["auto", "labelstudio", "csv"])
    e.add_argument("--url-prefix", default="/data/local-files/?d=",
                   help="image URL = prefix + manifest path (default: Label Studio's local files "
                        "storage with its document root at the manifest's folder)")
    e.add_argument("--no-scores", action="store_true",
                   help="no predictions (skips the features and the model)")
    e.set_defaults(func=cmd_export)

    i = subparsers.add_parser("label-import", help="merge labels from Label Studio JSON or CSV",
                              description="Merge the labels of a Label Studio JSON export (each "
                                          "task's latest annotation) or a CSV with path,label "
                                          "columns into DATA's manifest, in one atomic write. "
                                          "Refused while a labelling page has the manifest open.")
    common(i, model=False)
    i.add_argument("source", metavar="FILE", help="Label Studio export (.json) or CSV")
    i.add_argument("--format", default="auto", choices=["auto", "labelstudio", "csv"])
    i.add_argument("--keep-existing", action="store_true",
                   help="do not replace labels the manifest already has")
    i.set_defaults(func=cmd_import)

    s = subparsers.add_parser("label-sweep", help="train on the labelled frames (animefaces sweep)",
                              description="Write DATA's face / no_face rows to a sweep-ready "
                                          "manifest beside it (splits by group: whole series or "
                                          "episodes in val and test) and run `animefaces sweep` "
                                          "on it; arguments after -- go to the sweep.")
    common(s, model=False)
    s.add_argument("--out", default=None, help="the sweep manifest (default: <manifest>.labelled.csv)")
    s.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    s.add_argument("--no-run", action="store_true", help="only write the manifest")
    s.add_argument("sweep_args", nargs="*", metavar="-- SWEEP_ARGS",
                   help="passed to animefaces sweep (e.g. -- --config paper)")
    s.set_defaults(func=cmd_sweep)
