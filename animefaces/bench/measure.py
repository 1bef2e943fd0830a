"""Measuring helpers of the benchmark: timings, synthetic frames, machine facts, peak
FLOP/s, peak resident memory.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass

from .._runtime import cpu_flags, cpu_has_bf16, tune_allocator, usable_cpus


def peak_rss_mb() -> float:
    """This process's peak resident memory (MiB) so far.

    Reads ``VmHWM`` from /proc/self/status: ``ru_maxrss`` survives exec on Linux, so a child
    started by a big parent would report the parent's peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


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


class _LoadMeter:
    """How busy the machine was with other processes while we measured (a shared machine)."""

    def __init__(self):
        self.t0, self.busy0, self.own0 = time.time(), self._busy(), self._own()
        self.load0 = os.getloadavg() if hasattr(os, "getloadavg") else None

    @staticmethod
    def _busy():
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
            idle = v[3] + (v[4] if len(v) > 4 else 0)
            return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError):
            return None

    @staticmethod
    def _own():
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def result(self) -> dict:
        wall = time.time() - self.t0
        busy1, own1 = self._busy(), self._own()
        others = None
        if self.busy0 is not None and busy1 is not None and wall > 0:
            others = max(0.0, (busy1 - self.busy0) - (own1 - self.own0)) / wall
        return {"wall_s": round(wall, 1), "loadavg_start": self.load0,
                "loadavg_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
                "others_cores_busy": None if others is None else round(others, 2)}


def machine_info() -> dict:
    """CPU model, cores, the flags that decide kernel choice, library versions."""
    import platform

    import torch

    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    flags = cpu_flags()
    info = {
        "cpu": model or platform.processor(), "usable_cpus": usable_cpus(),
        "avx2": "avx2" in flags, "avx512f": "avx512f" in flags, "bf16_units": cpu_has_bf16(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "python": platform.python_version(), "allocator": tune_allocator(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        import PIL
        import torchvision

        info["torchvision"], info["pillow"] = torchvision.__version__, PIL.__version__
    except ImportError:
        pass
    return info


def peak_matmul_gflops(dtype: str = "fp32", *, n: int = 4096, device: str = "cpu",
                       max_seconds: float = 20.0) -> dict:
    """Best GFLOP/s of an (n x n) @ (n x n) ``torch.mm`` (2 n^3 flops): the machine's ceiling.

    A first run at n/4 estimates the cost; if the full size would take over ``max_seconds``
    (bf16 on a CPU without bf16 units) the smaller size is reported instead.
    """
    import torch

    dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def measure(k, repeats):
        a = torch.randn(k, k, device=device).to(dt)
        b = torch.randn(k, k, device=device).to(dt)

        def run():
            torch.mm(a, b)
            sync()
        t = time_it(run, repeats=repeats, warmup=1)
        return 2 * k**3 / min(t.seconds) / 1e9

    small = max(256, n // 4)
    g = measure(small, 2)
    size = small
    if 2 * n**3 / (g * 1e9) * 4 < max_seconds:
        g, size = measure(n, 3), n
    return {"dtype": dtype, "n": size, "gflops": round(g, 1)}


def bf16_probe() -> dict:
    """Does this CPU have fast bf16 convolutions? Times one 3x3 conv (64 ch, 56x56) in bf16
    autocast against fp32. Without bf16 units torch falls back to a slow reference path."""
    import torch

    conv = torch.nn.Conv2d(64, 64, 3, padding=1).eval().to(memory_format=torch.channels_last)
    x = torch.randn(4, 64, 56, 56).contiguous(memory_format=torch.channels_last)

    def f32():
        with torch.inference_mode():
            conv(x)

    def b16():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            conv(x)
    t32 = time_it(f32, repeats=3).median_s
    t16 = time_it(b16, repeats=3).median_s
    return {"fp32_ms": round(t32 * 1e3, 2), "bf16_ms": round(t16 * 1e3, 2),
            "bf16_fast": t16 < t32 * 1.5}


def count_gflops(trunk, input_size) -> float:
    """GFLOPs of one image through ``trunk`` (FlopCounterMode: 2 flops per multiply-add)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    try:
        device = next(trunk.parameters()).device
    except StopIteration:
        device = "cpu"
    x = torch.zeros(1, 3, *input_size, device=device)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        trunk(x)
    return counter.get_total_flops() / 1e9


def _small_jpegs(folder, n: int, *, size=(64, 64), seed: int = 1) -> list:
    """``n`` tiny distinct JPEGs (noise), fast to make: for the 10k-image memory run."""
    from pathlib import Path

    import numpy as np
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    paths = []
    for k in range(n):
        arr = base.copy()
        # k in binary as black/white 8x8 blocks along the top rows: survives JPEG quantisation,
        # so every file has distinct bytes (the extractor would decode repeats only once).
        for j in range(min(24, (size[0] // 8) * (size[1] // 8))):
            r, c = divmod(j, size[0] // 8)
            arr[8 * r:8 * r + 8, 8 * c:8 * c + 8] = 255 if (k >> j) & 1 else 0
        p = folder / f"s-{k:06d}.jpg"
        Image.fromarray(arr).save(p, quality=85)
        paths.append(p)
    return paths
