"""The extraction benchmark (``animefaces bench``, benchmarks/bench_extract.py): forward,
decode and end-to-end throughput, the allocator fix and peak memory, each measured
against this machine's limits. The runtime settings it measures live in
:mod:`animefaces._runtime`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from .._io import utc_now
from .._runtime import tune_allocator, usable_cpus
from .measure import (_LoadMeter, Timing, _small_jpegs, bf16_probe, count_gflops, machine_info,
                      peak_matmul_gflops, peak_rss_mb, synthetic_frames, time_it)


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


def _extractor(backbone: str, *, precision="fp32", channels_last=True, batch_size=16,
               num_workers=0, device="cpu"):
    from ..features.extract import FeatureExtractor

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

    from ..data.images import open_image, resize_to_array

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

    from ..features.cache import FeatureCache

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

    from ..features.backbones import get_backbone
    from ..features.weights import load_trunk, resolve_weights

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

    from ..features.cache import FeatureCache

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
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run([sys.executable, "-c", "from animefaces.bench.harness import _child_main; "
                           "_child_main()"], input=json.dumps(task, default=str), env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark subprocess {task['kind']} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


def cache_load_time(n: int = 10000, d: int = 1280, *, workdir, shard: int = 256) -> dict:
    """Seconds to open a FeatureCache of ``n`` features (written in shards of ``shard``, as
    extraction does) and get them all, cold object / warm page cache; also after compact()."""
    from pathlib import Path

    import numpy as np

    from ..features.cache import FeatureCache

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

    from ..features.settings import default_settings, fold_batchnorm

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
    from ..features.weights import load_trunk
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

    from ..features.settings import default_settings, resolve_device

    tune_allocator()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    meter = _LoadMeter()
    quick = opts.quick
    min_time = 0.2 if quick else 1.5
    repeats = 2 if quick else 3
    res: dict = {"schema": 1, "created": utc_now(),
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
            from ..features.backbones import get_backbone

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
