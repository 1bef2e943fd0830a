"""Character identification and the hue-histogram baseline."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from animefaces.errors import DatasetError
from animefaces.features.extract import FeatureExtractor
from animefaces.train.character import character_dataset, run_character_sweep

from conftest import tiny_config


def make_characters(root, n_train=8, n_val=4, n_test=4):
    """Three 'characters' with distinct hair colours, as face rows with a group column."""
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    colours = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
    rows = []
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        for name, c in colours.items():
            for i in range(n):
                arr = np.full((64, 64, 3), 240, np.uint8)
                arr[:24] = np.clip(np.array(c) + rng.integers(-20, 20, 3), 0, 255)
                p = f"images/{name}-{split}-{i}.png"
                Image.fromarray(arr).save(root / p)
                rows.append({"path": p, "label": "face", "split": split, "group": f"hair:{name}"})
        p = f"images/bg-{split}.png"
        Image.new("RGB", (64, 64), (9, 9, 9)).save(root / p)
        rows.append({"path": p, "label": "no_face", "split": split, "group": "bg"})
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "split", "group"])
        w.writeheader()
        w.writerows(rows)
    return root / "manifest.csv"


def test_huehist_is_a_normalised_hue_histogram():
    fx = FeatureExtractor("huehist", device="cpu")
    f = fx.transform_images([Image.new("RGB", (40, 40), (255, 0, 0)), Image.new("RGB", (40, 40), (0, 0, 255)),
                             Image.new("RGB", (40, 40), (128, 128, 128))])
    assert f.shape == (3, 32)
    assert f[0].argmax() == 0 and f[1].argmax() == 21
    np.testing.assert_allclose(f.sum(1), [1, 1, 0], atol=1e-6)  # grey has no hue
    assert fx.describe()["random_weights"] is False


def test_character_dataset_relabels_face_rows_by_group(tmp_path):
    ds = character_dataset(make_characters(tmp_path / "c"))
    assert {r.label for r in ds.records} == {"hair:red", "hair:green", "hair:blue"}
    ds2 = character_dataset(tmp_path / "c" / "manifest.csv", groups=["hair:r*", "hair:g*"])
    assert {r.label for r in ds2.records} == {"hair:red", "hair:green"}
    with pytest.raises(DatasetError, match="fewer than two characters"):
        character_dataset(tmp_path / "c" / "manifest.csv", groups=["hair:red"])


def test_character_sweep_writes_confusion_and_per_class(tmp_path):
    data = make_characters(tmp_path / "c")
    res = run_character_sweep(data, config=tiny_config(tmp_path), backbones=["huehist"], progress=False)
    run = tmp_path / "reports" / res.results["run_id"]
    assert (run / "confusion_test.png").stat().st_size > 1000
    rows = list(csv.reader(open(run / "confusion_test.csv")))
    assert rows[0][1:] == res.results["classes"] and len(rows) == 4
    per_class = list(csv.DictReader(open(run / "per_class.csv")))
    assert {r["class"] for r in per_class} == set(res.results["classes"])
    # hair colour is exactly what a hue histogram sees
    assert res.results["best"]["accuracy"]["test"] >= 0.9
    assert json.loads((run / "results.json").read_text())["task"] == "character"


def test_character_model_is_saved_and_identifies_characters(tmp_path, capsys):
    import animefaces
    from animefaces.cli import main
    from animefaces.errors import AnimeFacesError

    data = make_characters(tmp_path / "c")
    models = tmp_path / "models"
    res = run_character_sweep(data, config=tiny_config(tmp_path), backbones=["huehist"],
                              models_dir=models, set_best=True, progress=False)
    best = models / "character-best"
    assert (models / "character-best.json").is_file() and res.results["best"]["also_saved_as"].endswith(
        "character-best.json")
    clf = animefaces.CharacterClassifier.load(best)
    assert clf.classes == res.results["classes"]
    imgs = tmp_path / "c" / "images"
    # new pictures, not the training files: the hair colour decides
    for name, c in (("red", (215, 35, 25)), ("blue", (25, 45, 225))):
        arr = np.full((64, 64, 3), 240, np.uint8)
        arr[:24] = c
        Image.fromarray(arr).save(tmp_path / f"{name}.png")
    many = clf.predict_many([tmp_path / "red.png", np.asarray(Image.open(tmp_path / "blue.png")),
                             tmp_path / "missing.png"], on_error="report")
    assert [m.character for m in many] == ["hair:red", "hair:blue", None]
    assert many[0].ranking[0][0] == "hair:red" and len(many[0].ranking) == 3
    assert many[0].ranking[0][1] >= many[0].ranking[1][1]
    assert "no such file" in many[2].error
    # the face API refuses it with the way out, and predict picks the right loader itself
    with pytest.raises(AnimeFacesError, match="CharacterClassifier"):
        animefaces.FaceClassifier.load(best)
    capsys.readouterr()
    assert main(["predict", "--model", str(best), str(imgs / "green-test-0.png"), "-q"]) == 0
    out = capsys.readouterr().out
    assert "\thair:green\t" in out
    assert main(["predict", "--model", str(best), "--format", "json",
                 str(tmp_path / "red.png"), "-q"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["character"] == "hair:red" and rows[0]["ranking"][0][0] == "hair:red"


def test_two_character_model_ranks_both(tmp_path):
    import animefaces

    data = make_characters(tmp_path / "c")
    run_character_sweep(data, config=tiny_config(tmp_path), backbones=["huehist"],
                        groups=["hair:red", "hair:blue"], models_dir=tmp_path / "m",
                        set_best=True, progress=False)
    clf = animefaces.CharacterClassifier.load(tmp_path / "m" / "character-best")
    p = clf.predict(tmp_path / "c" / "images" / "blue-test-1.png")
    assert p.character == "hair:blue"
    assert [c for c, _ in p.ranking] == ["hair:blue", "hair:red"]


def test_a_failed_character_sweep_leaves_no_run_folder(tmp_path, monkeypatch):
    """The run folder is written as <name>.incomplete and renamed only when complete: a run that
    fails at the end (here: the model save) leaves none behind."""
    import animefaces.classify.persist as persist

    data = make_characters(tmp_path / "c")

    def refuse(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(persist, "save_model", refuse)
    with pytest.raises(OSError):
        run_character_sweep(data, config=tiny_config(tmp_path), backbones=["huehist"], progress=False)
    reports = tmp_path / "reports"
    assert not reports.exists() or list(reports.iterdir()) == []
