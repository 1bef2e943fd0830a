"""Argument helpers shared by the command groups (one spelling of --weights, --fps,
--keyframes, --seek on every command).
"""

from __future__ import annotations

import argparse

from ..errors import AnimeFacesError


def weights_arg(values):
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


def nonneg_float(text: str) -> float:
    """argparse type: a number >= 0 (seconds, fractions), with a message that names the text."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return v


def add_sampling_options(p: argparse.ArgumentParser, *, keyframes_default: bool) -> None:
    """Add ``--fps``, ``--keyframes``, ``--seek`` and ``-q/--quiet`` to a video subcommand.

    Args:
        p: the subcommand's parser.
        keyframes_default: True makes ``--keyframes`` on by default (``--no-keyframes`` turns it
            off), as ``crops`` does; False makes it a plain flag.
    """
    p.add_argument("--fps", type=nonneg_float, default=1.0,
                   help="frames per second of video time to keep: the first frame at or after "
                        "each 1/FPS tick (default 1; 0.5 = one every 2 s; 0 with --keyframes = "
                        "key frames only, which decodes far less)")
    if keyframes_default:
        p.add_argument("--keyframes", action=argparse.BooleanOptionalAction, default=True,
                       help="also keep every key frame, as GochiUsa_Faces did (default: on)")
    else:
        p.add_argument("--keyframes", action="store_true",
                       help="also keep every key frame, as GochiUsa_Faces did")
    p.add_argument("--seek", choices=["auto", "never", "always"], default="auto",
                   help="auto (default): seek ahead only when the next tick is several GOPs "
                        "away, otherwise decode sequentially (faster for 1 fps)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def sampling_fps(args: argparse.Namespace) -> float | None:
    """The API's ``fps`` from parsed ``--fps``: ``--fps 0`` (no per-second frames) is None."""
    return None if args.fps == 0 else args.fps


def add_feature_options(sp: argparse.ArgumentParser) -> None:
    """The feature options shared by extract and sweep (same names, same meaning)."""
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
    from ._ray import add_ray_options

    add_ray_options(sp)
