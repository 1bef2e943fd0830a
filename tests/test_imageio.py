"""Every kind of file a user may feed us decodes to RGB or fails with a message naming it."""

import io

import numpy as np
import pytest
from PIL import Image

from animefaces.data.images import as_rgb_image, open_image, resize_to_array
from animefaces.errors import BadImageError


def save(img, path, **kw):
    img.save(path, **kw)
    return path


def test_grayscale_palette_cmyk_become_rgb(tmp_path):
    for mode, name in (("L", "g.png"), ("P", "p.png"), ("CMYK", "c.jpg"), ("1", "b.png")):
        p = save(Image.new(mode, (20, 10)), tmp_path / name)
        img = open_image(p)
        assert img.mode == "RGB" and img.size == (20, 10)


def test_rgba_is_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red
    img = open_image(save(rgba, tmp_path / "a.png"))
    assert img.getpixel((0, 0)) == (255, 255, 255)
    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([10, 20, 30] * 256)
    pal.info["transparency"] = 0
    assert open_image(save(pal, tmp_path / "t.png", transparency=0)).getpixel((1, 1)) == (255, 255, 255)


def test_16bit_is_scaled_not_clipped(tmp_path):
    arr = np.full((6, 6), 65535 // 2, np.uint16)
    img = open_image(save(Image.fromarray(arr), tmp_path / "d.png"))
    r, g, b = img.getpixel((0, 0))
    assert 120 <= r <= 135 and r == g == b


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 255, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 on display
    p = tmp_path / "o.jpg"
    img.save(p, exif=exif)
    assert open_image(p).size == (20, 40)


@pytest.mark.parametrize("content, expected", [
    (b"", "empty"),
    (b"hello, I am not a picture", "not an image"),
])
def test_bad_files_are_named(tmp_path, content, expected):
    p = tmp_path / "bad.jpg"
    p.write_bytes(content)
    with pytest.raises(BadImageError, match=expected) as ei:
        open_image(p)
    assert str(p) in str(ei.value)


def test_truncated_and_corrupt_files(tmp_path):
    buf = io.BytesIO()
    Image.effect_noise((200, 200), 50).convert("RGB").save(buf, "JPEG")
    data = buf.getvalue()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadImageError, match="truncated or corrupt"):
        open_image(tmp_path / "trunc.jpg")
    png = io.BytesIO()
    Image.effect_noise((120, 120), 80).convert("RGB").save(png, "PNG")
    broken = bytearray(png.getvalue())
    mid = len(broken) // 2
    broken[mid:mid + 400] = bytes(range(256)) + bytes(144)
    (tmp_path / "corrupt.png").write_bytes(bytes(broken))
    with pytest.raises(BadImageError, match="corrupt.png"):
        open_image(tmp_path / "corrupt.png")


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(BadImageError, match="no such file"):
        open_image(tmp_path / "nope.png")
    with pytest.raises(BadImageError, match="folder"):
        open_image(tmp_path)


def test_decompression_bomb_guard(tmp_path):
    p = save(Image.new("RGB", (300, 300)), tmp_path / "big.png")
    with pytest.raises(BadImageError, match="decompression bombs"):
        open_image(p, max_pixels=10_000)


def test_tiny_image_still_resizes(tmp_path):
    p = save(Image.new("RGB", (1, 1), (9, 8, 7)), tmp_path / "tiny.png")
    arr = resize_to_array(open_image(p), (64, 64))
    assert arr.shape == (64, 64, 3) and tuple(arr[0, 0]) == (9, 8, 7)


def test_jpeg_draft_decodes_smaller_but_large_enough(tmp_path):
    p = save(Image.new("RGB", (1280, 720), (1, 2, 3)), tmp_path / "frame.jpg")
    img = open_image(p, draft_size=(224, 224))
    assert img.size[0] >= 224 and img.size[1] >= 224 and img.size[0] < 1280


def test_numpy_and_pil_inputs():
    assert as_rgb_image(np.zeros((5, 7), np.uint8)).size == (7, 5)
    assert as_rgb_image(np.zeros((5, 7, 4), np.uint8)).getpixel((0, 0)) == (255, 255, 255)
    assert as_rgb_image(np.ones((5, 7, 3), np.float32)).getpixel((0, 0)) == (255, 255, 255)
    assert as_rgb_image(Image.new("LA", (3, 3))).mode == "RGB"
    with pytest.raises(BadImageError, match="shape"):
        as_rgb_image(np.zeros((5, 7, 2), np.uint8))
    with pytest.raises(BadImageError, match="NaN"):
        as_rgb_image(np.full((2, 2, 3), np.nan, np.float32))
    with pytest.raises(BadImageError, match="expected a file path"):
        as_rgb_image(12345)
