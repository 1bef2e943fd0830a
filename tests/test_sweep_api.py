"""End to end on synthetic data with the tiny backbone: extract, sweep, save, load, predict."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import animefaces
from animefaces.cli import main
from animefaces.config import config_from_dict, load_config
from animefaces.errors import AnimeFacesError, BadImageError, ConfigError, ModelMismatchError
from animefaces.features.dataset import extract_dataset
from animefaces.train.sweep import run_sweep

from conftest import face_image, make_dataset, noface_image, tiny_config


@pytest.fixture
def swept(tmp_path, tiny_dataset):
    cfg = tiny_config(tmp_path)
    res = run_sweep(tiny_dataset, config=cfg, weights="random", set_best=True, progress=False)
    return tmp_path, tiny_dataset, cfg, res


def test_sweep_writes_tables_results_and_model(swept):
    tmp_path, data, cfg, res = swept
    for name in ("table1.md", "table1.csv", "table2.md", "table2.csv", "results.json", "report.md"):
        assert (res.run_dir / name).is_file(), name
    r = json.loads((res.run_dir / "results.json").read_text())
    assert r["backbones"]["tiny"]["random_weights"] is True
    assert {f["kernel"] for f in r["fits"]} == {"rbf", "linear", "poly-2", "poly-3"}
    assert r["scaling"] == "l2" and "versions" in r and r["timings"]["fit_seconds"] >= 0
    assert "(random weights)" in (res.run_dir / "table1.md").read_text()
    from animefaces.classify.persist import load_model

    assert res.best_model.is_file() and res.best_model.suffix == ".json"  # the pointer
    meta = load_model(res.best_model).meta
    assert meta["features"]["backbone"] == "tiny" and len(meta["digest"]) == 64
    # Synthetic faces are easy: the tiny random CNN + SVM must beat chance clearly.
    assert r["best"]["accuracy"]["test"] >= 0.75


def test_second_sweep_does_no_forward_pass(swept, monkeypatch):
    tmp_path, data, cfg, _ = swept
    from animefaces.features import extract

    def boom(*a, **k):
        raise AssertionError("forward pass on a cached dataset")

    monkeypatch.setattr(extract.FeatureExtractor, "_forward", boom)
    res2 = run_sweep(data, config=cfg, weights="random", progress=False)
    assert res2.results["backbones"]["tiny"]["computed"] == 0


def test_cached_sweep_does_not_import_torch(swept):
    """With every feature cached, a sweep in a new process never imports torch (its import
    costs 2-7 s, more than the SVM grid of a small set); the tiny backbone's random weights
    are the only thing that would need it, and they come from the cache's fingerprint."""
    import subprocess
    import sys

    tmp_path, data, cfg, _ = swept
    code = ("import sys\n"
            "from animefaces.train.sweep import run_sweep\n"
            f"res = run_sweep({str(data)!r}, config={str(cfg)!r}, weights='random', device='auto', progress=False)\n"
            "assert res.results['backbones']['tiny']['computed'] == 0\n"
            "print('torch imported' if 'torch' in sys.modules else 'no torch')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    from animefaces.features.settings import _gpu_driver_present

    expected = "torch imported" if _gpu_driver_present() else "no torch"
    assert out.stdout.strip().splitlines()[-1] == expected, out.stdout


def test_renamed_image_hits_cache_and_changed_image_misses(tmp_path, tiny_dataset):
    cache = tmp_path / "feat"
    first = extract_dataset(tiny_dataset, backbone="tiny", weights="random", cache_dir=cache, progress=False)
    assert first.computed == len(first.records)
    imgs = sorted((tiny_dataset.parent / "images").glob("*.png"))
    imgs[0].rename(imgs[0].with_name("renamed.png"))
    text = (tiny_dataset).read_text().replace(imgs[0].name, "renamed.png")
    tiny_dataset.write_text(text)
    face_image(np.random.default_rng(99)).save(imgs[1])
    again = extract_dataset(tiny_dataset, backbone="tiny", weights="random", cache_dir=cache, progress=False)
    assert again.computed == 1


def test_two_line_api_on_png_and_jpeg(swept, tmp_path):
    _, _, _, res = swept
    rng = np.random.default_rng(5)
    face_image(rng).save(tmp_path / "f.png")
    face_image(rng).convert("RGB").save(tmp_path / "f.jpg", quality=90)
    clf = animefaces.FaceClassifier.load(res.best_model)
    answering = animefaces.FaceClassifier.load(res.best_model, abstain="off")
    for name in ("f.png", "f.jpg"):
        p = clf.predict(tmp_path / name)
        # a 12-image val split (6 + 6) gives a gentle Platt sigmoid: 'unsure' is a fair answer
        assert p.label in ("face", "no_face", "unsure") and 0.0 < p.score < 1.0
        a = answering.predict(tmp_path / name)
        assert a.label == ("face" if a.score >= 0.5 else "no_face") and a.score == p.score
    many = clf.predict_many([tmp_path / "f.png", Image.open(tmp_path / "f.jpg"),
                             np.asarray(noface_image(rng))])
    assert len(many) == 3 and all(0 <= m.score <= 1 for m in many)
    # load by the models/best shorthand too
    best = res.best_model.parent / "best"
    assert animefaces.FaceClassifier.load(best).predict(tmp_path / "f.png").score == pytest.approx(
        clf.predict(tmp_path / "f.png").score)


def test_predict_many_in_memory_images_in_chunks_keep_their_order(swept, tmp_path):
    _, _, _, res = swept
    clf = animefaces.FaceClassifier.load(res.best_model)
    rng = np.random.default_rng(11)
    ims = [np.asarray(face_image(rng) if i % 3 else noface_image(rng)) for i in range(11)]
    ims[5] = np.zeros((2, 2, 2), np.uint8)  # a bad array in the middle of a chunk
    one = [clf.predict(im).score for i, im in enumerate(ims) if i != 5]
    many = clf.predict_many(ims, on_error="report", batch_size=1)  # chunks of 4
    assert many[5].label == "error" and "shape" in many[5].error
    assert [m.source for m in many] == [f"<image {i}>" for i in range(11)]
    assert [m.score for i, m in enumerate(many) if i != 5] == pytest.approx(one, abs=1e-6)


def test_predict_bad_inputs(swept, tmp_path):
    _, _, _, res = swept
    clf = animefaces.FaceClassifier.load(res.best_model)
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(BadImageError, match="bad.png"):
        clf.predict(tmp_path / "bad.png")
    out = clf.predict_many([tmp_path / "bad.png"], on_error="report")
    assert out[0].label == "error" and "not an image" in out[0].error


def test_predict_cli_writes_csv_and_json(swept, tmp_path, capsys):
    _, data, _, res = swept
    imgs = data.parent / "images"
    assert main(["predict", str(imgs), "--model", str(res.best_model), "--format", "json",
                 "-o", str(tmp_path / "p.json"), "-q"]) == 0
    rows = json.loads((tmp_path / "p.json").read_text())
    assert len(rows) == len(list(imgs.iterdir())) and {"source", "label", "score"} <= set(rows[0])
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.jpg").write_bytes(b"")
    assert main(["predict", str(tmp_path / "junk"), "--model", str(res.best_model), "--format", "csv", "-q"]) == 1
    assert "empty" in capsys.readouterr().out


def test_predict_reuses_the_feature_cache_of_the_sweep(swept, tmp_path, capsys, monkeypatch):
    """Images the sweep already extracted are not run through the CNN again by predict; the
    table has a header line."""
    from animefaces.features.extract import FeatureExtractor

    _, data, _, res = swept
    imgs = sorted((data.parent / "images").iterdir())
    calls = []
    real = FeatureExtractor._forward
    monkeypatch.setattr(FeatureExtractor, "_forward", lambda self, b: calls.append(len(b)) or real(self, b))
    args = ["predict", *map(str, imgs), "--model", str(res.best_model), "-q"]
    assert main(args + ["--cache-dir", str(tmp_path / "features")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert calls == [] and len(out) == len(imgs) + 1
    assert out[0].split("\t")[:3] == ["source", "label", "P(face)"]
    assert main(args + ["--cache-dir", "none"]) == 0  # no cache: the CNN runs
    assert sum(calls) == len(imgs)


def test_tampered_or_mismatched_model_is_refused(swept, tmp_path):
    _, _, _, res = swept
    from animefaces.classify.persist import load_model, save_model

    # A model trained with other preprocessing (saved properly: its digest is right).
    model = load_model(res.best_model)
    model.meta["features"]["preprocessing"] = "resize=300x300"
    other = save_model(model, tmp_path / "other")
    with pytest.raises(ModelMismatchError, match="preprocessing"):
        animefaces.FaceClassifier.load(other)
    # The model JSON is covered by its digest, the .npz by its sha256 in the JSON.
    folder = res.best_model.parent / json.loads(res.best_model.read_text())["model"]
    with open(folder / "model.npz", "ab") as f:
        f.write(b"x")
    with pytest.raises(ModelMismatchError, match="changed or damaged"):
        animefaces.FaceClassifier.load(res.best_model)
    meta = json.loads((folder / "model.json").read_text())
    meta["features"]["preprocessing"] = "resize=300x300"
    (folder / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelMismatchError, match="changed or damaged"):
        animefaces.FaceClassifier.load(res.best_model)


def test_extract_without_weights_fails_with_fix(tmp_path, tiny_dataset, capsys):
    code = main(["extract", "--backbone", "vgg16", "--data", str(tiny_dataset), "--cache-dir", str(tmp_path / "f")])
    err = capsys.readouterr().err
    assert code != 0 and "vgg16-397923af.pth" in err and "--weights" in err and "Traceback" not in err


def test_extract_skip_bad_lists_files(tmp_path, tiny_dataset, capsys):
    bad = tiny_dataset.parent / "images" / "train-face-0.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    args = ["extract", "--backbone", "tiny", "--weights", "random", "--data", str(tiny_dataset),
            "--cache-dir", str(tmp_path / "f"), "-q"]
    assert main(args) == 2
    assert "train-face-0.png" in capsys.readouterr().err
    assert main(args + ["--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "1 unreadable image(s) left out" in out and "train-face-0.png" in out


def test_config_validation(tmp_path):
    with pytest.raises(ConfigError, match="unknown key.*svm.kernal"):
        config_from_dict({"svm": {"kernal": "rbf"}})
    with pytest.raises(ConfigError, match="svm.scaling = 'minmax'; choose one of: l2, standard, none"):
        config_from_dict({"svm": {"scaling": "minmax", "grid": [{"kernel": "rbf"}]}})
    with pytest.raises(ConfigError, match="kernel"):
        config_from_dict({"svm": {"grid": [{"kernel": "tree"}]}})
    paper = load_config("paper")
    rows = [r for r, _, _ in paper.kernel_rows()]
    assert rows == ["linear", "rbf", "poly-2", "poly-3", "poly-4", "poly-5", "poly-10", "poly-50"]
    assert paper.cache_size == 2000


def test_precomputed_grid_matches_plain_svc(rng):
    from animefaces.classify.svm import fit_grid, refit

    X = {s: rng.normal(size=(n, 20)).astype(np.float32) for s, n in (("train", 80), ("val", 40))}
    y = {s: (X[s][:, 0] + 0.3 * X[s][:, 1] ** 2 > 0).astype(int) for s in X}
    rows = config_from_dict({"svm": {"grid": [{"kernel": "rbf", "C": [1.0]},
                                              {"kernel": "poly", "degree": [3], "coef0": [1.0]},
                                              {"kernel": "linear"}]}}).kernel_rows()
    for scaling in ("l2", "standard"):
        for r in fit_grid(X, y, rows, scaling=scaling, n_jobs=2):
            pipe = refit(r.params, X["train"], y["train"], scaling=scaling)
            assert r.accuracy["val"] == pytest.approx(np.mean(pipe.predict(X["val"]) == y["val"]))


def test_extract_killed_midway_resumes(tmp_path):
    data = make_dataset(tmp_path / "big", n_per_class=(400, 50, 50, 0), fmt="png")
    cache = tmp_path / "cache"
    cmd = [sys.executable, "-m", "animefaces.cli", "extract", "--backbone", "tiny", "--weights", "random",
           "--data", str(data), "--cache-dir", str(cache), "--batch-size", "8", "--checkpoint-every", "64", "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not list(cache.glob("*/shard-*.npz")):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    shards = list(cache.glob("*/shard-*.npz"))
    assert shards, "no shard written before the kill"
    from animefaces.features.cache import FeatureCache
    from animefaces.features.extract import FeatureExtractor

    fx = FeatureExtractor("tiny", weights="random", device="cpu")
    done = len(FeatureCache(cache, fx.fingerprint, meta={}, name="tiny"))
    total = 1000
    assert 0 < done < total, f"kill came too late ({done} of {total} done)"
    again = extract_dataset(data, backbone="tiny", weights="random", cache_dir=cache, progress=False)
    assert again.computed == total - done
    assert len(again.records) == total
    assert not list(cache.glob("*/.*.tmp")), "a temp file was left behind"


def test_trust_reuses_grid_decisions_only_when_they_match_the_saved_model(swept):
    """predictions.csv's decision values come from the grid fit (no second pass over every
    split), so they must be the saved model's own values; a mismatch falls back to the model."""
    import csv

    from animefaces.classify.svm import FitResult
    from animefaces.train.sweep import _grid_decisions

    tmp_path, data, _, res = swept
    # grid fit when its val decisions equal the refit's (RBF here to 1e-7); a polynomial chosen on
    # held-out groups can differ by ~4e-4 (libsvm stops at its tolerance), and then the refit's
    assert res.results["best"]["decision_values"].startswith(
        "grid fit" if res.results["best"]["kernel"] == "rbf" else ("grid fit", "refit"))
    with open(res.run_dir / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    feats = extract_dataset(data, backbone="tiny", weights="random",
                            cache_dir=tmp_path / "features", progress=False)
    assert feats.computed == 0 and len(rows) == len(feats.records)
    clf = animefaces.FaceClassifier.load(res.best_model, weights="random")
    own = clf.model.decision(feats.X)
    by_name = {Path(r["path"]).name: float(r["decision"]) for r in rows}
    csv_dec = np.array([by_name[Path(r.path).name] for r in feats.records])
    assert np.allclose(csv_dec, own, atol=1e-3)  # the CSV keeps 4 decimals
    # the fallback: a grid result whose val decisions differ is not used
    fake = FitResult(row="rbf", params={}, accuracy={}, fit_seconds=0, predict_seconds=0,
                     decision={"val": np.array([0.5, -1.0]), "train": np.array([1.0])})
    assert _grid_decisions(fake, np.array([0.5, -1.0 + 1e-9]))["train"][0] == 1.0
    assert _grid_decisions(fake, np.array([0.5, -0.9])) is None
    assert _grid_decisions(fake, np.array([0.5])) is None


def test_sweep_takes_the_feature_flags_of_extract_and_names_them(tmp_path, tiny_dataset, capsys):
    """sweep --precision / --pooling / --batch-size / --device mean what they mean on extract,
    and the console, report.md and results.json say what the features were computed with."""
    rc = main(["sweep", "--data", str(tiny_dataset), "--config", str(tiny_config(tmp_path)),
               "--weights", "random", "--precision", "fp32", "--pooling", "avg",
               "--batch-size", "4", "--device", "cpu", "-q"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "precision fp32" in out and "batch 4" in out and "pooling avg" in out
    assert "Chosen on held-out groups: tiny" in out and "Reports:" in out
    assert "## Table 1" not in out  # the whole report.md stays in the file
    run = next((tmp_path / "reports").iterdir())
    rt = json.loads((run / "results.json").read_text())["runtime"]
    assert (rt["precision"], rt["batch_size"], rt["pooling"], rt["device"]) == ("fp32", 4, "avg", "cpu")
    assert "precision fp32, device cpu" in (run / "report.md").read_text()
    assert "precision fp32, device cpu" in (run / "report.html").read_text()
    with pytest.raises(SystemExit) as exc:
        main(["sweep", "--data", str(tiny_dataset), "--precision", "fp8"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_extract_model_flag_is_a_deprecated_alias_of_backbone(tmp_path, tiny_dataset, capsys):
    args = ["extract", "--weights", "random", "--data", str(tiny_dataset),
            "--cache-dir", str(tmp_path / "f"), "-q"]
    assert main(args + ["--model", "tiny"]) == 0
    captured = capsys.readouterr()
    assert "deprecated" in captured.err and "--backbone" in captured.err
    assert captured.out.startswith("tiny:")
    assert main(args + ["--backbone", "tiny"]) == 0
    captured = capsys.readouterr()
    assert "deprecated" not in captured.err and captured.out.startswith("tiny:")
    assert main(args + ["--backbone", "tiny", "--model", "vgg16"]) == 2
    assert "disagree" in capsys.readouterr().err
