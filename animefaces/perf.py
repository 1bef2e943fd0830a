"""Process-level speed settings and measuring helpers for feature extraction.

The largest single effect on CPU is glibc's allocator: by default every forward pass ``mmap``s and
``munmap``s its large activation buffers, and the page faults that follow can take most of the
time (MobileNetV2 fp32 at batch 64 ran at 17 img/s instead of 93 on the project's 2-core machine).
:func:`tune_allocator` keeps freed memory in the heap instead. It is applied once, when the first
:class:`~animefaces.extract.FeatureExtractor` is built; it changes nothing where glibc is absent.

Set ``ANIMEFACES_NO_MALLOPT=1`` to leave the allocator alone (the benchmark does, in a subprocess,
to measure the fix).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import statistics
import time
from dataclasses import dataclass

# glibc's mallopt parameter numbers (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
# Freed memory below this much is never handed back to the kernel (the largest int mallopt takes,
# 2 GiB); the activations of one batch are far smaller, so they are reused instead of re-faulted.
TRIM_THRESHOLD = 2**31 - 1

# The process-wide outcome of tune_allocator(): mallopt acts on the whole process, so one answer.
_allocator_state: dict | None = None


def tune_allocator() -> dict:
    """Stop glibc from mapping and unmapping large blocks (``M_MMAP_MAX=0``, huge ``M_TRIM_THRESHOLD``).

    Idempotent: the first call does the work, later calls return the same dict. Safe everywhere:
    without glibc (macOS, Windows, musl) or with ``ANIMEFACES_NO_MALLOPT=1`` it does nothing.

    Returns:
        ``{"applied": bool, "reason": str}``.
    """
    global _allocator_state
    if _allocator_state is not None:
        return dict(_allocator_state)
    if os.environ.get("ANIMEFACES_NO_MALLOPT", "") not in ("", "0"):
        state = {"applied": False, "reason": "ANIMEFACES_NO_MALLOPT is set"}
    else:
        state = _mallopt()
    _allocator_state = state
    return dict(state)


def _mallopt() -> dict:
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        if not hasattr(libc, "gnu_get_libc_version"):
            return {"applied": False, "reason": "not glibc"}
    except (OSError, AttributeError):
        return {"applied": False, "reason": "no mallopt in this C library"}
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if not ok:
        return {"applied": False, "reason": "mallopt refused the settings"}
    return {"applied": True, "reason": "glibc mallopt: M_MMAP_MAX=0, "
                                       f"M_TRIM_THRESHOLD={TRIM_THRESHOLD}"}


def allocator_env_fixed() -> bool:
    """True when the environment already sets glibc's tunables the same way (or preloads
    tcmalloc), so :func:`tune_allocator` adds nothing."""
    if "tcmalloc" in os.environ.get("LD_PRELOAD", ""):
        return True
    return os.environ.get("MALLOC_MMAP_MAX_") == "0"


def usable_cpus() -> int:
    """CPUs this process may run on (respects taskset / cgroup affinity, unlike os.cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_flags() -> set[str]:
    """The CPU feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_bf16() -> bool:
    """True when the CPU has bf16 dot-product units (AVX512-BF16 or AMX), so bf16 pays."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def peak_rss_mb() -> float:
    """This process's peak resident memory (MiB) so far."""
    import resource

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024.0  # Linux reports KiB


# --- measuring ----------------------------------------------------------------------------------

@dataclass
class Timing:
    """Repeated wall-clock timings of one operation over ``items`` items each."""

    seconds: list[float]
    items: int

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def per_second(self) -> float:
        """Items per second at the median time."""
        return self.items / self.median_s if self.median_s > 0 else float("inf")

    @property
    def best_per_second(self) -> float:
        return self.items / min(self.seconds) if min(self.seconds) > 0 else float("inf")


def time_it(fn, *, items: int = 1, repeats: int = 5, warmup: int = 1,
            min_time: float = 0.0) -> Timing:
    """Run ``fn()`` ``warmup`` times, then time ``repeats`` runs (more while the total is under
    ``min_time`` seconds, up to 50). Returns the wall times; ``items`` is what one run processes."""
    for _ in range(warmup):
        fn()
    out: list[float] = []
    while len(out) < repeats or (sum(out) < min_time and len(out) < 50):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return Timing(out, items)


def synthetic_frames(folder, n: int, *, size: tuple[int, int] = (1280, 720), quality: int = 90,
                     seed: int = 0, prefix: str = "frame") -> list:
    """Write ``n`` deterministic anime-like JPEG frames (flat colour regions with dark outlines,
    gradients and mild grain) into ``folder`` and return their paths, sorted.

    Grain keeps the files close to real broadcast frames in size (~100-200 KB at 720p q90), which
    is what decode speed depends on: perfectly flat synthetic images decode unrealistically fast.

    Args:
        folder: an existing folder (a temporary one: never commit the images).
        n: how many frames.
        size: (width, height) in pixels.
    """
    from pathlib import Path

    import numpy as np
    from PIL import Image, ImageDraw

    folder = Path(folder)
    rng = np.random.default_rng(seed)
    w, h = size
    # One background gradient, then per-frame shapes: cheap to make, realistic to decode.
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    paths = []
    for k in range(n):
        c0, c1 = rng.integers(40, 230, size=(2, 3))
        t = ((xx / w) * 0.6 + (yy / h) * 0.4)[..., None]
        base = (c0 * (1 - t) + c1 * t).astype(np.uint8)
        img = Image.fromarray(base, "RGB")
        d = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(6, 14))):
            x0, y0 = int(rng.integers(-w // 4, w)), int(rng.integers(-h // 4, h))
            x1, y1 = x0 + int(rng.integers(w // 12, w // 2)), y0 + int(rng.integers(h // 12, h // 2))
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            shape = rng.integers(0, 3)
            if shape == 0:
                d.ellipse((x0, y0, x1, y1), fill=fill, outline=(20, 20, 30), width=4)
            elif shape == 1:
                d.rectangle((x0, y0, x1, y1), fill=fill, outline=(20, 20, 30), width=3)
            else:
                pts = [(int(rng.integers(0, w)), int(rng.integers(0, h))) for _ in range(3)]
                d.polygon(pts, fill=fill, outline=(20, 20, 30), width=3)
        arr = np.asarray(img, dtype=np.int16)
        grain = rng.normal(0.0, 3.0, size=(h, w, 1)).astype(np.int16)
        arr = np.clip(arr + grain, 0, 255).astype(np.uint8)
        p = folder / f"{prefix}-{k:05d}.jpg"
        Image.fromarray(arr, "RGB").save(p, quality=quality)
        paths.append(p)
    return sorted(paths)
