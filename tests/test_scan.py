"""Face time ranges in videos (animefaces.scan): the range rule on hand-made sequences, scans of
small videos made here with PyAV, output files, bad inputs, and the CLI.

Two kinds of video. "Coded" videos show one flat picture per second with a grey patch whose
level says which second it is; a fake classifier reads the patch and answers a P(face) chosen
per second, so a test sets any P sequence and checks timing and merging exactly. The end-to-end
video shows synthetic face / no-face pictures (conftest's) to a real model trained with the tiny
random backbone.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import av  # noqa: E402,F401  (the video extra; missing is a real failure)

from animefaces.cli import main  # noqa: E402
from animefaces.errors import AnimeFacesError, BadVideoError, ConfigError  # noqa: E402
from animefaces.scan import (  # noqa: E402
    FRAME_CSV_COLUMNS, RANGE_CSV_COLUMNS, contact_sheet, format_time, scan_video, scan_videos)
from animefaces.classify.ranges import FaceRange, face_ranges  # noqa: E402

from _videos import second_shown, stamp_second, write_audio_only, write_video, x264  # noqa: E402
from conftest import face_image, make_dataset, noface_image, tiny_config  # noqa: E402

SIZE, RATE, SECONDS = 128, 12, 12
X264 = x264(24)


# -- face_ranges on hand-made sequences --------------------------------------------------------

T12 = [float(s) for s in range(12)]


def ranges(probs, times=T12, **kw):
    kw.setdefault("step", 1.0)
    return [tuple(round(v, 6) for v in r) for r in face_ranges(times, probs, **kw)]


def test_clean_interval_ends_one_step_after_its_last_frame():
    p = [0, 0, 0, .9, .8, .95, .9, 0, 0, 0, 0, 0]
    assert ranges(p) == [(3.0, 7.0, 0.95)]
    r = face_ranges(T12, p, step=1.0)[0]
    assert isinstance(r, FaceRange) and r == (3.0, 7.0, 0.95) and r.duration_s == 4.0


def test_single_noisy_dip_inside_a_range_is_bridged():
    p = [0, 0, 0, .9, .9, .1, .9, 0, 0, 0, 0, 0]
    assert ranges(p) == [(3.0, 7.0, 0.9)]
    # min_gap 0 bridges nothing; two low frames exceed the default gap of one step.
    assert ranges(p, min_gap=0) == [(3.0, 5.0, 0.9), (6.0, 7.0, 0.9)]
    p2 = [0, 0, 0, .9, .1, .1, .9, 0, 0, 0, 0, 0]
    assert ranges(p2) == [(3.0, 4.0, 0.9), (6.0, 7.0, 0.9)]
    assert ranges(p2, min_gap=2) == [(3.0, 7.0, 0.9)]


def test_single_spike_outside_a_range():
    p = [0, 0, 0, 0, 0, 0, 0, 0, .95, 0, 0, 0]
    assert ranges(p) == [(8.0, 9.0, 0.95)]
    assert ranges(p, min_duration=1.5) == []
    # Between off and on: not enough to start a range.
    assert ranges([0, 0, .55, .5, 0, 0, 0, 0, 0, 0, 0, 0]) == []


def test_ranges_at_the_start_and_the_end_of_a_video():
    p = [.9, .9, 0, 0, 0, 0, 0, 0, 0, 0, .9, .9]
    assert ranges(p) == [(0.0, 2.0, 0.9), (10.0, 12.0, 0.9)]
    assert ranges(p, duration=11.5) == [(0.0, 2.0, 0.9), (10.0, 11.5, 0.9)]  # clipped
    assert ranges([.9] * 12) == [(0.0, 12.0, 0.9)]
    # A dip running to the last frame ends the range even though it is not "long" yet.
    assert ranges([0] * 9 + [.9, .9, .1]) == [(9.0, 11.0, 0.9)]


def test_hysteresis_between_off_and_on_keeps_a_range_going():
    p = [0, .7, .5, .45, .41, .39, .5, .2, .3, 0, .55, 0]
    # 0.39 is a one-frame dip (bridged); 0.2, 0.3, 0 is a long one; 0.55 alone starts nothing.
    assert ranges(p) == [(1.0, 7.0, 0.7)]
    assert ranges(p, on=0.5, off=0.5) == [(1.0, 3.0, 0.7), (6.0, 7.0, 0.5), (10.0, 11.0, 0.55)]


def test_min_duration_drops_short_ranges_after_merging():
    p = [.9, 0, .9, 0, 0, 0, .9, .9, .9, 0, 0, 0]
    assert ranges(p) == [(0.0, 3.0, 0.9), (6.0, 9.0, 0.9)]
    assert ranges(p, min_duration=3) == [(0.0, 3.0, 0.9), (6.0, 9.0, 0.9)]
    assert ranges(p, min_duration=3.5) == []


def test_other_steps_and_times_that_jitter_around_the_ticks():
    # 1 fps from a 23.976 fps video: each tick keeps the first frame at or after it.
    rate = 24000 / 1001
    times = [math.ceil(k * rate) / rate for k in range(12)]
    p = [0, 0, 0, .9, .9, .1, .9, 0, 0, 0, 0, 0]
    got = face_ranges(times, p, step=1.0)
    assert len(got) == 1 and got[0].start_s == times[3]
    assert got[0].end_s == min(times[6] + 1.0, times[7])
    # 2 fps: a frame stands for half a second.
    t2 = [k / 2 for k in range(24)]
    p2 = [0] * 6 + [.9] * 8 + [0] * 10
    assert ranges(p2, times=t2, step=0.5) == [(3.0, 7.0, 0.9)]


def test_step_defaults_to_the_usual_distance_and_ends_stop_at_the_next_frame():
    assert ranges([0, .9, .9, 0], times=[0, 2, 4, 6], step=None) == [(2.0, 6.0, 0.9)]
    # Key frames between ticks: the range ends where the next (no-face) frame was sampled.
    t = [0.0, 1.0, 2.0, 2.5, 3.0, 4.0]
    assert ranges([0, .9, .9, .9, 0, 0], times=t) == [(1.0, 3.0, 0.9)]
    assert ranges([0, .9, .9, .9, 0, 0], times=t[:4] + [3.2, 4.0]) == [(1.0, 3.2, 0.9)]
    assert face_ranges([], [], step=1.0) == []
    assert ranges([.9], times=[5.0], step=None, duration=6.0) == [(5.0, 6.0, 0.9)]


@pytest.mark.parametrize("kw,match", [
    ({"on": 0.3, "off": 0.5}, "must not be above on"),
    ({"on": 1.5}, "probability from 0 to 1"),
    ({"min_gap": -1}, "min_gap must be a number of seconds"),
    ({"min_duration": float("nan")}, "min_duration"),
])
def test_bad_settings_are_explained(kw, match):
    with pytest.raises(ConfigError, match=match):
        face_ranges(T12, [0] * 12, step=1.0, **kw)


def test_bad_sequences_are_explained():
    with pytest.raises(ConfigError, match="12 times and 11 probabilities"):
        face_ranges(T12, [0] * 11)
    with pytest.raises(ConfigError, match="non-decreasing"):
        face_ranges([0, 2, 1], [0, 0, 0])
    with pytest.raises(ConfigError, match=r"frame 1 \(at 1.000 s\) has nan"):
        face_ranges([0, 1, 2], [0, float("nan"), 0])


def test_format_time():
    assert format_time(3.04) == "00:03.0" and format_time(59.96) == "01:00.0"
    assert format_time(3725.5) == "1:02:05.5" and format_time(7.25, decimals=3) == "00:07.250"


# -- scans of coded videos with a fake classifier ----------------------------------------------

def coded_picture(second: int) -> np.ndarray:
    """(SIZE, SIZE, 3) uint8: one flat colour per second, with the second's code patch."""
    rng = np.random.default_rng(1000 + second)
    img = np.empty((SIZE, SIZE, 3), np.uint8)
    img[:] = rng.integers(40, 216, 3)
    return stamp_second(img, second)


def make_video(path: Path, pictures, **kw) -> Path:
    """Each picture shown for one second at RATE fps, x264 with a key frame every 2 s."""
    return write_video(path, pictures, rate=RATE, options=X264, **kw)


@dataclass
class Pred:
    score: float
    label: str


class SecondCoded:
    """A stand-in classifier: P(face) is looked up by the second a frame shows."""

    def __init__(self, p_by_second):
        self.p = p_by_second
        self.calls: list[int] = []

    def predict_many(self, images):
        self.calls.append(len(images))
        return [Pred(self.p[second_shown(im)], "face" if self.p[second_shown(im)] >= .5
                     else "no_face") for im in images]


FACE_3_TO_7 = [0.05, 0.1, 0.02, 0.9, 0.95, 0.85, 0.9, 0.1, 0.05, 0.02, 0.1, 0.05]


@pytest.fixture(scope="module")
def coded(tmp_path_factory):
    d = tmp_path_factory.mktemp("coded")
    pictures = [coded_picture(s) for s in range(SECONDS)]
    return {"ep01": make_video(d / "ep01.mp4", pictures),
            "fast": make_video(d / "fast.mp4", pictures,
                               container_options={"movflags": "faststart"})}


def test_scan_recovers_a_known_interval_in_batches(coded):
    clf = SecondCoded(FACE_3_TO_7)
    seen = []
    res = scan_video(coded["ep01"], clf, batch_size=5, progress=seen.append)
    assert [f.time_s for f in res.frames] == T12
    assert [f.frame_index for f in res.frames] == [RATE * s for s in range(12)]
    assert [f.label for f in res.frames] == ["face" if p >= .5 else "no_face"
                                             for p in FACE_3_TO_7]
    assert [f.p_face for f in res.frames] == FACE_3_TO_7
    assert res.ranges == [(3.0, 7.0, 0.95)]
    assert clf.calls == [5, 5, 2]  # batched, never more than batch_size
    assert seen == sorted(seen) and seen[-1] >= 11.0  # progress in video time
    assert res.info["video"]["width"] == SIZE and res.info["step_s"] == 1.0
    assert res.info["settings"]["on"] == 0.6 and res.face_seconds == 4.0


@pytest.mark.parametrize("fps", [0.5, 1, 2, 3])
def test_scan_finds_the_interval_to_within_one_sampling_step(coded, fps):
    res = scan_video(coded["ep01"], SecondCoded(FACE_3_TO_7), fps=fps, progress=False)
    step = 1 / fps
    assert len(res.ranges) == 1
    start, end, peak = res.ranges[0]
    assert abs(start - 3.0) <= step + 1e-9 and abs(end - 7.0) <= step + 1e-9, res.ranges
    assert peak >= 0.85


def test_scan_with_a_dip_a_spike_and_ranges_at_both_ends(coded):
    p = [0.9, 0.8, 0.1, 0.05, 0.9, 0.1, 0.9, 0.1, 0.1, 0.95, 0.9, 0.9]
    res = scan_video(coded["ep01"], SecondCoded(p), progress=False)
    assert res.ranges == [(0.0, 2.0, 0.9), (4.0, 7.0, 0.9), (9.0, 12.0, 0.95)]
    assert scan_video(coded["ep01"], SecondCoded(p), min_gap=0, min_duration=1.5,
                      progress=False).ranges == [(0.0, 2.0, 0.9), (9.0, 12.0, 0.95)]


def test_scan_keyframes_mode_and_thumbnails(coded):
    res = scan_video(coded["ep01"], SecondCoded(FACE_3_TO_7), keyframes=True, thumbnails=True,
                     progress=False)
    assert res.ranges == [(3.0, 7.0, 0.95)]
    assert {f.frame_type for f in res.frames} == {"key", "sec"}
    (thumb,) = res.thumbnails
    assert thumb.size == (SIZE, SIZE) and second_shown(thumb) == 3  # first frame, not enlarged
    sheet = contact_sheet(res)
    assert sheet.width >= SIZE and sheet.height > SIZE
    # Key frames only: no fixed step, the key-frame interval (2 s) stands in.
    res = scan_video(coded["ep01"], SecondCoded(FACE_3_TO_7), fps=None, keyframes=True,
                     progress=False)
    assert res.info["step_s"] == 2.0 and res.ranges == [(4.0, 8.0, 0.95)]


def test_decoding_ahead_gives_the_same_result_and_stops_with_the_classifier(coded):
    import threading

    p = [0.9, 0.8, 0.1, 0.05, 0.9, 0.1, 0.9, 0.1, 0.1, 0.95, 0.9, 0.9]
    a = scan_video(coded["ep01"], SecondCoded(p), batch_size=3, progress=False,
                   decode_ahead=True)
    b = scan_video(coded["ep01"], SecondCoded(p), batch_size=3, progress=False,
                   decode_ahead=False)
    assert a.frames == b.frames and a.ranges == b.ranges

    class Broken(SecondCoded):
        def predict_many(self, images):
            if self.calls:
                raise RuntimeError("classifier failed")
            return super().predict_many(images)

    with pytest.raises(RuntimeError, match="classifier failed"):
        scan_video(coded["ep01"], Broken(p), batch_size=2, progress=False, decode_ahead=True)
    assert not [t for t in threading.enumerate() if t.name == "scan-decode"]


def test_scan_options_are_checked_before_decoding(coded):
    clf = SecondCoded(FACE_3_TO_7)
    for kw, match in [({"on": 0.3, "off": 0.5}, "must not be above on"),
                      ({"batch_size": 0}, "batch_size"),
                      ({"fps": -1}, "positive"),
                      ({"seek": "sometimes"}, "auto, never, always")]:
        with pytest.raises(ConfigError, match=match):
            scan_video(coded["ep01"], clf, progress=False, **kw)
    assert clf.calls == []


# -- bad inputs ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bad_inputs(coded, tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    text = d / "notes.mp4"
    text.write_text("this is a text file, not a video\n" * 50)
    data = coded["fast"].read_bytes()  # moov first: cut, the stream ends early
    (d / "cut.mp4").write_bytes(data[: len(data) // 2])
    audio = write_audio_only(d / "sound.m4a", packets=10)
    return {"missing": d / "missing.mp4", "text": text, "cut": d / "cut.mp4", "audio": audio}


@pytest.mark.parametrize("name,reason", [("missing", "no such file"), ("text", "not a video"),
                                         ("cut", "truncated"), ("audio", "no video stream")])
def test_scan_video_raises_an_error_naming_the_file(bad_inputs, name, reason):
    with pytest.raises(BadVideoError) as info:
        scan_video(bad_inputs[name], SecondCoded(FACE_3_TO_7), progress=False)
    assert str(bad_inputs[name]) in str(info.value) and reason in str(info.value)


def test_a_still_image_or_a_text_named_jpg_is_not_a_video(tmp_path):
    """A still image is refused with the command that classifies it (no 0-second range); a text
    file named .jpg is 'not a video' like the same file named .mp4, not 'truncated'."""
    still = tmp_path / "still.png"
    Image.new("RGB", (64, 48), (200, 100, 50)).save(still)
    with pytest.raises(BadVideoError, match=r"still 64x48 image, not a video.*animefaces predict"):
        scan_video(still, SecondCoded(FACE_3_TO_7), progress=False)
    for name in ("notes.jpg", "notes.mp4"):
        text = tmp_path / name
        text.write_text("this is a text file, not a video\n" * 50)
        with pytest.raises(BadVideoError) as info:
            scan_video(text, SecondCoded(FACE_3_TO_7), progress=False)
        assert "not a video" in str(info.value) and "truncated or corrupt (" not in str(info.value)


def read_csv(path):
    with open(path, newline="") as f:
        r = csv.DictReader(f)
        return r.fieldnames, list(r)


@pytest.mark.parametrize("ahead", [False, True])
def test_scan_videos_writes_files_and_goes_on_past_bad_inputs(coded, bad_inputs, tmp_path, ahead):
    out = tmp_path / "scans"
    inputs = [bad_inputs["missing"], coded["ep01"], bad_inputs["text"], bad_inputs["cut"],
              bad_inputs["audio"]]
    summary = scan_videos(inputs, SecondCoded(FACE_3_TO_7), out_dir=out, contact_sheets=True,
                          progress=False, decode_ahead=ahead)
    assert not summary.ok
    assert {str(r.video) for r in summary.failures} == {str(bad_inputs[k]) for k in bad_inputs}
    text = str(summary)
    for p in bad_inputs.values():
        assert f"error: cannot read video {p}" in text
    assert "4 video(s) failed" in text and "scanned 1 of 5 video(s)" in text

    cols, rows = read_csv(out / "ep01.frames.csv")
    assert tuple(cols) == FRAME_CSV_COLUMNS and len(rows) == 12
    assert rows[3] == {"time_s": "3.000", "frame_index": "36", "p_face": "0.9000",
                       "label": "face", "frame_type": "sec", "reason": ""}
    cols, rows = read_csv(out / "ep01.ranges.csv")
    assert tuple(cols) == RANGE_CSV_COLUMNS
    assert rows == [{"range": "1", "start_s": "3.000", "end_s": "7.000", "duration_s": "4.000",
                     "peak_p": "0.9500", "start": "00:03.000", "end": "00:07.000",
                     "first_frame_index": "36", "frames": "4"}]
    with Image.open(out / "ep01.contact.png") as im:
        assert im.format == "PNG" and im.width > 180

    doc = json.loads((out / "scan.json").read_text())
    assert doc["settings"]["fps"] == 1.0 and doc["settings"]["on"] == 0.6
    assert doc["model"]["class"] == "SecondCoded" and "av" in doc["versions"]
    by_video = {v["video"]: v for v in doc["videos"]}
    ok = by_video[str(coded["ep01"])]
    assert ok["complete"] and ok["ranges"] == [{"start_s": 3.0, "end_s": 7.0, "duration_s": 4.0,
                                                "peak_p": 0.95}]
    assert len(ok["frames"]) == 12 and ok["outputs"]["ranges_csv"] == "ep01.ranges.csv"
    # The truncated file keeps the frames before the error, marked incomplete.
    cut = by_video[str(bad_inputs["cut"])]
    assert not cut["complete"] and "truncated" in cut["error"] and cut["frames"]
    assert (out / "cut.frames.csv").is_file()
    assert by_video[str(bad_inputs["missing"])]["frames"] == []
    assert not (out / "missing.frames.csv").exists()
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temp files


def test_scan_videos_without_out_writes_nothing_and_checks_names(coded, tmp_path):
    summary = scan_videos([coded["ep01"]], SecondCoded(FACE_3_TO_7), progress=False)
    assert summary.ok and "00:03.0 - 00:07.0" in str(summary)
    with pytest.raises(ConfigError, match="--out"):
        scan_videos([coded["ep01"]], SecondCoded(FACE_3_TO_7), contact_sheets=True,
                    progress=False)
    other = tmp_path / "other"
    other.mkdir()
    (other / "ep01.mkv").write_bytes(b"x")
    with pytest.raises(ConfigError, match="share the name 'ep01'"):
        scan_videos([coded["ep01"], other / "ep01.mkv"], SecondCoded(FACE_3_TO_7),
                    out_dir=tmp_path / "o", progress=False)


# -- end to end with a real (tiny) model, and the CLI -------------------------------------------

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, _offline_module):
    from animefaces.train.sweep import run_sweep

    root = tmp_path_factory.mktemp("model")
    data = make_dataset(root / "data")
    res = run_sweep(data, config=tiny_config(root), weights="random", progress=False)
    return res.best_model


@pytest.fixture(scope="module")
def face_video(tiny_model, tmp_path_factory, _offline_module):
    """Seconds 0-3 no face, 3-7 a face, 7-12 no face: the pair of synthetic pictures the model
    separates best out of a few candidates (the tiny backbone has random weights)."""
    from animefaces.api import FaceClassifier

    clf = FaceClassifier.load(tiny_model)
    rng = np.random.default_rng(7)
    faces = [face_image(rng, size=SIZE) for _ in range(6)]
    others = [noface_image(rng, size=SIZE) for _ in range(6)]
    pf = [p.score for p in clf.predict_many(faces)]
    pn = [p.score for p in clf.predict_many(others)]
    face, other = faces[int(np.argmax(pf))], others[int(np.argmin(pn))]
    assert max(pf) >= 0.75 and min(pn) <= 0.25, (pf, pn)
    pictures = [np.asarray(face if 3 <= s < 7 else other) for s in range(SECONDS)]
    path = make_video(tmp_path_factory.mktemp("faces") / "faces.mp4", pictures)
    return path, clf


@pytest.fixture(scope="module")
def _offline_module(tmp_path_factory):
    # conftest's autouse fixture is function-scoped; module fixtures that load models need it too.
    mp = pytest.MonkeyPatch()
    mp.setenv("ANIMEFACES_OFFLINE", "1")
    mp.setenv("TORCH_HOME", str(tmp_path_factory.getbasetemp() / "torch_home"))
    yield
    mp.undo()


def test_real_model_end_to_end(face_video):
    path, clf = face_video
    res = scan_video(path, clf, batch_size=8, progress=False)
    assert len(res.frames) == 12
    assert [(round(s, 3), round(e, 3)) for s, e, _ in res.ranges] == [(3.0, 7.0)]
    assert res.ranges[0].peak_p >= 0.6


def test_cli_scan(face_video, coded, bad_inputs, tiny_model, tmp_path, capsys):
    path, _ = face_video
    out = tmp_path / "out"
    rc = main(["scan", str(path), "--model", str(tiny_model), "--out", str(out), "-q",
               "--contact-sheet", "--batch-size", "4"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "faces.mp4: 12 frame(s) scanned, 1 face range(s)" in printed
    assert "00:03.0 - 00:07.0" in printed
    for name in ("faces.frames.csv", "faces.ranges.csv", "faces.contact.png", "scan.json"):
        assert (out / name).is_file(), name
    doc = json.loads((out / "scan.json").read_text())
    assert doc["model"]["backbone"] == "tiny" and doc["model"]["random_weights"] is True
    assert doc["settings"]["batch_size"] == 4

    rc = main(["scan", str(bad_inputs["text"]), str(path), "--model", str(tiny_model), "-q"])
    captured = capsys.readouterr()
    assert rc == 1 and f"error: cannot read video {bad_inputs['text']}" in captured.out
    assert "1 video(s) failed" in captured.out

    # Usage errors: exit 2 with one line, before the model is loaded.
    assert main(["scan", str(path), "--model", str(tmp_path / "nope"), "--on", "0.3",
                 "--off", "0.5"]) == 2
    assert "must not be above on" in capsys.readouterr().err
    assert main(["scan", str(path), "--contact-sheet"]) == 2
    assert "--out" in capsys.readouterr().err
    assert main(["scan", str(path), "--model", str(tmp_path / "nope"), "-q"]) == 2
    assert "no model at" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["scan", str(path), "--on", "1.5"])
    assert isinstance(BadVideoError("x", "y"), AnimeFacesError)


# -- real shared frames with the project's trained model (slow) -------------------------------

@pytest.mark.slow
def test_real_frames_with_the_trained_model(tmp_path, real_sweep):
    """Test-split frames of the shared data, letterboxed into a 12 s video (in a temp folder,
    never in the project): no face 0-3 s, faces 3-7 s, no face 7-12 s. Pictures are the ones
    the model is sure about (this checks the scan, not the model's accuracy)."""
    from PIL import ImageOps

    from animefaces.api import FaceClassifier

    from conftest import MINI

    clf = FaceClassifier.load(real_sweep.best_model, device="cpu")
    with open(MINI / "manifest.csv", newline="") as f:
        rows = sorted((r for r in csv.DictReader(f) if r["split"] == "test" and
                       r["kind"] == "frame"), key=lambda r: r["path"])

    def pictures(label, n, sure):
        ims = [ImageOps.pad(Image.open(MINI / r["path"]).convert("RGB"), (320, 240))
               for r in rows if r["label"] == label][:4 * n]
        ps = [p.score for p in clf.predict_many(ims)]
        chosen = [im for im, p in zip(ims, ps) if sure(p)][:n]
        assert len(chosen) == n, f"only {len(chosen)} sure {label} frames: {ps}"
        return [np.asarray(im) for im in chosen]

    faces = pictures("face", 4, lambda p: p >= 0.8)
    others = pictures("no_face", 8, lambda p: p <= 0.2)
    seq = others[:3] + faces + others[3:]
    path = make_video(tmp_path / "real.mp4", seq)
    res = scan_video(path, clf, progress=False)
    assert [(s, e) for s, e, _ in res.ranges] == [(3.0, 7.0)], res.frames
