"""The ``skrep explain`` and ``skrep self-influence`` commands, and their error handling."""

import csv
import json
import subprocess
import sys
from html.parser import HTMLParser

import joblib
import numpy as np
import pytest
import torch
import xgboost
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression

from skrep.cli import main

COLUMNS = ["test_id", "explained", "kind", "rank", "train_id", "train_label", "value"]


def _write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def tabular(tmp_path_factory):
    """Train / test CSVs (an id column, four features, a string label) and a joblib LogisticRegression."""
    d = tmp_path_factory.mktemp("cli")
    X, y = make_classification(130, 4, n_informative=3, n_redundant=0, class_sep=2.0, random_state=0)
    y = np.where(y == 1, "yes", "no")
    header = ["id", "a", "b", "c", "d", "label"]
    _write_csv(d / "train.csv", header, [[f"r{i}", *X[i], y[i]] for i in range(120)])
    _write_csv(d / "test.csv", header, [[f"t{i}", *X[i], y[i]] for i in range(120, 130)])
    joblib.dump(LogisticRegression().fit(X[:120], y[:120]), d / "model.joblib")
    return d


def _explain_args(d, *extra, model="model.joblib", target="label"):
    return [
        "explain",
        "--model",
        str(d / model),
        "--train",
        str(d / "train.csv"),
        "--test",
        str(d / "test.csv"),
        "--target",
        target,
        "--id-column",
        "id",
        "--quiet",
        *extra,
    ]


@pytest.mark.parametrize("method", ["rps", "lje", "if"])
def test_explain_writes_the_documented_columns(tabular, tmp_path, method):
    out = tmp_path / "out.csv"
    args = _explain_args(tabular, "--trust-model-file", "--method", method, "--top-k", "3", "--out", str(out))
    assert main(args) == 0
    rows = _read_csv(out)
    assert list(rows[0]) == COLUMNS
    assert len(rows) == 10 * 2 * 3  # every test row, 3 proponents and 3 opponents
    assert {r["test_id"] for r in rows} == {f"t{i}" for i in range(120, 130)}
    assert all(r["train_id"].startswith("r") and r["train_label"] in ("yes", "no") for r in rows)
    for kind, sign in (("proponent", 1), ("opponent", -1)):
        values = [float(r["value"]) for r in rows if r["kind"] == kind and r["test_id"] == "t120"]
        assert values == sorted(values, key=lambda v: -sign * v)  # strongest first


def test_explain_json_and_html_hold_the_same_rows(tabular, tmp_path):
    outs = {}
    for suffix in ("csv", "json", "html"):
        outs[suffix] = tmp_path / f"out.{suffix}"
        assert main(_explain_args(tabular, "--trust-model-file", "--top-k", "2", "--out", str(outs[suffix]))) == 0
    rows = _read_csv(outs["csv"])
    records = json.loads(outs["json"].read_text())
    assert [list(r) for r in records[:1]] == [COLUMNS] and len(records) == len(rows)
    assert [r["train_id"] for r in records] == [r["train_id"] for r in rows]

    cells = []

    class Cells(HTMLParser):
        def handle_data(self, data):
            cells.append(data)

    Cells().feed(outs["html"].read_text())
    assert all(name in cells for name in COLUMNS) and rows[0]["train_id"] in cells


def test_self_influence_puts_flipped_labels_first(tabular, tmp_path):
    rows = _read_csv(tabular / "train.csv")
    flipped = {f"r{i}" for i in range(0, 120, 10)}
    for r in rows:
        if r["id"] in flipped:
            r["label"] = {"yes": "no", "no": "yes"}[r["label"]]
    _write_csv(tmp_path / "noisy.csv", list(rows[0]), [list(r.values()) for r in rows])
    out = tmp_path / "si.csv"
    args = ["self-influence", "--model", str(tabular / "model.joblib"), "--trust-model-file", "--quiet"]
    args += ["--train", str(tmp_path / "noisy.csv"), "--target", "label", "--id-column", "id", "--method", "if"]
    assert main([*args, "--out", str(out)]) == 0
    ranked = _read_csv(out)
    assert list(ranked[0]) == ["rank", "train_id", "label", "self_influence"]
    assert sorted(r["train_id"] for r in ranked) == sorted(r["id"] for r in rows)
    scores = [float(r["self_influence"]) for r in ranked]
    assert scores == sorted(scores, reverse=True)
    found = len(flipped & {r["train_id"] for r in ranked[:12]})
    assert found >= 6  # random order would find about 1 of the 12


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"target": "nope"}, "label column 'nope' not found"),
        ({"model": "missing.joblib"}, "missing.joblib not found"),
        ({"model": "corrupt.json"}, "corrupt.json is not a readable XGBoost model"),
        ({"model": "corrupt.joblib"}, "corrupt.joblib could not be loaded"),
        ({"model": "forest.joblib"}, "cannot explain a sklearn.ensemble._forest.RandomForestClassifier"),
        ({"model": "model.txt"}, "unknown type '.txt'"),
    ],
)
def test_user_errors_exit_2_naming_the_problem(tabular, tmp_path, capsys, change, message):
    (tabular / "corrupt.json").write_text('{"learner": ')
    (tabular / "corrupt.joblib").write_bytes(b"not a pickle")
    (tabular / "model.txt").write_text("")
    from sklearn.ensemble import RandomForestClassifier

    joblib.dump(RandomForestClassifier(n_estimators=2).fit([[0], [1]], [0, 1]), tabular / "forest.joblib")
    args = _explain_args(tabular, "--trust-model-file", "--out", str(tmp_path / "o.csv"), **change)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("skrep: error: ") and message in err and err.count("\n") == 1, err


def test_pickle_files_need_trust(tabular, tmp_path, capsys):
    assert main(_explain_args(tabular, "--out", str(tmp_path / "o.csv"))) == 2
    assert "--trust-model-file" in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()


def test_tracin_needs_a_torch_network(tabular, tmp_path, capsys):
    args = _explain_args(tabular, "--trust-model-file", "--method", "tracin", "--out", str(tmp_path / "o.csv"))
    assert main(args) == 2
    assert "LogisticRegression" in capsys.readouterr().err


def test_debug_shows_the_error_itself(tabular, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.joblib"):
        main(_explain_args(tabular, "--debug", "--out", str(tmp_path / "o.csv"), model="missing.joblib"))


def test_console_script_prints_one_line_and_no_traceback(tabular, tmp_path):
    args = _explain_args(tabular, "--out", str(tmp_path / "o.csv"), model="missing.joblib")
    proc = subprocess.run([sys.executable, "-m", "skrep.cli", *args], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"skrep: error: model file {tabular / 'missing.joblib'} not found"]


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["nonsense"])
    assert exit_info.value.code == 2 and "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", ["json", "ubj"])
def test_explain_an_xgboost_model_file(tmp_path, suffix):
    X, y = make_classification(90, 4, n_informative=3, n_redundant=0, n_classes=3, random_state=0)
    names = ["f0", "f1", "f2", "f3"]
    model = xgboost.XGBClassifier(n_estimators=8, max_depth=3).fit(X[:80], y[:80])
    model.get_booster().feature_names = names  # the CLI picks these columns, whatever else the CSV holds
    model.save_model(tmp_path / f"model.{suffix}")
    header = ["note", *names[::-1], "y"]  # columns in another order, and one the model never saw
    _write_csv(tmp_path / "train.csv", header, [["x", *X[i, ::-1], y[i]] for i in range(80)])
    _write_csv(tmp_path / "test.csv", header, [["x", *X[i, ::-1], y[i]] for i in range(80, 90)])
    out = tmp_path / "out.csv"
    args = ["explain", "--model", str(tmp_path / f"model.{suffix}"), "--train", str(tmp_path / "train.csv")]
    args += ["--test", str(tmp_path / "test.csv"), "--target", "y", "--method", "lje", "--top-k", "2", "-q"]
    assert main([*args, "--out", str(out)]) == 0
    rows = _read_csv(out)
    assert list(rows[0]) == COLUMNS and len(rows) == 10 * 2 * 2
    assert {int(r["train_id"]) for r in rows} <= set(range(80))


def test_tracin_on_a_saved_torch_network(tabular, tmp_path):
    from skrep.demo import make_mlp, train_classifier

    # the network's classes are 0 / 1: relabel the CSVs
    for name in ("train.csv", "test.csv"):
        rows = _read_csv(tabular / name)
        _write_csv(tmp_path / name, list(rows[0]), [[*list(r.values())[:-1], int(r["label"] == "yes")] for r in rows])
    rows = _read_csv(tmp_path / "train.csv")
    X = np.array([[float(r[c]) for c in "abcd"] for r in rows], dtype=np.float32)
    y = np.array([int(r["label"]) for r in rows])
    checkpoints = []
    net = train_classifier(make_mlp(4, 8, 2), X, y, epochs=2, checkpoints=checkpoints, checkpoint_every=1)
    torch.save(net, tmp_path / "net.pt")
    args = ["explain", "--model", str(tmp_path / "net.pt"), "--trust-model-file", "--method", "tracin"]
    for j, state in enumerate(checkpoints):
        torch.save(state, tmp_path / f"ckpt{j}.pt")
        args += ["--checkpoint", str(tmp_path / f"ckpt{j}.pt")]
    args += ["--learning-rate", "0.01", "--train", str(tmp_path / "train.csv"), "--test", str(tmp_path / "test.csv")]
    args += ["--target", "label", "--id-column", "id", "--top-k", "2", "-q", "--out", str(tmp_path / "o.csv")]
    assert main(args) == 0
    assert len(_read_csv(tmp_path / "o.csv")) == 10 * 2 * 2
