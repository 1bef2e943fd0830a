"""How a backbone is run: the device (``auto`` without importing torch when it can), the
measured CPU defaults per backbone (precision, memory layout, batch, conv engine),
and BatchNorm folding.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .._runtime import cpu_flags, usable_cpus
from ..errors import ConfigError
from .backbones import BackboneSpec


class CPUDevice(str):
    """``"cpu"`` with torch.device's ``type`` / ``index``: what :func:`resolve_device` returns
    for the CPU when torch is not imported yet, so a sweep whose features are all cached never
    pays torch's import (2-7 s here). torch accepts it wherever it takes a device string."""

    type = "cpu"
    index = None

    def __new__(cls):
        return super().__new__(cls, "cpu")


def _gpu_driver_present() -> bool:
    """True when a GPU driver that torch could use is loaded (NVIDIA or ROCm): only then is
    importing torch needed to answer ``auto``."""
    return any(os.path.exists(p) for p in ("/proc/driver/nvidia/version", "/dev/nvidiactl",
                                           "/dev/nvidia0", "/dev/kfd", "/dev/dxg"))


def resolve_device(device: str = "auto"):
    """``auto`` -> CUDA when available, else CPU. Raises ConfigError for an unusable choice."""
    import sys

    if device in (None, "auto", "cpu") and "torch" not in sys.modules and (
            device == "cpu" or not _gpu_driver_present()):
        return CPUDevice()
    import torch

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"--device {device!r}: not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    return dev


def _nnpack_available() -> bool:
    import torch

    return bool(getattr(torch.backends, "nnpack", None) and torch.backends.nnpack.is_available())


@dataclass(frozen=True)
class ExtractSettings:
    """How a backbone is run. ``None`` values are filled by :func:`default_settings`."""

    precision: str = "fp32"
    channels_last: bool = False
    batch_size: int = 16
    num_workers: int = 0
    # CPU convolution library: "onednn" (torch's default) or "nnpack" (NCHW only; faster for the
    # plain 3x3 stacks of VGG at batch >= 16 on AVX2 CPUs, same results to ~3e-6).
    conv_engine: str = "onednn"


# CPU defaults per backbone: the winners of benchmarks/bench_extract.py (forward-only images/s over
# fp32 / channels_last / NNPACK / bf16 at batch 1, 16, (32,) 64) on the project's 2-core AMD EPYC
# (Zen 3, AVX2, no AVX-512 and no bf16 units) with the allocator fix. See benchmarks/RESULTS.md.
# * fp32 everywhere: without bf16 units, torch runs bf16 convolutions on a slow reference path
#   (MobileNetV2 ~4 img/s instead of ~115).
# * channels_last: same features, faster oneDNN kernels (MobileNetV2 b16 117 vs 74 img/s NCHW).
# * VGG: NNPACK (NCHW) beat oneDNN on their plain 3x3 stacks (vgg16 b64 ~6.1 vs ~4.5 img/s).
# * batch: the measured best (mobilenet_v2 16: 117 vs 99 at 64; googlenet 16; alexnet 32;
#   inception_v3 64 was 12.4 vs 11.4 at 16 in a loaded run; VGG 64 with NNPACK).
# num_workers 0 means: decode in a thread pool of the main process, taking turns with the forward
# pass (see the module docstring); a DataLoader decode process beside it was slower on 2 cores.
# Unmeasured: huehist (no convolutions), vggface (vgg16's trunk), tiny (tests).
_CPU_DEFAULTS: dict[str, ExtractSettings] = {
    "mobilenet_v2": ExtractSettings("fp32", True, 16, 0),
    "alexnet": ExtractSettings("fp32", True, 32, 0),
    "vgg16": ExtractSettings("fp32", False, 64, 0, "nnpack"),
    "vgg19": ExtractSettings("fp32", False, 64, 0, "nnpack"),
    "vggface": ExtractSettings("fp32", False, 64, 0, "nnpack"),  # vgg16's trunk
    "googlenet": ExtractSettings("fp32", True, 16, 0),
    "inception_v3": ExtractSettings("fp32", True, 64, 0),
    "huehist": ExtractSettings("fp32", False, 64, 0),
    "tiny": ExtractSettings("fp32", True, 64, 0),
}
_CPU_FALLBACK = ExtractSettings("fp32", True, 16, 0)

# Precision is fp32 on every CPU by default, bf16 units or not. bf16 autocast is 1.9-2.8x faster
# on CPUs with bf16 units (AVX512-BF16 or AMX; ../shared/notes/cpu-perf.md), but its features
# differ from fp32 by 0.3-3.4%, and that was enough to change what a sweep chose: on the mini set a
# bf16 CPU picked poly-10 with an isotonic calibrator where an AVX2 CPU picked RBF with Platt, and
# its out-of-domain catch fell from 54/60 to 53/60. The same command must give the same answers
# on any x86-64 CPU, so bf16 is an explicit opt-in (``--precision bf16``), cached separately
# (precision is part of the cache fingerprint), and named in every report. Layout, conv engine
# and batch size do not change the features (fp32 to ~1e-6), so those may differ by CPU kind:
# ``_CPU_AVX512_DEFAULTS`` holds where the fastest fp32 mode on AVX-512 CPUs differs from the
# AVX2 table above (measured with `animefaces bench`; benchmarks/RESULTS.md).
_CPU_AVX512_DEFAULTS: dict[str, ExtractSettings] = {}
# What ``--precision bf16`` runs: bf16 autocast + channels_last at batch 64 was the fastest mode
# for every CNN in the notes (NNPACK has no bf16 path, so VGG uses oneDNN).
BF16_SETTINGS = ExtractSettings("bf16", True, 64, 0)


def _cpu_has_avx512() -> bool:
    return "avx512f" in cpu_flags()


def default_settings(spec: BackboneSpec, device) -> ExtractSettings:
    """Per-backbone defaults for ``device``.

    CPU: fp32 on every CPU (see the comment above ``_CPU_AVX512_DEFAULTS``: the same answers on
    every x86-64 CPU), with the measured fastest layout / engine / batch in ``_CPU_DEFAULTS``
    (AVX2) or ``_CPU_AVX512_DEFAULTS``; backbones registered later get ``_CPU_FALLBACK``. CUDA
    (not measured on the project's machines): fp16 autocast, channels_last, batch 128,
    DataLoader decode workers (one per core, at most 8) so the GPU never waits for Pillow.
    """
    if device.type == "cuda":
        return ExtractSettings(precision="fp16", channels_last=True, batch_size=128,
                               num_workers=min(8, usable_cpus()))
    if _cpu_has_avx512() and spec.name in _CPU_AVX512_DEFAULTS:
        return _CPU_AVX512_DEFAULTS[spec.name]
    return _CPU_DEFAULTS.get(spec.name, _CPU_FALLBACK)


def fold_batchnorm(module):
    """Fold eval-mode BatchNorm2d layers into the Conv2d right before them, in place.

    Handles ``Sequential(..., Conv2d, BatchNorm2d, ...)`` (MobileNetV2, VGG-BN) and torchvision's
    ``BasicConv2d`` (``conv`` then ``bn``: GoogLeNet, Inception v3). The folded BatchNorm becomes
    ``Identity``. Same function, one memory pass less per layer (MobileNetV2: ~+20% on CPU);
    results differ from the unfolded network by float rounding only (~1e-6 relative in fp32).

    Returns:
        ``module``.
    """
    import torch
    import torch.nn as nn

    def fold(conv, bn):
        if (type(conv) is not nn.Conv2d or type(bn) is not nn.BatchNorm2d or bn.training
                or not bn.track_running_stats or conv.out_channels != bn.num_features):
            return False
        with torch.no_grad():
            scale = bn.running_var.add(bn.eps).rsqrt()
            if bn.weight is not None:
                scale = scale * bn.weight
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            new_bias = (bias - bn.running_mean) * scale
            if bn.bias is not None:
                new_bias = new_bias + bn.bias
            conv.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
            conv.bias = nn.Parameter(new_bias, requires_grad=False)
        return True

    for child in module.children():
        fold_batchnorm(child)
    if isinstance(module, nn.Sequential):
        items = list(module._modules.items())
        for (_, a), (name_b, b) in zip(items, items[1:]):
            if fold(a, b):
                module._modules[name_b] = nn.Identity()
    if type(module).__name__ == "BasicConv2d" and type(module).__module__.startswith("torchvision"):
        if fold(getattr(module, "conv", None), getattr(module, "bn", None)):
            module.bn = nn.Identity()
    return module
