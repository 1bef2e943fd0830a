"""Answers for anime never seen (issue 14): group cross-validation, calibration and the abstain
band on held-out groups, evaluation-only splits, --train-also, and the out-of-domain guard's
feature-subspace and grayscale-photo tests."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import animefaces
from animefaces.classify.calibration import apply_band, choose_risk_band
from animefaces.classify.groupcv import cross_validate_grid, group_folds
from animefaces.classify.ood import OODGuard
from animefaces.data.datasets import load_dataset, with_extra_training
from animefaces.errors import DatasetError
from animefaces.train.sweep import run_sweep

from conftest import face_image, make_dataset, noface_image, tiny_config


# -- folds by group ---------------------------------------------------------------------------------
def test_group_folds_hold_out_whole_groups_with_both_classes_to_train_on():
    rng = np.random.default_rng(0)
    groups = np.repeat([f"s{i}" for i in range(8)], 10)
    y = rng.integers(0, 2, len(groups))
    gf = group_folds(y, groups, n_folds=4, seed=0)
    assert gf.method == "StratifiedGroupKFold" and len(gf.folds) == 4
    seen = np.zeros(len(y), int)
    for tr, te in gf.folds:
        assert not set(groups[tr]) & set(groups[te])  # a group is never on both sides
        assert set(y[tr]) == {0, 1}
        seen[te] += 1
    assert (seen == 1).all()  # every image is held out exactly once


def test_group_folds_fall_back_to_val_with_fewer_than_three_groups():
    y = np.array([0, 1] * 10)
    gf = group_folds(y, ["a"] * 10 + ["b"] * 10)
    assert gf.folds is None and "fewer than 3" in gf.note and "val split" in gf.note
    # Images without a group stand for themselves, and the note says that part is not by series.
    gf = group_folds(y, ["a"] * 6 + ["b"] * 6 + ["c"] * 4 + [None] * 4, n_folds=3)
    assert gf.folds is not None and gf.n_ungrouped == 4 and "without a group" in gf.note


def test_group_folds_refuse_folds_that_leave_a_class_out_of_training():
    # One group holds every face: holding it out leaves no face to train on.
    y = np.array([1] * 10 + [0] * 20)
    groups = ["faces"] * 10 + ["x"] * 10 + ["z"] * 10
    gf = group_folds(y, groups, n_folds=3)
    assert gf.folds is None and "both classes" in gf.note


def test_cross_validated_decisions_come_from_models_without_the_group():
    from animefaces.classify.svm import fit_grid

    rng = np.random.default_rng(1)
    X = rng.normal(size=(60, 8)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    groups = np.repeat(["a", "b", "c", "d"], 15)
    gf = group_folds(y, groups, n_folds=4)
    rows = [("rbf", {"kernel": "rbf"}, [{"kernel": "rbf", "C": 1.0}]),
            ("linear", {"kernel": "linear"}, [{"kernel": "linear", "C": 1.0}])]
    cv = cross_validate_grid(X, y, gf.folds, rows, n_jobs=1)
    assert [c.row for c in cv] == ["rbf", "linear"]
    tr, te = gf.folds[0]
    own = fit_grid({"train": X[tr], "heldout": X[te]}, {"train": y[tr], "heldout": y[te]}, rows[:1],
                   n_jobs=1)[0]
    np.testing.assert_allclose(cv[0].decision[te], own.decision["heldout"])
    assert cv[1].accuracy == pytest.approx(np.mean((cv[1].decision > 0) == (y == 1)))


# -- the abstain band from held-out-group risk ------------------------------------------------------
def test_risk_band_answers_the_most_within_the_error_rate():
    rng = np.random.default_rng(2)
    p = rng.uniform(0, 1, 2000)
    y = (rng.random(2000) < p).astype(int)  # calibrated: errors where p is near 0.5
    (lo, hi), how = choose_risk_band(p, y, max_risk=0.05)
    assert lo == pytest.approx(1 - hi) and 0.5 < hi < 1
    lab = apply_band(p, (lo, hi))
    ans = lab >= 0
    assert np.mean(lab[ans] != y[ans]) <= 0.05
    # one step wider would go over the limit
    conf = np.maximum(p, 1 - p)
    nxt = np.sort(conf[conf < hi])[-1]
    lab2 = apply_band(p, (1 - nxt, nxt))
    assert np.mean(lab2[lab2 >= 0] != y[lab2 >= 0]) > 0.05
    assert "error rate" in how
    # Nothing to abstain on when answering everything is within the limit.
    assert choose_risk_band(np.r_[np.full(50, 0.9), np.full(50, 0.1)], np.r_[np.ones(50), np.zeros(50)],
                            max_risk=0.02)[0] == (0.5, 0.5)
    with pytest.raises(ValueError, match="abstain risk"):
        choose_risk_band(p, y, max_risk=0.6)


# -- data sets: evaluation-only splits, groups of folder trees, --train-also ----------------------------
def _manifest(path: Path, rows) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split", "group"])
        w.writerows(rows)
    return path


def test_extra_split_names_are_evaluation_only_and_typos_are_refused(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i, split in enumerate(["train", "train", "val", "val", "episodes", "episodes"]):
        name = f"{i}.png"
        (face_image if i % 2 else noface_image)(rng).save(tmp_path / name)
        rows.append([name, "face" if i % 2 else "no_face", split, f"g{i}"])
    ds = load_dataset(_manifest(tmp_path / "m.csv", rows))
    assert ds.splits == ["train", "val", "episodes"] and ds.extra_splits == ["episodes"]
    assert any("evaluation-only" in n and "episodes" in n for n in ds.notes)
    rows[4][2] = rows[5][2] = "Training"
    with pytest.raises(DatasetError, match="did you mean 'train'"):
        load_dataset(_manifest(tmp_path / "m2.csv", rows))
    rows[4][2] = rows[5][2] = "a b/../c"
    with pytest.raises(DatasetError, match="unknown split"):
        load_dataset(_manifest(tmp_path / "m3.csv", rows))


def test_folder_tree_groups_are_sub_folders_or_source_videos(tmp_path):
    rng = np.random.default_rng(0)
    for rel, maker in (("face/seriesA/1.png", face_image), ("no_face/seriesA/2.png", noface_image),
                       ("face/ep01-sec-12.png", face_image), ("no_face/loose.png", noface_image)):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        maker(rng).save(tmp_path / rel)
    groups = {r.path.name: r.group for r in load_dataset(tmp_path).records}
    assert groups == {"1.png": "seriesA", "2.png": "seriesA", "ep01-sec-12.png": "ep01",
                      "loose.png": None}


def test_train_also_joins_train_and_keeps_unseen_groups_unseen(tmp_path):
    main = make_dataset(tmp_path / "main")  # groups g0..g2 in every split, distinct included
    rng = np.random.default_rng(5)
    rows = []
    for i in range(8):
        name = f"e{i}.png"
        (face_image if i % 2 else noface_image)(rng).save(tmp_path / name)
        rows.append([name, "face" if i % 2 else "no_face", "episodes", "g0" if i < 2 else f"s{i % 3}"])
    extra = load_dataset(_manifest(tmp_path / "extra.csv", rows))
    ds, added = with_extra_training(load_dataset(main), [extra])
    # g0 is in main's distinct split: its 2 images stay out, the 6 others join train
    assert len(added[extra.source]) == 6
    assert sum(r.split == "train" for r in ds.records) == 24 + 6
    assert any("2 left out" in n for n in ds.notes)
    with pytest.raises(DatasetError, match="already in"):
        with_extra_training(ds, [load_dataset(main)])


# -- the sweep on held-out groups -------------------------------------------------------------------------
def test_sweep_chooses_and_calibrates_on_held_out_groups(tmp_path, tiny_dataset):
    res = run_sweep(tiny_dataset, config=tiny_config(tmp_path), weights="random", progress=False)
    r = json.loads((res.run_dir / "results.json").read_text())
    assert r["selected_on"] == "cv" and r["group_cv"]["used"] and r["group_cv"]["n_groups"] == 3
    assert all("cv" in f["accuracy"] for f in r["fits"])
    cal = r["trust"]["calibration"]
    assert cal["fitted_on"] == "cv" and cal["splits"]["cv"]["calibrated_is"] == "out-of-fold"
    assert "cv" in r["trust"]["abstain"]["risk_coverage"] and "held-out groups" in r["trust"]["abstain"]["how"]
    assert "cv" in r["trust"]["ood"]["false_flags"]
    md = (res.run_dir / "report.md").read_text()
    assert "| new groups (CV) |" in md.splitlines()[md.splitlines().index(
        next(ln for ln in md.splitlines() if ln.startswith("| backbone | kernel | params")))]
    assert "chosen on held-out groups" in md and "Risk-coverage of held-out groups" in md
    with open(res.run_dir / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    pool = [x for x in rows if x["split"] in ("train", "val")]
    assert pool and all(x["cv_p"] != "" for x in pool)
    assert all(x["cv_p"] == "" for x in rows if x["split"] in ("test", "distinct"))
    meta = animefaces.FaceClassifier.load(res.best_model, weights="random").model.meta
    assert meta["selected_on"] == "cv"


def test_sweep_falls_back_to_val_with_too_few_groups_and_says_so(tmp_path):
    csv_path = make_dataset(tmp_path / "data")
    text = csv_path.read_text().replace(",g2\n", ",g1\n")  # two groups left
    csv_path.write_text(text)
    res = run_sweep(csv_path, config=tiny_config(tmp_path), weights="random", progress=False)
    assert res.results["selected_on"] == "val" and not res.results["group_cv"]["used"]
    md = (res.run_dir / "report.md").read_text()
    assert "fewer than 3" in md and "(fallback)" in md and "chosen on val" in md
    assert "new groups (CV)" not in md.split("## Table 2")[0]


def test_sweep_reports_evaluation_only_splits_and_train_also_per_data_set(tmp_path):
    main = make_dataset(tmp_path / "main", n_per_class=(12, 6, 6, 0))
    text = main.read_text().replace(",test,", ",episodes,")
    main.write_text(text)
    extra = make_dataset(tmp_path / "extra", n_per_class=(6, 3, 0, 0), seed=9)
    extra.write_text(extra.read_text().replace(",g", ",x"))  # other series
    res = run_sweep(main, config=tiny_config(tmp_path), weights="random", progress=False,
                    train_also=[extra])
    r = res.results
    best_acc = r["best"]["accuracy"]
    assert "episodes" in best_acc and "test" not in best_acc
    md = (res.run_dir / "report.md").read_text()
    assert "Table 2 (episodes)" in md and "evaluation-only" in md
    per = r["trust"]["cv_by_source"]
    assert set(per) == {str(main), str(extra)} and per[str(extra)]["n"] == 18
    assert "Held-out groups by data set" in md


# -- the out-of-domain guard ---------------------------------------------------------------------------------
def _clustered(rng, n, d=32, k=3):
    """Features that vary along the same ``k`` directions only (plus a little noise)."""
    basis = np.linalg.qr(np.random.default_rng(99).normal(size=(d, k)))[0].T
    return (rng.normal(size=(n, k)) * 3) @ basis + 5 * basis[0] + 0.05 * rng.normal(size=(n, d))


def _stats(n, gray=False):
    from animefaces.classify.ood import image_stats

    img = face_image(np.random.default_rng(4), 96)
    s = image_stats(img.convert("L").convert("RGB") if gray else img)
    return np.tile(s, (n, 1))


def test_subspace_test_flags_features_off_the_main_directions_only():
    rng = np.random.default_rng(0)
    X = _clustered(rng, 200)
    groups = np.repeat([f"g{i}" for i in range(10)], 20)
    guard = OODGuard(subspace=3, quantile=1.0).fit(X, groups_train=groups, stats_train=_stats(200))
    assert guard.subspace_components.shape == (3, 32) and "residual" in guard.thresholds
    inside = _clustered(np.random.default_rng(1), 5)
    off = inside + 0.6 * np.linalg.norm(inside, axis=1, keepdims=True) * np.eye(32)[-1]
    flagged, reasons, _ = guard.flags(np.r_[inside, off], _stats(10))
    assert not flagged[:5].any(), reasons[:5]
    assert all(r.startswith("outside the anime subspace") for r in reasons[5:]), reasons[5:]
    # leave-group-out flags of the reference itself stay rare (the quantile), and are measured
    ref_flag, _, _ = guard.reference_flags(_stats(200))
    assert ref_flag.mean() <= 0.02
    # saved and loaded (arrays to the npz side), it decides the same
    again = OODGuard.from_dict(guard.to_dict())
    assert again.flags(np.r_[inside, off], _stats(10))[1] == reasons
    assert "subspace_components" not in guard.describe()


def test_grayscale_photo_needs_both_grayscale_and_feature_distance():
    rng = np.random.default_rng(0)
    X = _clustered(rng, 200)
    groups = np.repeat([f"g{i}" for i in range(10)], 20)
    guard = OODGuard(subspace=0).fit(X, groups_train=groups, stats_train=_stats(200))
    colour = _stats(1)[0]
    colour[9], colour[10] = 0.2, 0.3  # ink lines, hundreds of colours: a drawn frame...
    gray = colour.copy()
    gray[3] = 0.0  # ...without colour
    far = guard.thresholds["mid"] + 0.01
    assert guard._reason(gray, far).startswith("grayscale photo"), guard._reason(gray, far)
    assert guard._reason(gray, guard.thresholds["mid"] - 0.01) is None
    assert guard._reason(colour, far) is None
    # a training set of grayscale drawings turns the test off instead of flagging itself
    g2 = OODGuard(subspace=0).fit(X, groups_train=groups, stats_train=_stats(200, gray=True))
    assert "grayscale photo" in g2.weak_off


def test_a_blank_video_frame_is_no_face_with_the_reason_not_out_of_domain():
    from animefaces.api import Prediction
    from animefaces.classify.ranges import video_frame_label

    blank = Prediction("f", "out_of_domain", 0.3, out_of_domain=True,
                       ood_reason="flat: blank, near-uniform or gradient (texture 0.10 grey levels < 2)")
    assert video_frame_label(blank) == ("no_face", "blank / fade / card frame (" + blank.ood_reason + ")")
    photo = Prediction("f", "out_of_domain", 0.3, out_of_domain=True,
                       ood_reason="unlike the training images: feature distance 1.3 > 1.2")
    assert video_frame_label(photo) == ("out_of_domain", photo.ood_reason)
    assert video_frame_label(Prediction("f", "face", 0.9)) == ("face", "")


def test_scan_labels_fade_frames_no_face(tmp_path):
    """A scan of frames with a fade to black: the black frames come back no_face with the
    reason in frames.csv, not out_of_domain (a still black image given to predict still is)."""
    from animefaces.scan import scan_videos

    from _videos import write_video

    csv_path = make_dataset(tmp_path / "data")
    res = run_sweep(csv_path, config=tiny_config(tmp_path), weights="random", progress=False,
                    set_best=True)
    clf = animefaces.FaceClassifier.load(res.best_model, weights="random")
    black = Image.new("RGB", (160, 96), (0, 0, 0))
    assert clf.predict(black).label == "out_of_domain"
    face = face_image(np.random.default_rng(0), 96).resize((160, 96))
    video = write_video(tmp_path / "fade.mp4", [black, black, face, face], rate=4)
    out = tmp_path / "scan"
    scan_videos([video], clf, out_dir=out, progress=False)
    with open(out / "fade.frames.csv") as f:
        frames = list(csv.DictReader(f))
    first = frames[0]
    assert first["label"] == "no_face" and first["reason"].startswith("blank / fade / card frame (flat"), first


def test_weighted_platt():
    from animefaces.classify.calibration import platt_fit

    rng = np.random.default_rng(3)
    s = rng.normal(0, 2, 400)
    y = (rng.random(400) < 1 / (1 + np.exp(-s))).astype(int)
    # the scale of the weights does not matter, and equal weights are the unweighted fit
    np.testing.assert_allclose(platt_fit(s, y, weights=np.full(400, 3.0)), platt_fit(s, y), rtol=1e-6)
    # zero weight on half of the images: (nearly) the fit on the other half (Platt's target
    # smoothing counts weighted images, so not to the last digit)
    w = np.r_[np.ones(200), np.zeros(200)]
    np.testing.assert_allclose(platt_fit(s, y, weights=w), platt_fit(s[:200], y[:200]), rtol=0.05)
