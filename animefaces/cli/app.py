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
from . import backbones, bench, label, predict, report, scan, train, video

# The commands, in --help order: one module per command group, each with register(subparsers).
_COMMAND_GROUPS = (backbones, train, predict, video, scan, label, report, bench)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="animefaces",
        description="Tell whether anime frames show a character's face: pretrained CNN features "
                    "(cached on disk) + SVMs, after 'Detecting Faces in Animes Using Supervised "
                    "Domain Adaptation'.")
    p.add_argument("--version", action="version", version=f"animefaces {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

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
