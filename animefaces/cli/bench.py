"""``animefaces bench``: measure extraction speed on this machine (see animefaces/bench/harness.py).

    animefaces bench                      # the default backbones, ~10-15 min on 2 cores
    animefaces bench --quick --backbones tiny
    animefaces bench --backbones mobilenet_v2 googlenet --compile --out reports/bench
"""

from __future__ import annotations

import argparse
import sys

_HELP = __doc__.split("\n\n", 1)[1] if __doc__ else ""
DEFAULT_OUT = "reports/bench"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options (shared by the CLI and benchmarks/bench_extract.py)."""
    from ..bench.harness import BenchOptions

    d = BenchOptions()
    p.add_argument("--backbones", nargs="+", default=None, metavar="NAME",
                   help=f"backbones to measure, random weights (default: {' '.join(d.backbones)}; "
                        f"with --quick: tiny)")
    p.add_argument("--quick", action="store_true",
                   help="small counts and sizes: a check that everything runs (well under a "
                        "minute with --backbones tiny); numbers are rough")
    p.add_argument("--batches", nargs="+", type=int, default=None, metavar="N",
                   help="batch sizes for forward-only throughput (default 1 16 64; quick: 1 4)")
    p.add_argument("--compile", action="store_true",
                   help="also time torch.compile (inductor, freezing) at the default batch; "
                        "5-35 s of compiling per backbone")
    p.add_argument("--no-memory", dest="memory", action="store_false",
                   help="skip the peak-RSS runs (1k and 10k images in subprocesses)")
    p.add_argument("--memory-backbone", default=d.memory_backbone, metavar="NAME",
                   help=f"backbone for the memory runs (default {d.memory_backbone})")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch threads (default: torch's choice, one per physical core)")
    p.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                   help=f"folder for bench-<time>.json / .md and latest.* (default {DEFAULT_OUT})")


def options_from_args(args):
    from ..bench.harness import BenchOptions
    from ..features.backbones import get_backbone

    quick = args.quick
    backbones = tuple(args.backbones or (("tiny",) if quick else BenchOptions().backbones))
    for name in backbones:
        get_backbone(name)  # unknown names fail here, with the list of known ones
    get_backbone(args.memory_backbone)
    batches = tuple(args.batches or ((1, 4) if quick else (1, 16, 64)))
    if any(b < 1 for b in batches):
        from ..errors import ConfigError

        raise ConfigError(f"--batches {list(batches)}: every batch size must be at least 1")
    return BenchOptions(backbones=backbones, quick=quick, batches=batches, compile=args.compile,
                        memory=args.memory, memory_backbone=args.memory_backbone,
                        device=args.device, threads=args.threads)


def handler(args) -> int:
    from ..bench.harness import run_benchmark
    from ..bench.results import results_markdown, write_results

    opts = options_from_args(args)
    res = run_benchmark(opts, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    js, md = write_results(res, args.out)
    print(results_markdown(res))
    print(f"wrote {js} and {md}")
    return 0


def register(subparsers) -> None:
    """Add the ``bench`` subcommand to the main CLI's subparsers."""
    p = subparsers.add_parser(
        "bench", help="measure extraction speed on this machine (forward, decode, end to end)",
        description=_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=handler)


def main(argv=None) -> int:
    """``python -m animefaces.cli.bench`` / benchmarks/bench_extract.py."""
    p = argparse.ArgumentParser(prog="bench_extract", description=_HELP,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    args = p.parse_args(argv)
    from ..errors import AnimeFacesError

    try:
        return handler(args)
    except AnimeFacesError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
