"""Registry, declared feature sizes against real forward passes, and weight resolution."""

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from animefaces.errors import ConfigError, WeightsMismatchError, WeightsNotFoundError
from animefaces.features.backbones import get_backbone, list_backbones
from animefaces.features.extract import FeatureExtractor
from animefaces.features.weights import load_trunk, resolve_weights, torch_hub_checkpoints_dir


@pytest.mark.parametrize("name", list_backbones(include_test=True))
def test_declared_feature_dim_matches_forward(name):
    spec = get_backbone(name)
    trunk = load_trunk(spec, resolve_weights(spec, "random"))
    h, w = spec.input_size
    with torch.inference_mode():
        fmap = trunk(torch.zeros(1, 3, h, w))
    assert fmap.ndim == 4 and fmap.shape[1] == spec.feature_dim


def test_paper_dims():
    dims = {n: get_backbone(n).feature_dim for n in ("alexnet", "vgg16", "vgg19", "googlenet", "vggface")}
    assert dims == {"alexnet": 256, "vgg16": 512, "vgg19": 512, "googlenet": 1024, "vggface": 512}
    assert get_backbone("mobilenet_v2").feature_dim == 1280
    assert get_backbone("inception_v3").feature_dim == 2048


def test_unknown_backbone_lists_choices():
    with pytest.raises(ConfigError, match="vgg61.*choose one of: .*alexnet"):
        get_backbone("vgg61")


def test_missing_weights_message_names_file_dir_and_flag():
    with pytest.raises(WeightsNotFoundError) as ei:
        resolve_weights(get_backbone("vgg16"))
    msg = str(ei.value)
    assert "vgg16-397923af.pth" in msg and str(torch_hub_checkpoints_dir()) in msg and "--weights" in msg


def test_torch_home_cache_is_used_and_hash_checked(tmp_path):
    spec = get_backbone("alexnet")
    d = torch_hub_checkpoints_dir()
    d.mkdir(parents=True, exist_ok=True)
    (d / spec.weights.filename).write_bytes(b"not the real file")
    try:
        with pytest.raises(WeightsMismatchError, match="7be5be79"):
            resolve_weights(spec)
    finally:
        (d / spec.weights.filename).unlink()


def test_explicit_weights_path(tmp_path):
    spec = get_backbone("tiny")
    model = spec.build()
    p = tmp_path / "tiny.pth"
    torch.save(model.state_dict(), p)
    r = resolve_weights(spec, p)
    assert r.source == "explicit" and r.sha256 == hashlib.sha256(p.read_bytes()).hexdigest()
    load_trunk(spec, r)
    with pytest.raises(WeightsNotFoundError, match="no such file"):
        resolve_weights(spec, tmp_path / "missing.pth")


def test_wrong_checkpoint_is_a_clear_error(tmp_path):
    spec = get_backbone("tiny")
    p = tmp_path / "other.pth"
    torch.save({"foo.weight": torch.zeros(3)}, p)
    with pytest.raises(WeightsMismatchError, match="does not fit backbone tiny"):
        load_trunk(spec, resolve_weights(spec, p))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"garbage")
    with pytest.raises(WeightsMismatchError, match="cannot load weights file"):
        load_trunk(spec, resolve_weights(spec, junk))


def test_default_backbone_has_real_weights_from_package():
    r = resolve_weights(get_backbone("mobilenet_v2"))
    assert r.source == "package"
    assert r.sha256 == "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"


def test_vggface_checkpoint_keys_are_converted(tmp_path):
    spec = get_backbone("vggface")
    ref = spec.build().features
    names = ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
             "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3"]
    convs = [m for m in ref if isinstance(m, torch.nn.Conv2d)]
    state = {}
    for n, m in zip(names, convs):
        state[f"{n}.weight"] = torch.randn_like(m.weight) * 0.01
        state[f"{n}.bias"] = torch.randn_like(m.bias) * 0.01
    state["fc8.weight"] = torch.zeros(2622, 4096)
    state["fc8.bias"] = torch.zeros(2622)
    p = tmp_path / "vgg_face_dag.pth"
    torch.save(state, p)
    trunk = load_trunk(spec, resolve_weights(spec, p))
    assert torch.equal(trunk[0].weight, state["conv1_1.weight"])
    assert torch.equal(trunk[28].bias, state["conv5_3.bias"])
    torch.save({"conv1_1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(WeightsMismatchError, match="not a VGG-Face checkpoint"):
        load_trunk(spec, resolve_weights(spec, tmp_path / "bad.pth"))


def test_random_is_explicit_and_marked():
    fx = FeatureExtractor("tiny", weights="random", device="cpu")
    assert fx.describe()["random_weights"] is True
    with pytest.raises(WeightsNotFoundError, match="--weights random"):
        FeatureExtractor("tiny", device="cpu")


def test_extractor_features_shape_and_determinism():
    fx = FeatureExtractor("tiny", weights="random", device="cpu")
    imgs = [Image.new("RGB", (50, 30), (200, 10, 10)), np.zeros((20, 20, 3), np.uint8)]
    a = fx.transform_images(imgs)
    b = FeatureExtractor("tiny", weights="random", device="cpu").transform_images(imgs)
    assert a.shape == (2, 32) and a.dtype == np.float32
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
