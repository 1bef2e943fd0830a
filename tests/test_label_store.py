"""The labelling manifest store: every label on disk at once, nothing half-written, a second
writer refused (session lock and version stamp)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from animefaces.errors import AnimeFacesError
from animefaces.label.store import LabelStore, ManifestBusy, ManifestChanged, resolve_manifest

from _labeldata import read_rows, unlabelled


@pytest.fixture
def manifest(tmp_path):
    return unlabelled(tmp_path / "data")[0]


def test_each_label_is_on_disk_at_once_with_other_columns_kept(manifest):
    store = LabelStore(manifest)
    v0 = store.version
    old = store.set_label(3, "face", picked="uncertain")
    assert old == {"label": "", "picked": "", "labelled_at": ""}
    assert store.version != v0
    rows = read_rows(manifest)
    assert rows[3]["label"] == "face" and rows[3]["picked"] == "uncertain"
    assert rows[3]["labelled_at"].endswith("Z") and rows[3]["frame_index"] == "3"
    assert list(rows[0]) == ["path", "label", "split", "group", "frame_index", "picked", "labelled_at"]
    store.set_label(4, "unsure", picked="random")
    again = LabelStore(manifest)
    assert again.labels()[3:5] == ["face", "unsure"] and again.version == store.version
    assert again.progress()["all"] == {"total": 60, "labelled": 2, "face": 1, "no_face": 0,
                                       "unsure": 1}
    store.set_label(3, "")  # cleared
    assert read_rows(manifest)[3]["label"] == "" and read_rows(manifest)[3]["picked"] == ""


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(manifest, monkeypatch):
    store = LabelStore(manifest)
    store.set_label(0, "face")
    before = manifest.read_bytes()

    def boom(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(AnimeFacesError, match="unchanged"):
        store.set_label(1, "no_face")
    monkeypatch.undo()
    assert manifest.read_bytes() == before
    assert [p.name for p in manifest.parent.iterdir() if p.name.endswith(".tmp")] == []
    assert store.labels()[:2] == ["face", ""]  # the store did not pretend it was saved


def test_a_change_made_elsewhere_is_never_overwritten(manifest):
    store = LabelStore(manifest)
    store.set_label(0, "face")
    other = LabelStore(manifest)        # e.g. an editor, or `animefaces frames` run again
    other.set_label(1, "no_face")
    theirs = manifest.read_bytes()
    with pytest.raises(ManifestChanged, match="changed on disk by another program"):
        store.set_label(2, "face")
    assert manifest.read_bytes() == theirs
    # A page that saw an older version is refused too (two tabs on one server).
    fresh = LabelStore(manifest)
    with pytest.raises(ManifestChanged, match="another page"):
        fresh.set_label(2, "face", expect=store.version)
    fresh.set_label(2, "face", expect=fresh.version)


def test_a_second_labeller_is_refused_and_a_killed_one_does_not_block(manifest):
    a, b = LabelStore(manifest), LabelStore(manifest)
    a.acquire(owner="serving http://127.0.0.1:1/")
    with pytest.raises(ManifestBusy, match=rf"already open for labelling \(pid {os.getpid()}, "
                                           r"serving http://127.0.0.1:1/\)"):
        b.acquire(owner="second")
    a.release()
    b.acquire(owner="second")
    b.release()
    # A process that holds the lock and dies by SIGKILL: the kernel drops its flock.
    code = ("import sys, time; from animefaces.label.store import LabelStore; "
            f"s = LabelStore({str(manifest)!r}); s.acquire(owner='child'); print('held', flush=True); "
            "time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(ManifestBusy, match="child"):
            a.acquire(owner="again")
        child.kill()
        child.wait(10)
        t_end = time.monotonic() + 5
        while True:
            try:
                a.acquire(owner="after the crash")
                break
            except ManifestBusy:
                assert time.monotonic() < t_end
                time.sleep(0.05)
        a.release()
    finally:
        child.kill()
        child.stdout.close()


def test_bad_manifests_are_errors_that_say_what(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text("path,label\na.png,cat\n")
    with pytest.raises(AnimeFacesError, match="'cat'.*face, no_face, unsure"):
        LabelStore(m)
    m.write_text("path,label\n../x.png,\n")
    with pytest.raises(AnimeFacesError, match="outside the manifest's folder"):
        LabelStore(m)
    assert LabelStore(m, allow_outside=True).rows[0]["path"] == "../x.png"
    m.write_text("path,label\na.png,\n./a.png,face\n")
    with pytest.raises(AnimeFacesError, match="duplicate"):
        LabelStore(m)
    m.write_text("file,label\na.png,\n")
    with pytest.raises(AnimeFacesError, match="no 'path' column"):
        LabelStore(m)


def test_an_image_folder_gets_a_manifest(tmp_path, rng):
    from conftest import face_image, noface_image

    for rel in ("ep1/a.png", "ep1/b.jpg", "ep2/c.png", "train/face/d.png", "train/no_face/e.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (face_image if "face/" in rel and "no_" not in rel else noface_image)(rng).save(tmp_path / rel)
    (tmp_path / "notes.txt").write_text("not an image")
    m = resolve_manifest(tmp_path)
    assert m == tmp_path / "manifest.csv"
    rows = {r["path"]: r for r in read_rows(m)}
    assert sorted(rows) == ["ep1/a.png", "ep1/b.jpg", "ep2/c.png", "train/face/d.png",
                            "train/no_face/e.png"]
    assert (rows["ep1/a.png"]["group"], rows["ep1/a.png"]["label"]) == ("ep1", "")
    assert (rows["train/face/d.png"]["label"], rows["train/face/d.png"]["split"]) == ("face", "train")
    assert rows["train/no_face/e.png"]["picked"] == "folder"
    assert resolve_manifest(tmp_path) == m  # found, not written again
    (tmp_path / "empty").mkdir()
    with pytest.raises(AnimeFacesError, match="no manifest.csv and no image files"):
        resolve_manifest(tmp_path / "empty")
