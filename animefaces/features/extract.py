"""Batched, device-aware feature extraction.

:class:`FeatureExtractor` turns images into pooled CNN feature vectors. Images are decoded at
reduced size (JPEG draft mode) and resized to the backbone's input; batches go to the device as
uint8, are normalised there, and run through the backbone's trunk (BatchNorm folded into the
convolutions, channels_last) under ``torch.inference_mode()``, with autocast where the precision
asks for it. The feature is the maximum (or mean) over all spatial positions of the trunk's map.

How decode and forward share the machine (measured in ``benchmarks/bench_extract.py``):

* CPU: decode and forward take turns, each on all cores: a thread pool decodes a batch (Pillow
  releases the GIL while it decodes and resizes), then the trunk runs it on all of torch's
  threads. On an idle 2-core machine this beat decoding the next batch during the forward pass,
  a DataLoader decode process beside it, and *streams* (one thread per core, each decoding and
  running its own batches on one intra-op thread). Streams (``cpu_streams``) are kept as an
  option: a busy neighbour process then slows one stream instead of stalling every OpenMP
  barrier of a shared forward pass.
* CUDA: DataLoader worker processes decode while the GPU computes; batches travel in pinned
  memory with non-blocking copies, as uint8 (4x less traffic than float).
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np

from .. import __version__
from .._runtime import cpu_has_bf16, tune_allocator, usable_cpus
from ..data.images import (DEFAULT_MAX_PIXELS, as_rgb_image, check_image_file, open_image,
                           resize_to_array)
from ..errors import BadImageError, ConfigError
from .backbones import DEFAULT_BACKBONE, get_backbone
from .settings import (BF16_SETTINGS, ExtractSettings, _nnpack_available, default_settings,
                       fold_batchnorm, resolve_device)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# More streams multiply activation memory (one batch each) for little gain past a few cores.
MAX_CPU_STREAMS = 4
POOLINGS = ("auto", "max", "avg", "maxavg")


def _cpu_has_bf16() -> bool:
    return cpu_has_bf16()


class _PathDataset:
    """Decodes files in DataLoader workers; errors travel back as strings, not exceptions, so
    one bad file never kills a worker and the caller decides whether to stop or skip."""

    def __init__(self, paths, size, max_pixels):
        self.paths = list(paths)
        self.size = size
        self.max_pixels = max_pixels

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return _decode_path(i, self.paths[i], self.size, self.max_pixels)


def _decode_path(i, path, size, max_pixels):
    """(i, (H, W, 3) uint8 array or None, error reason or None) for one file."""
    h, w = size
    try:
        img = open_image(path, draft_size=(w, h), max_pixels=max_pixels)
        return i, resize_to_array(img, size), None
    except BadImageError as exc:
        return i, None, exc.reason


def _collate(items):
    import torch

    idx = [i for i, a, _ in items if a is not None]
    arrays = [a for _, a, _ in items if a is not None]
    errors = [(i, e) for i, a, e in items if a is None]
    batch = torch.from_numpy(np.stack(arrays)) if arrays else None
    return idx, batch, errors


class FeatureExtractor:
    """Runs one backbone over images and returns pooled features.

    Args:
        backbone: registry name (see ``animefaces backbones``).
        weights: None (find them), a path, or ``"random"`` (tests only).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``...
        precision: ``auto`` (the backbone's default), ``fp32``, ``bf16`` or ``fp16``.
        batch_size, num_workers, channels_last: override the defaults. ``num_workers=0`` decodes
            in threads of this process, taking turns with the forward pass (the CPU default);
            ``num_workers>0`` uses that many DataLoader decode processes (the CUDA default).
        pooling: ``auto`` (the backbone's default), ``max`` (the paper), ``avg`` or ``maxavg``
            (both, each L2-normalised, concatenated).
    """

    def __init__(self, backbone: str = DEFAULT_BACKBONE, *, weights=None, device: str = "auto",
                 precision: str = "auto", batch_size: int | None = None,
                 num_workers: int | None = None, channels_last: bool | None = None,
                 pooling: str = "auto", max_pixels: int = DEFAULT_MAX_PIXELS):
        from .weights import resolve_weights

        # Before the first large allocation: keeps activation buffers in the heap instead of
        # mmap/munmap (and page faults) on every forward pass. Once per process, glibc only.
        tune_allocator()
        self.spec = get_backbone(backbone)
        if precision not in PRECISIONS:
            raise ConfigError(f"precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
        if pooling in (None, "auto"):
            pooling = self.spec.default_pooling
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling {pooling!r}; choose one of: {', '.join(POOLINGS)}")
        from .backbones import check_batch_size

        check_batch_size(batch_size, name="batch size", input_size=self.spec.input_size)
        self.device = resolve_device(device)
        d = default_settings(self.spec, self.device)
        if precision == "auto":
            precision = d.precision
        if precision == "bf16" and self.device.type == "cpu":
            if _cpu_has_bf16():
                # the opt-in runs the mode it was measured in, unless a batch / layout is given
                d = BF16_SETTINGS
            else:
                # Without bf16 units torch runs bf16 on a slow reference path (~1/10 of fp32).
                warnings.warn("precision bf16 asked for, but this CPU has no bf16 units "
                              "(avx512_bf16 / amx_bf16 in /proc/cpuinfo): bf16 would run ~10x "
                              "slower than fp32 here, so fp32 is used", stacklevel=2)
                precision = "fp32"
        if precision == "fp16" and self.device.type == "cpu":
            raise ConfigError("precision fp16 needs a CUDA device; on CPU use fp32 or bf16")
        cl = d.channels_last if channels_last is None else channels_last
        engine = d.conv_engine
        if (engine == "nnpack" and (cl or self.device.type != "cpu" or precision != "fp32"
                                    or not _nnpack_available())):
            engine = "onednn"  # NNPACK runs fp32 NCHW convolutions on CPUs only
        self.settings = ExtractSettings(
            precision=precision, channels_last=cl, batch_size=batch_size or d.batch_size,
            num_workers=d.num_workers if num_workers is None else num_workers,
            conv_engine=engine)
        self.pooling = pooling
        self.max_pixels = max_pixels
        self.weights = resolve_weights(self.spec, weights)
        self._trunk = None
        self._norm = None
        # CPU, num_workers=0: each batch is decoded by ``decode_threads`` threads, then run on
        # all of torch's threads, taking turns (the measured winner on an idle 2-core machine);
        # ``decode_ahead`` batches may be decoded during the forward pass instead. With
        # ``cpu_streams`` > 1 (at most MAX_CPU_STREAMS), that many threads each decode and run
        # whole batches on threads // cpu_streams intra-op threads: slower on an idle machine,
        # much steadier on one shared with other busy processes (see benchmarks/RESULTS.md).
        cpus = usable_cpus()
        self.cpu_streams = 1
        self.decode_threads = cpus
        self.decode_ahead = 0

    # -- identity ----------------------------------------------------------------------------
    @property
    def feature_dim(self) -> int:
        return self.spec.feature_dim * (2 if self.pooling == "maxavg" else 1)

    def fingerprint_fields(self) -> dict:
        return {
            "backbone": self.spec.name,
            "weights_sha256": self.weights.sha256,
            "layer": self.spec.feature_layer,
            "pooling": self.pooling,
            "preprocessing": self.spec.preprocessing_id(),
            "precision": self.settings.precision,
            "animefaces_version": __version__,
        }

    @property
    def fingerprint(self) -> str:
        from .._io import sha256_bytes

        return sha256_bytes(json.dumps(self.fingerprint_fields(), sort_keys=True).encode())

    def describe(self) -> dict:
        """Metadata for caches, models and reports."""
        from .._io import torch_version

        return dict(self.fingerprint_fields(), fingerprint=self.fingerprint,
                    feature_dim=self.feature_dim, weights_source=self.weights.source,
                    weights_path=str(self.weights.path) if self.weights.path else None,
                    random_weights=self.weights.is_random, device=str(self.device),
                    batch_size=self.settings.batch_size, channels_last=self.settings.channels_last,
                    torch_version=torch_version())

    # -- model -------------------------------------------------------------------------------
    @property
    def trunk(self):
        if self._trunk is None:
            import torch

            from .weights import load_trunk

            trunk = fold_batchnorm(load_trunk(self.spec, self.weights)).to(self.device)
            if self.settings.channels_last:
                trunk = trunk.to(memory_format=torch.channels_last)
            if self.device.type == "cuda":
                # Fixed input size: let cuDNN pick the fastest algorithm once per shape.
                torch.backends.cudnn.benchmark = True
            self._trunk = trunk
        return self._trunk

    def _normaliser(self):
        """(a, b) with normalised = uint8 * a + b, shaped (1, 3, 1, 1) on the device."""
        if self._norm is None:
            import torch

            mean = torch.tensor(self.spec.mean, dtype=torch.float32)
            std = torch.tensor(self.spec.std, dtype=torch.float32)
            a = (self.spec.scale / 255.0) / std
            b = -mean / std
            self._norm = (a.view(1, 3, 1, 1).to(self.device), b.view(1, 3, 1, 1).to(self.device))
        return self._norm

    def _forward(self, batch_u8):
        """(N, H, W, 3) uint8 tensor -> (N, feature_dim) float32 numpy."""
        import torch

        dev = self.device
        trunk = self.trunk
        a, b = self._normaliser()
        # NHWC uint8 permuted to NCHW *is* channels_last in memory: the float copy keeps that
        # layout, so channels_last costs no extra pass; NCHW needs one.
        x = batch_u8.to(dev, non_blocking=True).permute(0, 3, 1, 2).float()
        if not self.settings.channels_last:
            x = x.contiguous()
        x.mul_(a).add_(b)
        prec = self.settings.precision
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(prec)
        with torch.inference_mode():
            if dtype is not None:
                with torch.autocast(device_type=dev.type, dtype=dtype):
                    fmap = trunk(x)
            elif self.settings.conv_engine == "nnpack" and dev.type == "cpu":
                # torch picks NNPACK for NCHW fp32 convolutions only while oneDNN is off; the
                # switch is process-wide, so it is restored right after this forward pass.
                was = torch.backends.mkldnn.enabled
                torch.backends.mkldnn.enabled = False
                try:
                    fmap = trunk(x)
                finally:
                    torch.backends.mkldnn.enabled = was
            else:
                fmap = trunk(x)
            fmap = fmap.float()
            if self.pooling == "max":
                f = fmap.amax(dim=(2, 3))
            elif self.pooling == "avg":
                f = fmap.mean(dim=(2, 3))
            else:
                # Each half L2-normalised so neither dominates the kernel.
                f = torch.cat([torch.nn.functional.normalize(fmap.amax(dim=(2, 3)), dim=1),
                               torch.nn.functional.normalize(fmap.mean(dim=(2, 3)), dim=1)], dim=1)
        return f.cpu().numpy().astype(np.float32, copy=False)

    # -- in-memory images ----------------------------------------------------------------------
    def transform_images(self, images) -> np.ndarray:
        """Features for paths, PIL images or numpy arrays, batched, no cache.

        Returns:
            (N, feature_dim) float32.

        Raises:
            BadImageError: for the first unreadable input (named).
        """
        h, w = self.spec.input_size
        images = list(images)
        if not images:
            return np.zeros((0, self.feature_dim), np.float32)

        def prepare(i):
            im = images[i]
            return i, resize_to_array(as_rgb_image(im, draft_size=(w, h),
                                                  max_pixels=self.max_pixels), (h, w)), None

        # prepare() raises: batches come back in order, so the first bad input in order wins.
        return np.concatenate([f for _, f, _ in self._feature_batches(len(images), prepare)])

    # -- the engine ------------------------------------------------------------------------------
    def _streams_for(self, n_batches: int) -> int:
        if self.device.type != "cpu" or n_batches < 2:
            return 1
        return min(self.cpu_streams, n_batches)

    def _feature_batches(self, n: int, decode):
        """Yield ``(idx, features (len(idx), d) float32 or None, [(i, reason)])`` for items
        ``0..n-1`` in batches, in order. ``decode(i) -> (i, (H, W, 3) uint8 or None, reason)``
        must be thread-safe; it may also raise, which stops the run at that batch."""
        import torch

        bs = self.settings.batch_size
        starts = list(range(0, n, bs))
        streams = self._streams_for(len(starts))

        def decode_batch(start, pool=None):
            ids = range(start, min(start + bs, n))
            items = list(pool.map(decode, ids)) if pool is not None else [decode(i) for i in ids]
            return _collate(items)

        def run(start):
            idx, batch, errors = decode_batch(start)
            return idx, (self._forward(batch) if batch is not None else None), errors

        if streams > 1:
            from concurrent.futures import ThreadPoolExecutor

            _ = self.trunk  # build it once, here, not racing in the streams
            threads = torch.get_num_threads()
            torch.set_num_threads(max(1, threads // streams))
            try:
                with ThreadPoolExecutor(streams, thread_name_prefix="animefaces-stream") as pool:
                    # streams + 1 batches in flight: every stream busy, memory bounded.
                    queued = [pool.submit(run, s) for s in starts[:streams + 1]]
                    nxt = len(queued)
                    try:
                        while queued:
                            result = queued.pop(0).result()
                            if nxt < len(starts):
                                queued.append(pool.submit(run, starts[nxt]))
                                nxt += 1
                            yield result
                    finally:
                        for f in queued:
                            f.cancel()
            finally:
                torch.set_num_threads(threads)
            return
        from concurrent.futures import ThreadPoolExecutor

        pin = self.device.type == "cuda"
        ahead = max(0, self.decode_ahead)
        # Batches decoded ahead are driven from their own thread: a batch task waiting on its
        # image tasks inside the same pool could take every worker and deadlock.
        with self._decode_pool() as pool, ThreadPoolExecutor(1) as driver:
            queued = [driver.submit(decode_batch, s, pool) if ahead else s
                      for s in starts[:ahead + 1]]
            for k in range(len(starts)):
                item = queued.pop(0)
                idx, batch, errors = item.result() if ahead else decode_batch(item, pool)
                if k + ahead + 1 < len(starts):
                    s_next = starts[k + ahead + 1]
                    queued.append(driver.submit(decode_batch, s_next, pool) if ahead else s_next)
                if pin and batch is not None:
                    batch = batch.pin_memory()
                yield idx, (self._forward(batch) if batch is not None else None), errors

    def _file_batches(self, paths):
        """Features per batch of image files: streams / thread pool, or DataLoader workers."""
        bs = self.settings.batch_size
        size = self.spec.input_size
        nw = self.settings.num_workers if len(paths) > bs else 0
        if nw > 0:
            import torch

            loader = torch.utils.data.DataLoader(
                _PathDataset(paths, size, self.max_pixels), batch_size=bs, shuffle=False,
                num_workers=nw, collate_fn=_collate, pin_memory=self.device.type == "cuda",
                prefetch_factor=4, persistent_workers=False)
            for idx, batch, errors in loader:
                yield idx, (self._forward(batch) if batch is not None else None), errors
            return
        yield from self._feature_batches(
            len(paths), lambda i: _decode_path(i, paths[i], size, self.max_pixels))

    def _decode_pool(self):
        from concurrent.futures import ThreadPoolExecutor

        return ThreadPoolExecutor(max_workers=max(1, self.decode_threads),
                                  thread_name_prefix="animefaces-decode")

    # -- files, through the cache -----------------------------------------------------------------
    def extract_files(self, paths, *, cache=None, skip_bad: bool = False, progress: bool = True,
                      flush_every: int = 256, desc: str | None = None, load: bool = True):
        """Features for image files, read from / written to ``cache``.

        Each file is hashed; cached hashes are not decoded again; the rest are decoded (each
        once), run in batches, and flushed to the cache every ``flush_every`` images, so an
        interrupted run loses at most that many. Memory stays flat however many files there are:
        only the current batches and the features themselves are held.

        Returns:
            (features, keys, bad): features (M, feature_dim) float32 for the M readable files in
            input order (None with ``load=False``: the caller reads them from ``cache`` by key,
            e.g. through :class:`~.stream.CachedRows`), their content hashes, and
            ``[(path, reason)]`` for unreadable ones.

        Raises:
            BadImageError: an unreadable file when ``skip_bad`` is False (cached work is kept).
        """
        from tqdm.auto import tqdm

        from .. import _io
        from .cache import FeatureCache

        paths = [Path(p) for p in paths]
        if cache is None:
            cache = FeatureCache(Path(tempfile_dir()), self.fingerprint, meta=self.describe(),
                                 name=self.spec.name)

        from .fileindex import HashIndex, RealPaths, is_racy, stat_key

        # Hashes of files whose stat is unchanged since an earlier run are not computed again.
        index = HashIndex(getattr(cache, "root", None))
        real = RealPaths()
        stat_keys = [None] * len(paths)

        def hash_one(i):
            p = paths[i]
            try:
                # before a byte is read: a FIFO or /dev/zero named .jpg would hang the hashing
                st = check_image_file(p, max_pixels=self.max_pixels)
                if index.file is not None:
                    key = stat_key(real(p), st)
                    known = index.get(key)
                    if known is not None:
                        stat_keys[i] = key
                        return known, None
                    if not is_racy(st):
                        stat_keys[i] = key
                return _io.sha256_file(p), None
            except BadImageError as exc:
                return None, exc.reason
            except OSError as exc:
                return None, "no such file" if isinstance(exc, FileNotFoundError) else str(exc)

        # hashlib releases the GIL on large buffers: hash on all cores.
        with self._decode_pool() as pool:
            hashed = list(pool.map(hash_one, range(len(paths)), chunksize=64))
        for sk, (k, _) in zip(stat_keys, hashed):
            if sk is not None and k is not None:
                index.put(sk, k)
        try:
            index.save(keep={sk for sk in stat_keys if sk is not None})
        except OSError:
            pass  # a read-only cache folder: hashes are computed again next time
        keys = []
        bad: list[tuple[Path, str]] = []
        for p, (k, reason) in zip(paths, hashed):
            if k is None:
                if not skip_bad:
                    raise BadImageError(p, reason)
                bad.append((p, reason))
            keys.append(k)
        todo_keys = set(cache.missing(k for k in keys if k is not None))
        todo, seen = [], set()
        for p, k in zip(paths, keys):
            if k in todo_keys and k not in seen:
                seen.add(k)
                todo.append((p, k))
        bad_reasons: dict[str, str] = {}
        if todo:
            bar = tqdm(total=len(todo), desc=desc or f"extract {self.spec.name}", unit="img",
                       disable=not progress, file=sys.stderr, dynamic_ncols=True)
            batches = self._file_batches([p for p, _ in todo])
            try:
                for idx, feats, errors in batches:
                    for i, reason in errors:
                        p, k = todo[i]
                        if not skip_bad:
                            raise BadImageError(p, reason + "; pass --skip-bad to go on without "
                                                "it (it will be listed in the report)")
                        bad_reasons[k] = reason
                    if feats is not None:
                        cache.add([todo[i][1] for i in idx], feats)
                        if cache.pending >= flush_every:
                            cache.flush()
                    bar.update(len(idx) + len(errors))
            finally:
                batches.close()  # stops the streams / workers before we return or raise
                cache.flush()
                bar.close()
        bad_paths = {p for p, _ in bad}
        for p, k in zip(paths, keys):
            if k in bad_reasons and p not in bad_paths:
                # Same bytes, same reason: no second decode needed.
                bad.append((p, bad_reasons[k]))
                bad_paths.add(p)
        good_keys = [k for k in keys if k is not None and k not in bad_reasons]
        return (cache.get(good_keys) if load else None), good_keys, bad


def tempfile_dir() -> str:
    import tempfile

    return os.path.join(tempfile.gettempdir(), "animefaces-features")
