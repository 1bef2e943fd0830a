"""The ``frames`` and ``crops`` subcommands (registered by :mod:`animefaces.cli`).

    animefaces frames EPISODE.mkv ... --out frames/ [--fps 1] [--keyframes] [--dedup 5]
    animefaces crops frames/ --cascade lbpcascade_animeface.xml --out crops/ [--model models/best]

Each handler parses nothing itself and holds no logic the Python API lacks: it calls
:func:`animefaces.data.frames.extract_frames` or :func:`animefaces.data.crops.extract_crops`, prints the
summary, and returns 0, or 1 when some input failed. Problems with the run itself raise
:class:`~animefaces.errors.AnimeFacesError`, which the main CLI prints as ``error: ...`` with
exit code 2. Importing this module is cheap: PyAV and OpenCV load only when a command runs.

The sampling options (:func:`add_sampling_options`, :func:`sampling_fps`) and the
:func:`nonneg_float` argument type are shared with the ``scan`` subcommand
(:mod:`animefaces.cli.scan`), so every video command spells ``--fps`` / ``--keyframes`` /
``--seek`` the same way.
"""

from __future__ import annotations

import argparse

from ._args import add_sampling_options, nonneg_float, sampling_fps

_FRAMES_HELP = """\
Sample frames from videos (mp4, mkv, webm, avi, mov, animated GIF...; decoded with PyAV, no
ffmpeg binary needed) into OUT as {video}-{key|sec}-{frame number}.jpg, plus OUT/manifest.csv
with the columns path,label,split,group,video,frame_index,time_s,frame_type. Fill in the label
column (face / no_face) and the split column to turn the frames into a dataset; running again
keeps what you typed. By default one frame per second of video is kept, as the AnimeFaces
paper did; --keyframes adds every key frame, as GochiUsa_Faces did.
"""

_CROPS_HELP = """\
Detect anime faces with the lbpcascade_animeface cascade (scaleFactor 1.1, minNeighbors 5,
minSize 24x24 on an equalised grayscale image, as its README recommends) and write each face as
OUT/{video}-{key|sec|img}-{frame}-{face}.png, plus OUT/manifest.csv with the boxes. INPUTS are
images, folders, frames manifests (from `animefaces frames`) or videos (key frames plus one
frame a second by default). The cascade is not shipped: download lbpcascade_animeface.xml from
https://github.com/nagadomi/lbpcascade_animeface (MIT licence) and pass --cascade. With
--model, a trained classifier confirms each crop; crops with P(face) below --threshold are not
written and are counted as rejected.
"""


def _dedup(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of bits from 0 to 64, "
                                         f"got {text!r}") from None
    if not 0 <= v <= 64:
        raise argparse.ArgumentTypeError(f"expected 0 to 64 bits, got {v}")
    return v


def register(subparsers) -> None:
    """Add the ``frames`` and ``crops`` subcommands to the main CLI's subparsers."""
    f = subparsers.add_parser(
        "frames", help="sample frames from videos into images + a labelable manifest.csv",
        description=_FRAMES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    f.add_argument("videos", nargs="+", metavar="VIDEO", help="video files")
    f.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    add_sampling_options(f, keyframes_default=False)
    f.add_argument("--dedup", type=_dedup, default=None, metavar="N",
                   help="drop a frame whose 64-bit dHash is within N bits of a frame already "
                        "kept in this run (0 = identical only; about 5 drops static shots and "
                        "repeated openings); the count dropped is reported")
    f.add_argument("--format", dest="image_format", choices=["jpg", "png"], default="jpg",
                   help="image format (default jpg, quality 95)")
    f.set_defaults(func=cmd_frames)

    c = subparsers.add_parser(
        "crops", help="cut anime faces out of frames, images or videos with the cascade",
        description=_CROPS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="images, folders, frames manifests (manifest.csv) or videos")
    c.add_argument("--cascade", required=True, metavar="PATH",
                   help="lbpcascade_animeface.xml (from github.com/nagadomi/lbpcascade_animeface)")
    c.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    c.add_argument("--model", default=None, metavar="PATH",
                   help="a model saved by `animefaces sweep`: confirm each crop with it")
    c.add_argument("--threshold", type=float, default=0.5,
                   help="P(face) a crop needs to be kept, with --model (default 0.5)")
    c.add_argument("--device", default="auto", help="for --model: auto, cpu, cuda, cuda:N")
    from ._args import add_allow_pickle

    add_allow_pickle(c)
    c.add_argument("--margin", type=nonneg_float, default=0.0,
                   help="grow each box by this fraction of its size on every side (default 0)")
    c.add_argument("--min-size", type=int, default=24, metavar="PX",
                   help="smallest face to detect, in pixels (default 24, the cascade's README)")
    add_sampling_options(c, keyframes_default=True)
    c.set_defaults(func=cmd_crops)


def cmd_frames(args) -> int:
    from ..data.frames import extract_frames

    summary = extract_frames(args.videos, args.out, fps=sampling_fps(args),
                             keyframes=args.keyframes, dedup=args.dedup,
                             image_format=args.image_format, seek=args.seek,
                             progress=not args.quiet)
    print(summary)
    return 0 if summary.ok else 1


def cmd_crops(args) -> int:
    from ..api import classifier_confirm
    from ..data.crops import extract_crops, load_cascade

    cascade = load_cascade(args.cascade)  # fail on a missing cascade before loading a model
    confirm = (classifier_confirm(args.model, device=args.device, allow_pickle=args.allow_pickle)
               if args.model else None)
    summary = extract_crops(args.inputs, args.out, cascade=cascade, confirm=confirm,
                            threshold=args.threshold, fps=sampling_fps(args),
                            keyframes=args.keyframes, seek=args.seek, margin=args.margin,
                            min_size=(args.min_size, args.min_size), progress=not args.quiet)
    print(summary)
    return 0 if summary.ok else 1
