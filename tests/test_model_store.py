"""Issue "Nothing lost, nothing forged", the models folder: a model is replaced as a whole (an
immutable folder + one pointer), under concurrent saves, loads and crashes; the JSON's numbers
are covered by the digest and checked for range; nothing is unpickled by default; character
models are pickle-free too; models/best is replaced only by the default config or --set-best;
a full or read-only disk is one error line."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from animefaces.classify import modelstore
from animefaces.classify.persist import TrainedModel, load_model, save_model
from animefaces.classify.svm import make_pipeline
from animefaces.errors import AnimeFacesError, ModelMismatchError

from conftest import face_image, tiny_config


def _model(tag: int = 0, *, kernel: str = "rbf") -> TrainedModel:
    from animefaces.classify.ood import OODGuard

    rng = np.random.default_rng(tag)
    X = rng.normal(size=(60, 6))
    y = (X[:, 0] > 0).astype(int)
    pipe = make_pipeline({"kernel": kernel, "C": 1.0 + tag, **({"gamma": "scale"} if kernel != "linear" else {})}).fit(X, y)
    extras = {"calibration": {"method": "platt", "a": -2.0, "b": 0.1, "clip": [0.01, 0.99]},
              "abstain": {"band": [0.2, 0.8]}, "ood": OODGuard().fit(X[:40], X_val=X[40:]).to_dict()}
    return TrainedModel(pipeline=pipe, platt=(-1.5, 0.0), extras=extras,
                        meta={"backbone": "tiny", "tag": tag, "features": {"backbone": "tiny"}})


def _folder(pointer: Path) -> Path:
    return pointer.parent / json.loads(pointer.read_text())["model"]


# -- 2. a model is replaced as a whole ----------------------------------------------------------------
def test_save_writes_an_immutable_folder_and_one_pointer(tmp_path):
    p1 = save_model(_model(1), tmp_path / "models" / "best")
    assert p1 == tmp_path / "models" / "best.json"
    ref = json.loads(p1.read_text())
    assert ref["format"] == modelstore.REF_FORMAT and ref["model"].startswith("best-")
    assert sorted(x.name for x in _folder(p1).iterdir()) == ["model.json", "model.npz"]
    first = _folder(p1)
    p2 = save_model(_model(2), tmp_path / "models" / "best")
    assert _folder(p2) != first and (first / "model.json").is_file()  # the old one is untouched
    assert load_model(tmp_path / "models" / "best").meta["tag"] == 2
    # every spelling people use
    for spelling in ("models/best", "models/best.json", "models", f"models/{_folder(p2).name}",
                     f"models/{_folder(p2).name}/model.json"):
        assert load_model(tmp_path / spelling).meta["tag"] == 2, spelling


class _Crash(BaseException):
    """Stands for kill -9: nothing after it runs, no handler catches it."""


@pytest.mark.parametrize("at", range(1, 9))
def test_a_crash_at_any_step_of_a_save_leaves_best_loadable(tmp_path, monkeypatch, at):
    """The save is cut at its at-th fsync (each file, folder and the pointer are fsynced): the old
    code replaced .joblib, .npz, .json one by one, so a cut after the .npz left an .npz that
    did not match the .json ("changed or damaged")."""
    best = tmp_path / "models" / "best"
    save_model(_model(1), best)
    real, calls = os.fsync, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) == at:
            raise _Crash
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    try:
        save_model(_model(2), best)
        crashed = False
    except _Crash:
        crashed = True
    monkeypatch.setattr(os, "fsync", real)
    tag = load_model(best).meta["tag"]  # loads: the old model or the new one, never a mix
    assert tag == 2 if not crashed else tag in (1, 2)
    save_model(_model(3), best)  # and the next save works, leftovers or not
    assert load_model(best).meta["tag"] == 3


def test_kill_9_during_saves_leaves_best_loadable(tmp_path):
    root = tmp_path / "models"
    save_model(_model(0), root / "best")
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_model_store import _model
        from animefaces.classify.persist import save_model
        i = 0
        print("ready", flush=True)
        while True:
            i += 1
            save_model(_model(i % 5), {str(root / 'best')!r})
    """)
    rng = np.random.default_rng(0)
    for _ in range(3):
        p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                             env=_env())
        assert p.stdout.readline().strip() == "ready"
        time.sleep(float(rng.uniform(0.05, 0.4)))
        p.send_signal(signal.SIGKILL)
        p.wait()
        assert load_model(root / "best").meta["tag"] in range(5)


def _env() -> dict:
    import animefaces

    return dict(os.environ, PYTHONPATH=str(Path(animefaces.__file__).resolve().parents[1]))


SAVES = 40


def test_two_processes_saving_best_while_a_third_loads_it_never_fail(tmp_path):
    """Measured on the old code (three files replaced one by one): 3424 of 13731 loads failed
    with "best.npz has sha256 ..., but best.json says ...: changed or damaged"."""
    root = tmp_path / "models"
    save_model(_model(0), root / "best")
    stop, go = tmp_path / "stop", tmp_path / "go"
    saver = textwrap.dedent(f"""
        import os, sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_model_store import _model
        from animefaces.classify.persist import save_model
        while not os.path.exists({str(go)!r}):  # both save at the same time
            time.sleep(0.002)
        for i in range(SAVES):
            m = _model(int(sys.argv[1]))
            m.meta["i"] = i  # a new model (a new folder) every time
            save_model(m, {str(root / 'best')!r})
        print("saved")
    """)
    loader = textwrap.dedent(f"""
        import os, sys
        from animefaces.classify.persist import load_model
        ok, failed = 0, []
        while not os.path.exists({str(stop)!r}) or ok < 5:
            try:
                m = load_model({str(root / 'best')!r})
                assert m.meta["tag"] in (0, 1, 2)
                ok += 1
            except Exception as exc:
                failed.append(f"{{type(exc).__name__}}: {{exc}}")
        print(ok, len(failed), flush=True)
        for f in failed[:3]:
            print(f)
    """)
    saver = saver.replace("SAVES", str(SAVES))
    load = subprocess.Popen([sys.executable, "-c", loader], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())
    savers = [subprocess.Popen([sys.executable, "-c", saver, str(t)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=_env()) for t in (1, 2)]
    time.sleep(1.5)  # all three have imported numpy and scikit-learn
    go.write_text("")
    for s in savers:
        out, err = s.communicate(timeout=300)
        assert s.returncode == 0 and "saved" in out, err
    stop.write_text("")
    out, err = load.communicate(timeout=120)
    assert load.returncode == 0, err
    ok, failed = out.split("\n", 1)[0].split()
    assert int(failed) == 0, out
    assert int(ok) >= 5
    assert load_model(root / "best").meta["i"] == SAVES - 1


# -- 2b. models/best: only the default config or --set-best replaces it ---------------------------------
def test_only_the_default_config_or_set_best_replaces_best():
    from animefaces.config import load_config
    from animefaces.train.sweep import replaces_best

    assert replaces_best(load_config(None), None)[0]
    assert replaces_best(load_config("default"), None)[0]
    paper = replaces_best(load_config("paper"), None)
    assert not paper[0] and "paper.toml is not the default" in paper[1]
    assert not replaces_best(load_config(None), None, backbones=["huehist"])[0]
    assert not replaces_best(load_config(None), None, weights="random")[0]
    assert replaces_best(load_config("paper"), True)[0]
    assert not replaces_best(load_config(None), False)[0]


def test_sweep_with_another_config_keeps_best_and_prints_the_real_paths(tmp_path, tiny_dataset, capsys):
    from animefaces.cli import main

    models = tmp_path / "elsewhere"
    args = ["sweep", "--data", str(tiny_dataset), "--config", str(tiny_config(tmp_path)),
            "--weights", "random", "--models-dir", str(models), "-q"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert not (models / "best.json").exists()
    run_model = [p for p in models.glob("*.json")]
    assert len(run_model) == 1
    name = str(run_model[0])[:-len(".json")]
    assert f"Model:   {name}\n" in out and f"{models / 'best'} unchanged (config tiny.toml" in out
    assert f"--model {name}\n" in out and "models/best" not in out.replace(str(models), "X")
    assert main(args + ["--set-best"]) == 0
    out = capsys.readouterr().out
    assert (models / "best.json").is_file() and f"{models / 'best'} now loads it too" in out
    assert f"--model {models / 'best'}\n" in out
    assert load_model(models / "best").meta["run_id"] != load_model(run_model[0]).meta["run_id"]


# -- 3. the JSON's numbers are covered by the digest and checked ----------------------------------------
def _edit_model_json(pointer: Path, change, *, reseal: bool):
    """Change the model JSON; with reseal, also recompute its digest and the pointer's (what a
    careful forger would do: the range checks must still catch an impossible value)."""
    mj = _folder(pointer) / "model.json"
    doc = json.loads(mj.read_text())
    change(doc)
    if reseal:
        doc = modelstore.seal(doc)
        ref = json.loads(pointer.read_text())
        pointer.write_text(json.dumps(dict(ref, digest=doc["digest"])))
    mj.write_text(json.dumps(doc, allow_nan=True))


@pytest.mark.parametrize("field", ["intercept", "gamma", "calibration", "band", "ood", "platt"])
def test_one_changed_digit_in_the_model_json_is_refused(tmp_path, field):
    pointer = save_model(_model(1), tmp_path / "best")

    def change(doc):
        if field in ("intercept", "gamma"):
            doc["arrays"][field] = doc["arrays"][field] * 1.1 + 1
        elif field == "calibration":
            doc["extras"]["calibration"]["b"] = 7.0
        elif field == "band":
            doc["extras"]["abstain"]["band"] = [0.0, 0.1]
        elif field == "ood":
            doc["extras"]["ood"]["thresholds"]["colour"] *= 10
        else:
            doc["platt"] = [1.5, 0.0]

    _edit_model_json(pointer, change, reseal=False)
    with pytest.raises(ModelMismatchError, match="changed or damaged"):
        load_model(tmp_path / "best")


def test_a_changed_model_json_with_a_recomputed_digest_is_refused_by_the_pointer(tmp_path):
    pointer = save_model(_model(1), tmp_path / "best")
    mj = _folder(pointer) / "model.json"
    doc = json.loads(mj.read_text())
    doc["arrays"]["intercept"] += 3.0
    mj.write_text(json.dumps(modelstore.seal(doc)))
    with pytest.raises(ModelMismatchError, match="pointer"):
        load_model(tmp_path / "best")


@pytest.mark.parametrize("change, match", [
    (lambda d: d["arrays"].update(gamma=float("nan")), "gamma = nan; expected a finite number > 0"),
    (lambda d: d["arrays"].update(gamma=-1.0), "gamma = -1.0"),
    (lambda d: d["arrays"].update(degree=0), "degree = 0; expected an integer from 1 to 100"),
    (lambda d: d["arrays"].update(degree=2.5), "degree = 2.5"),
    (lambda d: d["arrays"].update(intercept=float("inf")), "intercept = inf"),
    (lambda d: d["arrays"].update(kernel="rbff"), "kernel = 'rbff'; choose one of"),
    (lambda d: d.update(platt=[float("nan"), 0.0]), "platt"),
    (lambda d: d["extras"]["abstain"].update(band=[0.9, 0.1]), r"extras.abstain.band = \[0.9, 0.1\]"),
    (lambda d: d["extras"]["abstain"].update(band=[0.1, 1.5]), "extras.abstain.band"),
    (lambda d: d["extras"]["calibration"].update(a=float("nan")), "extras.calibration.a = nan"),
    (lambda d: d["extras"]["calibration"].update(clip=[0.9, 0.1]), "extras.calibration.clip"),
    (lambda d: d["extras"]["ood"]["thresholds"].update(colour=float("inf")),
     "extras.ood.thresholds.colour = inf"),
    (lambda d: d["extras"]["ood"].update(quantile=1.5), "extras.ood.quantile = 1.5"),
    (lambda d: d.update(task="dogs"), "task = 'dogs'"),
])
def test_out_of_range_values_are_refused_even_with_a_valid_digest(tmp_path, change, match):
    pointer = save_model(_model(1), tmp_path / "best")
    _edit_model_json(pointer, change, reseal=True)
    with pytest.raises(AnimeFacesError, match=match) as info:
        load_model(tmp_path / "best")
    assert "restore it or retrain" in str(info.value) and str(tmp_path) in str(info.value)


def test_nan_gamma_is_refused_by_predict_with_one_line(tmp_path, capsys):
    """The issue: "gamma": NaN gave "no_face nan" for every image with rc 0."""
    from animefaces.cli import main

    pointer = save_model(_model(1), tmp_path / "best")
    _edit_model_json(pointer, lambda d: d["arrays"].update(gamma=float("nan")), reseal=False)
    face_image(np.random.default_rng(0)).save(tmp_path / "f.png")
    assert main(["predict", str(tmp_path / "f.png"), "--model", str(tmp_path / "best"), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: model ") and "changed or damaged" in err[0]


# -- 7. nothing is unpickled by default -------------------------------------------------------------------
class _Payload:
    """A pickle that runs code when loaded: it creates a file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _crafted_legacy_folder(tmp_path) -> tuple[Path, Path]:
    """The earlier side-by-side format without "arrays": m.json + m.joblib, the sha256 in the
    same JSON (so it proves nothing)."""
    import hashlib
    import io

    import joblib

    marker = tmp_path / "code-ran"
    buf = io.BytesIO()
    joblib.dump({"format": "animefaces-svm/1", "pipeline": _Payload(marker), "platt": (0, 0),
                 "extras": {}}, buf)
    (tmp_path / "m.joblib").write_bytes(buf.getvalue())
    (tmp_path / "m.json").write_text(json.dumps({
        "format": "animefaces-svm/1", "backbone": "tiny", "model_file": "m.joblib",
        "model_sha256": hashlib.sha256(buf.getvalue()).hexdigest(),
        "features": {"backbone": "tiny"}}))
    return tmp_path / "m", marker


def test_a_pickle_only_model_is_refused_by_default_everywhere(tmp_path, capsys):
    import animefaces
    from animefaces.cli import main

    path, marker = _crafted_legacy_folder(tmp_path)
    for load in (load_model, animefaces.FaceClassifier.load, animefaces.CharacterClassifier.load):
        with pytest.raises(AnimeFacesError, match="--allow-pickle.*allow_pickle=True"):
            load(path)
    face_image(np.random.default_rng(0)).save(tmp_path / "f.png")
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "f.png"), "--model", str(path), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pickle" in err[0] and "--allow-pickle" in err[0]
    assert not marker.exists()  # no code ran
    # Asked for explicitly, the pickle is loaded (and here runs its code).
    with pytest.raises(AnimeFacesError):
        load_model(path, allow_pickle=True)
    assert marker.exists()


def test_a_model_of_the_earlier_format_with_arrays_still_loads(tmp_path, capsys):
    import hashlib

    from animefaces.classify.arrays import npz_bytes, split_extras, to_arrays

    m = _model(4)
    info, arrays = to_arrays(m.pipeline)
    extras, extra_arrays = split_extras(m.extras)
    data = npz_bytes(dict(arrays, **extra_arrays))
    (tmp_path / "old.npz").write_bytes(data)
    (tmp_path / "old.json").write_text(json.dumps(dict(
        m.meta, format="animefaces-svm/1", model_file="old.joblib", model_sha256="0" * 64,
        arrays=dict(info, file="old.npz", sha256=hashlib.sha256(data).hexdigest(),
                    platt=list(m.platt), extras=extras))))
    capsys.readouterr()
    got = load_model(tmp_path / "old")
    X = np.random.default_rng(9).normal(size=(5, 6))
    np.testing.assert_allclose(got.decision(X), m.pipeline.decision_function(X), rtol=1e-9)
    assert "earlier animefaces" in capsys.readouterr().err
    # saving it again gives the new format (pointer + folder), pickle-free
    save_model(got, tmp_path / "old")
    assert not (tmp_path / "old.npz").exists() and (_folder(tmp_path / "old.json") / "model.npz").is_file()
    assert load_model(tmp_path / "old").meta["tag"] == 4


@pytest.mark.parametrize("kernel", ["rbf", "linear", "poly", "sigmoid"])
@pytest.mark.parametrize("scaling", ["l2", "standard", "none"])
@pytest.mark.parametrize("shape", ["ovr", "ovo"])
def test_multiclass_array_svm_matches_scikit_learn(kernel, scaling, shape):
    from animefaces.classify.arrays import ArrayMulticlassSVM, from_arrays, to_arrays

    rng = np.random.default_rng(3)
    X = rng.normal(size=(120, 5))
    y = rng.integers(0, 4, 120)
    X[:, 0] += 1.5 * y
    params = {"kernel": kernel, "C": 1.0, "decision_function_shape": shape}
    if kernel == "poly":
        params.update(degree=3, coef0=1.0)
    pipe = make_pipeline(params, scaling=scaling).fit(X, y)
    info, arrays = to_arrays(pipe)
    m = from_arrays(json.loads(json.dumps(info)), arrays)
    assert isinstance(m, ArrayMulticlassSVM)
    Xt = rng.normal(size=(30, 5)) + 1.0
    np.testing.assert_allclose(m.decision_function(Xt), pipe.decision_function(Xt), rtol=1e-6, atol=1e-7)
    assert (m.predict(Xt) == pipe.predict(Xt)).all()


def test_character_models_are_pickle_free(tmp_path, monkeypatch):
    import joblib

    import animefaces
    from animefaces.train.character import run_character_sweep
    from test_character import make_characters

    data = make_characters(tmp_path / "c")
    models = tmp_path / "models"
    res = run_character_sweep(data, config=tiny_config(tmp_path), backbones=["huehist"],
                              models_dir=models, set_best=True, progress=False)
    assert not list(models.glob("**/*.joblib"))
    folder = _folder(models / "character-best.json")
    assert sorted(p.name for p in folder.iterdir()) == ["model.json", "model.npz"]
    assert json.loads((folder / "model.json").read_text())["arrays"]["format"] == \
        "animefaces-svc-ovo-arrays/1"

    def no_pickles(*a, **k):
        raise AssertionError("unpickled")

    monkeypatch.setattr(joblib, "load", no_pickles)
    clf = animefaces.CharacterClassifier.load(models / "character-best")
    assert clf.classes == res.results["classes"]
    p = clf.predict(tmp_path / "c" / "images" / "green-test-0.png")
    assert p.character == "hair:green" and len(p.ranking) == 3


# -- disk full, read-only folder ---------------------------------------------------------------------------
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES])
def test_model_save_that_the_disk_refuses_is_one_error_and_keeps_best(tmp_path, monkeypatch, code):
    best = tmp_path / "models" / "best"
    save_model(_model(1), best)

    if code == errno.ENOSPC:
        def fail(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(os, "fsync", fail)
    else:  # a read-only folder (root ignores chmod 0o555, so the refusal is simulated)
        real_mkdir = os.mkdir

        def fail(path, *a, **k):
            if Path(path).parent == best.parent:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return real_mkdir(path, *a, **k)

        monkeypatch.setattr(os, "mkdir", fail)
    with pytest.raises(AnimeFacesError) as info:
        save_model(_model(2), best)
    msg = str(info.value)
    assert msg.startswith(f"cannot write the model best into {best.parent}")
    assert "best still loads the model saved as it before" in msg and "--models-dir" in msg
    assert ("ENOSPC" in msg) if code == errno.ENOSPC else ("EACCES" in msg and "writable" in msg)
    monkeypatch.undo()
    assert load_model(best).meta["tag"] == 1
    assert not list(best.parent.glob(".*.tmp-*"))


def test_sweep_on_a_full_disk_prints_one_line(tmp_path, tiny_dataset, monkeypatch, capsys):
    from animefaces.cli import main

    args = ["sweep", "--data", str(tiny_dataset), "--config", str(tiny_config(tmp_path)),
            "--weights", "random", "-q"]
    assert main(args) == 0  # the features are cached now
    capsys.readouterr()

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    assert main(args) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: cannot write ") and "No space left on device" in err[0]
    assert "Traceback" not in err[0]


def test_a_read_only_reports_folder_is_one_line_too(tmp_path, tiny_dataset, monkeypatch, capsys):
    from animefaces.report import tables as report
    from animefaces.cli import main

    def refuse(results, run_dir, *a, **k):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(run_dir / "report.md"))

    monkeypatch.setattr(report, "write_reports", refuse)
    rc = main(["sweep", "--data", str(tiny_dataset), "--config", str(tiny_config(tmp_path)),
               "--weights", "random", "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("error: Permission denied (EACCES) at ") and "report.md" in err[0]
