"""The labelling session: features from the cache, refits in the background every N labels, the
queue, undo, starting from a saved model, and the HTTP layer on a loopback server."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest

from animefaces.label.server import is_loopback, host_warning
from animefaces.label.session import LabelSession
from animefaces.label.store import LabelStore, ManifestChanged

from _labeldata import LabelServer, read_rows, unlabelled


@pytest.fixture
def session(tmp_path):
    m, truth = unlabelled(tmp_path / "data")
    s = LabelSession(LabelStore(m), backbone="tiny", weights="random",
                     cache_dir=tmp_path / "features", every=6, progress=False)
    s.start(wait=True)
    return s, truth


def _label_next(s, truth, n):
    for _ in range(n):
        it = s.next_items(1)[0]
        s.label(it["i"], truth[it["path"]], picked=it["reason"], expect=s.store.version)
        s.wait_idle()


def test_refits_every_n_labels_and_ranks_by_the_model(session):
    s, truth = session
    assert s.features["done"] == 60 and s.has_x.all() and not s.bad
    first = s.next_items(5)
    assert all(it["reason"] == "random" and it["p"] is None for it in first)
    _label_next(s, truth, 4)
    assert s.round >= 1 or not s.refit_model  # a model once two of each class are in
    _label_next(s, truth, 20)
    st = s.state()
    assert st["progress"]["all"]["labelled"] == 24
    assert st["model"]["current"] == "refit" and st["model"]["labels_at_fit"] >= 18
    assert 0 <= st["model"]["next_fit_in"] <= 6
    est = st["estimate"]
    assert est["n_all"] == est["labels"] and est["how"] == "3-fold by group"
    assert est["n"] == sum(1 for r in s.store.rows if r["picked"] == "random")
    nxt = s.next_items(10)
    assert all(it["p"] is not None and not it["label"] for it in nxt)
    assert {it["reason"] for it in nxt} <= {"uncertain", "disagreement", "random"}
    assert sum(it["reason"] == "random" for it in nxt) == 2  # the 0.2 share
    json.dumps(st)  # the page gets it as JSON


def test_undo_restores_the_row_on_disk(session):
    s, truth = session
    it = s.next_items(1)[0]
    s.label(it["i"], "face", picked=it["reason"], expect=s.store.version)
    s.label(it["i"], "no_face", picked="browse", expect=s.store.version)
    assert read_rows(s.store.path)[it["i"]]["label"] == "no_face"
    s.undo(expect=s.store.version)
    assert read_rows(s.store.path)[it["i"]]["label"] == "face"
    out = s.undo(expect=s.store.version)
    row = read_rows(s.store.path)[it["i"]]
    assert row["label"] == "" and row["picked"] == "" and out["item"]["reason"] == it["reason"]
    with pytest.raises(Exception, match="nothing to undo"):
        s.undo(expect=s.store.version)
    with pytest.raises(ManifestChanged):
        s.label(0, "face", expect="stale")


def test_starting_from_a_saved_model(tmp_path, session):
    from animefaces.train.sweep import run_sweep

    from conftest import make_dataset, tiny_config

    res = run_sweep(make_dataset(tmp_path / "train"), config=tiny_config(tmp_path), weights="random",
                    progress=False)
    m, truth = unlabelled(tmp_path / "season", seed=3)
    s = LabelSession(LabelStore(m), model=res.best_model, weights="random",
                     cache_dir=tmp_path / "features", every=6, progress=False)
    s.start(wait=True)
    assert s.current == "start" and not np.isnan(s.p).any()
    first = s.next_items(5)
    assert first[0]["p"] is not None and {it["reason"] for it in first} <= {"uncertain", "random"}
    _label_next(s, truth, 14)
    st = s.state()
    assert st["start_estimate"]["n_all"] == st["estimate"]["labels"]
    assert st["model"]["current"] in ("start", "refit") and st["model"]["start"]


def test_loopback_only_by_default():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
    assert host_warning("127.0.0.1") is None
    assert "no login" in host_warning("0.0.0.0")


def _get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.read()


def _post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_http_api_kill_restart_and_a_second_server(tmp_path):
    m, truth = unlabelled(tmp_path / "data")
    srv = LabelServer(m, tmp_path / "features")
    try:
        status, page = _get(srv.url)
        assert status == 200 and b"/static/app.js" in page
        assert b"http" not in page.replace(b"http-equiv", b"")  # nothing from elsewhere
        assert _get(srv.url + "static/app.js")[0] == 200
        state = json.loads(_get(srv.url + "api/state")[1])
        version = state["version"]
        for _ in range(3):
            it = json.loads(_get(srv.url + "api/next?n=1")[1])["items"][0]
            code, out = _post(srv.url + "api/label", {"i": it["i"], "label": truth[it["path"]],
                                                      "picked": it["reason"], "version": version})
            assert code == 200, out
            version = out["version"]
        code, out = _post(srv.url + "api/label", {"i": 0, "label": "face", "version": "0" * 16})
        assert code == 409 and out["conflict"] and "reload the page" in out["error"]
        code, out = _post(srv.url + "api/label", {"i": 0, "label": "cat", "version": version})
        assert code == 400 and "face, no_face, unsure" in out["error"]
        assert _get(srv.url + "image/5")[0] == 200 and _get(srv.url + "thumb/5")[0] == 200
        with pytest.raises(urllib.error.HTTPError):
            _get(srv.url + "image/600")
        second = subprocess.run([sys.executable, "-m", "animefaces.cli", "label", str(m), "--backbone",
                                 "tiny", "--weights", "random", "-q"], capture_output=True, text=True,
                                timeout=120, cwd=tmp_path)
        assert second.returncode == 2 and "already open for labelling" in second.stderr
        assert srv.url in second.stderr
        srv.kill()
        assert sum(1 for r in read_rows(m) if r["label"]) == 3  # nothing lost
        srv = LabelServer(m, tmp_path / "features")
        state = json.loads(_get(srv.url + "api/state")[1])
        assert state["progress"]["all"]["labelled"] == 3
    finally:
        srv.stop()
