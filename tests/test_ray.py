"""Extraction on Ray Data (a local 2-CPU Ray, started once for this module): the same cache keys
and features as the single-process path, bad files listed, a killed worker costs only its
batch, and a rerun computes nothing."""

import csv
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import MINI, make_dataset

ray = pytest.importorskip("ray", reason="the optional 'ray' extra is not installed")

from animefaces.features.cache import FeatureCache  # noqa: E402
from animefaces.features.distributed import RayOptions, extract_files_ray  # noqa: E402
from animefaces.features.extract import FeatureExtractor  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def _mini_paths(n=48):
    with open(MINI / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [MINI / r["path"] for r in rows[:n]]


def _cache(root, fx):
    return FeatureCache(root, fx.fingerprint, meta=fx.describe(), name=fx.spec.name)


def test_ray_features_equal_the_single_process_path(local_ray, tmp_path):
    paths = _mini_paths()
    fx = FeatureExtractor("tiny", weights="random")
    X1, k1, bad1 = fx.extract_files(paths, cache=_cache(tmp_path / "one", fx), progress=False)
    workers = set()
    X2, k2, bad2 = extract_files_ray(fx, paths, cache=_cache(tmp_path / "ray", fx),
                                     options=RayOptions(actors=2, actor_cpus=0.5, decode_cpus=0.5,
                                                        batch_size=8),
                                     progress=False, on_batch=lambda b: workers.update(b["worker"]))
    assert k2 == k1 and not bad1 and not bad2
    np.testing.assert_allclose(X2, X1, rtol=1e-5, atol=1e-6)
    assert workers  # host:pid of the actors that computed batches
    # the same cache: the single-process path finds every ray-computed feature there
    c = _cache(tmp_path / "ray", fx)
    assert not c.missing(k1)
    np.testing.assert_array_equal(c.get(k1), X2)


def test_killed_worker_loses_only_its_batch_and_a_rerun_computes_nothing(local_ray, tmp_path, rng):
    paths = _mini_paths(64)
    fx = FeatureExtractor("tiny", weights="random")
    want, keys, _ = fx.extract_files(paths, cache=_cache(tmp_path / "one", fx), progress=False)
    killed, workers = [], set()

    def kill_first_worker(batch):
        workers.update(str(w) for w in batch["worker"])
        if not killed:
            pid = int(str(batch["worker"][0]).rsplit(":", 1)[1])
            os.kill(pid, signal.SIGKILL)  # the actor process, mid-run
            killed.append(pid)

    opts = RayOptions(actors=1, batch_size=4)
    got, k2, bad = extract_files_ray(fx, paths, cache=_cache(tmp_path / "ray", fx), options=opts,
                                     progress=False, on_batch=kill_first_worker)
    assert killed and k2 == keys and not bad
    assert len(workers) >= 2  # the batches after the kill came from the restarted actor
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    calls = []
    again, k3, _ = extract_files_ray(fx, paths, cache=_cache(tmp_path / "ray", fx), options=opts,
                                     progress=False, on_batch=calls.append)
    assert not calls and k3 == keys  # everything found cached: nothing sent to Ray
    np.testing.assert_array_equal(again, got)


def test_unreadable_files_go_to_the_bad_list(local_ray, tmp_path):
    from animefaces.errors import BadImageError

    csv_path = make_dataset(tmp_path / "d", (3, 1, 0, 0))
    paths = sorted((csv_path.parent / "images").glob("*.png"))
    broken = tmp_path / "d" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    paths = paths[:3] + [broken, tmp_path / "gone.png"] + paths[3:]
    fx = FeatureExtractor("tiny", weights="random")
    opts = RayOptions(batch_size=4)
    X, keys, bad = extract_files_ray(fx, paths, cache=_cache(tmp_path / "c", fx), options=opts,
                                     skip_bad=True, progress=False)
    assert [p for p, _ in bad] == [broken, tmp_path / "gone.png"]
    assert len(keys) == len(X) == len(paths) - 2
    with pytest.raises(BadImageError, match="skip-bad"):
        extract_files_ray(fx, paths, cache=_cache(tmp_path / "c2", fx), options=opts,
                          progress=False)
    assert len(_cache(tmp_path / "c2", fx)) == len(paths) - 2  # the readable ones are kept


def test_cli_extract_and_sweep_with_ray(local_ray, tmp_path, capsys):
    from conftest import tiny_config

    from animefaces.cli import main

    csv_path = make_dataset(tmp_path / "data", (6, 4, 2, 2))
    assert main(["extract", "--backbone", "tiny", "--weights", "random", "--data", str(csv_path),
                 "--cache-dir", str(tmp_path / "features"), "--ray", "--ray-actors", "2",
                 "--ray-actor-cpus", "0.5", "-q"]) == 0
    out = capsys.readouterr().out
    assert "28 computed" in out
    assert main(["sweep", "--data", str(csv_path), "--config", str(tiny_config(tmp_path)),
                 "--weights", "random", "--ray", "-q"]) == 0
    assert "Chosen on " in capsys.readouterr().out


def test_importing_animefaces_does_not_import_ray():
    code = ("import sys, animefaces, animefaces.cli, animefaces.features.distributed, "
            "animefaces.features.dataset; assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_ray_names_the_extra(monkeypatch):
    from animefaces.errors import AnimeFacesError
    from animefaces.features.distributed import require_ray

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(AnimeFacesError, match=r"animefaces\[ray\]"):
        require_ray()


@pytest.fixture(scope="module")
def tiny_model_and_video(tmp_path_factory):
    pytest.importorskip("av")
    from _videos import write_video, x264
    from conftest import face_image, noface_image, tiny_config

    from animefaces.api import FaceClassifier
    from animefaces.train.sweep import run_sweep

    mp = pytest.MonkeyPatch()
    mp.setenv("ANIMEFACES_OFFLINE", "1")
    root = tmp_path_factory.mktemp("model")
    res = run_sweep(make_dataset(root / "data"), config=tiny_config(root), weights="random",
                    progress=False)
    r = np.random.default_rng(3)
    pics = [np.asarray(face_image(r) if 3 <= s < 7 else noface_image(r)) for s in range(12)]
    video = write_video(root / "ep.mp4", pics, rate=12, options=x264(24))
    yield res.best_model, FaceClassifier.load(res.best_model), video
    mp.undo()


def test_scan_on_ray_equals_scan_and_reruns_only_what_is_missing(local_ray, tiny_model_and_video,
                                                                 tmp_path):
    from animefaces.scan import ScanSettings, scan_video
    from animefaces.scan_ray import scan_results_ray

    _, clf, video = tiny_model_and_video
    want = scan_video(video, clf, progress=False)
    opts = RayOptions(batch_size=4, actors=2, actor_cpus=0.5, decode_cpus=0.5)
    got = scan_results_ray([video], clf, ScanSettings(), options=opts, thumbnails=True,
                           cache_dir=tmp_path / "f", range_s=4.0, progress=False)[0]
    assert got.error is None and len(got.frames) == len(want.frames) == 12
    assert [(f.time_s, f.frame_index, f.frame_type, f.label) for f in got.frames] == \
        [(f.time_s, f.frame_index, f.frame_type, f.label) for f in want.frames]
    np.testing.assert_allclose([f.p_face for f in got.frames], [f.p_face for f in want.frames],
                               rtol=1e-5, atol=1e-6)
    assert got.ranges == want.ranges and len(got.thumbnails) == len(got.ranges)
    calls = []
    again = scan_results_ray([video], clf, ScanSettings(), options=opts, thumbnails=False,
                             cache_dir=tmp_path / "f", range_s=4.0, progress=False,
                             on_batch=calls.append)[0]
    assert not calls and [f.p_face for f in again.frames] == [f.p_face for f in got.frames]


def test_cli_scan_with_ray(local_ray, tiny_model_and_video, tmp_path, capsys):
    from animefaces.cli import main

    model, _, video = tiny_model_and_video
    out = tmp_path / "out"
    assert main(["scan", str(video), "--model", str(model), "--out", str(out), "--ray",
                 "--cache-dir", str(tmp_path / "f"), "--contact-sheet", "-q"]) == 0
    assert "12 frame(s) scanned" in capsys.readouterr().out
    assert (out / "ep.contact.png").is_file() and (out / "scan.json").is_file()


def test_a_layout_the_local_ray_cannot_schedule_is_refused(local_ray, tmp_path):
    from animefaces.errors import ConfigError

    fx = FeatureExtractor("tiny", weights="random")
    with pytest.raises(ConfigError, match="need 3 CPUs; this Ray has 2"):
        extract_files_ray(fx, _mini_paths(2), cache=_cache(tmp_path, fx),
                          options=RayOptions(actors=2), progress=False)
