"""The ``skrep`` command line: ``demo``, ``explain`` and ``self-influence``.

User errors (a missing file, an unknown column, a model file skrep cannot read or a model it
cannot explain) end with a one-line message and exit status 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

_XGBOOST_SUFFIXES = (".json", ".ubj")
_PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle", ".pt", ".pth")
_EXPLAIN_COLUMNS = ["test_id", "explained", "kind", "rank", "train_id", "train_label", "value"]
_SELF_INFLUENCE_COLUMNS = ["rank", "train_id", "label", "self_influence"]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("skrep: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            raise
        message = _first_line(e)
        # ImportError: an optional dependency is missing; the message says which extra to install
        if isinstance(e, (ValueError, TypeError, OSError, ImportError)):
            print(f"skrep: error: {message}", file=sys.stderr)
            return 2
        print(f"skrep: internal error ({type(e).__name__}): {message}; rerun with --debug for details", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars or summaries")
    common.add_argument("--debug", action="store_true", help="show the traceback of an error")

    data = argparse.ArgumentParser(add_help=False)
    data.add_argument(
        "--model",
        required=True,
        help="an XGBoost model (.json, .ubj) or a joblib/pickle file (.joblib, .pkl, .pickle, .pt, .pth) holding a "
        "fitted sklearn estimator or torch network; pickle-based files run code when loaded and need "
        "--trust-model-file",
    )
    data.add_argument("--train", required=True, help="the training set, a CSV file with a header row")
    data.add_argument("--target", required=True, help="the label column")
    data.add_argument("--method", choices=("rps", "lje", "if", "tracin"), default="rps", help="default: rps")
    data.add_argument("--id-column", help="a column of row ids (default: 0-based row numbers)")
    data.add_argument(
        "--trust-model-file", action="store_true", help="load a pickle-based model file (only one you trust)"
    )
    data.add_argument(
        "--checkpoint", action="append", default=[], help="tracin: a state dict saved while training (repeat)"
    )
    data.add_argument("--learning-rate", type=float, default=1.0, help="tracin: learning rate after each checkpoint")

    parser = argparse.ArgumentParser(prog="skrep", description="Explain a model's predictions by its training points.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", parents=[common], help="train a digits network, explain it, write an HTML report")
    demo.add_argument("--out", default="skrep-demo", help="folder of the report (default: skrep-demo)")
    demo.add_argument("--quick", action="store_true", help="train for fewer epochs")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.set_defaults(run=_demo)

    explain = sub.add_parser(
        "explain",
        parents=[common, data],
        help="top proponents and opponents of each test row",
        description=f"Writes one row per (test row, kind, rank) with the columns {', '.join(_EXPLAIN_COLUMNS)}.",
    )
    explain.add_argument("--test", required=True, help="the rows to explain, a CSV file (the label column optional)")
    explain.add_argument("--top-k", type=_positive_int, default=5, help="proponents and opponents kept (default: 5)")
    explain.add_argument("--out", required=True, help="output file: .csv, .json or .html")
    explain.set_defaults(run=_explain)

    self_influence = sub.add_parser(
        "self-influence",
        parents=[common, data],
        help="rank training rows by suspicion (likely mislabelled first)",
        description=f"Writes a CSV with the columns {', '.join(_SELF_INFLUENCE_COLUMNS)}, most suspicious first.",
    )
    self_influence.add_argument("--out", required=True, help="output file: .csv")
    self_influence.set_defaults(run=_self_influence)
    return parser


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text!r}")
    return int(text)


# ---- commands --------------------------------------------------------------------------------
def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    result = run_demo(
        args.out,
        quick=args.quick,
        random_state=args.seed,
        verbose=0 if args.quiet else 1,
        print_fn=_silent if args.quiet else print,
    )
    print(result.report)
    return 0


def _explain(args: argparse.Namespace) -> int:
    out = _output_path(args.out, (".csv", ".json", ".html"))
    explainer, train, labels = _fit(args)
    test = _read_table(args.test, args.target, args.id_column, train.features, need_target=False)
    E = explainer.explain(test.X, test.y, top_k=args.top_k)
    pro, opp = E.proponents(E.k), E.opponents(E.k)
    rows = [
        [test.ids[t], E.target[t], kind, rank, train.ids[i], labels[i], float(v)]
        for t in range(E.n_test)
        for kind, (idx, val) in (("proponent", pro), ("opponent", opp))
        for rank, (i, v) in enumerate(zip(idx[t], val[t], strict=True))
    ]
    _write(out, _EXPLAIN_COLUMNS, rows, title=f"skrep explain: {args.method} on {Path(args.model).name}")
    return 0


def _self_influence(args: argparse.Namespace) -> int:
    out = _output_path(args.out, (".csv",))
    explainer, train, labels = _fit(args)
    si = explainer.self_influence()
    order = np.argsort(-si, kind="stable")
    rows = [[r, train.ids[i], labels[i], float(si[i])] for r, i in enumerate(order)]
    _write(out, _SELF_INFLUENCE_COLUMNS, rows)
    return 0


def _silent(*args: Any) -> None:
    """A print_fn that prints nothing (--quiet)."""


# ---- inputs ----------------------------------------------------------------------------------
@dataclass
class _Table:
    X: np.ndarray
    y: np.ndarray | None
    ids: list[Any]
    features: list[str]


def _fit(args: argparse.Namespace) -> tuple[Any, _Table, np.ndarray]:
    """The fitted explainer, the training table and its labels."""
    model = _load_model(Path(args.model), args.trust_model_file)
    train = _read_table(args.train, args.target, args.id_column, _feature_names(model), need_target=True)
    explainer = _make_explainer(args, model)
    assert train.y is not None  # read with need_target=True
    return explainer.fit(train.X, train.y), train, train.y


def _load_model(path: Path, trusted: bool) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} not found")
    suffix = path.suffix.lower()
    if suffix in _XGBOOST_SUFFIXES:
        return _load_xgboost(path)
    if suffix not in _PICKLE_SUFFIXES:
        raise ValueError(
            f"model file {path}: unknown type {suffix!r}; expected {', '.join(_XGBOOST_SUFFIXES)} (XGBoost) or "
            f"{', '.join(_PICKLE_SUFFIXES)} (joblib / pickle)"
        )
    if not trusted:
        raise ValueError(
            f"model file {path} is pickle-based: loading it runs code stored in it. "
            "Pass --trust-model-file if you made it or trust where it comes from."
        )
    try:
        if suffix in (".pt", ".pth"):
            import torch

            return torch.load(path, map_location="cpu", weights_only=False)
        import joblib

        return joblib.load(path)
    except Exception as e:  # noqa: BLE001 - whatever a broken file raises, the file is the problem
        raise ValueError(f"model file {path} could not be loaded ({type(e).__name__}: {_first_line(e)})") from e


def _load_xgboost(path: Path) -> Any:
    """An XGBClassifier or XGBRegressor, chosen by the objective saved in the file."""
    import xgboost

    booster = xgboost.Booster()
    try:
        booster.load_model(path)
    except xgboost.core.XGBoostError as e:
        # xgboost prefixes its messages with "[time] source-file:line: "
        reason = re.sub(r"^\[[\d:]+\] \S+: ", "", _first_line(e))
        raise ValueError(f"model file {path} is not a readable XGBoost model ({reason})") from e
    objective = json.loads(booster.save_config())["learner"]["objective"]["name"]
    model = xgboost.XGBClassifier() if objective.startswith(("binary:", "multi:")) else xgboost.XGBRegressor()
    model.load_model(path)
    return model


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def _feature_names(model: Any) -> list[str] | None:
    """The input columns the model was fitted on, where it recorded them."""
    names = getattr(model, "feature_names_in_", None)
    if names is None and hasattr(model, "get_booster"):
        names = model.get_booster().feature_names
    return None if names is None else [str(n) for n in names]


def _make_explainer(args: argparse.Namespace, model: Any) -> Any:
    from torch import nn

    from . import InfluenceFunctions, RepresenterLJE, RepresenterPoints, TracIn

    verbose = 0 if args.quiet else 1
    if args.method != "tracin":
        cls = {"rps": RepresenterPoints, "lje": RepresenterLJE, "if": InfluenceFunctions}[args.method]
        return cls(model, verbose=verbose)
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"--method tracin traces a torch network's training; {args.model} holds a {type(model).__name__}: "
            "use --method rps, lje or if"
        )
    if not args.checkpoint:
        raise ValueError("--method tracin needs the state dicts saved while training: --checkpoint FILE, repeated")
    return TracIn(model, args.checkpoint, args.learning_rate, verbose=verbose)


def _read_table(path: str, target: str, id_column: str | None, features: list[str] | None, need_target: bool) -> _Table:
    """Features (float64), labels and row ids of a CSV file with a header row."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"data file {file} not found")
    with file.open(newline="") as f:
        header, *rows = list(csv.reader(f)) or [[]]
    if not rows:
        raise ValueError(f"data file {file} has no data rows")
    for line, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise ValueError(f"{file}, line {line}: {len(row)} fields where the header has {len(header)}")

    def column(name: str, role: str) -> int:
        if name not in header:
            shown = ", ".join(header[:8]) + (", ..." if len(header) > 8 else "")
            raise ValueError(f"{role} column {name!r} not found in {file} (columns: {shown})")
        return header.index(name)

    cells = np.array(rows, dtype=object)
    # the label and id columns first: a misspelt one is named before any parsing of features
    y = _labels(cells[:, column(target, "label")]) if need_target or target in header else None
    ids = cells[:, column(id_column, "id")].tolist() if id_column else list(range(len(rows)))
    if features is None:  # every column but the label and the ids
        features = [h for h in header if h not in (target, id_column)]
    cols = [column(name, "feature") for name in features]
    try:
        X = cells[:, cols].astype(np.float64)
    except ValueError:
        r, c = next((r, c) for r in range(len(rows)) for c in cols if not _is_number(rows[r][c]))
        raise ValueError(f"{file}, line {r + 2}, column {header[c]!r}: {rows[r][c]!r} is not a number") from None
    # NaN is a missing value, which tree models route; infinity is valid input for no model
    if np.isinf(X).any():
        r, c = (int(i) for i in np.argwhere(np.isinf(X))[0])
        raise ValueError(f"{file}, line {r + 2}, column {features[c]!r}: {rows[r][cols[c]]!r} is infinite")
    return _Table(X, y, ids, features)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _labels(cells: np.ndarray) -> np.ndarray:
    """Labels as integers, else floats, else the strings as written."""
    for dtype in (np.int64, np.float64):
        try:
            return cells.astype(dtype)
        except ValueError:
            continue
    return cells.astype(str)


# ---- outputs ---------------------------------------------------------------------------------
def _output_path(out: str, suffixes: tuple[str, ...]) -> Path:
    path = Path(out)
    if path.suffix.lower() not in suffixes:
        raise ValueError(f"--out {out}: the file name must end in {' or '.join(suffixes)}")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"--out {out}: folder {path.parent} does not exist")
    return path


def _write(path: Path, columns: list[str], rows: list[list[Any]], title: str = "") -> None:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            writer.writerows(rows)
    elif suffix == ".json":
        records = [dict(zip(columns, row, strict=True)) for row in rows]
        path.write_text(json.dumps(records, indent=1, default=_json_scalar))
    else:
        from .report import html_page, html_table

        path.write_text(html_page(title, html_table(columns, rows)), "utf-8")
    print(path)


def _json_scalar(value: Any) -> Any:
    """Labels and ids held as numpy scalars, as Python numbers (anything else as a string)."""
    return value.item() if isinstance(value, np.generic) else str(value)


if __name__ == "__main__":
    sys.exit(main())
