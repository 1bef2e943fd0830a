"""Runtime facts and settings of this process: usable CPUs, CPU feature flags, glibc's allocator.

The largest single effect on CPU is glibc's allocator: by default every forward pass ``mmap``s and
``munmap``s its large activation buffers, and the page faults that follow can take most of the
time (MobileNetV2 fp32 at batch 64 ran at 17 img/s instead of 93 on the project's 2-core machine).
:func:`tune_allocator` keeps freed memory in the heap instead. It is applied once, when the first
:class:`~animefaces.features.extract.FeatureExtractor` is built; it changes nothing where glibc is
absent.

Set ``ANIMEFACES_NO_MALLOPT=1`` to leave the allocator alone (the benchmark does, in a subprocess,
to measure the fix).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os


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
