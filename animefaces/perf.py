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


# --- the extraction benchmark (benchmarks/bench_extract.py, ``animefaces bench``) ----------------

FORWARD_MODES = ("fp32", "fp32_cl", "fp32_nnpack", "bf16", "bf16_cl")
_MODE_SETTINGS = {"fp32": ("fp32", False), "fp32_cl": ("fp32", True), "bf16": ("bf16", False),
                  "bf16_cl": ("bf16", True), "compile": ("fp32", True),
                  "fp32_nnpack": ("fp32", False)}
# Backbones too slow on a small CPU for many repeats: fewer images, fewer runs.
SLOW_BACKBONES = ("vgg16", "vgg19", "vggface", "inception_v3")


@dataclass
class BenchOptions:
    """What :func:`run_benchmark` measures.

    Attributes:
        backbones: registry names (``tiny`` works without weights; all use random weights,
            which have the same FLOPs as trained ones).
        quick: small counts for tests and a first look (well under a minute with ``tiny``).
        batches: batch sizes for forward-only throughput.
        compile: also time ``torch.compile`` (inductor, freezing) at the default batch.
        memory: also measure peak RSS when extracting ``memory_counts`` images, each count in
            its own process, with ``memory_backbone``.
        device: ``cpu`` or ``cuda`` (CUDA adds GPU decode and AMP rows).
        threads: torch threads (None: torch's default, one per physical core).
    """

    backbones: tuple = ("mobilenet_v2", "alexnet", "googlenet", "inception_v3", "vgg16", "vgg19")
    quick: bool = False
    batches: tuple = (1, 16, 64)
    compile: bool = False
    memory: bool = True
    memory_counts: tuple = (1000, 10000)
    memory_backbone: str = "tiny"
    device: str = "cpu"
    threads: int | None = None
    strategies_for: tuple = ("mobilenet_v2",)


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


def _extractor(backbone: str, *, precision="fp32", channels_last=True, batch_size=16,
               num_workers=0, device="cpu"):
    from .extract import FeatureExtractor

    return FeatureExtractor(backbone, weights="random", device=device, precision=precision,
                            channels_last=channels_last, batch_size=batch_size,
                            num_workers=num_workers)


def _u8_batch(spec, n, seed=0):
    import numpy as np
    import torch

    h, w = spec.input_size
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, size=(n, h, w, 3), dtype=np.uint8))


def forward_throughput(fx, batch: int, *, min_time: float = 1.0, repeats: int = 3) -> dict:
    """Images/s of ``fx._forward`` (normalise, trunk, pool, copy out) on a ready uint8 batch."""
    x = _u8_batch(fx.spec, batch)
    if fx.device.type == "cuda":
        x = x.pin_memory()
    t = time_it(lambda: fx._forward(x), items=batch, repeats=repeats, warmup=1,
                min_time=min_time)
    return {"batch": batch, "img_s": round(t.best_per_second, 2),
            "img_s_median": round(t.per_second, 2), "runs": len(t.seconds)}


def _decoders(size):
    """name -> fn(path) returning (H, W, 3) uint8, for the decode-only table."""
    import numpy as np
    from PIL import Image

    from .imageio import open_image, resize_to_array

    h, w = size

    def pil_plain(p):
        img = Image.open(p).convert("RGB")
        return np.asarray(img.resize((w, h), Image.BILINEAR))

    def pil_draft(p):
        return resize_to_array(open_image(p, draft_size=(w, h)), size)

    def tv_decode_jpeg(p):
        import torch
        import torchvision.io as tio

        x = tio.decode_jpeg(tio.read_file(str(p)), mode=tio.ImageReadMode.RGB)
        y = torch.nn.functional.interpolate(x[None].float(), size=(h, w), mode="bilinear",
                                            antialias=True, align_corners=False)
        return y[0].round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()

    return {"pil_plain": pil_plain, "pil_draft": pil_draft, "tv_decode_jpeg": tv_decode_jpeg}


def decode_throughput(paths, size, *, threads: int = 1, repeats: int = 3) -> dict:
    """Per decoder: ms per image on one thread, and images/s with ``threads`` threads for the
    extractor's own decoder (``pil_draft``)."""
    import warnings
    from concurrent.futures import ThreadPoolExecutor

    import torch

    out = {}
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # torchvision's resize would otherwise use all cores
    try:
        with warnings.catch_warnings():
            # torchvision.io warns of its deprecation on every call (no decode threads run here)
            warnings.simplefilter("ignore", DeprecationWarning)
            for name, fn in _decoders(size).items():
                t = time_it(lambda: [fn(p) for p in paths], items=len(paths), repeats=repeats)
                out[name] = {"ms_per_image_1thread": round(1e3 / t.best_per_second, 3),
                             "img_s_1thread": round(t.best_per_second, 1)}
    finally:
        torch.set_num_threads(old)
    if threads > 1:
        fn = _decoders(size)["pil_draft"]
        with ThreadPoolExecutor(threads) as pool:
            t = time_it(lambda: list(pool.map(fn, paths)), items=len(paths), repeats=repeats)
        out["pil_draft"][f"img_s_{threads}threads"] = round(t.best_per_second, 1)
        out["pil_draft"]["threads"] = threads
    return out


def gpu_decode_throughput(paths, size, *, batch: int = 64, repeats: int = 3) -> dict:
    """``torchvision.io.decode_jpeg(device="cuda")`` on batches of files, resized on the GPU
    (antialiased bilinear; close to, not identical with, Pillow's resize)."""
    import torch
    import torchvision.io as tio

    import warnings

    h, w = size
    warnings.filterwarnings("ignore", "The image decoding", DeprecationWarning)
    datas = [tio.read_file(str(p)) for p in paths]

    def run():
        for s in range(0, len(datas), batch):
            imgs = tio.decode_jpeg(datas[s:s + batch], device="cuda", mode=tio.ImageReadMode.RGB)
            for im in imgs:
                torch.nn.functional.interpolate(im[None].float(), size=(h, w), mode="bilinear",
                                                antialias=True)
        torch.cuda.synchronize()
    t = time_it(run, items=len(paths), repeats=repeats)
    return {"img_s": round(t.best_per_second, 1), "batch": batch}


def end_to_end(fx, paths, *, workdir, repeats: int = 2) -> dict:
    """Images/s of ``fx.extract_files`` on JPEG files (hash, decode, resize, forward, cache
    write), each run into an empty cache so nothing is skipped; the model is warm."""
    from pathlib import Path

    from .cache import FeatureCache

    fx._forward(_u8_batch(fx.spec, min(2, fx.settings.batch_size)))  # build + warm the trunk
    times = []
    for r in range(repeats):
        cache = FeatureCache(Path(workdir) / f"e2e-{fx.spec.name}-{time.time_ns()}",
                             fx.fingerprint, meta=fx.describe(), name=fx.spec.name)
        t0 = time.perf_counter()
        feats, keys, bad = fx.extract_files(paths, cache=cache, progress=False)
        times.append(time.perf_counter() - t0)
        assert len(keys) == len(paths) and not bad
    t = Timing(times, len(paths))
    return {"img_s": round(t.best_per_second, 2), "img_s_median": round(t.per_second, 2),
            "images": len(paths), "runs": repeats}


def naive_throughput(backbone: str, paths) -> dict:
    """The baseline a first script would be: for each file, Pillow open + convert, torchvision
    transforms (Resize, ToTensor, Normalize), forward one image through the unmodified fp32
    NCHW trunk, max-pool; no allocator fix, no batching, no draft decode, no workers."""
    import torch
    import torchvision.transforms as T
    from PIL import Image

    from .backbones import get_backbone
    from .weights import load_trunk, resolve_weights

    spec = get_backbone(backbone)
    trunk = load_trunk(spec, resolve_weights(spec, "random"))
    tf = T.Compose([T.Resize(spec.input_size), T.ToTensor(),
                    T.Normalize([m / spec.scale for m in spec.mean],
                                [s / spec.scale for s in spec.std])])

    def one(p):
        x = tf(Image.open(p).convert("RGB")).unsqueeze(0)
        with torch.no_grad():
            return trunk(x).amax(dim=(2, 3)).numpy()

    one(paths[0])
    # Two passes, each image's faster time: on a shared machine, the baseline is not
    # penalised by a neighbour's burst (which would flatter the speed-up).
    best = [float("inf")] * len(paths)
    for _ in range(2):
        for k, p in enumerate(paths):
            t0 = time.perf_counter()
            one(p)
            best[k] = min(best[k], time.perf_counter() - t0)
    return {"img_s": round(len(paths) / sum(best), 2), "images": len(paths), "passes": 2}


def _memory_child(backbone: str, paths, workdir) -> dict:
    from pathlib import Path

    from .cache import FeatureCache

    fx = _extractor(backbone)
    fx._forward(_u8_batch(fx.spec, fx.settings.batch_size))
    before = peak_rss_mb()
    cache = FeatureCache(Path(workdir) / f"mem-{len(paths)}-{time.time_ns()}", fx.fingerprint,
                         meta=fx.describe(), name=fx.spec.name)
    t0 = time.perf_counter()
    feats, keys, bad = fx.extract_files(paths, cache=cache, progress=False)
    return {"images": len(paths), "peak_rss_mb": round(peak_rss_mb(), 1),
            "peak_rss_before_mb": round(before, 1), "seconds": round(time.perf_counter() - t0, 1),
            "features_mb": round(feats.nbytes / 2**20, 1)}


def _child_main() -> None:
    """Entry point of a measuring subprocess: a JSON task on stdin, a JSON result on stdout."""
    import json
    import sys

    task = json.load(sys.stdin)
    kind = task["kind"]
    if task.get("threads"):
        import torch

        torch.set_num_threads(task["threads"])
    if kind == "forward":
        out = {}
        for b in task["batches"]:
            fx = _extractor(task["backbone"], precision=task["precision"],
                            channels_last=task["channels_last"], batch_size=b)
            out[str(b)] = forward_throughput(fx, b, min_time=task["min_time"],
                                             repeats=task["repeats"])
        out["allocator"] = tune_allocator()
    elif kind == "naive":
        out = naive_throughput(task["backbone"], task["paths"])
    elif kind == "memory":
        out = _memory_child(task["backbone"], task["paths"], task["workdir"])
    else:
        raise ValueError(f"unknown task {kind!r}")
    json.dump(out, sys.stdout)


def run_child(task: dict, *, allocator_fix: bool = True, timeout: float = 1800) -> dict:
    """Run one measurement in a fresh Python process (its own peak RSS, its own allocator)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ)
    if not allocator_fix:
        env["ANIMEFACES_NO_MALLOPT"] = "1"
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run([sys.executable, "-c", "from animefaces.perf import _child_main; "
                           "_child_main()"], input=json.dumps(task, default=str), env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark subprocess {task['kind']} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


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


def cache_load_time(n: int = 10000, d: int = 1280, *, workdir, shard: int = 256) -> dict:
    """Seconds to open a FeatureCache of ``n`` features (written in shards of ``shard``, as
    extraction does) and get them all, cold object / warm page cache; also after compact()."""
    from pathlib import Path

    import numpy as np

    from .cache import FeatureCache

    root = Path(workdir) / f"cache-{n}"
    rng = np.random.default_rng(0)
    keys = [f"{i:064x}" for i in range(n)]
    c = FeatureCache(root, "f" * 64, meta={"feature_dim": d}, name="bench")
    for s in range(0, n, shard):
        c.add(keys[s:s + shard], rng.standard_normal((min(shard, n - s), d), dtype=np.float32))
        c.flush()

    def load():
        FeatureCache(root, "f" * 64, meta={"feature_dim": d}, name="bench").get(keys)
    t = time_it(load, repeats=3)
    out = {"images": n, "dim": d, "shards": len(list(c.dir.glob("shard-*"))),
           "load_get_s": round(min(t.seconds), 3)}
    c.compact(min_shards=2)
    t = time_it(load, repeats=3)
    out["compacted_load_get_s"] = round(min(t.seconds), 3)
    return out


def _forward_rows(backbone, opts: BenchOptions, *, bf16_ok: bool, peaks: dict, min_time: float,
                  repeats: int, log) -> dict:
    import copy

    import torch

    from .extract import default_settings, fold_batchnorm

    fx0 = _extractor(backbone, device=opts.device)
    spec = fx0.spec
    slow = backbone in SLOW_BACKBONES and not opts.quick
    trunk = fx0.trunk  # folded, maybe channels_last
    out = {"gflops_per_image": round(count_gflops(trunk, spec.input_size), 3),
           "feature_dim": spec.feature_dim, "input_size": list(spec.input_size), "modes": {}}
    plain = trunk.to(memory_format=torch.contiguous_format)
    layouts = {False: plain, True: copy.deepcopy(plain).to(memory_format=torch.channels_last)}
    modes = list(FORWARD_MODES)
    if opts.device.startswith("cuda"):
        modes += ["fp16", "fp16_cl"]
    for mode in modes:
        prec, cl = _MODE_SETTINGS.get(mode, (mode.split("_")[0], mode.endswith("_cl")))
        if prec == "bf16" and not bf16_ok:
            out["modes"][mode] = {"skipped": "no fast bf16 kernels on this CPU (see bf16_probe)"}
            continue
        if mode == "fp32_nnpack" and (not torch.backends.nnpack.is_available()
                                      or not opts.device.startswith("cpu")):
            out["modes"][mode] = {"skipped": "NNPACK not available"}
            continue
        rows = {}
        for b in opts.batches:
            fx = _extractor(backbone, precision=prec, channels_last=cl, batch_size=b,
                            device=opts.device)
            # keep bf16 even where auto would not
            fx.settings = type(fx.settings)(prec, cl, b, 0,
                                            "nnpack" if mode == "fp32_nnpack" else "onednn")
            fx._trunk = layouts[cl]
            rows[str(b)] = forward_throughput(fx, b, min_time=min_time,
                                              repeats=2 if slow and b > 1 else repeats)
            log(f"  {backbone} {mode} b{b}: {rows[str(b)]['img_s']} img/s")
        peak = peaks.get("bf16" if prec == "bf16" else "fp32", {}).get("gflops")
        best = max(r["img_s"] for r in rows.values())
        out["modes"][mode] = {"batches": rows, "best_img_s": best,
                              "fraction_of_peak": round(best * out["gflops_per_image"] / peak, 3)
                              if peak else None}
    d = default_settings(spec, fx0.device)
    # BatchNorm folding: the default mode with the torchvision trunk as it comes.
    fx = _extractor(backbone, precision=d.precision, channels_last=d.channels_last,
                    batch_size=d.batch_size, device=opts.device)
    from .weights import load_trunk
    unfolded = load_trunk(spec, fx.weights).to(fx.device)
    if d.channels_last:
        unfolded = unfolded.to(memory_format=torch.channels_last)
    fx._trunk = unfolded
    out["unfolded_default"] = forward_throughput(fx, d.batch_size, min_time=min_time,
                                                 repeats=2 if slow else repeats)
    if opts.compile:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        fx = _extractor(backbone, precision=d.precision, channels_last=True,
                        batch_size=d.batch_size, device=opts.device)
        fx._trunk = torch.compile(fold_batchnorm(copy.deepcopy(layouts[True])))
        t0 = time.perf_counter()
        fx._forward(_u8_batch(spec, d.batch_size))
        compile_s = time.perf_counter() - t0
        r = forward_throughput(fx, d.batch_size, min_time=min_time, repeats=repeats)
        out["modes"]["compile"] = {"batches": {str(d.batch_size): r}, "best_img_s": r["img_s"],
                                   "compile_s": round(compile_s, 1)}
        log(f"  {backbone} compile b{d.batch_size}: {r['img_s']} img/s ({compile_s:.0f} s compile)")
    best_mode, best = max(((m, v["best_img_s"]) for m, v in out["modes"].items()
                           if "best_img_s" in v), key=lambda mv: mv[1])
    default_mode = ("bf16" if d.precision == "bf16" else "fp32") + ("_cl" if d.channels_last else "")
    if d.conv_engine == "nnpack":
        default_mode = "fp32_nnpack"
    drow = out["modes"].get(default_mode, {}).get("batches", {}).get(str(d.batch_size))
    if drow is None:  # the default batch is not among opts.batches
        fx = _extractor(backbone, precision=d.precision, channels_last=d.channels_last,
                        batch_size=d.batch_size, device=opts.device)
        fx._trunk = layouts[d.channels_last]
        drow = forward_throughput(fx, d.batch_size, min_time=min_time,
                                  repeats=2 if slow else repeats)
    out["default"] = {"precision": d.precision, "channels_last": d.channels_last,
                      "conv_engine": d.conv_engine, "batch_size": d.batch_size,
                      "img_s": drow["img_s"],
                      "best_mode": best_mode, "best_img_s": best,
                      "fraction_of_best": round(drow["img_s"] / best, 3)}
    return out


def run_benchmark(opts: BenchOptions, *, log=print) -> dict:
    """Measure everything in the module docstring of ``benchmarks/bench_extract.py``.

    Returns:
        A JSON-able dict (see ``results_markdown`` for the tables made from it).
    """
    import tempfile
    from pathlib import Path

    import torch

    from .extract import default_settings, resolve_device

    tune_allocator()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    meter = _LoadMeter()
    quick = opts.quick
    min_time = 0.2 if quick else 1.5
    repeats = 2 if quick else 3
    res: dict = {"schema": 1, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                 "options": {k: (list(v) if isinstance(v, tuple) else v)
                             for k, v in opts.__dict__.items()},
                 "machine": machine_info()}
    log(f"machine: {res['machine']['cpu']}, {res['machine']['usable_cpus']} cpus, "
        f"torch threads {res['machine']['torch_threads']}, load {os.getloadavg()}")
    n = 512 if quick else 4096
    res["peak"] = {"fp32": peak_matmul_gflops("fp32", n=n, device=opts.device)}
    probe = bf16_probe() if opts.device == "cpu" else {"bf16_fast": True}
    res["bf16_probe"] = probe
    res["peak"]["bf16"] = peak_matmul_gflops("bf16", n=n, device=opts.device,
                                             max_seconds=5 if quick else 20)
    log(f"peak GFLOP/s: fp32 {res['peak']['fp32']['gflops']}, bf16 {res['peak']['bf16']['gflops']}"
        f" (bf16 conv fast: {probe['bf16_fast']})")
    device = resolve_device(opts.device)
    with tempfile.TemporaryDirectory(prefix="animefaces-bench-") as tmp:
        tmp = Path(tmp)
        n_frames = 8 if quick else 96
        frames = synthetic_frames(tmp, n_frames, size=(1280, 720) if not quick else (640, 360))
        crops = synthetic_frames(tmp, 4 * n_frames if not quick else 8, size=(160, 160),
                                 prefix="crop", seed=1)
        res["inputs"] = {
            "frames": {"n": len(frames), "size": "1280x720" if not quick else "640x360",
                       "kb_mean": round(sum(p.stat().st_size for p in frames) / len(frames) / 1e3,
                                        1)},
            "crops": {"n": len(crops), "size": "160x160",
                      "kb_mean": round(sum(p.stat().st_size for p in crops) / len(crops) / 1e3,
                                       1)}}
        threads = usable_cpus()
        res["decode"] = {"frames": decode_throughput(frames, (224, 224), threads=threads,
                                                     repeats=repeats),
                         "crops": decode_throughput(crops, (224, 224), threads=threads,
                                                    repeats=repeats)}
        if device.type == "cuda":
            res["decode"]["frames"]["gpu_decode_jpeg"] = gpu_decode_throughput(frames, (224, 224))
        log(f"decode 720p: {res['decode']['frames']}")
        res["backbones"] = {}
        for name in opts.backbones:
            log(f"{name}:")
            slow = name in SLOW_BACKBONES and not quick
            row = _forward_rows(name, opts, bf16_ok=probe["bf16_fast"], peaks=res["peak"],
                                min_time=min_time, repeats=repeats, log=log)
            from .backbones import get_backbone

            spec = get_backbone(name)
            d = default_settings(spec, device)
            size = spec.input_size
            dec = decode_throughput(frames[:8] if not quick else frames[:4], size,
                                    repeats=repeats)["pil_draft"] if size != (224, 224) else \
                res["decode"]["frames"]["pil_draft"]
            n_e2e = (len(frames) if not slow else 16) if not quick else len(frames)
            paths = frames[:n_e2e]
            fx = _extractor(name, precision=d.precision, channels_last=d.channels_last,
                            batch_size=d.batch_size, num_workers=d.num_workers,
                            device=opts.device)
            e2e = end_to_end(fx, paths, workdir=tmp, repeats=1 if slow else repeats)
            decode_s = dec["ms_per_image_1thread"] / 1e3
            forward_s = 1.0 / row["default"]["img_s"]
            cores = threads if device.type == "cpu" else threads
            ideal = 1.0 / (decode_s / cores + forward_s) if device.type == "cpu" else \
                1.0 / max(decode_s / cores, forward_s)
            row["end_to_end"] = dict(e2e, ideal_img_s=round(ideal, 2),
                                     fraction_of_ideal=round(e2e["img_s"] / ideal, 3),
                                     decode_ms_1thread=dec["ms_per_image_1thread"],
                                     forward_ms=round(forward_s * 1e3, 3))
            log(f"  end-to-end {e2e['img_s']} img/s, ideal {ideal:.1f}")
            if name in opts.strategies_for and device.type == "cpu":
                row["strategies"] = _strategies(name, d, paths, tmp, repeats=repeats, log=log)
            if name != "tiny" and spec.trunk is not None and not spec.test_only:
                n_naive = (6 if slow else 24) if not quick else 4
                naive = run_child({"kind": "naive", "backbone": name,
                                   "paths": [str(p) for p in frames[:n_naive]],
                                   "threads": opts.threads}, allocator_fix=False)
                row["naive"] = naive
                row["speedup_vs_naive"] = round(e2e["img_s"] / naive["img_s"], 2)
                log(f"  naive {naive['img_s']} img/s -> speed-up {row['speedup_vs_naive']}x")
            if device.type == "cpu" and name != "tiny":
                batches = sorted({d.batch_size, 64 if not quick else 4})
                off = run_child({"kind": "forward", "backbone": name, "precision": d.precision,
                                 "channels_last": d.channels_last, "batches": batches,
                                 "min_time": min_time, "repeats": 2 if slow else repeats,
                                 "threads": opts.threads}, allocator_fix=False)
                on = {}
                for b in batches:
                    got = row["modes"].get(("fp32_cl" if d.channels_last else "fp32"), {}) \
                        .get("batches", {}).get(str(b))
                    if got is None:
                        fx = _extractor(name, precision=d.precision,
                                        channels_last=d.channels_last, batch_size=b)
                        got = forward_throughput(fx, b, min_time=min_time,
                                                 repeats=2 if slow else repeats)
                    on[str(b)] = got["img_s"]
                row["allocator"] = {str(b): {"off_img_s": off[str(b)]["img_s"],
                                             "on_img_s": on[str(b)],
                                             "gain": round(on[str(b)] / off[str(b)]["img_s"], 2)}
                                    for b in batches}
                log(f"  allocator fix: {row['allocator']}")
            res["backbones"][name] = row
        res["cache_load"] = cache_load_time(1000 if quick else 10000, 1280, workdir=tmp)
        log(f"cache load: {res['cache_load']}")
        if opts.memory:
            counts = (50, 200) if quick else opts.memory_counts
            small = _small_jpegs(tmp / "small", max(counts))
            mem = {}
            for c in counts:
                mem[str(c)] = run_child({"kind": "memory", "backbone": opts.memory_backbone,
                                         "paths": [str(p) for p in small[:c]],
                                         "workdir": str(tmp)})
                log(f"memory {c}: {mem[str(c)]}")
            lo, hi = mem[str(min(counts))], mem[str(max(counts))]
            res["memory"] = {"backbone": opts.memory_backbone, "runs": mem,
                             "peak_ratio": round(hi["peak_rss_mb"] / lo["peak_rss_mb"], 3)}
    res["conditions"] = meter.result()
    return res


def _strategies(name, d, paths, tmp, *, repeats, log) -> dict:
    """End-to-end images/s for each way of sharing the cores between decode and forward."""
    import torch

    out = {}
    all_threads = torch.get_num_threads()
    cases = {
        "decode pool, then forward on all threads, taking turns (default)":
            dict(num_workers=0, streams=1, ahead=0, tthreads=None),
        "next batch decoded during the forward":
            dict(num_workers=0, streams=1, ahead=1, tthreads=None),
        "streams: one per core, each decodes + forwards its batches on 1 thread":
            dict(num_workers=0, streams=usable_cpus(), ahead=0, tthreads=None),
        "dataloader_1_worker": dict(num_workers=1, streams=1, ahead=0, tthreads=None),
        "dataloader_1_worker_torch_1_thread": dict(num_workers=1, streams=1, ahead=0,
                                                   tthreads=1),
    }
    for label, c in cases.items():
        fx = _extractor(name, precision=d.precision, channels_last=d.channels_last,
                        batch_size=d.batch_size, num_workers=c["num_workers"])
        fx.decode_ahead = c["ahead"]
        if c["streams"]:
            fx.cpu_streams = c["streams"]
        if c["tthreads"]:
            torch.set_num_threads(c["tthreads"])
        try:
            out[label] = end_to_end(fx, paths, workdir=tmp, repeats=repeats)
        finally:
            torch.set_num_threads(all_threads)
        log(f"  strategy {label}: {out[label]['img_s']} img/s")
    return out


def results_markdown(res: dict) -> str:
    """The benchmark's tables as Markdown (what benchmarks/RESULTS.md shows)."""
    m, lines = res["machine"], []
    add = lines.append
    cond = res.get("conditions", {})
    add(f"Machine: {m['cpu']}, {m['usable_cpus']} usable CPUs, torch {m['torch']} "
        f"({m['torch_threads']} threads, CPU kernels: {m['torch_cpu_capability']}), "
        f"AVX-512: {'yes' if m['avx512f'] else 'no'}, bf16 units: "
        f"{'yes' if m['bf16_units'] else 'no'}"
        + (f", CUDA: {m['cuda']}" if m.get("cuda") else "") + ".")
    add(f"Allocator fix: {m['allocator']['reason'] if m['allocator']['applied'] else 'not applied (' + m['allocator']['reason'] + ')'}.")
    add(f"Conditions: {cond.get('wall_s')} s run; load average {cond.get('loadavg_start')} at the "
        f"start, {cond.get('loadavg_end')} at the end; other processes kept on average "
        f"{cond.get('others_cores_busy')} cores busy while it ran.")
    pk = res["peak"]
    add("")
    add(f"Peak matmul: fp32 {pk['fp32']['gflops']} GFLOP/s (n={pk['fp32']['n']}), "
        f"bf16 {pk['bf16']['gflops']} GFLOP/s (n={pk['bf16']['n']}). bf16 conv probe: "
        f"{res['bf16_probe'].get('bf16_ms')} ms vs fp32 {res['bf16_probe'].get('fp32_ms')} ms "
        f"({'fast' if res['bf16_probe']['bf16_fast'] else 'no fast bf16 kernels: bf16 modes skipped'}).")
    add("")
    add("### Forward only (images/s, best of runs; trunk with BatchNorm folded)")
    add("")
    batches = res["options"]["batches"] if not res["options"]["quick"] else None
    bs_cols = None
    for b in res["backbones"].values():
        for v in b["modes"].values():
            if "batches" in v:
                bs_cols = list(v["batches"])
                break
        if bs_cols:
            break
    bs_cols = bs_cols or [str(x) for x in (batches or [])]
    add("| backbone | GFLOP/img | mode | " + " | ".join(f"b{b}" for b in bs_cols)
        + " | % of peak |")
    add("|---|---|---|" + "---|" * len(bs_cols) + "---|")
    for name, b in res["backbones"].items():
        for mode, v in b["modes"].items():
            if "skipped" in v:
                add(f"| {name} | {b['gflops_per_image']} | {mode} | "
                    + " | ".join("-" for _ in bs_cols) + f" | skipped: {v['skipped']} |")
                continue
            cells = [str(v["batches"].get(x, {}).get("img_s", "-")) for x in bs_cols]
            if mode == "compile":
                k = next(iter(v["batches"]))
                cells = [f"{v['batches'][k]['img_s']} (b{k}, {v['compile_s']} s compile)"] + \
                    ["" for _ in bs_cols[1:]]
            frac = v.get("fraction_of_peak")
            add(f"| {name} | {b['gflops_per_image']} | {mode} | " + " | ".join(cells)
                + f" | {'' if frac is None else f'{100 * frac:.0f}%'} |")
    add("")
    add("### Defaults chosen (CPU) and how close they are to the best forward-only mode")
    add("")
    add("| backbone | precision | channels_last | conv engine | batch | default img/s | best mode "
        "| best img/s | default / best | BN not folded img/s |")
    add("|---|---|---|---|---|---|---|---|---|---|")
    for name, b in res["backbones"].items():
        d = b["default"]
        add(f"| {name} | {d['precision']} | {d['channels_last']} | {d.get('conv_engine')} | "
            f"{d['batch_size']} | "
            f"{d['img_s']} | {d['best_mode']} | {d['best_img_s']} | "
            f"{100 * d['fraction_of_best']:.0f}% | {b.get('unfolded_default', {}).get('img_s', '-')} |")
    add("")
    add("### Decode only (to 224x224 uint8)")
    add("")
    add("| input | decoder | ms/image, 1 thread | images/s, 1 thread | images/s, all threads |")
    add("|---|---|---|---|---|")
    for kind, decs in res["decode"].items():
        inp = res["inputs"][kind]
        for name, v in decs.items():
            if name == "gpu_decode_jpeg":
                add(f"| {kind} {inp['size']} ({inp['kb_mean']} KB) | decode_jpeg(cuda), batch "
                    f"{v['batch']} | | | {v['img_s']} |")
                continue
            multi = next((v[k] for k in v if k.startswith("img_s_") and k != "img_s_1thread"), "")
            add(f"| {kind} {inp['size']} ({inp['kb_mean']} KB) | {name} | "
                f"{v['ms_per_image_1thread']} | {v['img_s_1thread']} | {multi} |")
    add("")
    add("### End to end from JPEG files (hash + decode + resize + forward + cache write), defaults")
    add("")
    add("| backbone | images | end-to-end img/s | ideal img/s | % of ideal | naive img/s | speed-up |")
    add("|---|---|---|---|---|---|---|")
    for name, b in res["backbones"].items():
        e = b["end_to_end"]
        nv = b.get("naive", {}).get("img_s", "-")
        sp = b.get("speedup_vs_naive")
        add(f"| {name} | {e['images']} {res['inputs']['frames']['size']} | {e['img_s']} | "
            f"{e['ideal_img_s']} | {100 * e['fraction_of_ideal']:.0f}% | {nv} | "
            f"{'-' if sp is None else f'{sp}x'} |")
    add("")
    add("ideal = 1 / (decode ms on one thread / usable CPUs + forward ms at the default settings): "
        "both stages spread perfectly over all cores, no overhead. naive = Pillow open + convert, "
        "torchvision Resize/ToTensor/Normalize, one image at a time through the unfolded fp32 NCHW "
        "trunk, no allocator fix (in its own process).")
    strat = {n: b["strategies"] for n, b in res["backbones"].items() if "strategies" in b}
    if strat:
        add("")
        add("### Sharing the cores between decode and forward (end to end, images/s)")
        add("")
        add("| backbone | strategy | img/s |")
        add("|---|---|---|")
        for n, s in strat.items():
            for label, v in s.items():
                add(f"| {n} | {label} | {v['img_s']} |")
    alloc = {n: b["allocator"] for n, b in res["backbones"].items() if "allocator" in b}
    if alloc:
        add("")
        add("### glibc allocator fix (forward only, default mode, images/s)")
        add("")
        add("| backbone | batch | without fix | with fix | gain |")
        add("|---|---|---|---|---|")
        for n, a in alloc.items():
            for b, v in a.items():
                add(f"| {n} | {b} | {v['off_img_s']} | {v['on_img_s']} | {v['gain']}x |")
    if "memory" in res:
        mem = res["memory"]
        add("")
        add(f"### Memory (peak RSS, extract_files with {mem['backbone']}, one process per count)")
        add("")
        add("| images | peak RSS MB | RSS before extraction MB | features MB | seconds |")
        add("|---|---|---|---|---|")
        for c, v in mem["runs"].items():
            add(f"| {c} | {v['peak_rss_mb']} | {v['peak_rss_before_mb']} | {v['features_mb']} | "
                f"{v['seconds']} |")
        add(f"\nPeak ratio largest / smallest: {mem['peak_ratio']}.")
    cl = res.get("cache_load")
    if cl:
        add("")
        add(f"Feature cache: opening and reading {cl['images']} x {cl['dim']} features took "
            f"{cl['load_get_s']} s from {cl['shards']} shards, {cl['compacted_load_get_s']} s "
            f"after compact().")
    return "\n".join(lines) + "\n"


def write_results(res: dict, out_dir) -> tuple:
    """Write ``bench-<time>.json`` and ``.md`` (and ``latest.*`` copies) into ``out_dir``."""
    import json
    from pathlib import Path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    js, md = out / f"bench-{stamp}.json", out / f"bench-{stamp}.md"
    text = json.dumps(res, indent=2, default=str) + "\n"
    table = results_markdown(res)
    for p, t in ((js, text), (md, table), (out / "latest.json", text), (out / "latest.md", table)):
        p.write_text(t)
    return js, md
