"""Non-anime probe images for the out-of-domain guard (scikit-image / scikit-learn photos,
generated frames, held-out images) and the guard's catch rate on them
(``animefaces trust-check``).
"""

from __future__ import annotations

import numpy as np

from .ood import OODGuard, image_stats


# -- probes: inputs that are not anime frames ---------------------------------------------------------
SKIMAGE_PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "rocket", "stereo_motorcycle", "page",
                  "text", "moon", "hubble_deep_field", "brick", "grass", "gravel", "coins", "clock",
                  "immunohistochemistry", "retina", "cell", "microaneurysms")
SKIMAGE_GRAPHICS = ("colorwheel", "logo", "checkerboard", "horse", "binary_blobs",
                    "shepp_logan_phantom")


def _to_rgb_u8(arr) -> "Image.Image":
    from PIL import Image

    a = np.asarray(arr)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        a = (np.clip(a.astype(np.float64), 0, 1) * 255 + 0.5).astype(np.uint8)
    img = Image.fromarray(a)
    if img.mode == "RGBA":
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, img)
    return img.convert("RGB")


def generated_probes(*, seed: int = 0, size=(320, 180)) -> list[tuple[str, str, "Image.Image"]]:
    """Blank, near-uniform, gradient, noise and text-slide frames: ``[(kind, name, image)]``."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    W, H = size
    out = []
    for c in [(0, 0, 0), (255, 255, 255), (128, 128, 128), (30, 60, 200), (240, 200, 40)]:
        out.append(("blank", f"blank{c}", Image.new("RGB", (W, H), c)))
    for c in [(0, 0, 0), (255, 255, 255), (90, 140, 90)]:
        a = np.full((H, W, 3), c, np.float64) + rng.normal(0, 3, (H, W, 3))
        out.append(("near-uniform", f"near-uniform{c}", Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))))
    x = np.linspace(0, 1, W)[None, :, None]
    y = np.linspace(0, 1, H)[:, None, None]
    for i, (c0, c1) in enumerate([((0, 0, 0), (255, 255, 255)), ((20, 40, 120), (250, 180, 60)),
                                  ((200, 0, 0), (0, 0, 200))]):
        c0, c1 = np.array(c0, np.float64), np.array(c1, np.float64)
        out.append(("gradient", f"gradient-h{i}", Image.fromarray((c0 + (c1 - c0) * x + 0 * y).astype(np.uint8))))
        r = np.sqrt((x - 0.5) ** 2 + (y - 0.5) ** 2) / 0.71
        out.append(("gradient", f"gradient-r{i}", Image.fromarray((c0 + (c1 - c0) * r).astype(np.uint8))))
    for i in range(3):
        out.append(("noise", f"noise-rgb{i}", Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8))))
        g = np.clip(rng.normal(128, 40, (H, W, 1)), 0, 255).astype(np.uint8)
        out.append(("noise", f"noise-gray{i}", Image.fromarray(np.repeat(g, 3, 2))))
    words = ("the quick brown fox jumps over a lazy dog; results accuracy table model chapter "
             "episode next week summary agenda thank you questions").split()
    schemes = [((255, 255, 255), (0, 0, 0)), ((20, 40, 120), (255, 255, 255)),
               ((0, 0, 0), (230, 230, 230)), ((245, 240, 220), (60, 30, 10))]
    for i in range(8):
        bg, fg = schemes[i % 4]
        img = Image.new("RGB", (W * 2, H * 2), bg)
        draw = ImageDraw.Draw(img)
        font = ImageFont.load_default(size=int(rng.integers(18, 40)))
        yy = 15
        while yy < H * 2 - 30:
            draw.text((20, yy), " ".join(rng.choice(words, int(rng.integers(2, 6)))), fill=fg, font=font)
            yy += int(font.size * 1.5)
        out.append(("text-slide", f"text-slide{i}", img))
    return out


def probe_images(*, seed: int = 0, include_lfw: bool = True) -> list[tuple[str, str, "Image.Image"]]:
    """Non-anime inputs for measuring the guard's catch rate: ``[(kind, name, image)]``.

    Photos shipped inside registry packages (scikit-image's ``skimage.data``; scikit-learn's
    ``load_sample_images``), scikit-image's graphics, generated blank / gradient / noise /
    text-slide frames, tiny thumbnails of the photos, and (``include_lfw``) 20 real face photos
    from ``skimage.data.lfw_subset`` (25 px, upscaled to 112 px).
    Raises ImportError naming the package when scikit-image is missing.
    """
    try:
        import skimage.data as skd
    except ImportError as exc:
        raise ImportError("the non-anime probe images come from scikit-image: pip install "
                          "scikit-image (it is in the 'test' extra)") from exc
    from PIL import Image
    from sklearn.datasets import load_sample_images

    out = []
    for kind, names in (("photo", SKIMAGE_PHOTOS), ("graphic", SKIMAGE_GRAPHICS)):
        for n in names:
            arr = getattr(skd, n)()
            if isinstance(arr, tuple):
                arr = arr[0]
            out.append((kind, f"skimage:{n}", _to_rgb_u8(arr)))
    for n, arr in zip(("china", "flower"), load_sample_images().images):
        out.append(("photo", f"sklearn:{n}", _to_rgb_u8(arr)))
    out += generated_probes(seed=seed)
    for kind, name, img in list(out):
        if kind == "photo" and name.split(":")[1] in ("astronaut", "coffee", "rocket", "china", "chelsea"):
            w, h = img.size
            out.append(("tiny", f"tiny:{name}", img.resize((24, max(1, round(24 * h / w))), Image.BILINEAR)))
    if include_lfw:
        faces = skd.lfw_subset()
        for i in range(0, min(len(faces), 200), 10):
            img = _to_rgb_u8(faces[i])
            out.append(("lfw-face-upscaled", f"lfw:{i}@112", img.resize((112, 112), Image.BICUBIC)))
    return out


def heldout_probes() -> list[tuple[str, str, "Image.Image"]]:
    """Non-anime images that were *not* looked at while the soft-grayscale and palette-graphic
    tests were designed (a check that they generalise): matplotlib's sample photo and scientific
    arrays (an MRI slice, two elevation maps) and networkx's drawing test
    images, where the installed packages ship them. Kinds start with ``held-out``."""
    import gzip
    from pathlib import Path

    from PIL import Image

    out = []
    try:
        import matplotlib.cbook as cb
    except ImportError:
        cb = None
    if cb is not None:
        def sample(name):
            return Path(cb.get_sample_data(name, asfileobj=False))

        def gray(a):
            a = np.asarray(a, np.float64)
            lo, hi = np.nanpercentile(a, [1, 99])
            a = np.clip((np.nan_to_num(a, nan=lo) - lo) / max(hi - lo, 1e-9), 0, 1)
            return Image.fromarray((a * 255 + 0.5).astype(np.uint8)).convert("RGB")

        try:
            with Image.open(sample("grace_hopper.jpg")) as im:
                out.append(("held-out photo", "matplotlib:grace_hopper", im.convert("RGB")))
            with gzip.open(sample("s1045.ima.gz")) as f:
                mri = np.frombuffer(f.read(), "<u2").reshape(256, 256)
            out.append(("held-out scientific", "matplotlib:s1045-mri", gray(mri)))
            with np.load(sample("jacksboro_fault_dem.npz")) as z:
                out.append(("held-out scientific", "matplotlib:jacksboro-dem", gray(z["elevation"])))
            with np.load(sample("topobathy.npz")) as z:
                out.append(("held-out scientific", "matplotlib:topobathy", gray(z["topo"])))
        except (OSError, ValueError, KeyError):
            pass
    try:
        import networkx
        base = Path(networkx.__file__).parent / "drawing" / "tests" / "baseline"
        for f in sorted(base.glob("*.png")):
            with Image.open(f) as im:
                out.append(("held-out graphic", f"networkx:{f.stem}", _to_rgb_u8(np.asarray(im))))
    except ImportError:
        pass
    return out


def evaluate_probes(guard: OODGuard, extractor, probes=None) -> dict:
    """Catch rate of ``guard`` on :func:`probe_images` (or the given probes), per kind.

    Returns:
        ``{"kinds": {kind: {"n", "caught", "rate", "missed": [names]}}, "items": [...]}``.
    """
    probes = probe_images() if probes is None else probes
    X = extractor.transform_images([im for _, _, im in probes])
    S = np.stack([image_stats(im) for _, _, im in probes])
    flagged, reasons, dist = guard.flags(X, S)
    kinds: dict[str, dict] = {}
    items = []
    for (kind, name, _), f, r, d in zip(probes, flagged, reasons, dist):
        k = kinds.setdefault(kind, {"n": 0, "caught": 0, "missed": []})
        k["n"] += 1
        k["caught"] += int(f)
        if not f:
            k["missed"].append(name)
        items.append({"kind": kind, "name": name, "out_of_domain": bool(f), "reason": r,
                      "distance": round(float(d), 4)})
    for k in kinds.values():
        k["rate"] = round(k["caught"] / k["n"], 4)
    return {"kinds": kinds, "items": items}
