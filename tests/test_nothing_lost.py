"""Issue "Nothing lost, nothing forged": damaged caches, hostile report inputs, bad config values,
special files, manifest paths outside their folder, decompression bombs, batch sizes, skipped
images that empty a split, and run folders left by failed sweeps."""

from __future__ import annotations

import json
import os
import struct
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from animefaces.errors import AnimeFacesError, BadImageError, ConfigError, DatasetError

from conftest import face_image, make_dataset, noface_image, tiny_config


# -- damaged caches: set aside and rebuilt ----------------------------------------------------------
def test_set_aside_renames_and_says_so(tmp_path, capsys):
    from animefaces._io import set_aside

    f = tmp_path / "x.npz"
    f.write_bytes(b"junk")
    moved = set_aside(f, "BadZipFile: File is not a zip file", what="image-stats cache")
    err = capsys.readouterr().err
    assert not f.exists() and moved.is_file() and moved.name.startswith("x.npz.damaged-")
    assert err.count("\n") == 1 and "image-stats cache" in err and str(f) in err
    assert "BadZipFile" in err and moved.name in err
    assert set_aside(f, "gone already") is None  # another process moved it: no error


def _stats_files(tmp_path, n=3):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        p = tmp_path / f"img{i}.png"
        face_image(rng).save(p)
        out.append(p)
    return out


def test_truncated_image_stats_cache_is_set_aside_and_rebuilt(tmp_path, capsys):
    from animefaces.classify.ood import STATS_VERSION, stats_for_files

    files = _stats_files(tmp_path)
    cache = tmp_path / "features" / "image-stats"
    first = stats_for_files(files, cache_dir=cache, n_jobs=1)
    cache_file = cache / f"image-stats-v{STATS_VERSION}.npz"
    data = cache_file.read_bytes()
    cache_file.write_bytes(data[: len(data) // 2])  # truncated: zipfile.BadZipFile on load
    again = stats_for_files(files, cache_dir=cache, n_jobs=1)
    np.testing.assert_allclose(again, first)
    err = capsys.readouterr().err
    assert "image-stats cache" in err and "damaged" in err
    aside = list(cache.glob(f"image-stats-v{STATS_VERSION}.npz.damaged-*"))
    assert len(aside) == 1 and aside[0].stat().st_size == len(data) // 2
    with np.load(cache_file) as z:  # rebuilt whole
        assert len(z["keys"]) == 3
    # a file of the right format but the wrong shapes is foreign: also set aside
    np.savez(cache_file, keys=np.array(["a", "b"]), stats=np.zeros((2, 3)))
    np.testing.assert_allclose(stats_for_files(files, cache_dir=cache, n_jobs=1), first)
    assert len(list(cache.glob("*.damaged-*"))) == 2


def test_damaged_hash_index_is_set_aside_with_one_line(tmp_path, capsys):
    from animefaces.features.fileindex import INDEX_NAME, HashIndex

    (tmp_path / INDEX_NAME).write_bytes(b"PK\x03\x04 truncated")
    idx = HashIndex(tmp_path)
    assert idx.get("x") is None
    assert "file-hash index" in capsys.readouterr().err
    assert len(list(tmp_path.glob(INDEX_NAME + ".damaged-*"))) == 1
    idx.put("/c|1|2|3|4", "cd")
    idx.save()
    assert HashIndex(tmp_path).get("/c|1|2|3|4") == "cd"


# -- config values: types and ranges, named ---------------------------------------------------------
_GRID = [{"kernel": "poly", "C": [1.0], "degree": [2]}]


@pytest.mark.parametrize("section, key, value, match", [
    ("svm", "cache_size", -5, r"svm.cache_size: must be a finite number > 0.*got -5"),
    ("svm", "cache_size", float("nan"), r"svm.cache_size: must be a finite number > 0.*got nan"),
    ("svm", "seed", "x", r"svm.seed: must be an integer from 0 to 2\*\*32 - 1, got 'x'"),
    ("svm", "seed", -1, r"svm.seed: .*got -1"),
    ("svm", "n_jobs", True, r"svm.n_jobs = True"),
    ("features", "cache_dir", 123, r"features.cache_dir: must be a non-empty string.*got 123"),
    ("features", "device", "", r"features.device: must be a non-empty string"),
    ("output", "reports_dir", ["r"], r"output.reports_dir: must be a non-empty string"),
    ("output", "models_dir", 1.5, r"output.models_dir: must be a non-empty string"),
    ("features", "skip_bad", "false", r"features.skip_bad: must be true or false.*got 'false'"),
    ("features", "skip_bad", 1, r"features.skip_bad: must be true or false.*got 1"),
    ("features", "batch_size", 100000, r"features.batch_size = 100000: above the limit of 4096.*GB"),
    ("features", "batch_size", -3, r"features.batch_size = -3: use an integer from 1 to 4096"),
    ("features", "batch_size", "8", r"features.batch_size = '8'"),
])
def test_config_values_are_checked_and_named(section, key, value, match):
    from animefaces.config import config_from_dict

    raw = {"svm": {"grid": _GRID}, section: {key: value}}
    if section == "svm":
        raw["svm"] = {"grid": _GRID, key: value}
    with pytest.raises(ConfigError, match=match):
        config_from_dict(raw)


@pytest.mark.parametrize("key, value, match", [
    ("C", float("nan"), r"svm.grid\[0\].C: must be a finite number > 0, got nan"),
    ("C", 0, r"svm.grid\[0\].C: must be a finite number > 0, got 0"),
    ("C", True, r"svm.grid\[0\].C: .*got True"),
    ("gamma", float("inf"), r"svm.grid\[0\].gamma: must be 'scale', 'auto' or a finite number > 0, got inf"),
    ("degree", 1000, r"svm.grid\[0\].degree: must be an integer from 1 to 100.*got 1000"),
    ("degree", 2.5, r"svm.grid\[0\].degree: .*got 2.5"),
    ("coef0", "abc", r"svm.grid\[0\].coef0: must be a finite number, got 'abc'"),
    ("coef0", float("nan"), r"svm.grid\[0\].coef0: must be a finite number, got nan"),
])
def test_grid_values_are_checked_and_named(key, value, match):
    from animefaces.config import config_from_dict

    with pytest.raises(ConfigError, match=match):
        config_from_dict({"svm": {"grid": [{"kernel": "poly", key: value}]}})


def test_grid_must_be_tables_and_toml_nan_is_refused(tmp_path):
    from animefaces.config import config_from_dict, load_config

    with pytest.raises(ConfigError, match="svm.grid must be a list of tables"):
        config_from_dict({"svm": {"grid": [1]}})
    p = tmp_path / "c.toml"
    p.write_text('[svm]\ncache_size = -5\n[[svm.grid]]\nkernel = "rbf"\nC = [nan]\n')
    with pytest.raises(ConfigError, match=f"config {p}: svm.cache_size"):
        load_config(p)
    # the shipped configs still load
    assert load_config("default").grid and load_config("paper").grid


def test_huge_batch_size_is_refused_in_one_place(tmp_path, tiny_dataset, capsys):
    from animefaces.cli import main
    from animefaces.features.extract import FeatureExtractor

    with pytest.raises(ConfigError, match=r"batch size = 100000: above the limit of 4096; .*GB"):
        FeatureExtractor("tiny", weights="random", batch_size=100000)
    with pytest.raises(ConfigError, match=r"batch size = 0"):
        FeatureExtractor("tiny", weights="random", batch_size=0)
    assert FeatureExtractor("tiny", weights="random", batch_size=4096).settings.batch_size == 4096
    rc = main(["extract", "--backbone", "tiny", "--weights", "random", "--data", str(tiny_dataset),
               "--cache-dir", str(tmp_path / "f"), "--batch-size", "100000", "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "above the limit of 4096" in err and "Traceback" not in err


# -- special files, sizes and decompression bombs ---------------------------------------------------
def _png_header_only(path: Path, width: int, height: int, mode_byte: int = 0) -> Path:
    """A PNG that declares ``width`` x ``height`` grayscale pixels and holds almost no data:
    a bomb's header, made in microseconds."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, mode_byte, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))
    return path


@pytest.fixture
def alarm():
    """Fail instead of hanging for ever (a FIFO read blocks until a writer comes)."""
    import signal

    def boom(*_):
        raise AssertionError("hung reading a special file")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def test_fifo_and_device_named_jpg_are_refused_without_reading(tmp_path, alarm):
    from animefaces.data.images import image_size, open_image

    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    with pytest.raises(BadImageError, match=r"pipe.jpg: it is a FIFO \(named pipe\).*not a regular file"):
        open_image(fifo)
    zero = tmp_path / "zero.jpg"
    zero.symlink_to("/dev/zero")
    with pytest.raises(BadImageError, match=r"zero.jpg: it is a character device \(a link to /dev/zero\)"):
        open_image(zero)
    with pytest.raises(BadImageError, match="not a regular file"):
        image_size(zero)
    (tmp_path / "dir.jpg").mkdir()
    with pytest.raises(BadImageError, match="folder"):
        open_image(tmp_path / "dir.jpg")


def test_file_larger_than_any_image_within_the_limit_is_not_read(tmp_path, monkeypatch):
    from animefaces.data import images as imageio

    p = tmp_path / "huge.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), np.uint8)).save(p)
    monkeypatch.setattr(imageio, "_METADATA_BYTES", 0)
    with pytest.raises(BadImageError, match=r"bytes, more than any image within the limit of 100 pixels"):
        imageio.open_image(p, max_pixels=100)  # 100 px * 8 bytes < the file
    assert imageio.open_image(p).size == (40, 40)


def test_one_pixel_limit_with_the_documented_message(tmp_path):
    """Pillow's own guard (an error above 179 Mpx, a warning above 89 Mpx) must not answer
    before ours: the README says 120 Mpx, and the message says how to raise it."""
    from animefaces.data.images import DEFAULT_MAX_PIXELS, image_size, open_image
    from animefaces.classify.ood import file_stats

    assert DEFAULT_MAX_PIXELS == 120_000_000
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "Images over 120 Mpx are refused" in readme
    bomb = _png_header_only(tmp_path / "bomb.png", 20_000, 10_000)  # 200 Mpx: Pillow's error zone
    middle = _png_header_only(tmp_path / "middle.png", 10_000, 9_500)  # 95 Mpx: Pillow warns
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any DecompressionBombWarning fails the test
        with pytest.raises(BadImageError, match=r"20000x10000 = 200,000,000 pixels, above the limit "
                                                r"of 120,000,000 \(a guard against decompression bombs\)"):
            open_image(bomb)
        with pytest.raises(BadImageError, match="above the limit of 120,000,000"):
            file_stats(bomb)
        assert image_size(middle) == (10_000, 9_500)
        with pytest.raises(BadImageError, match="truncated or corrupt"):
            file_stats(middle)  # decoded (within the limit): the data is missing
        # a raised limit is honoured above Pillow's 179 Mpx too
        assert image_size(bomb, max_pixels=250_000_000) == (20_000, 10_000)
    with pytest.raises(BadImageError, match="above the limit of 1,000"):
        open_image(middle, max_pixels=1_000)
    from PIL import Image as PILImage

    assert PILImage.MAX_IMAGE_PIXELS == 89_478_485  # Pillow's setting is left as it was


def test_open_image_makes_no_full_size_copy_for_exif(tmp_path, monkeypatch):
    from PIL import ImageOps

    from animefaces.data.images import open_image

    p = tmp_path / "a.png"
    Image.new("RGB", (64, 48), (1, 2, 3)).save(p)
    seen = []
    real = ImageOps.exif_transpose

    def spy(img, *, in_place=False):
        seen.append(in_place)
        return real(img, in_place=in_place)

    monkeypatch.setattr(ImageOps, "exif_transpose", spy)
    assert open_image(p).getpixel((0, 0)) == (1, 2, 3)
    assert seen == [True]


# -- predict: every input answered, in order; the exit code says what failed ------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from animefaces.train.sweep import run_sweep

    tmp = tmp_path_factory.mktemp("trained")
    data = make_dataset(tmp / "data")
    res = run_sweep(data, config=tiny_config(tmp), weights="random", progress=False)
    return data, res


def test_predict_answers_every_input_and_the_exit_code_says_some_failed(trained, tmp_path, alarm, capsys):
    from animefaces.cli import main

    data, res = trained
    good = data.parent / "images" / "val-face-0.png"
    (tmp_path / "dir.jpg").mkdir()
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    (tmp_path / "zero.jpg").symlink_to("/dev/zero")
    inputs = [good, tmp_path / "dir.jpg", tmp_path / "missing.jpg", fifo, tmp_path / "zero.jpg", good]
    rc = main(["predict", *map(str, inputs), "--model", str(res.best_model), "--format", "json",
               "-o", str(tmp_path / "p.json"), "--cache-dir", "none", "-q"])
    err = capsys.readouterr().err
    assert rc == 1 and "4 of 6 image(s) could not be read" in err and "Traceback" not in err
    rows = json.loads((tmp_path / "p.json").read_text())
    assert [r["source"] for r in rows] == list(map(str, inputs))
    assert [r["label"] == "error" for r in rows] == [False, True, True, True, True, False]
    assert "folder" in rows[1]["error"] and "no image files" in rows[1]["error"]
    assert "no such file" in rows[2]["error"]
    assert "FIFO" in rows[3]["error"] and "character device" in rows[4]["error"]
    # only unreadable inputs: still a row each, exit 1
    assert main(["predict", str(tmp_path / "missing.jpg"), "--model", str(res.best_model),
                 "--format", "csv", "--cache-dir", "none", "-q"]) == 1
    assert "missing.jpg,error" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    assert "exit status: 0 every input answered; 1 some inputs could not be read" in \
        capsys.readouterr().out.replace("\n", " ").replace("  ", " ")


# -- manifest paths outside the manifest's folder ---------------------------------------------------
def _manifest(root: Path, rows: list[tuple[str, str, str]]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    p = root / "manifest.csv"
    p.write_text("path,label,split\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))
    return p


def test_manifest_paths_outside_its_folder_are_refused_unless_allowed(tmp_path):
    from animefaces.data.datasets import load_dataset

    rng = np.random.default_rng(0)
    (tmp_path / "data" / "images").mkdir(parents=True)
    face_image(rng).save(tmp_path / "data" / "images" / "a.png")
    noface_image(rng).save(tmp_path / "outside.png")
    csv = _manifest(tmp_path / "data", [("images/a.png", "face", "train"),
                                         ("../outside.png", "no_face", "train"),
                                         ("/etc/passwd", "no_face", "train"),
                                         ("images/../images/a.png", "face", "val")])
    with pytest.raises(DatasetError, match=r"2 path\(s\) outside the manifest's folder .*line 3: "
                                           r"\.\./outside.png; line 4: /etc/passwd.*--allow-outside-paths"):
        load_dataset(csv)
    # allowed: read, and noted (the duplicate check still applies to what is read)
    csv = _manifest(tmp_path / "data", [("images/a.png", "face", "train"),
                                         ("../outside.png", "no_face", "train")])
    ds = load_dataset(csv, allow_outside=True)
    assert len(ds.records) == 2 and "outside the manifest's folder, allowed" in ds.notes[0]


def test_extract_cli_refuses_outside_paths_by_default(tmp_path, capsys):
    from animefaces.cli import main

    rng = np.random.default_rng(0)
    (tmp_path / "data").mkdir()
    face_image(rng).save(tmp_path / "data" / "a.png")
    noface_image(rng).save(tmp_path / "b.png")
    csv = _manifest(tmp_path / "data", [("a.png", "face", ""), ("../b.png", "no_face", "")])
    args = ["extract", "--backbone", "tiny", "--weights", "random", "--data", str(csv),
            "--cache-dir", str(tmp_path / "f"), "-q"]
    assert main(args) == 2
    assert "outside the manifest's folder" in capsys.readouterr().err
    assert main(args + ["--allow-outside-paths"]) == 0
    assert capsys.readouterr().out.startswith("tiny: 2 images")


def test_shared_manifests_have_no_outside_paths():
    """Refusing by default is safe for the project's own data."""
    from conftest import SHARED

    import csv as csvlib
    from animefaces.data.datasets import _outside

    manifests = sorted((SHARED / "data").glob("*/manifest.csv"))
    if not manifests:
        pytest.skip(f"no shared data under {SHARED / 'data'}")
    for m in manifests:
        with open(m, newline="", encoding="utf-8") as f:
            assert not [r["path"] for r in csvlib.DictReader(f) if _outside(m.parent, r["path"])], m


# -- --skip-bad: the splits are checked again; counts after skipping --------------------------------
def _break(data: Path, names) -> None:
    for n in names:
        (data.parent / "images" / n).write_bytes(b"\x89PNG\r\n\x1a\n truncated")


def test_skip_bad_that_empties_a_val_class_stops_before_fitting_or_saving(tmp_path):
    from animefaces.train.sweep import run_sweep

    data = make_dataset(tmp_path / "data", n_per_class=(8, 3, 3, 0))
    _break(data, [f"val-no_face-{i}.png" for i in range(3)])
    models = tmp_path / "models"
    with pytest.raises(DatasetError, match=r"split 'val' has no no_face images; every split needs "
                                           r"both classes.*after leaving out 3 unreadable image\(s\) "
                                           r"\(--skip-bad\), 3 of them from 'val': .*val-no_face-0.png"):
        run_sweep(data, config=tiny_config(tmp_path), weights="random", skip_bad=True,
                  models_dir=models, progress=False)
    assert not models.exists()  # models/best is not replaced by a model chosen on faces only
    assert not (tmp_path / "reports").exists() or not any((tmp_path / "reports").iterdir())


def test_skip_bad_that_empties_a_train_class_or_a_split_is_a_dataset_error(tmp_path):
    from animefaces.train.sweep import run_sweep

    data = make_dataset(tmp_path / "data", n_per_class=(3, 3, 2, 0))
    _break(data, [f"train-face-{i}.png" for i in range(3)])
    with pytest.raises(DatasetError, match=r"split 'train' has no face images"):
        run_sweep(data, config=tiny_config(tmp_path), weights="random", skip_bad=True, progress=False)
    data = make_dataset(tmp_path / "data2", n_per_class=(3, 3, 1, 0))
    _break(data, ["test-face-0.png", "test-no_face-0.png"])
    with pytest.raises(DatasetError, match=r"empty split 'test': no images left"):
        run_sweep(data, config=tiny_config(tmp_path), weights="random", skip_bad=True, progress=False)


def test_skip_bad_reports_the_counts_measured(tmp_path):
    from animefaces.train.sweep import run_sweep

    data = make_dataset(tmp_path / "data", n_per_class=(8, 3, 3, 0))
    _break(data, ["val-face-0.png", "train-no_face-1.png"])
    res = run_sweep(data, config=tiny_config(tmp_path), weights="random", skip_bad=True, progress=False)
    d = res.results["data"]
    assert d["counts"]["val"] == {"face": 2, "no_face": 3}
    assert d["counts"]["train"] == {"face": 8, "no_face": 7}
    assert d["counts_before_skip"]["val"] == {"face": 3, "no_face": 3} and d["n_left_out"] == 2
    md = (res.run_dir / "report.md").read_text()
    assert "val: face 2, no_face 3" in md and "train-no_face-1.png" in md
    assert json.loads((res.run_dir / "results.json").read_text())["data"]["counts"]["val"]["face"] == 2


# -- run folders: none left by a failed or killed sweep ---------------------------------------------
def test_failed_sweep_leaves_no_run_folder(tmp_path, tiny_dataset, monkeypatch):
    from animefaces.report import tables as report
    from animefaces.train.sweep import run_sweep

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report, "write_reports", boom)
    with pytest.raises(OSError, match="No space left"):
        run_sweep(tiny_dataset, config=tiny_config(tmp_path), weights="random", progress=False)
    assert list((tmp_path / "reports").iterdir()) == []
    monkeypatch.undo()
    # and one that fails before any report (a bad backbone) makes none at all
    with pytest.raises(AnimeFacesError):
        run_sweep(tiny_dataset, config=tiny_config(tmp_path), backbones=["vgg16"], progress=False)
    assert list((tmp_path / "reports").iterdir()) == []


def test_incomplete_run_folder_of_a_killed_sweep_is_removed_next_time(tmp_path, tiny_dataset, capsys):
    import socket
    import subprocess

    from animefaces.train.sweep import run_sweep

    reports = tmp_path / "reports"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    killed = reports / "20200101-000000-tiny.incomplete"
    killed.mkdir(parents=True)
    (killed / "owner.json").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    (killed / "predictions.csv").write_text("half")
    running = reports / "20200101-000001-tiny.incomplete"  # a sweep still running: kept
    running.mkdir()
    (running / "owner.json").write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
    res = run_sweep(tiny_dataset, config=tiny_config(tmp_path), weights="random", progress=True)
    assert not killed.exists() and running.exists()
    assert f"removed {killed}" in capsys.readouterr().err
    assert sorted(p.name for p in reports.iterdir()) == sorted([running.name, res.run_dir.name])
    assert not (res.run_dir / "owner.json").exists() and (res.run_dir / "report.md").is_file()


# -- animefaces report: a hostile results.json is data, not markup or a licence to read files -------
H = "<script>alert(1)</script>\"'><img src=x onerror=alert(2)>[a](javascript:alert(3))"
_KEEP = {"status", "file", "data_root"}  # values the report branches on (kept to reach every section)


def _hostile(obj, key=None):
    if isinstance(obj, dict):
        return {k: _hostile(v, k) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_hostile(v, key) for v in obj]
    if isinstance(obj, str) and key not in _KEEP:
        return obj + H
    return obj


def _hostile_keys(d: dict) -> dict:
    return {k + H: v for k, v in d.items()}


@pytest.fixture
def hostile_run(trained, tmp_path):
    import csv as csvlib
    import shutil

    _, res = trained
    run = tmp_path / "run"
    shutil.copytree(res.run_dir, run)
    r = _hostile(json.loads((run / "results.json").read_text()))
    r["data"]["counts"] = _hostile_keys({k: _hostile_keys(v) for k, v in r["data"]["counts"].items()})
    r["backbones"] = _hostile_keys(r["backbones"])
    ood = r["trust"]["ood"]
    ood["false_flags"] = _hostile_keys(ood["false_flags"])
    for v in ood["false_flags"].values():
        v["flagged"], v["n"], v["rate"] = H, H, H
        v["by_reason"] = {H: 1}
        v["top_groups"] = {H: 2}
    ood["thresholds"]["colour"] = H
    r["trust"]["abstain"]["splits"] = _hostile_keys(r["trust"]["abstain"]["splits"])
    sel = next(f for f in r["fits"] if f["selected"] and f.get("calibration"))
    next(iter(sel["calibration"]["splits"].values()))["raw"]["ece"] = H
    r["footnotes"] = [H]
    r["bad_files"] = [{"path": f"/data/{H}.png", "reason": H}]
    (run / "results.json").write_text(json.dumps(r))
    # predictions.csv: hostile groups, and error rows whose image paths leave the data folder
    rows = list(csvlib.DictReader(open(run / "predictions.csv", newline="")))
    escapes = ["../../../../../../etc/passwd", "/etc/passwd", H]
    k = 0
    for row in rows:
        row["group"] = H
        if row["split"] == "val" and k < len(escapes):
            row["path"] = escapes[k]
            row["y"] = "0" if float(row["p"]) >= 0.5 else "1"  # a worst error: on the contact sheet
            k += 1
    with open(run / "predictions.csv", "w", newline="") as f:
        w = csvlib.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return run, r


def test_hostile_results_json_is_escaped_everywhere(hostile_run, monkeypatch):
    from animefaces.report import html as html_report

    run, results = hostile_run
    opened = []
    real_open = html_report.open_image

    def spy(path, **kw):
        opened.append(str(path))
        return real_open(path, **kw)

    monkeypatch.setattr(html_report, "open_image", spy)
    page = html_report.build_html(run)
    assert "<script" not in page.lower() and "<img src=x" not in page
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 10  # the values are shown, as text
    assert opened and not any("passwd" in p for p in opened)  # leaving the data folder: not read
    # report.md from the same document: no live HTML, no links
    from animefaces.report.tables import summary_markdown, table1_markdown, trust_markdown

    import re

    md = summary_markdown(results) + table1_markdown(results) + "\n".join(trust_markdown(results))
    # outside code spans (shown verbatim by every renderer), no "<" that starts a tag and no
    # "](" that makes a link: each is backslash-escaped
    text = re.sub(r"(`+)(?:(?!\1).)+?\1", "", md)
    assert re.search(r"(?<!\\)<[A-Za-z/!?]", text) is None  # how an HTML tag starts
    assert re.search(r"(?<!\\)\]\(", text) is None
    assert "\\<script\\>alert(1)" in md and f"`/data/{H}.png`" in md


@pytest.mark.parametrize("name", ["../../../../../../../../etc/passwd", "/etc/passwd", "sub/../../x.csv"])
def test_report_inputs_must_stay_inside_the_run_folder(hostile_run, name, capsys):
    from animefaces.cli import main

    run, results = hostile_run
    results["predictions"]["file"] = name
    (run / "results.json").write_text(json.dumps(results))
    assert main(["report", str(run), "-o", str(run / "r.html")]) == 2
    err = capsys.readouterr().err
    assert "predictions.file" in err and "points outside the run folder" in err and "Traceback" not in err
    assert not (run / "r.html").exists()


@pytest.mark.parametrize("content, match", [
    ("{", "not valid JSON"),
    ("[1, 2]", "not a results.json this version can read"),
    ('{"data": 5}', "not a results.json this version can read"),
    ('{"predictions": {"file": 7}}', r"predictions.file = 7; expected the name of a file"),
])
def test_malformed_results_json_is_named_not_a_traceback(tmp_path, content, match):
    from animefaces.report.html import build_html

    (tmp_path / "results.json").write_text(content)
    with pytest.raises(AnimeFacesError, match=match):
        build_html(tmp_path)


def test_malformed_predictions_csv_is_named(hostile_run):
    from animefaces.report.html import build_html

    run, _ = hostile_run
    (run / "predictions.csv").write_text("path,split,y,p,decision\na.png,val,notanumber,0.5,1\n")
    with pytest.raises(AnimeFacesError, match="predictions.csv: not a predictions.csv this version can read"):
        build_html(run)
