"""The streamed sweep (``[svm] stream``): with only scalable kernels the features stay in the
feature cache, splits and group folds are views of it, nothing loads the whole matrix, and the
results equal the in-memory sweep's; the out-of-domain guard's reference is capped."""

import numpy as np
import pytest

from animefaces.config import config_from_dict, load_config, streams
from animefaces.errors import ConfigError

GRID = '''
[[svm.grid]]
kernel = "nystroem"
C = [1.0, 10.0]
n_components = [16]
[[svm.grid]]
kernel = "sgd"
C = [10.0]
epochs = [3]
[[svm.grid]]
kernel = "linear_svc"
C = [1.0]
'''


def _config(tmp_path, name, *, stream, extra=""):
    cfg = tmp_path / f"{name}.toml"
    cfg.write_text(f'''
[features]
backbones = ["tiny"]
cache_dir = "{(tmp_path / 'features').as_posix()}"
[svm]
n_jobs = 1
stream = {stream}
{GRID}
[output]
reports_dir = "{(tmp_path / name / 'reports').as_posix()}"
models_dir = "{(tmp_path / name / 'models').as_posix()}"
[trust]
{extra}
''')
    return cfg


def test_stream_config_is_checked_and_auto_follows_the_grid():
    scalable = {"grid": [{"kernel": "sgd"}, {"kernel": "nystroem"}]}
    mixed = {"grid": [{"kernel": "sgd"}, {"kernel": "rbf"}]}
    assert streams(config_from_dict({"svm": scalable}))
    assert not streams(config_from_dict({"svm": mixed}))
    assert not streams(load_config(None))  # the default grid has exact kernels
    assert not streams(config_from_dict({"svm": dict(scalable, stream=False)}))
    with pytest.raises(ConfigError, match="exact kernel.*rbf"):
        config_from_dict({"svm": dict(mixed, stream=True)})
    for bad in ("yes", 1, 0):
        with pytest.raises(ConfigError, match="svm.stream"):
            config_from_dict({"svm": dict(scalable, stream=bad)})
    with pytest.raises(ConfigError, match="ood_max_reference"):
        config_from_dict({"svm": scalable, "trust": {"ood_max_reference": 2}})


def test_streamed_sweep_equals_in_memory_and_never_loads_the_matrix(tmp_path, monkeypatch):
    from conftest import make_dataset

    from animefaces.features import cache as cache_mod
    from animefaces.features.stream import CachedRows
    from animefaces.train import trust
    from animefaces.train.sweep import run_sweep

    data = make_dataset(tmp_path / "data")
    mem = run_sweep(data, config=_config(tmp_path, "mem", stream="false"), weights="random",
                    progress=False)
    assert mem.results["streamed"] is False

    def no_whole_matrix(self, keys):
        raise AssertionError("a streamed sweep loaded the feature matrix (FeatureCache.get)")

    largest = []
    real_chunk = CachedRows.chunk

    def chunk(self, start, stop):
        largest.append(stop - start)
        return real_chunk(self, start, stop)

    monkeypatch.setattr(cache_mod.FeatureCache, "get", no_whole_matrix)
    monkeypatch.setattr(trust, "OOD_CHUNK_ROWS", 16)
    monkeypatch.setattr(CachedRows, "chunk", chunk)
    st = run_sweep(data, config=_config(tmp_path, "st", stream='"auto"'), weights="random",
                   progress=False)
    assert st.results["streamed"] is True
    n_all = sum(sum(c.values()) for c in st.results["data"]["counts"].values())
    # Every read is a part of a split, a fold or a chunk of the guard's, never the whole set.
    assert largest and max(largest) < n_all
    for a, b in zip(mem.results["fits"], st.results["fits"]):
        assert (a["kernel"], a["params"]) == (b["kernel"], b["params"])
        for split, acc in a["accuracy"].items():
            assert b["accuracy"][split] == pytest.approx(acc, abs=1e-12), (a["kernel"], split)
    assert mem.results["best"]["params"] == st.results["best"]["params"]
    assert mem.results["trust"]["ood"]["false_flags"] == st.results["trust"]["ood"]["false_flags"]
    assert mem.results["trust"]["abstain"]["band"] == pytest.approx(
        st.results["trust"]["abstain"]["band"], abs=1e-9)
    import csv

    def read(res):
        with open(res.run_dir / "predictions.csv", newline="") as f:
            return list(csv.DictReader(f))

    p_mem, p_st = read(mem), read(st)
    assert [r["path"] for r in p_mem] == [r["path"] for r in p_st] and len(p_mem) == 60
    for a, b in zip(p_mem, p_st):
        assert float(b["decision"]) == pytest.approx(float(a["decision"]), abs=1e-9)
        assert float(b["p"]) == pytest.approx(float(a["p"]), abs=1e-9)
        assert (a["pred"], a["ood"]) == (b["pred"], b["ood"])


def test_cached_rows_survive_another_process_compacting(tmp_path):
    from animefaces.features.cache import FeatureCache
    from animefaces.features.stream import CachedRows

    rng = np.random.default_rng(0)
    X = rng.normal(size=(90, 6)).astype(np.float32)
    keys = [f"{i:064x}" for i in range(len(X))]
    writer = FeatureCache(tmp_path, "e" * 64, meta={"feature_dim": 6})
    for a in range(0, 90, 10):  # nine shards
        writer.add(keys[a:a + 10], X[a:a + 10])
        writer.flush()
    rows = CachedRows(FeatureCache(tmp_path, "e" * 64, meta={}), keys)
    odd = rows.subset(np.arange(1, 90, 2))
    mask = np.zeros(90, bool)
    mask[[5, 50, 80]] = True
    picked = rows.subset(mask)
    before = len(list(writer.dir.glob("*.npz")))
    FeatureCache(tmp_path, "e" * 64, meta={}).compact()  # another process merges the shards
    assert len(list(writer.dir.glob("*.npz"))) < before
    np.testing.assert_array_equal(odd.chunk(0, len(odd)), X[1::2])
    np.testing.assert_array_equal(picked.take([2, 0]), X[[80, 5]])
    np.testing.assert_array_equal(rows.to_array(), X)
    assert odd.shape == (45, 6) and odd.keys == keys[1::2]
    with pytest.raises(ValueError, match="mask"):
        rows.subset(np.ones(3, bool))


def test_ood_reference_is_a_seeded_sample_when_capped(tmp_path):
    from conftest import make_dataset

    from animefaces.train.sweep import run_sweep

    data = make_dataset(tmp_path / "data", n_per_class=(30, 10, 4, 4))
    res = run_sweep(data, config=_config(tmp_path, "cap", stream='"auto"',
                                         extra="ood_max_reference = 25"),
                    weights="random", progress=False)
    ood = res.results["trust"]["ood"]
    assert ood["reference_sample"]["n"] == 25 and ood["reference_sample"]["of"] == 80
    assert ood["false_flags"]["cv"]["n"] == 25  # measured on the sampled reference
    from animefaces.api import FaceClassifier

    guard = FaceClassifier.load(res.best_model).model.extras["ood"]
    n_ref = (guard["train"].shape[0] if isinstance(guard, dict) and "train" in guard
             else len(getattr(guard, "train")))
    assert n_ref == 25
    rows = (res.run_dir / "predictions.csv").read_text().splitlines()
    assert len(rows) == 1 + 96
    assert "a seeded sample of 25 of the 80 train + val images" in (res.run_dir / "report.md").read_text()
