"""fit(store=...): round trips (in this process and in a new one), refusals, interruption."""

import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import xgboost as xgb
from torch import nn

import skrep.store
from skrep import InfluenceFunctions, RepresenterLJE, RepresenterPoints, TracIn
from skrep.store import FORMAT_VERSION


def _explanations(ex, X, y=None):
    dense = ex.explain(X, y)
    top = ex.explain(X, y, top_k=5)
    return [dense.values, *top.top.values(), ex.self_influence()]


def _same(a, b):
    return all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def data(digits):
    return digits.X_train[:300], digits.y_train[:300], digits.X_test[:6], digits.y_test[:6]


def _makers(digits_mlp):
    ckpt = {k: v.clone() for k, v in digits_mlp.state_dict().items()}
    return {
        "rps": lambda: RepresenterPoints(digits_mlp),
        "lje": lambda: RepresenterLJE(digits_mlp),
        "if-head": lambda: InfluenceFunctions(digits_mlp, solver="cg", damping=1e-3, random_state=0),
        "if-all": lambda: InfluenceFunctions(digits_mlp, params=["2"], solver="exact", damping=1e-2),
        "tracin-proj": lambda: TracIn(
            digits_mlp, [ckpt, ckpt], [0.1, 0.05], params="all", projection_dim=64, random_state=0
        ),
    }


@pytest.mark.parametrize("kind", ["rps", "lje", "if-head", "if-all", "tracin-proj"])
def test_store_round_trip_identical(kind, digits_mlp, data, tmp_path):
    X, y, Xt, yt = data
    make = _makers(digits_mlp)[kind]
    fitted = make().fit(X, y)
    stored = make().fit(X, y, store=tmp_path / "s")
    reopened = make().fit(store=tmp_path / "s")
    want = _explanations(fitted, Xt, yt)
    assert _same(want, _explanations(stored, Xt, yt))
    assert _same(want, _explanations(reopened, Xt, yt))
    # the big arrays come back memory-mapped from the store's files, not as copies in memory
    emb = reopened.train_embedding_
    first = emb.terms[0] if hasattr(emb, "terms") else emb
    arr = first.b if hasattr(first, "b") else first.u
    assert not arr.untyped_storage().resizable()


def test_store_round_trip_xgboost(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 5))
    y = (X[:, 0] + rng.normal(size=200) > 0).astype(int)
    model = xgb.XGBClassifier(n_estimators=20, max_depth=3).fit(X, y)
    a = RepresenterPoints(model).fit(X, y, store=tmp_path / "x")
    b = RepresenterPoints(model).fit(store=tmp_path / "x")
    assert _same(_explanations(a, X[:4]), _explanations(b, X[:4]))
    model2 = xgb.XGBClassifier(n_estimators=21, max_depth=3).fit(X, y)
    with pytest.raises(ValueError, match="different model"):
        RepresenterPoints(model2).fit(store=tmp_path / "x")


def test_store_reopened_in_a_new_process(digits_mlp, data, tmp_path):
    X, y, Xt, _ = data
    torch.save(digits_mlp, tmp_path / "model.pt")
    np.save(tmp_path / "Xt.npy", Xt)
    want = RepresenterPoints(digits_mlp, lam=1e-2).fit(X, y, store=tmp_path / "s").explain(Xt, top_k=7)
    script = textwrap.dedent(
        f"""
        import numpy as np, torch
        from skrep import RepresenterPoints
        torch.set_num_threads({torch.get_num_threads()})  # BLAS sums in an order that depends on it
        model = torch.load({str(tmp_path / "model.pt")!r}, weights_only=False)
        E = RepresenterPoints(model, lam=1e-2).fit(store={str(tmp_path / "s")!r}).explain(
            np.load({str(tmp_path / "Xt.npy")!r}), top_k=7)
        np.savez({str(tmp_path / "out.npz")!r}, **E.top)
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    got = np.load(tmp_path / "out.npz")
    for name, value in want.top.items():
        assert np.array_equal(value, got[name]), name


@pytest.fixture
def stored(digits_mlp, data, tmp_path):
    X, y, _, _ = data
    RepresenterPoints(digits_mlp).fit(X, y, store=tmp_path / "s")
    return tmp_path / "s"


def test_store_for_another_model_is_refused(digits_mlp, stored):
    other = pickle.loads(pickle.dumps(digits_mlp))
    with torch.no_grad():
        other[-1].bias.add_(1e-3)
    with pytest.raises(ValueError, match="different model"):
        RepresenterPoints(other).fit(store=stored)


def test_store_with_other_parameters_is_refused(digits_mlp, stored):
    with pytest.raises(ValueError, match="lam: stored 0.003, given 0.01"):
        RepresenterPoints(digits_mlp, lam=0.01).fit(store=stored)
    with pytest.raises(ValueError, match="holds a RepresenterPoints, not a RepresenterLJE"):
        RepresenterLJE(digits_mlp).fit(store=stored)
    # parameters of how explain runs may differ
    RepresenterPoints(digits_mlp, block_bytes=2**20, n_jobs=2).fit(store=stored)


def test_truncated_or_missing_file_is_refused(digits_mlp, stored):
    big = max(stored.glob("*.npy"), key=lambda p: p.stat().st_size)
    big.write_bytes(big.read_bytes()[:-100])
    with pytest.raises(ValueError, match=f"damaged: {big.name} is .* bytes instead of"):
        RepresenterPoints(digits_mlp).fit(store=stored)
    big.unlink()
    with pytest.raises(ValueError, match=f"{big.name} is missing"):
        RepresenterPoints(digits_mlp).fit(store=stored)


def test_other_format_version_is_refused(digits_mlp, stored):
    manifest = json.loads((stored / "manifest.json").read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    (stored / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=f"format version {FORMAT_VERSION + 1}.*reads version {FORMAT_VERSION}"):
        RepresenterPoints(digits_mlp).fit(store=stored)


def test_state_naming_code_is_refused(digits_mlp, stored):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = pickle.dumps({"x": Evil()})
    import hashlib

    (stored / "state.pkl").write_bytes(evil)
    manifest = json.loads((stored / "manifest.json").read_text())
    manifest["state"].update(bytes=len(evil), sha256=hashlib.sha256(evil).hexdigest())
    (stored / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="builtins.print, which a skrep store never holds"):
        RepresenterPoints(digits_mlp).fit(store=stored)


def test_not_a_store(digits_mlp, data, tmp_path):
    X, y, _, _ = data
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a skrep store"):
        RepresenterPoints(digits_mlp).fit(X, y, store=tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="not a skrep store"):
        RepresenterPoints(digits_mlp).fit(store=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="fit needs X"):
        RepresenterPoints(digits_mlp).fit()


@pytest.mark.parametrize("exc", [KeyboardInterrupt, OSError])
def test_interrupted_write_leaves_no_partial_files(exc, digits_mlp, data, stored, monkeypatch):
    X, y, Xt, _ = data
    ex = RepresenterPoints(digits_mlp).fit(store=stored)
    before = ex.explain(Xt).values
    state = dict(ex.__dict__)
    files = sorted(p.name for p in stored.parent.iterdir())
    calls = []

    def failing_save(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # after one array file is written
            raise exc("interrupted")
        return np.save.__wrapped__(*args, **kwargs)

    failing_save.__wrapped__ = np.save
    monkeypatch.setattr(skrep.store.np, "save", failing_save)
    with pytest.raises(exc):
        ex.set_params(lam=1e-2).fit(X, y, store=stored)
    monkeypatch.undo()
    assert len(calls) == 2
    assert sorted(p.name for p in stored.parent.iterdir()) == files  # no temporary folder left
    ex.set_params(lam=3e-3)
    assert ex.__dict__.keys() == state.keys() and all(ex.__dict__[k] is v for k, v in state.items() if k != "lam")
    assert np.array_equal(ex.explain(Xt).values, before)
    # the previous store is intact
    assert np.array_equal(RepresenterPoints(digits_mlp).fit(store=stored).explain(Xt).values, before)


def test_store_replaces_an_older_store(digits_mlp, data, stored):
    X, y, Xt, _ = data
    new = RepresenterPoints(digits_mlp, lam=1e-2).fit(X, y, store=stored)
    again = RepresenterPoints(digits_mlp, lam=1e-2).fit(store=stored)
    assert np.array_equal(new.explain(Xt).values, again.explain(Xt).values)
    assert [p.name for p in Path(stored).parent.iterdir()] == [stored.name]


def test_bfloat16_and_small_arrays_round_trip(tmp_path):
    net = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    X, y = torch.randn(40, 5), torch.randint(0, 3, (40,))
    a = RepresenterPoints(net).fit(X, y, store=tmp_path / "s")
    a.extra_ = torch.arange(6, dtype=torch.bfloat16)  # a tensor numpy has no dtype for
    skrep.store.write_store(a, tmp_path / "s")
    state = skrep.store.read_store(RepresenterPoints(net), tmp_path / "s")
    assert state["extra_"].dtype == torch.bfloat16 and torch.equal(state["extra_"], a.extra_)
    assert np.array_equal(
        RepresenterPoints(net).fit(store=tmp_path / "s").explain(X[:3]).values, a.explain(X[:3]).values
    )


def _rss_file_bytes():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssFile:"))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RssFile from /proc")
def test_explain_streams_a_store_without_keeping_it_resident(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(100_000, 64)).astype(np.float32)
    net = nn.Sequential(nn.Linear(64, 3))
    y = rng.integers(0, 3, len(X))
    want = RepresenterPoints(net, block_bytes=2**20).fit(X, y).explain(X[:50], top_k=5)
    reopened = RepresenterPoints(net, block_bytes=2**20).fit(X, y, store=tmp_path / "s")
    features = reopened.train_features_
    before = _rss_file_bytes()
    got = reopened.explain(X[:50], top_k=5)
    grown = _rss_file_bytes() - before
    # every training page was read, yet at most a few chunks' worth stayed resident
    assert grown < 0.25 * features.numel() * features.element_size()
    for name, value in want.top.items():
        assert np.array_equal(value, got.top[name]), name


def test_interrupted_explain_leaves_the_explainer_as_it_was(digits_mlp, data, stored, monkeypatch):
    import skrep.parallel

    _, _, Xt, _ = data
    ex = RepresenterPoints(digits_mlp, block_bytes=2**12).fit(store=stored)
    want = ex.explain(Xt, top_k=4)
    state = dict(ex.__dict__)
    real, calls = skrep.parallel._chunk_topk, []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(skrep.parallel, "_chunk_topk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ex.explain(Xt, top_k=4)
    monkeypatch.undo()
    assert ex.__dict__.keys() == state.keys() and all(ex.__dict__[k] is v for k, v in state.items())
    got = ex.explain(Xt, top_k=4)
    for name, value in want.top.items():
        assert np.array_equal(value, got.top[name]), name
    assert sorted(p.name for p in stored.parent.iterdir()) == [stored.name]
