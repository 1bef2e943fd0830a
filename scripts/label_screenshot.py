"""Take the README's screenshot of the labelling page (docs/label-page.png) on synthetic frames.

Draws 160 cartoon 640x360 frames (a face on a scene; a scene alone, some with a round
skin-coloured decoy in it; nothing from the shared data, which is not ours to publish), labels
45 of them through the page's own API in the order the page asks for, then opens the page in headless Chromium (Debian's chromium + chromium-driver,
driven by Selenium) and saves a screenshot.

    .venv/bin/python scripts/label_screenshot.py [--out docs/label-page.png]
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]


def scene(rng, size=(640, 360)) -> Image.Image:
    w, h = size
    img = Image.new("RGB", size, tuple(int(v) for v in rng.integers(120, 230, 3)))
    d = ImageDraw.Draw(img)
    ground = int(h * rng.uniform(0.55, 0.8))
    d.rectangle([0, ground, w, h], fill=tuple(int(v) for v in rng.integers(40, 140, 3)))
    for _ in range(int(rng.integers(2, 6))):
        x, bw, bh = int(rng.integers(0, w)), int(rng.integers(40, 140)), int(rng.integers(40, 200))
        d.rectangle([x, ground - bh, x + bw, ground], fill=tuple(int(v) for v in rng.integers(60, 200, 3)))
    return img


def decoy_frame(rng) -> Image.Image:
    """A scene with a round, skin-coloured thing in it (a moon, a ball): no face, but close."""
    img = scene(rng)
    d = ImageDraw.Draw(img)
    r = int(rng.integers(30, 90))
    cx, cy = int(rng.integers(r, 640 - r)), int(rng.integers(r, 360 - r))
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(250, 222, 196))
    return img


def face_frame(rng) -> Image.Image:
    img = scene(rng)
    d = ImageDraw.Draw(img)
    r = int(rng.integers(18, 120))
    cx, cy = int(rng.integers(r, 640 - r)), int(rng.integers(r, 360 - r // 2))
    hair = tuple(int(v) for v in rng.integers(20, 200, 3))
    d.ellipse([cx - r - 12, cy - r - 18, cx + r + 12, cy + r // 2], fill=hair)
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(250, 222, 196))
    eye = tuple(int(v) for v in rng.integers(20, 160, 3))
    for ex in (cx - r // 2.6, cx + r // 2.6):
        d.ellipse([ex - r // 6, cy - r // 5, ex + r // 6, cy + r // 4], fill=eye)
        d.ellipse([ex - r // 16, cy - r // 8, ex + r // 16, cy], fill=(255, 255, 255))
    d.arc([cx - r // 4, cy + r // 3, cx + r // 4, cy + r // 2], 20, 160, fill=(160, 50, 50), width=3)
    return img


def make_frames(root: Path, n: int = 160, seed: int = 0) -> tuple[Path, dict]:
    rng = np.random.default_rng(seed)
    (root / "frames").mkdir(parents=True)
    rows, truth = [], {}
    for i in range(n):
        ep = f"episode-{1 + i * 4 // n:02d}"
        is_face = rng.random() < 0.55
        name = f"frames/{ep}-sec-{i:04d}.jpg"
        maker = face_frame if is_face else decoy_frame if rng.random() < 0.4 else scene
        maker(rng).save(root / name, quality=90)
        rows.append({"path": name, "label": "", "split": "", "group": ep})
        truth[name] = "face" if is_face else "no_face"
    m = root / "manifest.csv"
    with open(m, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "split", "group"])
        w.writeheader()
        w.writerows(rows)
    return m, truth


def api(url, path, body=None):
    req = urllib.request.Request(url + path, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def chrome(width=1400, height=900):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--no-first-run",
              f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}", f"--window-size={width},{height}"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(REPO / "docs" / "label-page.png"))
    ap.add_argument("--labels", type=int, default=45)
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="label-shot-"))
    manifest, truth = make_frames(tmp / "season")
    proc = subprocess.Popen([sys.executable, "-m", "animefaces.cli", "label", str(manifest),
                             "--every", "10",
                             "--cache-dir", str(tmp / "features"), "-q"],
                            stdout=subprocess.PIPE, text=True, cwd=tmp)
    try:
        url = proc.stdout.readline().split()[2]
        while api(url, "api/state")["features"]["running"]:
            time.sleep(0.2)
        for _ in range(args.labels):
            it = api(url, "api/next?n=1")["items"][0]
            v = api(url, "api/state")["version"]
            api(url, "api/label", {"i": it["i"], "label": truth[it["path"]], "picked": it["reason"],
                                   "version": v})
            # a person takes a second per frame, a refit less: wait for it as they would
            while api(url, "api/state")["model"]["fitting"]:
                time.sleep(0.1)
        driver = chrome()
        try:
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
                "width": 1400, "height": 860, "deviceScaleFactor": 1, "mobile": False})
            driver.get(url)
            time.sleep(3)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(args.out)
        finally:
            driver.quit()
    finally:
        proc.terminate()
        proc.wait(10)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
