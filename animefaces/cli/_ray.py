"""The ``--ray`` options of extract, sweep and scan (extraction on a Ray cluster)."""

from __future__ import annotations

import argparse
import contextlib


def add_ray_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="extract on Ray Data (the optional extra: pip install 'animefaces[ray]'): "
                        "alone, a local Ray on this machine; with an address (auto, HEAD:6379, "
                        "ray://HEAD:10001), that cluster, whose nodes must all see the data and "
                        "--cache-dir (README 'Beyond one machine')")
    p.add_argument("--ray-actors", default="1", metavar="N|MIN-MAX",
                   help="with --ray: forward-pass actors, each loading the model once (default 1; "
                        "MIN-MAX lets Ray scale between them); decoding runs in separate tasks")
    p.add_argument("--ray-actor-cpus", type=float, default=1.0, metavar="CPUS",
                   help="with --ray: CPUs (torch threads) per actor (default 1)")
    p.add_argument("--ray-gpus", type=float, default=None, metavar="GPUS",
                   help="with --ray: GPUs per actor (default: 1 where the cluster has GPUs)")


def ray_options(args):
    """A RayOptions from the flags, or None without --ray."""
    if getattr(args, "ray", None) is None:
        return None
    from ..errors import ConfigError
    from ..features.distributed import RayOptions

    text = str(args.ray_actors)
    try:
        lo, _, hi = text.partition("-")
        actors = int(lo) if not hi else (int(lo), int(hi))
    except ValueError:
        raise ConfigError(f"--ray-actors {text!r}: give a whole number (2) or a range (1-8)") from None
    return RayOptions(address=None if args.ray == "local" else args.ray, actors=actors,
                      actor_cpus=args.ray_actor_cpus, num_gpus=args.ray_gpus,
                      device=getattr(args, "device", None) or "auto",
                      batch_size=getattr(args, "batch_size", None))


@contextlib.contextmanager
def ray_context(options):
    """One Ray session for the whole command (several backbones or videos share it)."""
    if options is None:
        yield
        return
    from ..features.distributed import ray_session

    with ray_session(options.address):
        yield
