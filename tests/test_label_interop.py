"""Label Studio JSON and CSV out and back in, and the sweep-ready manifest (splits by group)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from animefaces.cli import main
from animefaces.data.datasets import load_dataset
from animefaces.errors import AnimeFacesError
from animefaces.label.interop import (LABEL_STUDIO_CONFIG, assign_splits, export_labels,
                                      import_labels, write_sweep_manifest)
from animefaces.label.store import LabelStore

from _labeldata import read_rows, unlabelled


@pytest.fixture
def labelled(tmp_path):
    """A manifest with the first 10 rows labelled (face / no_face alternating by truth)."""
    m, truth = unlabelled(tmp_path / "data")
    store = LabelStore(m)
    store.update({i: {"label": truth[store.rows[i]["path"]], "picked": "random"} for i in range(0, 60, 6)})
    return store, truth


def test_label_studio_export_carries_labels_and_sortable_scores(labelled, tmp_path):
    store, _ = labelled
    p = np.linspace(0.02, 0.98, len(store.rows))
    files = export_labels(store, tmp_path / "tasks.json", scores=p, model_version="m1")
    assert [f.name for f in files] == ["tasks.json", "tasks.config.xml"]
    assert files[1].read_text() == LABEL_STUDIO_CONFIG
    tasks = json.loads(files[0].read_text())
    assert len(tasks) == 60 and tasks[0]["id"] == 1
    t0 = tasks[0]
    assert t0["data"]["image"] == "/data/local-files/?d=" + store.rows[0]["path"]
    assert t0["data"]["path"] == store.rows[0]["path"] and t0["data"]["group"] == "g0"
    assert t0["annotations"][0]["result"][0]["value"]["choices"] == [store.rows[0]["label"]]
    assert "annotations" not in tasks[1]
    pred = tasks[1]["predictions"][0]
    assert pred["model_version"] == "m1" and pred["result"][0]["from_name"] == "label"
    # score = confidence in the answer: ascending order = most uncertain first
    conf = [t["predictions"][0]["score"] for t in tasks]
    mid = int(np.argmin(conf))
    assert abs(p[mid] - 0.5) == pytest.approx(np.min(np.abs(p - 0.5)), abs=1e-9)
    assert tasks[mid]["data"]["uncertainty"] == max(t["data"]["uncertainty"] for t in tasks)
    unscored = json.loads(export_labels(store, tmp_path / "bare.json")[0].read_text())
    assert "predictions" not in unscored[1] and "p_face" not in unscored[1]["data"]


def test_label_studio_round_trip(labelled, tmp_path):
    store, truth = labelled
    tasks = json.loads(export_labels(store, tmp_path / "tasks.json")[0].read_text())
    # What Label Studio's JSON export gives back after someone labelled in it: the task as
    # sent plus annotations with ids and times; one cancelled (skipped) annotation; a later
    # correction that must win; an image uploaded instead of referenced (renamed "<8 hex>-name").
    out = []
    for t in tasks[:20]:
        path = t["data"]["path"]
        t["annotations"] = [{"id": 7, "created_at": "2026-01-01T10:00:00Z", "was_cancelled": False,
                             "result": [{"from_name": "label", "to_name": "image", "type": "choices",
                                         "value": {"choices": [truth[path]]}}]}]
        out.append(t)
    wrong = "no_face" if truth[tasks[1]["data"]["path"]] == "face" else "face"
    out[1]["annotations"].insert(0, {"id": 3, "created_at": "2026-01-01T09:00:00Z",
                                     "result": [{"type": "choices", "value": {"choices": [wrong]}}]})
    out[2]["annotations"][0]["was_cancelled"] = True
    uploaded = dict(out[3], data={"image": "/data/upload/1/0a1b2c3d-" + tasks[3]["data"]["path"].split("/")[-1]})
    out[3] = uploaded
    out.append({"id": 999, "data": {"image": "/data/upload/1/deadbeef-nothere.png"},
                "annotations": [{"result": [{"value": {"choices": ["face"]}}]}]})
    src = tmp_path / "export.json"
    src.write_text(json.dumps(out))
    rep = import_labels(store, src)
    assert rep["read"] == 20 and rep["matched"] == 19 and rep["unmatched"] == ["/data/upload/1/deadbeef-nothere.png"]
    assert rep["new"] == 15 and rep["same"] == 4 and rep["changed"] == []  # rows 0, 6, 12, 18 had it
    rows = read_rows(store.path)
    assert rows[2]["label"] == ""                       # the cancelled one is not a label
    assert all(rows[i]["label"] == truth[rows[i]["path"]] for i in range(20) if i != 2)
    assert rows[1]["picked"] == "import"


def test_csv_round_trip_and_keep_existing(labelled, tmp_path):
    store, truth = labelled
    export_labels(store, tmp_path / "labels.csv", scores=np.full(60, 0.25))
    rows = read_rows(tmp_path / "labels.csv")
    assert list(rows[0]) == ["path", "label", "split", "group", "picked", "labelled_at", "p_face"]
    assert rows[0]["p_face"] == "0.2500" and rows[0]["label"] == truth[rows[0]["path"]]
    # edit in a spreadsheet: label two more, flip one that was labelled
    flipped = "no_face" if rows[0]["label"] == "face" else "face"
    rows[0]["label"], rows[1]["label"], rows[2]["label"] = flipped, "face", "Unsure"
    import csv

    with open(tmp_path / "edited.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    kept = import_labels(store, tmp_path / "edited.csv", keep_existing=True)
    assert kept["kept"] == 1 and kept["new"] == 2 and store.labels()[0] == truth[store.rows[0]["path"]]
    rep = import_labels(store, tmp_path / "edited.csv")
    assert rep["changed"] == [(store.rows[0]["path"], truth[store.rows[0]["path"]], flipped)]
    assert store.labels()[:3] == [flipped, "face", "unsure"]
    (tmp_path / "bad.csv").write_text("file,label\nx.png,face\n")
    with pytest.raises(AnimeFacesError, match="path,label"):
        import_labels(store, tmp_path / "bad.csv")


def test_import_command_is_refused_while_a_page_has_the_manifest(labelled, tmp_path, capsys):
    store, _ = labelled
    export_labels(store, tmp_path / "labels.csv")
    page = LabelStore(store.path)
    page.acquire(owner="serving http://127.0.0.1:9/")
    try:
        assert main(["label-import", str(store.path), str(tmp_path / "labels.csv")]) == 2
        assert "already open for labelling" in capsys.readouterr().err
    finally:
        page.release()
    assert main(["label-import", str(store.path), str(tmp_path / "labels.csv")]) == 0
    assert "10 labels read, 10 matched a frame: 0 new" in capsys.readouterr().out


def test_sweep_manifest_splits_by_group_and_loads_as_a_dataset(tmp_path, capsys):
    m, truth = unlabelled(tmp_path / "data")
    store = LabelStore(m)
    store.update({i: {"label": truth[r["path"]]} for i, r in enumerate(store.rows)})
    store.set_label(5, "unsure")
    out, how, n = write_sweep_manifest(store)
    assert out.name == "manifest.labelled.csv" and n == 59 and how.startswith("by group")
    ds = load_dataset(out, require_splits=True)
    by_split = {s: {r.group for r in ds.split(s)} for s in ("train", "val", "test")}
    assert all(by_split.values())
    assert not (by_split["train"] & (by_split["val"] | by_split["test"]))  # whole groups
    assert main(["label-sweep", str(m), "--no-run"]) == 0
    assert "next: animefaces sweep --data" in capsys.readouterr().out


def test_splits_fall_back_to_stratified_rows_and_keep_good_own_splits():
    rows = [{"label": lb, "group": "ep1"} for lb in ["face", "no_face"] * 10]
    splits, how = assign_splits(rows)
    assert how.startswith("stratified") and "fewer than 3 groups" in how
    assert {s: splits.count(s) for s in set(splits)} == {"train": 12, "val": 4, "test": 4}
    own = [dict(r, split=s) for r, s in zip(rows, splits)]
    assert assign_splits(own) == (splits, "the manifest's own splits")


def test_sweep_manifest_needs_both_classes(tmp_path):
    m, truth = unlabelled(tmp_path / "data")
    store = LabelStore(m)
    store.update({0: {"label": "face"}, 1: {"label": "face"}})
    with pytest.raises(AnimeFacesError, match="2 face and 0 no_face labels"):
        write_sweep_manifest(store)
