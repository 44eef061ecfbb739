"""Every ```python block of the README runs as written, each on its own."""

import re
from pathlib import Path

import pytest

README = (Path(__file__).parents[1] / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)


def _line(block):
    return README[: README.index(block)].count("\n") + 1


def test_readme_has_a_snippet_per_method():
    assert len(BLOCKS) >= 5
    for name in ("RepresenterPoints", "RepresenterLJE", "InfluenceFunctions", "TracIn", ".plot("):
        assert any(name in block for block in BLOCKS), name


@pytest.mark.parametrize("block", BLOCKS, ids=[f"line{_line(b)}" for b in BLOCKS])
def test_python_block_runs(block, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # blocks that save pictures write them here
    namespace: dict = {"__name__": "readme"}
    exec(compile(block, f"README.md, line {_line(block)}", "exec"), namespace)
    if "best = GridSearchCV" in block:  # the quickstart
        assert namespace["best"].best_params_["lam"] in (1e-3, 3e-3, 1e-2)
        assert len(namespace["suspects"]) == 144
    if "savefig" in block:
        assert all(p.stat().st_size > 1000 for p in tmp_path.glob("*.png")) and any(tmp_path.glob("*.png"))
