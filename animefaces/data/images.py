"""Robust image decoding: any file a user may feed us becomes an RGB image or a clear error.

Handles grayscale, RGBA / LA / palette transparency (composited on white), CMYK, 16-bit and float
images, EXIF orientation, animated images (first frame), decompression bombs (one pixel limit with
one message), folders, FIFOs and devices (only regular files are read, and only up to the size an
image within the limit can have), and truncated / corrupt / empty / non-image files
(:class:`BadImageError` naming the file).
JPEGs are decoded at reduced size when the target is much smaller (Pillow's draft mode), which is
about 1.6x faster for video frames and loses nothing after the resize.
"""

from __future__ import annotations

import math
import os
import stat
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import BadImageError

# Larger than any video frame (8K is 33 Mpx) or ordinary illustration; a bomb guard, not a policy.
# The one pixel limit (README: "Images over 120 Mpx are refused"): Pillow's own guard (a warning
# above 89 Mpx, an error above 179 Mpx, with its own message) is off while we open a header, so
# this limit, with its message, is the one users meet.
DEFAULT_MAX_PIXELS = 120_000_000
# No image file within the pixel limit needs more than this many bytes a pixel (16-bit RGBA,
# uncompressed), plus room for metadata: a larger file is refused before a byte is read.
_BYTES_PER_PIXEL = 8
_METADATA_BYTES = 64 << 20
_OPEN_LOCK = threading.Lock()
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def is_image_name(path: os.PathLike | str) -> bool:
    """True when the file name has an image extension we scan for in folders."""
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def max_file_bytes(max_pixels: int = DEFAULT_MAX_PIXELS) -> int:
    """The largest file size an image within ``max_pixels`` can have (see :func:`check_image_file`)."""
    return max_pixels * _BYTES_PER_PIXEL + _METADATA_BYTES


def check_image_file(path: os.PathLike | str, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> os.stat_result:
    """What must hold before a file is read at all: it exists, is a regular file (after
    following links: a FIFO would block for ever, ``/dev/zero`` never ends), is not empty and not
    larger than any image within the pixel limit can be.

    Returns:
        The file's ``os.stat`` (links followed).

    Raises:
        BadImageError: naming the file and what it is instead.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise BadImageError(path, "no such file") from None
    except OSError as exc:
        raise BadImageError(path, f"cannot access it ({exc.strerror})") from None
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        raise BadImageError(path, "it is a folder, not an image file")
    if not stat.S_ISREG(mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a character device"
                if stat.S_ISCHR(mode) else "a block device" if stat.S_ISBLK(mode) else
                "a socket" if stat.S_ISSOCK(mode) else "a special file")
        link = f" (a link to {os.path.realpath(path)})" if os.path.islink(path) else ""
        raise BadImageError(path, f"it is {kind}{link}, not a regular file; only regular image "
                                  f"files are read")
    if st.st_size == 0:
        raise BadImageError(path, "the file is empty (0 bytes)")
    limit = max_file_bytes(max_pixels)
    if st.st_size > limit:
        raise BadImageError(path, f"the file is {st.st_size:,} bytes, more than any image within the "
                                  f"limit of {max_pixels:,} pixels can take ({limit:,} bytes); "
                                  f"raise the limit with max_pixels= / --max-pixels if you trust it")
    return st


def _open_header(path: Path, max_pixels: int) -> Image.Image:
    """``Image.open`` (the header only) with our pixel limit instead of Pillow's."""
    # Pillow's bomb check reads the module-wide MAX_IMAGE_PIXELS during open; it is switched off
    # for this short step only, under a lock our decode threads share (the decode itself, the
    # expensive part, runs outside the lock, in parallel), and our own check follows at once.
    with _OPEN_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            img = Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    w, h = img.size
    if w * h > max_pixels:
        img.close()
        raise BadImageError(
            path, f"it is {w}x{h} = {w * h:,} pixels, above the limit of {max_pixels:,} "
                  f"(a guard against decompression bombs); shrink it, or raise the limit "
                  f"with max_pixels= / --max-pixels if you trust the file")
    if w < 1 or h < 1:
        img.close()
        raise BadImageError(path, f"it has no pixels ({w}x{h})")
    return img


def _header_errors(path: Path, exc: Exception) -> BadImageError:
    if isinstance(exc, UnidentifiedImageError):
        return BadImageError(path, "not an image, or a format Pillow cannot read "
                                   "(expected JPEG, PNG, WebP, BMP, GIF or TIFF)")
    if isinstance(exc, Image.DecompressionBombError):
        return BadImageError(path, f"too large ({exc})")
    return BadImageError(path, f"the file is truncated or corrupt ({exc})")


def image_size(path: os.PathLike | str, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) of an image file from its header, with the checks of :func:`open_image`.

    Raises:
        BadImageError: as :func:`open_image` (nothing is decoded).
    """
    path = Path(path)
    check_image_file(path, max_pixels=max_pixels)
    try:
        with _open_header(path, max_pixels) as img:
            return img.size
    except BadImageError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError,
            ValueError, EOFError) as exc:
        raise _header_errors(path, exc) from None


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        if mode == "F" and arr.max(initial=0) <= 1.0:
            top = 1.0
        arr8 = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def open_image(path: os.PathLike | str, *, draft_size: tuple[int, int] | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an image file to an RGB PIL image.

    Args:
        path: the file.
        draft_size: (width, height) the caller will resize to; JPEGs are then decoded at the
            smallest DCT scale that is still at least that large.
        max_pixels: refuse images larger than this (decompression-bomb guard).

    Raises:
        BadImageError: the file is missing, not a regular file (a folder, FIFO or device), empty,
            not an image, truncated, corrupt or too large (in bytes or pixels).
    """
    path = Path(path)
    check_image_file(path, max_pixels=max_pixels)
    try:
        img = _open_header(path, max_pixels)
    except BadImageError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError,
            ValueError, EOFError) as exc:
        raise _header_errors(path, exc) from None
    try:
        if draft_size is not None and img.format == "JPEG":
            img.draft("RGB", draft_size)
        img.load()
        # The image is ours: transpose in place instead of the full copy exif_transpose makes
        # by default even when there is nothing to turn (a second 330 MB for a 110 Mpx PNG).
        ImageOps.exif_transpose(img, in_place=True)
        return _to_rgb(img)
    except (Image.DecompressionBombError, OSError, SyntaxError, ValueError, EOFError) as exc:
        img.close()  # a truncated file's handle is not left to the garbage collector
        raise _header_errors(path, exc) from None


def as_rgb_image(image, *, draft_size=None, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Accept a path, a PIL image or a numpy array and return an RGB PIL image.

    Arrays may be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), uint8 (0-255), uint16 (0-65535) or
    float (0-1).

    Raises:
        BadImageError: for an unreadable file or an array of the wrong shape / dtype.
    """
    if isinstance(image, (str, os.PathLike)):
        return open_image(image, draft_size=draft_size, max_pixels=max_pixels)
    if isinstance(image, Image.Image):
        return _to_rgb(ImageOps.exif_transpose(image))
    if isinstance(image, np.ndarray):
        return _array_to_image(image)
    raise BadImageError(repr(type(image).__name__),
                        "expected a file path, a PIL.Image or a numpy array")


def _array_to_image(arr: np.ndarray) -> Image.Image:
    name = f"<array shape={arr.shape} dtype={arr.dtype}>"
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise BadImageError(name, "expected shape (H, W), (H, W, 3) or (H, W, 4)")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise BadImageError(name, "the array has no pixels")
    if arr.dtype == np.uint8:
        arr8 = arr
    elif arr.dtype == np.uint16:
        arr8 = (arr.astype(np.float64) / 257.0 + 0.5).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise BadImageError(name, "the array holds NaN or infinite values")
        arr8 = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    else:
        raise BadImageError(name, "expected dtype uint8 (0-255), uint16 or float (0-1)")
    return _to_rgb(Image.fromarray(np.ascontiguousarray(arr8)))


def resize_to_array(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """Resize (squash, as the paper does) to (height, width) and return (H, W, 3) uint8."""
    h, w = size
    if img.size != (w, h):
        img = img.resize((w, h), Image.BILINEAR, reducing_gap=None)
    return np.asarray(img, dtype=np.uint8)


def apply_display_matrix(image: Image.Image, matrix: Sequence[int] | None) -> Image.Image:
    """Turn a decoded picture the way its display matrix says it is to be shown.

    Phone videos are often stored sideways (the sensor's orientation) with a display matrix
    (in MP4/MOV, read by FFmpeg as ``AV_PKT_DATA_DISPLAYMATRIX`` side data) that rotates and
    possibly mirrors the picture for display. This applies it as ``ffmpeg`` does by default
    (``-autorotate``): rotations by multiples of 90 degrees and mirrorings exactly, any other
    angle with a bicubic rotation that keeps the picture's size.

    Args:
        image: the decoded picture, as stored.
        matrix: the 3x3 display matrix as 9 integers in FFmpeg's layout (16.16 fixed point),
            or None when the video has none.

    Returns:
        the upright picture (``image`` itself when there is nothing to do); a rotation by 90 or
        270 degrees swaps width and height.
    """
    if matrix is None or len(matrix) < 9:
        return image
    m = matrix
    theta = display_rotation(m)
    if theta is None:  # degenerate: not a rotation
        return image
    # The cases and the matrix entries that pick a mirrored variant are ffmpeg's (fftools), so
    # frames look as in ffmpeg and players. PIL's ROTATE_90 turns counterclockwise; TRANSPOSE
    # and TRANSVERSE are ffmpeg's transpose=cclock_flip and clock_flip.
    _T = Image.Transpose
    ops: list[Image.Transpose] = []
    if abs(theta - 90) < 1:
        ops = [_T.TRANSPOSE if m[3] > 0 else _T.ROTATE_270]   # cclock_flip / clock
    elif abs(theta - 180) < 1:
        ops = ([_T.FLIP_LEFT_RIGHT] if m[0] < 0 else []) + \
              ([_T.FLIP_TOP_BOTTOM] if m[4] < 0 else [])
    elif abs(theta - 270) < 1:
        ops = [_T.TRANSVERSE if m[3] < 0 else _T.ROTATE_90]   # clock_flip / cclock
    elif abs(theta) >= 1:
        # ffmpeg's rotate filter: clockwise, same size, black corners.
        return image.rotate(-theta, resample=Image.Resampling.BICUBIC, expand=False)
    elif m[4] < 0:
        ops = [_T.FLIP_TOP_BOTTOM]
    for op in ops:
        image = image.transpose(op)
    return image


def display_rotation(matrix: Sequence[int] | None) -> int | None:
    """The clockwise angle in [0, 360) that a display matrix turns the stored picture by, as
    ffmpeg computes it (``av_display_rotation_get``, then fftools' ``get_rotation``); 0 for no
    matrix, None for a degenerate one."""
    if matrix is None or len(matrix) < 9:
        return 0
    m = matrix
    scale0, scale1 = math.hypot(m[0], m[3]), math.hypot(m[1], m[4])
    if scale0 == 0 or scale1 == 0:
        return None
    ccw = -math.degrees(math.atan2(m[1] / scale1, m[0] / scale0))
    theta = -round(ccw)
    return int(theta - 360 * math.floor(theta / 360 + 0.9 / 360))
