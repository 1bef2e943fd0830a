"""The ``scan`` subcommand (registered by :mod:`animefaces.cli`).

    animefaces scan EPISODE.mkv ... --model models/best --out scans/ [--fps 1] [--contact-sheet]

A thin call into :func:`animefaces.scan.scan_videos`: prints each video's face ranges and the
summary, returns 0, or 1 when some video failed. Problems with the run itself (a missing model,
bad options) raise :class:`~animefaces.errors.AnimeFacesError`, printed by the main CLI with
exit code 2. Importing this module is cheap: torch and PyAV load only when the command runs.
"""

from __future__ import annotations

import argparse

from ._args import add_sampling_options, nonneg_float, sampling_fps

_SCAN_HELP = """\
Find where faces are on screen in videos: frames are sampled (one a second by default, as
AnimeFaces did; nothing is written to disk), classified in batches by a model trained with
`animefaces sweep`, and merged into time ranges with hysteresis: a range starts at a frame with
P(face) >= --on, goes on while P >= --off, and ends at a dip below --off that lasts longer than
--min-gap seconds (default one sampling step: a single noisy frame does not split a range).
A frame sampled at t stands for [t, t + 1/fps): a range ends at its last frame's time plus one
step. Ranges shorter than --min-duration are dropped.

With --out DIR: DIR/{video}.frames.csv (time_s,frame_index,p_face,label,frame_type),
DIR/{video}.ranges.csv (start_s,end_s,duration_s,peak_p,...), DIR/scan.json (everything, with
the settings and the model), and with --contact-sheet DIR/{video}.contact.png (the first frame
of each range with its times). A video that cannot be read is reported and the others still
run; the exit code is then 1.
"""


def _probability(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a probability from 0 to 1, got {text!r}") \
            from None
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"expected a probability from 0 to 1, got {text!r}")
    return v


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return v


def register(subparsers) -> None:
    """Add the ``scan`` subcommand to the main CLI's subparsers."""
    s = subparsers.add_parser(
        "scan", help="find the time ranges with a face in videos (CSV, JSON, contact sheets)",
        description=_SCAN_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("videos", nargs="+", metavar="VIDEO", help="video files")
    s.add_argument("--model", default=None, metavar="PATH",
                   help="a model saved by `animefaces sweep` (default: models/best, or the "
                        "ANIMEFACES_MODEL environment variable)")
    from ._args import add_allow_pickle

    add_allow_pickle(s)
    s.add_argument("--out", default=None, metavar="DIR",
                   help="write CSV, JSON (and contact sheets) here; without it only the ranges "
                        "are printed")
    s.add_argument("--on", type=_probability, default=0.6,
                   help="P(face) at or above which a face range starts (default 0.6)")
    s.add_argument("--off", type=_probability, default=0.4,
                   help="P(face) below which a range may end (default 0.4; not above --on)")
    s.add_argument("--min-gap", type=nonneg_float, default=None, metavar="SECONDS",
                   help="longest dip below --off that is bridged (default: one sampling step; "
                        "0 bridges nothing)")
    s.add_argument("--min-duration", type=nonneg_float, default=0.0, metavar="SECONDS",
                   help="drop ranges shorter than this (default 0: keep all)")
    s.add_argument("--contact-sheet", action="store_true",
                   help="with --out: a PNG per video with the first frame of each range")
    s.add_argument("--batch-size", type=_positive_int, default=32,
                   help="frames per classifier call (default 32)")
    s.add_argument("--device", default="auto", help="where the CNN runs: auto, cpu, cuda, cuda:N")
    add_sampling_options(s, keyframes_default=False)
    from ._ray import add_ray_options

    add_ray_options(s)
    s.add_argument("--cache-dir", default="features",
                   help="with --ray: the feature cache the workers write the frames' features "
                        "to (on storage every node sees; default: features/)")
    s.set_defaults(func=cmd_scan)


def cmd_scan(args) -> int:
    from pathlib import Path

    from ..api import FaceClassifier
    from ..data.video import check_unique_stems
    from ..errors import ConfigError
    from ..scan import ScanSettings, scan_videos

    if args.contact_sheet and not args.out:
        raise ConfigError("--contact-sheet writes files: give an output folder with --out DIR")
    if args.out:
        check_unique_stems([Path(v) for v in args.videos])
    fps = sampling_fps(args)
    # Check the options before loading the model (seconds) and decoding (minutes).
    ScanSettings(fps=fps, keyframes=args.keyframes, on=args.on, off=args.off,
                 min_gap=args.min_gap, min_duration=args.min_duration,
                 batch_size=args.batch_size, seek=args.seek)
    clf = FaceClassifier.load(args.model, device=args.device,
                              **({"allow_pickle": True} if args.allow_pickle else {}))
    from ._ray import ray_options

    ray = ray_options(args)
    run = scan_videos
    if ray is not None:  # the same files; the frames are sampled and run on Ray
        import functools

        from ..scan_ray import scan_videos_ray

        run = functools.partial(scan_videos_ray, ray=ray, cache_dir=args.cache_dir)
    summary = run(args.videos, clf, out_dir=args.out, contact_sheets=args.contact_sheet,
                  fps=fps, keyframes=args.keyframes, on=args.on, off=args.off,
                  min_gap=args.min_gap, min_duration=args.min_duration,
                  batch_size=args.batch_size, seek=args.seek, progress=not args.quiet)
    print(summary)
    return 0 if summary.ok else 1
