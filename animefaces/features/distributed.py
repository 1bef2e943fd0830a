"""Feature extraction on a Ray cluster (Ray Data): the same features, in the same feature cache,
from many machines.

The pipeline is a Ray Dataset of inputs (image files here; video time ranges in
:mod:`.distributed_video`) in two stages that scale independently:

1. **decode** (CPU tasks, ``map_batches`` with a function): check, hash (sha256 of the bytes: the
   cache key) and decode each file to the backbone's input size, exactly as the single-process
   path does (:func:`animefaces.features.extract._decode_path`). An unreadable file becomes a
   row with its reason (the bad-files list), never a failed task.
2. **forward** (a callable class, ``map_batches(..., concurrency=N, num_gpus=...)``): each actor
   loads the model once, runs batches of ``batch_size`` through it and writes each batch's
   features as one new shard of the feature cache (:meth:`~.cache.FeatureCache.write_shard`:
   unique name, written to a temporary file and renamed, so many writers on shared storage never
   meet). Only keys and reasons travel back to the driver.

Fault tolerance: Ray restarts a killed forward actor and retries its unfinished batch (Ray Data
sets ``max_restarts=-1`` and ``max_task_retries=-1`` on actor stages) and retries decode tasks
of a lost worker; what was written stays written. The driver remembers file hashes (the
:class:`~.fileindex.HashIndex`) as results arrive, so rerunning the same command after the
driver itself was stopped finds the finished files cached and sends only the rest.

Importing this module does not import Ray; :func:`require_ray` says which extra to install.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import AnimeFacesError, BadImageError, ConfigError

RAY_EXTRA = "pip install 'animefaces[ray]'  (Ray Data: ray[data] >= 2.9)"
DECODE_BATCH = 16
INDEX_SAVE_SECONDS = 20.0


def require_ray():
    """The ``ray`` module, or an AnimeFacesError naming the extra that installs it."""
    try:
        import ray
        import ray.data  # noqa: F401 - the Data library is a separate extra of ray
    except ImportError as exc:
        raise AnimeFacesError(f"--ray needs Ray Data, which is not installed ({exc}); install "
                              f"the optional extra: {RAY_EXTRA}") from None
    return ray


@contextlib.contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None):
    """Connect to a Ray cluster for the duration of a ``with`` block.

    ``address`` None / ``""`` / ``"local"``: start a local Ray on this machine (``num_cpus``, by
    default every usable core; no dashboard) and shut it down afterwards. Otherwise
    ``ray.init(address=address)`` (``auto`` finds the cluster this machine belongs to, or
    ``ray://head:10001`` / ``head:6379``). A Ray already initialised in this process is used as
    it is and left running.
    """
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    if address in (None, "", "local"):
        from .._runtime import usable_cpus

        ray.init(num_cpus=num_cpus or usable_cpus(), include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    else:
        try:
            ray.init(address=address, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise AnimeFacesError(f"--ray {address}: cannot connect to a Ray cluster there ({exc}); "
                                  f"start one with `ray start --head` (README 'Beyond one "
                                  f"machine'), or give --ray without an address for a local "
                                  f"one") from None
    try:
        yield ray
    finally:
        ray.shutdown()


@dataclass(frozen=True)
class RayOptions:
    """How the Ray pipeline is laid out.

    Attributes:
        address: see :func:`ray_session` (None: a local Ray).
        actors: forward-pass actors (each loads the model once); ``(min, max)`` lets Ray Data
            autoscale between them.
        actor_cpus: CPUs each actor asks for (and torch threads it uses).
        num_gpus: GPUs per actor; None: 1 when the cluster has GPUs, else 0.
        decode_cpus: CPUs each decode task asks for (decoding one batch is a single thread).
        decode_tasks: most decode tasks at once (None: as Ray Data sees fit).
        batch_size: images per forward pass (None: the extractor's).
        device: the actors' device (``auto``: CUDA where the actor has a GPU).
    """

    address: str | None = None
    actors: int | tuple[int, int] = 1
    actor_cpus: float = 1.0
    num_gpus: float | None = None
    decode_cpus: float = 1.0
    decode_tasks: int | None = None
    batch_size: int | None = None
    device: str = "auto"

    def __post_init__(self):
        lo = self.actors if isinstance(self.actors, int) else self.actors[0]
        if isinstance(lo, bool) or not isinstance(lo, int) or lo < 1:
            raise ConfigError(f"Ray actors = {self.actors!r}; use a whole number >= 1 (or "
                              f"(min, max) for autoscaling)")
        for name in ("actor_cpus", "decode_cpus"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v <= 256:
                raise ConfigError(f"Ray {name} = {v!r}; use a number of CPUs > 0")


def extractor_spec(fx, options: RayOptions) -> dict:
    """What a Ray actor needs to rebuild ``fx`` and check it makes the same features."""
    w = fx.weights
    return {"backbone": fx.spec.name,
            "weights": "random" if w.is_random else (str(w.path) if w.path else None),
            "precision": fx.settings.precision, "pooling": fx.pooling,
            "batch_size": options.batch_size or fx.settings.batch_size,
            "max_pixels": fx.max_pixels, "device": options.device,
            "threads": max(1, int(options.actor_cpus)), "fingerprint": fx.fingerprint}


# -- stage 1: decode (Ray tasks) -----------------------------------------------------------------

def decode_files(batch: dict, *, size: tuple[int, int], max_pixels: int) -> dict:
    """One batch of ``{"i", "path"}`` -> ``{"i", "key", "stat_key", "image", "error"}``.

    ``key``: the file's sha256 (the cache key); ``stat_key``: what the driver's hash index
    remembers it by ("" when the file changed just now); ``image``: (n, H, W, 3) uint8 (zeros for
    unreadable files, whose ``error`` says why)."""
    from .._io import sha256_file
    from ..data.images import check_image_file
    from .extract import _decode_path
    from .fileindex import RealPaths, is_racy, stat_key

    h, w = size
    real = RealPaths()
    n = len(batch["i"])
    images = np.zeros((n, h, w, 3), np.uint8)
    keys, stats, errors = [""] * n, [""] * n, [""] * n
    for j, p in enumerate(batch["path"]):
        p = str(p)
        try:
            st = check_image_file(p, max_pixels=max_pixels)
            keys[j] = sha256_file(p)
            if not is_racy(st):
                stats[j] = stat_key(real(p), st)
        except BadImageError as exc:
            errors[j] = exc.reason
            continue
        except OSError as exc:
            errors[j] = "no such file" if isinstance(exc, FileNotFoundError) else str(exc)
            continue
        _, arr, reason = _decode_path(j, p, size, max_pixels)
        if arr is None:
            errors[j] = reason
        else:
            images[j] = arr
    return {"i": np.asarray(batch["i"], np.int64), "key": np.array(keys, dtype=object),
            "stat_key": np.array(stats, dtype=object), "image": images,
            "error": np.array(errors, dtype=object)}


# -- stage 2: forward pass + cache write (Ray actors) ----------------------------------------------

class ForwardWriter:
    """A Ray Data callable class: the model, loaded once per actor, and a cache writer.

    Each call runs the batch's readable rows through the backbone and writes their features as
    one new cache shard; it returns the batch without its images, plus the actor's ``worker``
    (host:pid) and the rows' forward ``seconds``."""

    def __init__(self, spec: dict, cache_root: str, cache_name: str, cache_meta: dict):
        import socket

        import torch

        from .cache import FeatureCache
        from .extract import FeatureExtractor

        torch.set_num_threads(spec["threads"])
        self.fx = FeatureExtractor(spec["backbone"], weights=spec["weights"],
                                   device=spec["device"], precision=spec["precision"],
                                   pooling=spec["pooling"], batch_size=spec["batch_size"],
                                   max_pixels=spec["max_pixels"])
        if self.fx.fingerprint != spec["fingerprint"]:
            raise AnimeFacesError(
                f"the Ray worker on {socket.gethostname()} makes other features than the driver "
                f"({self.fx.fingerprint_fields()}); install the same animefaces, torch and "
                f"weights file on every node (README 'Beyond one machine')")
        self.cache = FeatureCache(cache_root, spec["fingerprint"], meta=cache_meta, name=cache_name)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, batch: dict) -> dict:
        import torch

        # rows with an error, or without a key (a video range without frames), have no image
        ok = np.array([not e and bool(k) for e, k in zip(batch["error"], batch["key"])], bool)
        t0 = time.perf_counter()
        if ok.any():
            feats = self.fx._forward(torch.from_numpy(np.ascontiguousarray(batch["image"][ok])))
            self.cache.write_shard([str(k) for k in batch["key"][ok]], feats)
        out = {k: v for k, v in batch.items() if k != "image"}
        out["worker"] = np.array([self.worker] * len(ok), dtype=object)
        out["seconds"] = np.full(len(ok), (time.perf_counter() - t0) / max(len(ok), 1))
        return out


def num_gpus_per_actor(ray, options: RayOptions) -> float:
    if options.num_gpus is not None:
        return float(options.num_gpus)
    if options.device == "cpu":
        return 0.0
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def decode_stage(ds, fn, options: RayOptions, ray, *, fn_kwargs: dict, batch_size=DECODE_BATCH):
    """``ds`` -> decoded rows, in CPU tasks. ``max_calls=0`` is Ray's default for tasks, said
    explicitly: remote args that differ from the actors' keep Ray Data from fusing decoding into
    the forward actors (fused, each actor would decode and then compute, one after the other,
    instead of each stage scaling on its own)."""
    compute = (ray.data.TaskPoolStrategy(size=options.decode_tasks) if options.decode_tasks
               else None)
    return ds.map_batches(fn, batch_size=batch_size, batch_format="numpy",
                          num_cpus=options.decode_cpus, compute=compute,
                          max_calls=0, fn_kwargs=fn_kwargs)


def forward_stage(ds, fx, cache, options: RayOptions, ray, *, spec=None):
    """``ds`` (decoded rows) -> rows without images, features written to ``cache``."""
    spec = spec or extractor_spec(fx, options)
    return ds.map_batches(
        ForwardWriter, batch_size=spec["batch_size"], batch_format="numpy",
        compute=_actor_pool(ray, options.actors), num_cpus=options.actor_cpus,
        num_gpus=num_gpus_per_actor(ray, options),
        fn_constructor_kwargs={"spec": spec, "cache_root": str(cache.root),
                               "cache_name": cache.dir.name.rsplit("-", 1)[0], "cache_meta": cache.meta})


def check_resources(ray, options: RayOptions) -> None:
    """Refuse a layout the cluster cannot schedule (it would wait for ever): the smallest actor
    pool and one decode task must fit in its CPUs and GPUs at once."""
    have = ray.cluster_resources()
    lo = options.actors if isinstance(options.actors, int) else options.actors[0]
    cpus = lo * options.actor_cpus + options.decode_cpus
    if cpus > have.get("CPU", 0) + 1e-9:
        raise ConfigError(
            f"{lo} Ray actor(s) of {options.actor_cpus:g} CPU and a decode task of "
            f"{options.decode_cpus:g} CPU need {cpus:g} CPUs; this Ray has "
            f"{have.get('CPU', 0):g}: use fewer actors (--ray-actors) or a fraction of a CPU "
            f"each (--ray-actor-cpus 0.5)")
    gpus = lo * num_gpus_per_actor(ray, options)
    if gpus > have.get("GPU", 0) + 1e-9:
        raise ConfigError(f"{lo} Ray actor(s) of {gpus / lo:g} GPU need {gpus:g} GPUs; this Ray "
                          f"has {have.get('GPU', 0):g}: use fewer actors or --ray-gpus 0")


def _actor_pool(ray, actors):
    if isinstance(actors, int):
        return ray.data.ActorPoolStrategy(size=actors)
    return ray.data.ActorPoolStrategy(min_size=actors[0], max_size=actors[1])


def quiet_ray_data(ray, progress: bool) -> None:
    """Ray Data's own progress logs off (ours is one tqdm bar); warnings stay."""
    import logging

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.verbose_stats_logs = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


# -- the driver ------------------------------------------------------------------------------------

def extract_files_ray(fx, paths, *, cache, options: RayOptions | None = None,
                      skip_bad: bool = False, progress: bool = True, desc: str | None = None,
                      on_batch=None, load: bool = True):
    """:meth:`FeatureExtractor.extract_files` on Ray: the same return value and cache entries.

    Files whose hash the cache folder's hash index remembers (stat unchanged) and whose features
    are cached are not sent; the rest are hashed, decoded and run on the cluster (see the module
    docstring). Call inside :func:`ray_session` (or with Ray initialised).

    Args:
        fx: the driver's :class:`~.extract.FeatureExtractor` (says what to compute; its model is
            never loaded here).
        cache: the :class:`~.cache.FeatureCache` (on storage every node sees: a shared file
            system for a cluster; any folder for a local Ray).
        on_batch: called with each result batch (``i``, ``key``, ``error``, ``worker``,
            ``seconds``) as it arrives (progress, benchmarks, tests).

    Returns:
        (features (M, d) float32, keys, [(path, reason)]) as ``extract_files`` (features None
        with ``load=False``).

    Raises:
        BadImageError: an unreadable file when ``skip_bad`` is False, after every readable file
            was computed and cached (a rerun with ``--skip-bad`` has nothing left to do).
    """
    from tqdm.auto import tqdm

    from .fileindex import HashIndex, RealPaths, stat_key

    ray = require_ray()
    if cache.dir is None:
        raise ConfigError("extraction on Ray writes the feature cache from its workers: give a "
                          "cache folder (--cache-dir), not an in-memory cache")
    options = options or RayOptions()
    quiet_ray_data(ray, progress)
    check_resources(ray, options)
    paths = [Path(p) for p in paths]
    index = HashIndex(cache.root)
    real = RealPaths()
    keys: list[str | None] = [None] * len(paths)
    for i, p in enumerate(paths):
        try:
            keys[i] = index.get(stat_key(real(p), os.stat(p)))
        except OSError:
            pass  # the decode task reports it
    cached = set(k for k in keys if k) - set(cache.missing(k for k in keys if k))
    todo = [i for i, k in enumerate(keys) if k not in cached]
    reasons: dict[int, str] = {}
    if todo:
        items = [{"i": i, "path": str(paths[i])} for i in todo]
        ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items) // DECODE_BATCH, 512)))
        ds = decode_stage(ds, decode_files, options, ray,
                          fn_kwargs={"size": fx.spec.input_size, "max_pixels": fx.max_pixels})
        ds = forward_stage(ds, fx, cache, options, ray)
        bar = tqdm(total=len(todo), desc=desc or f"extract {fx.spec.name} (ray)", unit="img",
                   disable=not progress, file=sys.stderr, dynamic_ncols=True)
        saved_at = time.monotonic()
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                for i, k, sk, e in zip(batch["i"].tolist(), batch["key"], batch["stat_key"],
                                       batch["error"]):
                    if e:
                        reasons[i] = str(e)
                        continue
                    keys[i] = str(k)
                    if sk:
                        index.put(str(sk), str(k))
                bar.update(len(batch["i"]))
                if on_batch is not None:
                    on_batch(batch)
                if time.monotonic() - saved_at > INDEX_SAVE_SECONDS:
                    _save_index(index)
                    saved_at = time.monotonic()
        finally:
            bar.close()
            _save_index(index)
    bad = [(paths[i], reasons[i]) for i in sorted(reasons)]
    if bad and not skip_bad:
        p, reason = bad[0]
        raise BadImageError(p, f"{reason}; pass --skip-bad to go on without it ({len(bad)} "
                               f"unreadable in all; the readable ones are computed and cached)")
    cache.reread()  # the actors added shards
    good = [k for i, k in enumerate(keys) if i not in reasons and k]
    return (cache.get(good) if load else None), good, bad


def _save_index(index) -> None:
    try:
        index.save()
    except OSError:
        pass  # a read-only cache folder: hashes are computed again next time
