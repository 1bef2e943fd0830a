"""Frame sampling (animefaces.data.video) on small videos made here with PyAV (tests/_videos.py).

Every synthetic video shows one static picture per second: a seeded pattern of coloured blocks
plus a 32x32 code patch in the top-left corner whose grey level says which second it is, so a
test can check that a frame sampled at time t really shows second floor(t).
"""

from __future__ import annotations

import argparse
import csv
import json

import numpy as np
import pytest
from PIL import Image

import av  # noqa: E402  (the video extra; missing is a real failure)

from animefaces.errors import AnimeFacesError, ConfigError  # noqa: E402
from animefaces.data.frames import (  # noqa: E402
    FRAME_COLUMNS, NearDuplicateFilter, dhash, extract_frames)
from animefaces.data.video import (  # noqa: E402
    BadVideoError, iter_sampled_frames, probe_video, sample_frames)
from animefaces.data.images import apply_display_matrix  # noqa: E402

from _videos import second_shown, stamp_second, write_audio_only, write_video, x264  # noqa: E402

W, H, RATE, SECONDS = 320, 180, 24, 8


def picture(second: int, *, seed: int | None = None) -> np.ndarray:
    """(H, W, 3) uint8: 16x16-pixel random colour blocks (survive compression), code patch."""
    rng = np.random.default_rng(second if seed is None else seed)
    blocks = rng.integers(0, 256, size=(H // 16 + 1, W // 16 + 1, 3), dtype=np.uint8)
    img = np.repeat(np.repeat(blocks, 16, 0), 16, 1)[:H, :W].copy()
    return stamp_second(img, second)


def make_video(path, *, pictures=None, **kw):
    """An 8 s video at 24 fps of :func:`picture` 0-7 (or ``pictures``), one a second."""
    return write_video(path, pictures or [picture(s) for s in range(SECONDS)], rate=RATE, **kw)


# x264 with a fixed GOP of 2 s and no scene-cut key frames: key frames at 0, 2, 4, 6 s.
X264_GOP48 = x264(48)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    v = {"mp4": make_video(d / "ep01.mp4", options=X264_GOP48),
         "faststart": make_video(d / "fast.mp4", options=X264_GOP48,
                                 container_options={"movflags": "faststart"}),
         "short_gop": make_video(d / "shortgop.mp4",
                                 options=x264(12))}
    # Pictures change only at 4 s: seconds 0-3 show A, 4-7 show B.
    static = [picture(0, seed=100)] * 4 + [picture(4, seed=200)] * 4
    v["static"] = make_video(d / "static.mp4", options=X264_GOP48, pictures=static)
    # An animated GIF with variable frame delays (ms): frames start at 0, 0.3, 1.8, 2.0, 4.0 s.
    frames = [Image.fromarray(picture(s)) for s in (0, 1, 2, 3, 4)]
    frames[0].save(d / "vfr.gif", save_all=True, append_images=frames[1:],
                   duration=[300, 1500, 200, 2000, 1000], loop=0)
    v["gif"] = d / "vfr.gif"
    return v


def sampled(path, **kw):
    return [(f.index, round(f.time_s, 6), f.frame_type, second_shown(f.image))
            for f in sample_frames(path, **kw)]


def key_frame_times(path) -> list[float]:
    """Independent reference: decode everything with PyAV and list the key frames' times."""
    with av.open(str(path)) as c:
        return [float(f.time) for f in c.decode(c.streams.video[0]) if f.key_frame]


# -- fps mode ---------------------------------------------------------------------------------

def test_one_frame_per_second_mp4(videos):
    got = sampled(videos["mp4"], fps=1)
    assert got == [(24 * s, float(s), "sec", s) for s in range(8)]


def test_two_frames_per_second_takes_first_frame_at_or_after_each_tick(videos):
    got = sampled(videos["mp4"], fps=2)
    assert [g[0] for g in got] == [12 * k for k in range(16)]
    assert [g[1] for g in got] == [k / 2 for k in range(16)]
    assert [g[3] for g in got] == [k // 2 for k in range(16)]


def test_fps_below_one_frame_rate_of_ticks_every_three_seconds(videos):
    got = sampled(videos["mp4"], fps=1 / 3)
    assert [(g[0], g[1], g[3]) for g in got] == [(0, 0.0, 0), (72, 3.0, 3), (144, 6.0, 6)]


@pytest.mark.parametrize("suffix,codec,options", [
    ("mkv", "libx264", X264_GOP48),      # Matroska: time base 1/1000, no stream duration
    ("webm", "libvpx", {"g": "48", "deadline": "realtime", "cpu-used": "8", "threads": "1",
                        "lag-in-frames": "0", "auto-alt-ref": "0"}),  # VP8, fast settings
    ("avi", "mpeg4", {"g": "48"}),       # AVI: time base 1/24
])
def test_other_containers(tmp_path, suffix, codec, options):
    path = make_video(tmp_path / f"clip.{suffix}", codec=codec, options=options)
    got = sampled(path, fps=1)
    assert [(g[1], g[3]) for g in got] == [(float(s), s) for s in range(8)]
    assert [g[0] for g in got] == [24 * s for s in range(8)]


def test_animated_gif_uses_each_frames_delay(videos):
    # Ticks at 0, 1, 2, 3, 4 s: 0 -> frame 0; 1 -> frame 2 (1.8 s, the first at/after 1 s);
    # 2 -> frame 3 (2.0 s); 3 and 4 -> frame 4 (4.0 s), yielded once.
    got = sampled(videos["gif"], fps=1)
    assert got == [(0, 0.0, "sec", 0), (2, 1.8, "sec", 2), (3, 2.0, "sec", 3), (4, 4.0, "sec", 4)]


@pytest.mark.parametrize("suffix", ["mp4", "mkv"])
def test_variable_frame_rate_uses_timestamps(tmp_path, suffix):
    times = [0, 0.1, 0.5, 1.4, 1.45, 2.0, 3.7, 3.9, 4.0, 5.2, 5.5]  # seconds, irregular
    path = write_video(tmp_path / f"vfr.{suffix}", [picture(int(t)) for t in times], rate=30,
                       options={"preset": "ultrafast", "bf": "0"}, times_s=times)
    # Ticks 0..5 s: the first frame at or after each; the frame counter gives exact indices.
    assert sampled(path, fps=1) == [(0, 0.0, "sec", 0), (3, 1.4, "sec", 1), (5, 2.0, "sec", 2),
                                    (6, 3.7, "sec", 3), (8, 4.0, "sec", 4), (9, 5.2, "sec", 5)]


# -- display matrix (phone videos stored sideways) --------------------------------------------

def stored_for(upright: np.ndarray, degrees: int, hflip: bool, vflip: bool) -> np.ndarray:
    """The picture to store so that players show ``upright``. By PyAV's description of
    ``set_display_rotation``, players turn the stored picture ``degrees`` counterclockwise and
    then mirror it; so mirror ``upright`` and turn it back."""
    shown = upright[:, ::-1] if hflip else upright
    shown = shown[::-1] if vflip else shown
    return np.ascontiguousarray(np.rot90(shown, k=-degrees // 90))


def orientation_errors(image, upright: np.ndarray) -> dict[str, float]:
    """Mean absolute pixel error of ``image`` against ``upright`` and its same-size turns."""
    px = np.asarray(image, dtype=np.int16)
    turns = {"upright": upright, "mirrored": upright[:, ::-1], "upside_down": upright[::-1],
             "turned_180": upright[::-1, ::-1]}
    return {k: float(np.abs(px - v).mean()) for k, v in turns.items()}


# (degrees counterclockwise, hflip, vflip): -90 is the usual portrait phone video (its old
# "rotate" tag said 90 clockwise); the mirrored cases are the other EXIF-like orientations.
DISPLAYS = [(-90, False, False), (90, False, False), (180, False, False), (0, True, False),
            (0, False, True), (90, True, False), (-90, True, False)]


@pytest.mark.parametrize("display", DISPLAYS)
def test_frames_are_turned_upright_by_the_display_matrix(tmp_path, display):
    upright = [picture(s) for s in range(3)]  # landscape W x H
    stored = [stored_for(u, *display) for u in upright]
    path = write_video(tmp_path / "phone.mp4", stored, rate=RATE, options=X264_GOP48,
                       display=display)
    with av.open(str(path)) as c:  # the file holds the stored pictures and a display matrix
        raw = next(c.decode(video=0))
        assert (raw.width, raw.height) == (stored[0].shape[1], stored[0].shape[0])
        assert raw.side_data.get(av.sidedata.sidedata.Type.DISPLAYMATRIX) is not None
    got = list(sample_frames(path, fps=1))
    assert [f.image.size for f in got] == [(W, H)] * 3
    info = probe_video(path)  # the header describes the frames as they come out
    assert (info.width, info.height) == (W, H)
    assert (info.stored_width, info.stored_height) == (stored[0].shape[1], stored[0].shape[0])
    if not (display[1] or display[2]):  # mirrored: ffmpeg reads some as 180 plus a flip
        assert info.rotation == (-display[0]) % 360
    for second, f in enumerate(got):
        errors = orientation_errors(f.image, upright[second])
        assert min(errors, key=errors.get) == "upright" and errors["upright"] < 8, errors
        assert second_shown(f.image) == second


def test_extract_frames_writes_upright_images(tmp_path):
    upright = [picture(s) for s in range(2)]
    path = write_video(tmp_path / "phone.mov", [stored_for(u, -90, False, False)
                                                for u in upright],
                       rate=RATE, options=X264_GOP48, display=(-90, False, False))
    summary = extract_frames([path], tmp_path / "out", fps=1, image_format="png",
                             progress=False)
    assert summary.ok and summary.frames_written == 2
    for second in range(2):
        with Image.open(tmp_path / "out" / f"phone-sec-{RATE * second}.png") as im:
            assert im.size == (W, H)
            errors = orientation_errors(im.convert("RGB"), upright[second])
            assert min(errors, key=errors.get) == "upright", errors


def test_apply_display_matrix_without_a_turn_and_at_an_odd_angle():
    im = Image.fromarray(picture(1))
    one = 1 << 16  # 16.16 fixed point
    identity = (one, 0, 0, 0, one, 0, 0, 0, 1 << 30)
    assert apply_display_matrix(im, None) is im
    assert apply_display_matrix(im, identity) is im
    # 30 degrees: not a multiple of 90, turned like ffmpeg's rotate filter (same size).
    c, s = round(one * np.cos(np.pi / 6)), round(one * np.sin(np.pi / 6))
    turned = apply_display_matrix(im, (c, -s, 0, s, c, 0, 0, 0, 1 << 30))
    assert turned.size == im.size and turned.tobytes() != im.tobytes()


def test_probe_reports_duration_and_rate(videos):
    info = probe_video(videos["mp4"])
    assert (info.width, info.height, info.codec) == (W, H, "h264")
    assert info.duration_s == pytest.approx(8.0)
    assert info.average_fps == pytest.approx(24.0)
    assert probe_video(videos["gif"]).duration_s == pytest.approx(5.0)


# -- keyframes mode ---------------------------------------------------------------------------

def test_keyframes_mode_every_key_frame_plus_one_per_second(videos):
    keys = key_frame_times(videos["mp4"])
    assert keys == [0.0, 2.0, 4.0, 6.0]  # the fixture's GOP, checked independently
    got = sampled(videos["mp4"], fps=1, keyframes=True)
    # A tick that falls on a key frame yields it once, as "key".
    assert got == [(24 * s, float(s), "key" if s % 2 == 0 else "sec", s) for s in range(8)]
    assert [g[1] for g in got if g[2] == "key"] == keys


def test_keyframes_only_skips_non_key_frames(videos):
    got = sampled(videos["mp4"], fps=None, keyframes=True)
    assert [(g[1], g[2], g[3]) for g in got] == [(t, "key", int(t)) for t in (0.0, 2.0, 4.0, 6.0)]
    assert [g[0] for g in got] == [0, 48, 96, 144]  # estimated from time x rate


def test_keyframes_with_short_gop(videos):
    got = sampled(videos["short_gop"], fps=1, keyframes=True)
    keys = key_frame_times(videos["short_gop"])
    assert len(keys) == 16
    assert [g[1] for g in got if g[2] == "key"] == keys
    assert [g for g in got if g[2] == "sec"] == []  # every tick lands on a key frame


# -- seeking ------------------------------------------------------------------------------------

def test_seek_for_sparse_ticks_gives_the_same_frames_with_less_decoding(videos):
    path = videos["short_gop"]  # key frame every 0.5 s, tick every 4 s: auto seeks
    seen_seq, seen_auto = [], []
    seq = list(sample_frames(path, fps=0.25, seek="never", progress=seen_seq.append))
    auto = list(sample_frames(path, fps=0.25, seek="auto", progress=seen_auto.append))
    assert [(f.time_s, f.frame_type) for f in auto] == [(0.0, "sec"), (4.0, "sec")]
    assert [(f.time_s, f.index) for f in auto] == [(f.time_s, f.index) for f in seq]
    for a, b in zip(auto, seq):
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert len(seen_seq) == 8 * RATE
    assert len(seen_auto) < len(seen_seq) // 2, "auto should have skipped most frames by seeking"


def test_no_seek_at_one_fps_with_long_gop(videos):
    seen = []
    list(sample_frames(videos["mp4"], fps=1, seek="auto", progress=seen.append))
    assert len(seen) == 8 * RATE  # sequential: every frame decoded once


# -- batches for scan ---------------------------------------------------------------------------

def test_iter_sampled_frames_batches(videos):
    batches = list(iter_sampled_frames(videos["mp4"], fps=1, batch_size=3))
    assert [len(b) for b in batches] == [3, 3, 2]
    assert all(b.video == videos["mp4"] for b in batches)
    assert [t for b in batches for t in b.times_s] == [float(s) for s in range(8)]
    assert [i for b in batches for i in b.indices] == [24 * s for s in range(8)]
    assert all(isinstance(im, Image.Image) and im.size == (W, H)
               for b in batches for im in b.images)
    with pytest.raises(ConfigError, match="batch_size"):
        next(iter_sampled_frames(videos["mp4"], batch_size=0))


# -- extract_frames ----------------------------------------------------------------------------

def read_manifest(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def test_extract_frames_writes_images_and_labelable_manifest(videos, tmp_path):
    out = tmp_path / "frames"
    summary = extract_frames([videos["mp4"], videos["gif"]], out, fps=1, keyframes=True,
                             progress=False)
    assert summary.ok and summary.frames_written == 8 + 4 and summary.frames_dropped == 0
    cols, rows = read_manifest(out / "manifest.csv")
    assert tuple(cols) == FRAME_COLUMNS
    mp4_rows = [r for r in rows if r["group"] == "ep01"]
    assert [r["path"] for r in mp4_rows] == [
        f"ep01-{'key' if s % 2 == 0 else 'sec'}-{24 * s}.jpg" for s in range(8)]
    for r in rows:
        assert r["label"] == "" and r["split"] == ""
        img = Image.open(out / r["path"])  # path is relative to the CSV
        # The video shows picture s during second s; GIF frame i shows picture i.
        shown = int(float(r["time_s"])) if r["group"] == "ep01" else int(r["frame_index"])
        assert second_shown(img) == shown
        assert r["path"] == f"{r['group']}-{r['frame_type']}-{r['frame_index']}.jpg"
    assert {r["video"] for r in rows} == {"ep01.mp4", "vfr.gif"}
    meta = json.loads((out / "manifest.json").read_text())
    assert meta["settings"]["keyframes"] is True and len(meta["videos"]) == 2
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temp files

    # Label a row by editing the CSV, run again: the label survives, nothing is duplicated.
    rows[0]["label"], rows[0]["split"] = "face", "train"
    with open(out / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    extract_frames([videos["mp4"]], out, fps=1, keyframes=True, progress=False)
    _, again = read_manifest(out / "manifest.csv")
    assert len(again) == len(rows)
    assert (again[0]["path"], again[0]["label"], again[0]["split"]) == \
        (rows[0]["path"], "face", "train")


def test_extract_frames_png_and_rerun_with_other_settings(videos, tmp_path):
    summary = extract_frames([videos["mp4"]], tmp_path, fps=0.5, image_format="png",
                             progress=False)
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    assert summary.frames_written == 4 and names == sorted(
        f"ep01-sec-{i}.png" for i in (0, 48, 96, 144))
    # Again at 0.25 fps: the two frames shared with the first run keep their rows, the manifest
    # lists exactly this run's frames, and the 2 rows no longer produced are reported.
    again = extract_frames([videos["mp4"]], tmp_path, fps=0.25, image_format="png",
                           progress=False)
    _, rows = read_manifest(tmp_path / "manifest.csv")
    assert [r["path"] for r in rows] == ["ep01-sec-0.png", "ep01-sec-96.png"]
    assert again.stale_rows == 2 and "2 row(s) of an earlier run" in str(again)


def test_dedup_drops_static_repeats_and_reports_the_count(videos, tmp_path):
    plain = extract_frames([videos["static"]], tmp_path / "all", fps=1, progress=False)
    assert plain.frames_written == 8
    summary = extract_frames([videos["static"]], tmp_path / "dedup", fps=1, dedup=4,
                             progress=False)
    assert summary.frames_written == 2 and summary.frames_dropped == 6
    assert "6 near-duplicate frame(s) dropped" in str(summary)
    _, rows = read_manifest(tmp_path / "dedup" / "manifest.csv")
    assert [r["time_s"] for r in rows] == ["0.000", "4.000"]
    assert len(list((tmp_path / "dedup").glob("*.jpg"))) == 2


def test_dhash_and_duplicate_filter():
    a, b = Image.fromarray(picture(1)), Image.fromarray(picture(2))
    assert dhash(a) == dhash(a.copy())
    assert bin(dhash(a) ^ dhash(a.resize((W * 2, H * 2)))).count("1") <= 4  # ~scale-invariant
    assert bin(dhash(a) ^ dhash(b)).count("1") > 10
    f = NearDuplicateFilter(0)
    assert [f.is_duplicate(x) for x in (a, b, a.copy(), b)] == [False, False, True, True]
    assert f.dropped == 2
    with pytest.raises(ConfigError, match="0 to 64"):
        NearDuplicateFilter(65)


# -- bad inputs ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bad_inputs(videos, tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    text = d / "notes.mp4"
    text.write_text("this is a text file, not a video\n" * 50)
    data = videos["mp4"].read_bytes()  # moov atom at the end: cut, the index is gone
    (d / "cut_index.mp4").write_bytes(data[: len(data) // 2])
    data = videos["faststart"].read_bytes()  # moov first: cut, the stream ends early
    (d / "cut_stream.mp4").write_bytes(data[: len(data) // 2])
    audio = write_audio_only(d / "sound.m4a", packets=20)
    return {"missing": d / "missing.mp4", "text": text, "cut_index": d / "cut_index.mp4",
            "cut_stream": d / "cut_stream.mp4", "audio": audio}


@pytest.mark.parametrize("name,reason", [
    ("missing", "no such file"),
    ("text", "not a video"),
    ("cut_index", "truncated or corrupt"),
    ("cut_stream", "truncated"),
    ("audio", "no video stream"),
])
def test_bad_input_error_names_the_file(bad_inputs, name, reason):
    path = bad_inputs[name]
    with pytest.raises(BadVideoError) as info:
        list(sample_frames(path, fps=1))
    assert str(path) in str(info.value) and reason in str(info.value)
    assert isinstance(info.value, AnimeFacesError)
    assert info.value.path == str(path) and reason in info.value.reason


def test_bad_video_error_lives_in_errors_and_is_re_exported_by_video():
    import animefaces.errors
    import animefaces.data.video

    assert animefaces.data.video.BadVideoError is animefaces.errors.BadVideoError is BadVideoError
    assert issubclass(BadVideoError, animefaces.errors.AnimeFacesError)


def test_batches_before_a_stream_error_are_delivered(bad_inputs):
    got = []
    with pytest.raises(BadVideoError, match="truncated"):
        for batch in iter_sampled_frames(bad_inputs["cut_stream"], fps=1, batch_size=16):
            got.extend(batch.frames)
    assert got and [f.time_s for f in got] == [float(s) for s in range(len(got))]
    assert [second_shown(f.image) for f in got] == list(range(len(got)))


def test_bad_inputs_do_not_stop_the_others(videos, bad_inputs, tmp_path):
    inputs = [bad_inputs["missing"], videos["mp4"], bad_inputs["text"], bad_inputs["cut_index"],
              bad_inputs["cut_stream"], bad_inputs["audio"], videos["gif"]]
    summary = extract_frames(inputs, tmp_path, fps=1, progress=False)
    failed = {r.video for r in summary.failures}
    assert failed == {str(bad_inputs[k]) for k in bad_inputs}
    assert not summary.ok
    by_video = {r.video: r for r in summary.results}
    assert by_video[str(videos["mp4"])].frames_written == 8
    assert by_video[str(videos["gif"])].frames_written == 4
    text = str(summary)
    for p in bad_inputs.values():
        assert str(p) in text
    assert "5 video(s) failed" in text


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


def test_cli_frames_exit_codes(videos, bad_inputs, tmp_path, capsys):
    assert cli(["frames", str(videos["mp4"]), "--out", str(tmp_path / "ok"), "-q",
                "--keyframes", "--dedup", "3", "--format", "png"]) == 0
    out = capsys.readouterr().out
    assert "8 frame(s) from 1 of 1 video(s)" in out
    assert len(list((tmp_path / "ok").glob("ep01-key-*.png"))) == 4

    rc = cli(["frames", str(videos["mp4"]), str(bad_inputs["text"]), "--out",
              str(tmp_path / "mixed"), "-q"])
    out = capsys.readouterr().out
    assert rc == 1 and f"error: cannot read video {bad_inputs['text']}" in out
    assert len(list((tmp_path / "mixed").glob("*.jpg"))) == 8

    # --fps 0 without --keyframes keeps nothing: a usage error, exit 2, one line.
    assert cli(["frames", str(videos["mp4"]), "--out", str(tmp_path / "x"), "--fps", "0"]) == 2
    assert "--keyframes" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli(["frames", str(videos["mp4"]), "--out", str(tmp_path / "x"), "--dedup", "99"])


def test_options_are_checked_before_work(videos, tmp_path):
    with pytest.raises(ConfigError, match="jpg, png"):
        extract_frames([videos["mp4"]], tmp_path, image_format="bmp", progress=False)
    with pytest.raises(ConfigError, match="positive"):
        list(sample_frames(videos["mp4"], fps=-1))
    with pytest.raises(ConfigError, match="auto, never, always"):
        list(sample_frames(videos["mp4"], seek="sometimes"))
    other = tmp_path / "other"
    other.mkdir()
    (other / "ep01.mkv").write_bytes(b"x")
    with pytest.raises(ConfigError, match="share the name 'ep01'"):
        extract_frames([videos["mp4"], other / "ep01.mkv"], tmp_path / "o", progress=False)
    (tmp_path / "o2").mkdir()
    (tmp_path / "o2" / "manifest.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ConfigError, match="not a manifest"):
        extract_frames([videos["mp4"]], tmp_path / "o2", progress=False)


def test_main_cli_registers_frames_and_crops():
    cli_mod = pytest.importorskip("animefaces.cli")
    if not hasattr(cli_mod, "build_parser"):
        pytest.skip("the main CLI has no build_parser()")
    parser = cli_mod.build_parser()
    args = parser.parse_args(["frames", "v.mp4", "--out", "o"])
    assert args.func.__name__ == "cmd_frames"
    args = parser.parse_args(["crops", "f", "--cascade", "c.xml", "--out", "o"])
    assert args.func.__name__ == "cmd_crops" and args.keyframes is True
