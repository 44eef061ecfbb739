"""The README's quickstart runs as written."""

import re
from pathlib import Path


def test_quickstart_runs(capsys):
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = re.search(r"## Quickstart\s+```python\n(.*?)```", readme, re.S).group(1)
    namespace: dict = {}
    exec(compile(block, "README.md quickstart", "exec"), namespace)
    assert namespace["best"].best_params_["lam"] in (1e-3, 3e-3, 1e-2)
    assert len(namespace["suspects"]) == 144
