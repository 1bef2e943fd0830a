"""Behaviour (not timings) of the speed work: allocator fix, defaults, decode paths, benchmark."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from animefaces import _runtime
from animefaces.errors import BadImageError
from animefaces.features.backbones import get_backbone, list_backbones
from animefaces.features.extract import PRECISIONS, FeatureExtractor
from animefaces.features.settings import (_CPU_DEFAULTS, ExtractSettings, default_settings,
                                          fold_batchnorm)

from conftest import MINI, REPO, face_image, noface_image


def test_allocator_fix_is_idempotent_and_harmless():
    a = _runtime.tune_allocator()
    b = _runtime.tune_allocator()
    assert a == b and set(a) == {"applied", "reason"}
    if sys.platform.startswith("linux") and os.path.exists("/lib/x86_64-linux-gnu/libc.so.6"):
        assert a["applied"] is True, a
    # Large blocks still allocate, fill and free correctly afterwards.
    big = np.ones((64, 1 << 20), np.uint8)
    assert int(big.sum()) == 64 << 20
    del big
    fx = FeatureExtractor("tiny", weights="random", device="cpu")
    assert fx.transform_images([np.zeros((8, 8, 3), np.uint8)]).shape == (1, 32)


def test_allocator_fix_can_be_turned_off():
    env = dict(os.environ, ANIMEFACES_NO_MALLOPT="1", PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", "import json; from animefaces import _runtime; "
                          "print(json.dumps(_runtime.tune_allocator()))"],
                         env=env, capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == {"applied": False, "reason": "ANIMEFACES_NO_MALLOPT is set"}


def test_default_settings_exist_for_every_registered_backbone():
    import torch

    cpu = torch.device("cpu")
    for name in list_backbones(include_test=True):
        assert name in _CPU_DEFAULTS, f"no measured CPU defaults for {name}"
        d = default_settings(get_backbone(name), cpu)
        assert isinstance(d, ExtractSettings)
        assert d.precision in PRECISIONS and d.precision != "auto" and d.batch_size >= 1
        cuda = default_settings(get_backbone(name), torch.device("cuda"))
        assert cuda.precision == "fp16" and cuda.batch_size >= 64 and cuda.num_workers >= 1
    fx = FeatureExtractor("tiny", weights="random", device="cpu")
    assert fx.settings == _CPU_DEFAULTS["tiny"]


def test_bf16_is_never_chosen_without_bf16_units(monkeypatch):
    from animefaces.features import extract

    monkeypatch.setattr(extract, "_cpu_has_bf16", lambda: False)
    with pytest.warns(UserWarning, match="no bf16 units"):
        fx = FeatureExtractor("tiny", weights="random", device="cpu", precision="bf16")
    assert fx.settings.precision == "fp32"


@pytest.mark.parametrize("bf16_units", [False, True])
@pytest.mark.parametrize("avx512", [False, True])
def test_cpu_default_is_fp32_on_every_cpu_kind(monkeypatch, bf16_units, avx512):
    """Same answers on every x86-64 CPU: the default precision is fp32 with or without bf16 units
    (AVX2 Zen 3 and AVX512-BF16 Zen 4 alike); bf16 is an explicit opt-in with its own cache entry."""
    from animefaces.features import extract, settings

    monkeypatch.setattr(extract, "_cpu_has_bf16", lambda: bf16_units)
    monkeypatch.setattr(settings, "_cpu_has_avx512", lambda: avx512)
    import torch

    for name in list_backbones(include_test=True):
        d = default_settings(get_backbone(name), torch.device("cpu"))
        assert d.precision == "fp32", (name, d)
    for name in ("tiny", "vgg16", "mobilenet_v2"):
        fx = FeatureExtractor(name, weights="random", device="cpu")
        assert fx.settings.precision == "fp32", (name, fx.settings)
    if bf16_units:
        fx = FeatureExtractor("vgg16", weights="random", device="cpu", precision="bf16")
        assert fx.settings == settings.BF16_SETTINGS  # oneDNN: NNPACK has no bf16 path
        a = FeatureExtractor("tiny", weights="random", device="cpu", precision="bf16")
        b = FeatureExtractor("tiny", weights="random", device="cpu")
        assert a.settings.precision == "bf16" and a.fingerprint != b.fingerprint


@pytest.mark.parametrize("backbone", [
    "tiny",
    # ~20 s on torch's reference bf16 path where the CPU has no bf16 units
    pytest.param("mobilenet_v2", marks=[] if _runtime.cpu_has_bf16() else [pytest.mark.slow])])
def test_bf16_and_fp32_features_agree_on_random_weights(backbone):
    rng = np.random.default_rng(0)
    imgs = [face_image(rng, 80), noface_image(rng, 80)]
    # One extractor, so one set of random weights (only tiny's are seeded).
    fx = FeatureExtractor(backbone, weights="random", device="cpu", precision="fp32",
                          batch_size=2, channels_last=True)
    a = fx.transform_images(imgs)
    # Force bf16 even on CPUs without bf16 units (slow there, but the numbers are the point).
    fx.settings = ExtractSettings("bf16", True, 2, 0)
    b = fx.transform_images(imgs)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cos.min() > 0.995, cos
    assert np.abs(a - b).max() / np.abs(a).max() < 0.05


def test_fold_batchnorm_keeps_the_function():
    import torch

    from animefaces.features.weights import load_trunk, resolve_weights

    for name in ("mobilenet_v2", "googlenet"):
        spec = get_backbone(name)
        trunk = load_trunk(spec, resolve_weights(spec, "random"))
        g = torch.Generator().manual_seed(0)
        for m in trunk.modules():  # non-trivial statistics, or folding is a no-op
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
        x = torch.randn(2, 3, 224, 224, generator=g)
        with torch.inference_mode():
            ref = trunk(x)
            folded = fold_batchnorm(trunk)
            out = folded(x)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules()), name
        assert torch.allclose(out, ref, rtol=1e-3, atol=1e-4 * ref.abs().max().item()), name


def _write_images(folder, n, *, bad=()):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    paths = []
    for i in range(n):
        p = folder / f"im{i:03d}.jpg"
        if i in bad:
            p.write_bytes(b"\xff\xd8\xff not really a jpeg")
        else:
            maker = face_image if i % 2 else noface_image
            maker(rng, 48 + 8 * (i % 5)).save(p, quality=90)
        paths.append(p)
    return paths


def test_extract_files_same_with_threads_and_a_worker_process(tmp_path):
    from animefaces.features.cache import FeatureCache

    paths = _write_images(tmp_path / "im", 30, bad=(7,))
    paths.append(paths[3])  # a repeat: decoded once, returned twice
    out = {}
    for nw in (0, 1):
        fx = FeatureExtractor("tiny", weights="random", device="cpu", batch_size=8,
                              num_workers=nw)
        cache = FeatureCache(tmp_path / f"cache{nw}", fx.fingerprint, meta=fx.describe(),
                             name="tiny")
        out[nw] = fx.extract_files(paths, cache=cache, skip_bad=True, progress=False)
    (f0, k0, b0), (f1, k1, b1) = out[0], out[1]
    assert k0 == k1 and len(k0) == 30
    assert np.array_equal(f0, f1)
    assert [str(p) for p, _ in b0] == [str(p) for p, _ in b1] == [str(paths[7])]
    assert b0[0][1] == b1[0][1] and "not an image" in b0[0][1]
    # Features are the same as the uncached in-memory path (same decode, same batches).
    fx = FeatureExtractor("tiny", weights="random", device="cpu", batch_size=8)
    good = [p for i, p in enumerate(paths) if i != 7]
    np.testing.assert_allclose(fx.transform_images(good), f0, rtol=1e-5, atol=1e-6)


def test_extract_files_stops_at_a_bad_file_and_keeps_earlier_work(tmp_path):
    from animefaces.features.cache import FeatureCache

    paths = _write_images(tmp_path / "im", 20, bad=(17,))
    fx = FeatureExtractor("tiny", weights="random", device="cpu", batch_size=4)
    cache = FeatureCache(tmp_path / "c", fx.fingerprint, meta=fx.describe(), name="tiny")
    with pytest.raises(BadImageError, match="im017.jpg"):
        fx.extract_files(paths, cache=cache, progress=False)
    assert len(cache) >= 16  # the batches before the bad file were flushed


def test_transform_images_raises_for_the_first_bad_input_in_order(tmp_path):
    paths = _write_images(tmp_path / "im", 12, bad=(5, 9))
    fx = FeatureExtractor("tiny", weights="random", device="cpu", batch_size=16)
    with pytest.raises(BadImageError, match="im005.jpg"):
        fx.transform_images(paths)


def test_threaded_decode_matches_one_at_a_time(tmp_path):
    from animefaces.data.images import open_image, resize_to_array

    paths = _write_images(tmp_path / "im", 24)
    fx = FeatureExtractor("tiny", weights="random", device="cpu", batch_size=24)
    fx.decode_threads = 4
    batched = fx.transform_images(paths)
    fx1 = FeatureExtractor("tiny", weights="random", device="cpu", batch_size=24)
    fx1.decode_threads = 1
    np.testing.assert_array_equal(batched, fx1.transform_images(paths))
    # and the decode is the documented one: draft + squash resize
    a = resize_to_array(open_image(paths[0], draft_size=(64, 64)), (64, 64))
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8


def test_open_image_jpeg_with_exif_orientation_is_transposed(tmp_path):
    from animefaces.data.images import open_image

    img = Image.new("RGB", (40, 20), (200, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 270 on display
    p = tmp_path / "o.jpg"
    img.save(p, exif=exif)
    assert open_image(p).size == (20, 40)
    assert open_image(p, draft_size=(10, 10)).size[1] >= 10


def test_bench_quick_writes_json_and_markdown(tmp_path, capsys):
    from animefaces.cli import main

    out = tmp_path / "bench"
    rc = main(["bench", "--quick", "--backbones", "tiny", "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "latest.json").read_text())
    for key in ("machine", "peak", "bf16_probe", "decode", "backbones", "cache_load", "memory",
                "conditions", "inputs", "options"):
        assert key in res, key
    assert res["peak"]["fp32"]["gflops"] > 0 and res["machine"]["torch_threads"] >= 1
    assert set(res["decode"]["frames"]) >= {"pil_plain", "pil_draft", "tv_decode_jpeg"}
    tiny = res["backbones"]["tiny"]
    assert tiny["gflops_per_image"] > 0
    assert set(tiny["modes"]) >= {"fp32", "fp32_cl", "bf16", "bf16_cl"}
    assert tiny["modes"]["fp32_cl"]["batches"]["1"]["img_s"] > 0
    e = tiny["end_to_end"]
    assert e["img_s"] > 0 and e["ideal_img_s"] > 0 and 0 < e["fraction_of_ideal"]
    assert res["memory"]["peak_ratio"] > 0 and res["cache_load"]["load_get_s"] >= 0
    md = (out / "latest.md").read_text()
    assert "### Forward only" in md and "### End to end" in md
    assert list(out.glob("bench-*.json")) and list(out.glob("bench-*.md"))


def test_bench_rejects_unknown_backbone(tmp_path):
    from animefaces.cli.bench import main

    assert main(["--quick", "--backbones", "vgg61", "--out", str(tmp_path)]) == 2


@pytest.mark.slow
def test_bf16_opt_in_keeps_svm_accuracy_on_real_data(tmp_path):
    """``--precision bf16``, on the CPU this runs on. With bf16 units: SVM accuracy on bf16
    features of the shared data (real MobileNetV2 weights) is within 0.5 points of fp32 on val,
    test and distinct. Without them (AVX2 only): the opt-in warns and computes fp32, the very
    features (and cache entry) of the default."""
    from sklearn.preprocessing import normalize
    from sklearn.svm import SVC

    from animefaces.data.datasets import load_dataset

    if not _runtime.cpu_has_bf16():
        with pytest.warns(UserWarning, match="no bf16 units"):
            fx = FeatureExtractor("mobilenet_v2", device="cpu", precision="bf16")
        assert fx.settings.precision == "fp32"
        assert fx.fingerprint == FeatureExtractor("mobilenet_v2", device="cpu").fingerprint
        return
    ds = load_dataset(MINI)
    paths = [r.path for r in ds.records]
    y = np.array([r.label for r in ds.records])
    split = np.array([r.split for r in ds.records])
    acc = {}
    for prec in ("fp32", "bf16"):
        fx = FeatureExtractor("mobilenet_v2", device="cpu", precision=prec)
        assert fx.settings.precision == prec
        X, keys, bad = fx.extract_files(paths, progress=False)
        assert not bad and len(X) == len(paths)
        X = normalize(X)
        clf = SVC(kernel="rbf", C=10.0, gamma="scale").fit(X[split == "train"], y[split == "train"])
        acc[prec] = {s: float((clf.predict(X[split == s]) == y[split == s]).mean())
                     for s in ("val", "test", "distinct")}
    for s in ("val", "test", "distinct"):
        assert abs(acc["bf16"][s] - acc["fp32"][s]) <= 0.005, acc


def test_nnpack_engine_gives_the_same_features_and_restores_onednn(monkeypatch):
    import torch

    from animefaces.features import settings

    # The AVX2 defaults (VGG on NNPACK), whatever this CPU is.
    monkeypatch.setattr(settings, "_cpu_has_avx512", lambda: False)

    rng = np.random.default_rng(2)
    imgs = [face_image(rng, 64), noface_image(rng, 64), face_image(rng, 72)]
    fx = FeatureExtractor("tiny", weights="random", device="cpu", channels_last=False)
    ref = fx.transform_images(imgs)
    fx.settings = ExtractSettings("fp32", False, 16, 0, "nnpack")
    got = fx.transform_images(imgs)
    assert torch.backends.mkldnn.enabled is True
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    vgg = FeatureExtractor("vgg16", weights="random", device="cpu")
    if torch.backends.nnpack.is_available():
        assert vgg.settings.conv_engine == "nnpack" and not vgg.settings.channels_last
    # channels_last or bf16 cannot use NNPACK: the engine falls back to oneDNN
    assert FeatureExtractor("vgg16", weights="random", device="cpu",
                            channels_last=True).settings.conv_engine == "onednn"
