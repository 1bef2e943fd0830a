"""The command line: a thin layer over the Python API (parse, call, print).

``app`` builds the parser from one module per command group (backbones, train, predict, video,
scan, report, bench) and runs a command; ``_args`` holds the argument helpers they share. Add a
command: a ``register(subparsers)`` in a command-group module, listed in ``app``.
"""

from .app import build_parser, main

__all__ = ["build_parser", "main"]
