"""Every example runs (in its --quick form) and reports a faithful explanation."""

import importlib.util
import re
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).parents[1] / "examples").glob("*.py"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(path, capsys):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(quick=True)
    out = capsys.readouterr().out
    fidelities = [float(x) for x in re.findall(r"fidelity[^0-9]*?([01]\.\d+)", out)]
    assert fidelities and min(fidelities) >= 0.9, out
    assert "proponent" in out
