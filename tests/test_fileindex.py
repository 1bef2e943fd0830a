"""Remembered file hashes: a cached run does not read unchanged images again, and any change
to a file (rewrite, replacement, a new file under the same name) is seen."""

import os
import shutil

import numpy as np
import pytest

from animefaces import _io
from animefaces.features import fileindex
from animefaces.features.dataset import extract_dataset
from animefaces.features.fileindex import INDEX_NAME, HashIndex, RealPaths

from conftest import face_image


@pytest.fixture
def not_racy(monkeypatch):
    # Test files are seconds old; the racy window would keep every hash from being remembered.
    monkeypatch.setattr(fileindex, "RACY_SECONDS", 0.0)


def _extract(data, cache_dir):
    return extract_dataset(data, backbone="tiny", weights="random", cache_dir=cache_dir,
                           progress=False)


def _count_hashes(monkeypatch):
    calls = []
    real = _io.sha256_file

    def counting(path):
        calls.append(os.path.basename(path))
        return real(path)

    monkeypatch.setattr(_io, "sha256_file", counting)
    return calls


def test_second_run_reads_no_unchanged_file(tmp_path, tiny_dataset, not_racy, monkeypatch):
    first = _extract(tiny_dataset, tmp_path / "feat")
    assert (tmp_path / "feat" / INDEX_NAME).is_file()
    calls = _count_hashes(monkeypatch)
    again = _extract(tiny_dataset, tmp_path / "feat")
    assert calls == [] and again.computed == 0
    assert np.array_equal(again.X, first.X)


def test_changed_replaced_and_new_files_are_hashed_again(tmp_path, tiny_dataset, not_racy,
                                                          monkeypatch):
    _extract(tiny_dataset, tmp_path / "feat")
    imgs = sorted((tiny_dataset.parent / "images").glob("*.png"))
    st = imgs[0].stat()
    # Same size and mtime, other bytes: the inode / change time still differ.
    data = bytearray(imgs[0].read_bytes())
    data[-20] ^= 0xFF
    imgs[0].write_bytes(bytes(data))
    os.utime(imgs[0], ns=(st.st_atime_ns, st.st_mtime_ns))
    # Replaced by another image through a rename (a new inode), mtime copied from the old one.
    face_image(np.random.default_rng(7)).save(tmp_path / "new.png")
    shutil.copystat(imgs[1], tmp_path / "new.png")
    os.replace(tmp_path / "new.png", imgs[1])
    calls = _count_hashes(monkeypatch)
    feats = extract_dataset(tiny_dataset, backbone="tiny", weights="random",
                            cache_dir=tmp_path / "feat", progress=False, skip_bad=True)
    assert sorted(calls) == sorted([imgs[0].name, imgs[1].name])
    assert feats.computed == 1 + (0 if feats.bad else 1)  # imgs[0] may now be corrupt


def test_recent_files_are_not_remembered(tmp_path, tiny_dataset):
    _extract(tiny_dataset, tmp_path / "feat")  # the files were written just now
    assert not (tmp_path / "feat" / INDEX_NAME).exists()


def test_damaged_index_is_rebuilt(tmp_path, tiny_dataset, not_racy, monkeypatch):
    _extract(tiny_dataset, tmp_path / "feat")
    (tmp_path / "feat" / INDEX_NAME).write_bytes(b"not an npz")
    again = _extract(tiny_dataset, tmp_path / "feat")
    assert again.computed == 0
    assert HashIndex(tmp_path / "feat").get("x") is None  # loads (rebuilt) without error
    calls = _count_hashes(monkeypatch)
    _extract(tiny_dataset, tmp_path / "feat")
    assert calls == []


def test_index_drops_stale_entries_of_a_changed_file(tmp_path):
    idx = HashIndex(tmp_path)
    idx.put("/a.png|1|2|3|4", "h1")
    idx.put("/b.png|1|2|3|4", "h2")
    idx.save()
    idx = HashIndex(tmp_path)
    idx.put("/a.png|9|9|9|9", "h3")  # a.png changed
    idx.save(keep={"/a.png|9|9|9|9"})
    idx = HashIndex(tmp_path)
    assert idx.get("/a.png|1|2|3|4") is None and idx.get("/a.png|9|9|9|9") == "h3"
    assert idx.get("/b.png|1|2|3|4") == "h2"  # not part of this run: kept


def test_real_paths_follow_folder_and_file_links(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.png").write_bytes(b"x")
    os.symlink(tmp_path / "data", tmp_path / "link")
    os.symlink(tmp_path / "data" / "a.png", tmp_path / "data" / "b.png")
    real = RealPaths()
    want = os.path.realpath(tmp_path / "data" / "a.png")
    assert real(tmp_path / "link" / "a.png") == want
    assert real(tmp_path / "link" / "b.png") == want
    assert real(tmp_path / "data" / "a.png") == want


@pytest.mark.parametrize("arrays", [
    {"keys": np.array(["/a|1|2|3|4"]), "digests": np.array(["ab"])},  # str arrays, not bytes
    {"keys": np.array([b"/a|1|2|3|4", b"/b|1|2|3|4"]), "digests": np.array([b"ab"])},
    {"other": np.zeros(3)},
])
def test_foreign_index_contents_are_ignored(tmp_path, arrays):
    np.savez(tmp_path / INDEX_NAME, **arrays)
    idx = HashIndex(tmp_path)
    assert idx.get("/a|1|2|3|4") is None and idx.get("/b|1|2|3|4") is None
    idx.put("/c|1|2|3|4", "cd")
    idx.save()
    assert HashIndex(tmp_path).get("/c|1|2|3|4") == "cd"


def test_entries_of_deleted_files_are_pruned_when_the_index_grows(tmp_path, monkeypatch):
    monkeypatch.setattr(fileindex, "PRUNE_SLACK", 2)
    live = tmp_path / "live.png"
    live.write_bytes(b"x")
    idx = HashIndex(tmp_path)
    for i in range(6):  # files of earlier runs, since deleted
        idx.put(f"{tmp_path}/gone-{i}.png|1|2|3|4", "h")
    idx.put(f"{tmp_path}/other.png|1|2|3|4", "h")  # not in this run, not deleted
    (tmp_path / "other.png").write_bytes(b"y")
    idx.put(f"{live}|1|2|3|4", "h")
    idx.save(keep={f"{live}|1|2|3|4"})
    idx = HashIndex(tmp_path)
    assert idx.get(f"{tmp_path}/gone-0.png|1|2|3|4") is None
    assert idx.get(f"{tmp_path}/other.png|1|2|3|4") == "h" and idx.get(f"{live}|1|2|3|4") == "h"
