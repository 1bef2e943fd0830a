"""Shared fixtures: synthetic images and datasets (the real shared data is read by path only)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
MINI = SHARED / "data" / "animefaces-mini"


@pytest.fixture(autouse=True)
def _offline_and_isolated(monkeypatch, tmp_path_factory):
    # Never reach for the network, and never read a user's real torch cache.
    monkeypatch.setenv("ANIMEFACES_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.getbasetemp() / "torch_home"))


def face_image(rng: np.random.Generator, size=96) -> Image.Image:
    """A cartoon 'face': a skin ellipse with two dark eyes and a mouth on a random background."""
    bg = tuple(int(v) for v in rng.integers(0, 255, 3))
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    m = int(size * rng.uniform(0.05, 0.15))
    d.ellipse([m, m, size - m, size - m], fill=(250, 220, 190))
    ey = int(size * 0.42)
    r = max(3, size // 10)
    for ex in (int(size * 0.35), int(size * 0.65)):
        d.ellipse([ex - r, ey - r, ex + r, ey + r], fill=(30, 30, 120))
    d.line([int(size * 0.4), int(size * 0.7), int(size * 0.6), int(size * 0.7)], fill=(150, 40, 40), width=2)
    return img


def noface_image(rng: np.random.Generator, size=96) -> Image.Image:
    """Background-like content: stripes and blocks of random colours."""
    arr = np.zeros((size, size, 3), np.uint8)
    arr[:] = rng.integers(0, 255, 3)
    for _ in range(4):
        x0, y0 = rng.integers(0, size, 2)
        arr[y0:y0 + size // 3, x0:x0 + size // 4] = rng.integers(0, 255, 3)
    if rng.random() < 0.5:
        arr[:, ::8] = rng.integers(0, 255, 3)
    return Image.fromarray(arr)


def make_dataset(root: Path, n_per_class=(12, 6, 6, 6), *, seed=0, fmt="png") -> Path:
    """A manifest dataset with train/val/test/distinct splits; returns the CSV path."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for split, n in zip(("train", "val", "test", "distinct"), n_per_class):
        for label, maker in (("face", face_image), ("no_face", noface_image)):
            for i in range(n):
                name = f"images/{split}-{label}-{i}.{fmt}"
                maker(rng).save(root / name)
                rows.append({"path": name, "label": label, "split": split, "group": f"g{i % 3}"})
    csv_path = root / "manifest.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "split", "group"])
        w.writeheader()
        w.writerows(rows)
    return csv_path


@pytest.fixture
def tiny_dataset(tmp_path) -> Path:
    return make_dataset(tmp_path / "data")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def tiny_config(tmp_path: Path) -> Path:
    """A small, fast sweep config for the tiny backbone."""
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(f'''
[features]
backbones = ["tiny"]
cache_dir = "{(tmp_path / 'features').as_posix()}"
[svm]
scaling = "l2"
n_jobs = 1
[[svm.grid]]
kernel = "rbf"
C = [1.0]
[[svm.grid]]
kernel = "linear"
C = [1.0]
[[svm.grid]]
kernel = "poly"
degree = [2, 3]
coef0 = [1.0]
[output]
reports_dir = "{(tmp_path / 'reports').as_posix()}"
models_dir = "{(tmp_path / 'models').as_posix()}"
''')
    return cfg


@pytest.fixture(scope="session")
def real_sweep(tmp_path_factory):
    """The default sweep on the shared mini set (real MobileNetV2 weights). Features go to the
    repo's features/ cache (a developer's second run is quick); reports and models to a temp
    folder. Shared by every slow test that needs a real trained model."""
    from animefaces.train.sweep import run_sweep

    assert MINI.is_dir(), f"the shared data is missing: expected {MINI}"
    out = tmp_path_factory.mktemp("real")
    return run_sweep(MINI, out_dir=out / "reports", models_dir=out / "models", progress=False)
