"""Pieces of a video (sample_frames with start_s / end_s, as Ray's decode tasks read them) hold
exactly the frames of a whole-video decode."""

import numpy as np
import pytest

pytest.importorskip("av")

from _videos import stamp_second, write_video, x264  # noqa: E402

from animefaces.data.video import sample_frames  # noqa: E402
from animefaces.features.distributed_video import split_ranges  # noqa: E402


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    rng = np.random.default_rng(0)
    pics = []
    for s in range(10):
        img = np.empty((48, 64, 3), np.uint8)
        img[:] = rng.integers(40, 216, 3)
        pics.append(stamp_second(img, s))
    return write_video(tmp_path_factory.mktemp("v") / "ten.mp4", pics, rate=12, options=x264(18))


def _frames(path, **kw):
    return [(f.time_s, f.index, f.frame_type, np.asarray(f.image)) for f in sample_frames(path, **kw)]


@pytest.mark.parametrize("kw", [{"fps": 1.0}, {"fps": 3.0}, {"fps": 1.0, "keyframes": True},
                                {"fps": 0.25, "seek": "always"}])
def test_pieces_equal_the_whole(video, kw):
    whole = _frames(video, **kw)
    step = 1.0 / kw["fps"]
    pieces = []
    for start, end in split_ranges(10.0, fps=kw["fps"], range_s=3.0) if step < 3 else [(0.0, 4.0), (4.0, None)]:
        pieces += _frames(video, start_s=start, end_s=end, **kw)
    assert [f[:3] for f in pieces] == [f[:3] for f in whole]
    assert all(np.array_equal(a[3], b[3]) for a, b in zip(pieces, whole))


def test_split_ranges_start_on_ticks_and_cover_the_video():
    assert split_ranges(None, fps=1.0) == [(0.0, None)]
    assert split_ranges(100.0, fps=1.0, range_s=60) == [(0.0, 60.0), (60.0, None)]
    r = split_ranges(10.0, fps=3.0, range_s=2.5)  # 2.5 s = 7.5 ticks -> 8 ticks
    assert r[0] == (0.0, 8 / 3) and r[-1][1] is None and all(a < b for a, b in r[:-1])


def test_a_piece_past_the_end_is_empty(video):
    assert _frames(video, fps=1.0, start_s=30.0, end_s=40.0) == []
