"""Face crops (animefaces.data.crops) with the real lbpcascade_animeface cascade on real shared frames.

The cascade and the images are read from the repository's sibling ``../shared`` (never copied
into the repo); the tests fail when it is absent. Upscaled copies and videos go to tmp dirs.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import av  # noqa: E402,F401  (installed with the video extra; a missing one is a real failure)
import cv2  # noqa: E402,F401

from animefaces.data.crops import (  # noqa: E402
    CROP_COLUMNS, detect_faces, extract_crops, load_cascade)
from animefaces.api import classifier_confirm  # noqa: E402
from animefaces.errors import AnimeFacesError, ConfigError  # noqa: E402
from animefaces.data.frames import extract_frames  # noqa: E402

from _videos import write_video  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CASCADE = SHARED / "models" / "lbpcascade_animeface.xml"
DATA = SHARED / "data" / "animefaces-mini"
CROP_NAME = re.compile(r"^(?P<video>.+)-(?P<type>key|sec|img)-(?P<i>\d+)-(?P<j>\d+)\.png$")



def shared_images(kind: str, n: int) -> list[Path]:
    """The first n face images of one kind (sorted by path: deterministic)."""
    with open(DATA / "manifest.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["kind"] == kind and r["label"] == "face"]
    return [DATA / r["path"] for r in sorted(rows, key=lambda r: r["path"])[:n]]


@pytest.fixture(scope="module")
def cascade():
    assert CASCADE.is_file(), f"{CASCADE} not found (the shared folder must sit beside the repo)"
    return load_cascade(CASCADE)


@pytest.fixture(scope="module")
def face_hits(cascade):
    """A check of the detector itself on real data, and the frames it works on: among the first
    30 whole frames labelled face, the cascade must find a face in a fair share (it found 45%
    when this was written)."""
    assert (DATA / "manifest.csv").is_file(), f"{DATA} not found"
    candidates = shared_images("frame", 30)
    hits = [p for p in candidates if detect_faces(Image.open(p), cascade)]
    assert len(hits) >= 8, f"the cascade found faces in only {len(hits)} of 30 real frames"
    return hits, [p for p in candidates if p not in hits]


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory, face_hits):
    """Real shared pictures as PNG frames named like a video's (``shot-sec-I.png``), so crop
    names can be checked: 6 whole frames with a detection and 2 without (<= 224 px, as they
    are), and 4 of the 64 px face crops upscaled 2x; plus a flat grey frame."""
    hits, misses = face_hits
    d = tmp_path_factory.mktemp("frames")
    chosen = [(p, 1) for p in hits[:6] + misses[:2]] + \
             [(p, 2) for p in shared_images("facecrop", 4)]
    for i, (p, s) in enumerate(chosen):
        img = Image.open(p).convert("RGB")
        img.resize((img.width * s, img.height * s), Image.BICUBIC).save(d / f"shot-sec-{i}.png")
    Image.new("RGB", (320, 180), (128, 128, 128)).save(d / "flat-sec-99.png")  # no face
    return d


def read_rows(csv_path):
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def test_detect_faces_on_real_frames(cascade, frames_dir):
    boxes = {p.name: detect_faces(Image.open(p), cascade) for p in sorted(frames_dir.glob("*.png"))}
    assert boxes["flat-sec-99.png"] == []
    with_faces = [n for n, b in boxes.items() if b]
    # The cascade is far from perfect on this data, but finds faces in most of these.
    assert len(with_faces) >= 6, boxes
    for name, bs in boxes.items():
        w, h = Image.open(frames_dir / name).size
        for x, y, bw, bh in bs:
            assert bw >= 24 and bh >= 24 and 0 <= x and x + bw <= w and 0 <= y and y + bh <= h
        assert bs == sorted(bs)


def test_extract_crops_names_manifest_and_pixels(cascade, frames_dir, tmp_path):
    summary = extract_crops([frames_dir], tmp_path, cascade=CASCADE, progress=False)
    assert summary.ok and summary.frames == 13
    assert summary.detections >= 6 and summary.crops_written == summary.detections
    assert summary.rejected == 0
    cols, rows = read_rows(tmp_path / "manifest.csv")
    assert tuple(cols) == CROP_COLUMNS
    assert len(rows) == summary.crops_written == len(list(tmp_path.glob("*.png")))
    for r in rows:
        m = CROP_NAME.match(r["path"])
        assert m and m["video"] == r["group"] == "shot" and m["type"] == r["frame_type"] == "sec"
        assert m["i"] == r["frame_index"] and m["j"] == r["face_index"]
        assert Path(r["source"]).name == f"shot-sec-{r['frame_index']}.png"
        x, y, w, h = (int(r[k]) for k in "xywh")
        crop = np.asarray(Image.open(tmp_path / r["path"]))
        frame = np.asarray(Image.open(r["source"]).convert("RGB"))
        assert np.array_equal(crop, frame[y:y + h, x:x + w])
        assert r["label"] == "" and r["score"] == ""


def test_confirm_rejections_are_counted(cascade, frames_dir, tmp_path):
    calls = []

    def reject_all(crops):
        calls.append(len(crops))
        assert all(isinstance(c, Image.Image) for c in crops)
        return [0.0] * len(crops)

    summary = extract_crops([frames_dir], tmp_path / "none", cascade=cascade, confirm=reject_all,
                            progress=False)
    assert summary.detections >= 6
    assert summary.rejected == summary.detections == sum(calls)
    assert summary.crops_written == 0 and not list((tmp_path / "none").glob("*.png"))
    assert f"{summary.detections} cascade detection(s); {summary.detections} rejected" \
        in str(summary)
    assert "lower --threshold" in str(summary)  # nothing kept: say what to try

    # Reject exactly the crops narrower than 100 px: the count must match the boxes.
    summary2 = extract_crops([frames_dir], tmp_path / "some", cascade=cascade, threshold=0.5,
                             confirm=lambda cs: [0.9 if c.width >= 100 else 0.1 for c in cs],
                             batch_size=4, progress=False)
    all_boxes = [b for p in sorted(frames_dir.glob("*.png"))
                 for b in detect_faces(Image.open(p), cascade)]
    narrow = sum(1 for b in all_boxes if b[2] < 100)
    assert summary2.detections == len(all_boxes)
    assert summary2.rejected == narrow and summary2.crops_written == len(all_boxes) - narrow
    _, rows = read_rows(tmp_path / "some" / "manifest.csv")
    assert rows and all(r["score"] == "0.9000" and int(r["w"]) >= 100 for r in rows)


def test_no_face_found_says_what_to_try(cascade, tmp_path):
    """Frames where the cascade finds nothing: '0 face crop(s)' comes with the cascade's limits
    and the knobs to turn (--min-size), not alone."""
    blank = tmp_path / "frames"
    blank.mkdir()
    for i in range(2):
        Image.new("RGB", (320, 180), (30 * i, 120, 200)).save(blank / f"sky-{i}.png")
    summary = extract_crops([blank], tmp_path / "out", cascade=cascade, progress=False)
    text = str(summary)
    assert summary.crops_written == 0 and summary.detections == 0
    assert "no face found" in text and "--min-size" in text


def test_confirm_must_return_one_score_per_crop(cascade, frames_dir, tmp_path):
    with pytest.raises(ConfigError, match="one P\\(face\\) per crop"):
        extract_crops([frames_dir], tmp_path, cascade=cascade, confirm=lambda cs: [1.0],
                      batch_size=64, progress=False)


def letterboxed(image_path: Path, size=(640, 360)) -> Image.Image:
    """The picture scaled to the height of ``size`` and centred on black."""
    img = Image.open(image_path).convert("RGB")
    img.thumbnail((size[0], size[1] * 10), Image.BICUBIC)
    img = img.resize((img.width * size[1] // img.height, size[1]), Image.BICUBIC)
    canvas = Image.new("RGB", size)
    canvas.paste(img, ((size[0] - img.width) // 2, 0))
    return canvas


def make_video_from(images: list[Path], path: Path, *, rate=12) -> Path:
    """One shared picture per second, letterboxed to 640x360; near-lossless H.264, key frames
    every 2 s."""
    return write_video(path, [letterboxed(p) for p in images], rate=rate,
                       options={"crf": "12", "preset": "ultrafast", "g": "24",
                                "sc_threshold": "0"})


def test_video_and_its_frames_manifest_give_the_same_crops(cascade, face_hits, tmp_path):
    video = make_video_from(face_hits[0][:4], tmp_path / "ep7.mp4")
    direct = extract_crops([video], tmp_path / "direct", cascade=cascade, progress=False)
    assert direct.ok and direct.frames == 4  # key frames at 0 and 2 s + one a second
    assert direct.crops_written >= 1

    frames = extract_frames([video], tmp_path / "frames", fps=1, keyframes=True,
                            image_format="png", progress=False)
    assert frames.frames_written == 4
    via = extract_crops([tmp_path / "frames" / "manifest.csv"], tmp_path / "via",
                        cascade=cascade, progress=False)
    names_direct = sorted(p.name for p in (tmp_path / "direct").glob("*.png"))
    names_via = sorted(p.name for p in (tmp_path / "via").glob("*.png"))
    assert names_direct == names_via
    _, rows = read_rows(tmp_path / "direct" / "manifest.csv")
    for r in rows:
        m = CROP_NAME.match(r["path"])
        assert m["video"] == "ep7" and m["type"] in ("key", "sec")
        assert int(m["i"]) == int(r["frame_index"]) == 12 * round(float(r["time_s"]))


def test_bad_inputs_are_reported_and_others_processed(cascade, frames_dir, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    missing = tmp_path / "nope.jpg"
    good = frames_dir / "shot-sec-0.png"
    summary = extract_crops([missing, good, bad], tmp_path / "out", cascade=cascade,
                            progress=False)
    assert {r.source for r in summary.failures} == {str(missing), str(bad)}
    assert all(r.source in r.error for r in summary.failures)
    ok = [r for r in summary.results if r.error is None]
    assert len(ok) == 1 and ok[0].frames == 1
    assert "2 input(s) failed" in str(summary)


def test_missing_or_invalid_cascade_says_where_to_get_it(tmp_path):
    missing = tmp_path / "lbpcascade_animeface.xml"
    with pytest.raises(ConfigError) as info:
        load_cascade(missing)
    msg = str(info.value)
    assert str(missing) in msg and "nagadomi" in msg and "lbpcascade_animeface" in msg
    assert "--cascade" in msg
    notxml = tmp_path / "bad.xml"
    notxml.write_text("<not a cascade/>")
    with pytest.raises(ConfigError, match="not an OpenCV cascade"):
        load_cascade(notxml)


def test_missing_opencv_says_how_to_install(monkeypatch, tmp_path):
    (tmp_path / "c.xml").write_text("x")
    monkeypatch.setitem(sys.modules, "cv2", None)  # makes `import cv2` raise ImportError
    with pytest.raises(ConfigError, match='pip install "opencv-python-headless<5"'):
        load_cascade(tmp_path / "c.xml")


class _FakeClassifier:
    """Stands in for animefaces.api.FaceClassifier: P(face) = 0.9 for wide crops."""

    loaded_from = None

    @classmethod
    def load(cls, path, *, device="auto", allow_pickle=False):
        cls.loaded_from = path
        return cls()

    def predict_many(self, images):
        return [types.SimpleNamespace(score=0.9 if im.width >= 100 else 0.2,
                                      label="face" if im.width >= 100 else "no_face")
                for im in images]


def test_classifier_confirm_uses_face_classifier(monkeypatch):
    import animefaces.api

    monkeypatch.setattr(animefaces.api, "FaceClassifier", _FakeClassifier)
    confirm = classifier_confirm("models/x")
    assert _FakeClassifier.loaded_from == "models/x"
    assert confirm([Image.new("RGB", (120, 120)), Image.new("RGB", (40, 40))]) == [0.9, 0.2]


def cli(argv) -> int:
    from animefaces.cli import video as cli_video

    parser = argparse.ArgumentParser(prog="animefaces")
    cli_video.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except AnimeFacesError as exc:  # what the main CLI does
        print(f"error: {exc}")
        return 2


def test_cli_crops_with_model_and_errors(monkeypatch, frames_dir, tmp_path, capsys):
    import animefaces.api

    monkeypatch.setattr(animefaces.api, "FaceClassifier", _FakeClassifier)
    rc = cli(["crops", str(frames_dir), "--cascade", str(CASCADE), "--out", str(tmp_path / "c"),
              "--model", "models/fake", "-q"])
    out = capsys.readouterr().out
    assert rc == 0
    m = re.search(r"(\d+) cascade detection\(s\); (\d+) rejected by the classifier", out)
    assert m and int(m[1]) >= 6
    written = len(list((tmp_path / "c").glob("*.png")))
    assert written == int(m[1]) - int(m[2])

    rc = cli(["crops", str(frames_dir / "shot-sec-0.png"), str(tmp_path / "nope.png"),
              "--cascade", str(CASCADE), "--out", str(tmp_path / "d"), "-q"])
    out = capsys.readouterr().out
    assert rc == 1 and f"cannot read image {tmp_path / 'nope.png'}" in out

    rc = cli(["crops", str(frames_dir), "--cascade", str(tmp_path / "none.xml"), "--out",
              str(tmp_path / "e")])
    out = capsys.readouterr().out
    assert rc == 2 and "error: cascade file" in out and "nagadomi" in out


def test_crops_refuses_to_merge_into_a_frames_manifest(cascade, frames_dir, tmp_path):
    (tmp_path / "manifest.csv").write_text(",".join(("path", "label", "split", "group")) + "\n")
    with pytest.raises(ConfigError, match="not of crops"):
        extract_crops([frames_dir], tmp_path, cascade=cascade, progress=False)
