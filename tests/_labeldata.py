"""Helpers for the labelling tests: an unlabelled synthetic manifest (as `animefaces frames`
writes one: labels and splits empty), the true labels beside it, and a label server process.

A plain module beside the tests (``from _labeldata import ...``), like ``_videos``.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

from conftest import make_dataset

REPO = Path(__file__).resolve().parents[1]


def unlabelled(root: Path, n_per_class=(12, 6, 6, 6), *, seed: int = 0) -> tuple[Path, dict]:
    """conftest's synthetic dataset with its labels and splits emptied, an extra column kept.

    Returns:
        (manifest path, {manifest path column: true label}).
    """
    m = make_dataset(root, n_per_class, seed=seed)
    rows = list(csv.DictReader(open(m, newline="")))
    truth = {r["path"]: r["label"] for r in rows}
    for k, r in enumerate(rows):
        r.update(label="", split="", frame_index=str(k))
    with open(m, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "split", "group", "frame_index"],
                           lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return m, truth


def read_rows(manifest: Path) -> list[dict]:
    with open(manifest, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


class LabelServer:
    """``animefaces label MANIFEST`` in a child process (tiny backbone, random weights) on a
    free loopback port; ``url`` is what it printed."""

    def __init__(self, manifest: Path, cache: Path, *, every: int = 5, extra=()):
        cmd = [sys.executable, "-m", "animefaces.cli", "label", str(manifest), "--backbone", "tiny",
               "--weights", "random", "--cache-dir", str(cache), "--every", str(every), "-q",
               *extra]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     cwd=cache.parent, env=env)
        line = self.proc.stdout.readline()
        if "http://" not in line:
            self.proc.kill()
            raise AssertionError(f"no URL printed: {line!r} {self.proc.stderr.read()[-2000:]}")
        self.url = line.split()[2]
        assert self.url.startswith("http://127.0.0.1:"), line

    def kill(self) -> None:
        """SIGKILL: no clean-up runs, as in a crash."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        for f in (self.proc.stdout, self.proc.stderr):
            f.close()
