"""Manifest and folder-tree reading, with a clear error for each kind of malformed input."""

import shutil

import pytest
from PIL import Image

from animefaces.data.datasets import load_dataset, records_from_paths
from animefaces.errors import DatasetError


def write_csv(path, text):
    path.write_text(text)
    return path


@pytest.fixture
def imgdir(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    for n in ("a", "b", "c", "e"):
        Image.new("RGB", (8, 8)).save(d / f"{n}.png")
    return d


def test_reads_manifest_relative_to_csv(tiny_dataset):
    ds = load_dataset(tiny_dataset)
    assert ds.splits == ["train", "val", "test", "distinct"]
    assert ds.counts()["train"] == {"face": 12, "no_face": 12}
    assert all(r.path.is_file() for r in ds.records)
    assert load_dataset(tiny_dataset.parent).source == str(tiny_dataset)  # folder with manifest.csv


@pytest.mark.parametrize("body, match", [
    ("path,label,split\na.png,cat,train\n", r"unknown label\(s\) line 2: 'cat'.*face, no_face"),
    ("path,label,split\nmissing.png,face,train\n", r"1 file\(s\) not found: line 2"),
    ("path,label,split\na.png,face,train\na.png,no_face,train\n", "duplicate path.*line 3 repeats line 2"),
    ("path,label,split\na.png,face,train\nb.png,face,train\n", "split 'train' has no no_face images"),
    ("path,label,split\na.png,face,training\n", "unknown split.*'training'"),
    ("file,label\na.png,face\n", "missing column.*path"),
    ("path,label,split\n", "no rows"),
])
def test_manifest_errors_name_the_row(imgdir, body, match):
    with pytest.raises(DatasetError, match=match):
        load_dataset(write_csv(imgdir / "m.csv", body))


def test_folder_tree_with_and_without_splits(tmp_path):
    for split in ("train", "val"):
        for label in ("face", "no_face"):
            (tmp_path / "t" / split / label).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(tmp_path / "t" / split / label / "x.png")
    ds = load_dataset(tmp_path / "t")
    assert ds.layout == "folders" and ds.splits == ["train", "val"] and len(ds.records) == 4

    flat = tmp_path / "flat"
    for label in ("face", "no_face"):
        (flat / label).mkdir(parents=True)
        for i in range(10):
            Image.new("RGB", (8, 8), (i, 0, 0)).save(flat / label / f"{i}.png")
    ds2 = load_dataset(flat, require_splits=True, seed=3)
    assert ds2.splits == ["train", "val", "test"]
    assert ds2.counts()["train"] == {"face": 6, "no_face": 6}
    assert "60/20/20" in ds2.notes[0]
    assert [r.split for r in load_dataset(flat, require_splits=True, seed=3).records] == \
        [r.split for r in ds2.records]  # deterministic


def test_folder_tree_errors(tmp_path):
    (tmp_path / "x" / "train" / "face").mkdir(parents=True)
    (tmp_path / "x" / "train" / "no_face").mkdir(parents=True)
    with pytest.raises(DatasetError, match="empty split"):
        load_dataset(tmp_path / "x")
    (tmp_path / "y" / "faces").mkdir(parents=True)
    with pytest.raises(DatasetError, match="unknown class folder.*faces"):
        load_dataset(tmp_path / "y")
    with pytest.raises(DatasetError, match="no such file or folder"):
        load_dataset(tmp_path / "nowhere")


def test_records_from_paths(imgdir, tmp_path):
    (imgdir / "notes.txt").write_text("x")
    paths = records_from_paths([imgdir])
    assert [p.name for p in paths] == ["a.png", "b.png", "c.png", "e.png"]
    with pytest.raises(DatasetError, match="no such file"):
        records_from_paths([tmp_path / "nope"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="no image files"):
        records_from_paths([empty])
