"""``skrep demo --quick``: a self-contained HTML report that shows what it claims."""

import contextlib
import io
import re
import sys
from html.parser import HTMLParser

import numpy as np
import pytest

from skrep import Explanation
from skrep.cli import main

VOID = {"meta", "img", "br", "hr", "link", "input"}


class _Report(HTMLParser):
    """Checks that tags nest and close, and collects images, figures and tables by id."""

    def __init__(self):
        super().__init__()
        self.stack, self.figures, self.images, self.ids = [], [], [], {}

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids[attrs["id"]] = tag
        if tag == "img":
            self.images.append(attrs["src"])
            if self.figures and self.figures[-1]["open"]:
                self.figures[-1]["images"] += 1
        if tag == "figure":
            self.figures.append({"class": attrs.get("class", ""), "id": attrs.get("id"), "images": 0, "open": True})
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()
        if tag == "figure":
            self.figures[-1]["open"] = False


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["demo", "--quick", "--out", str(out)])
    return code, out, stdout.getvalue()


def test_demo_exits_0_and_prints_the_report_path(demo):
    code, out, printed = demo
    assert code == 0
    assert printed.strip().splitlines()[-1] == str((out / "report.html").resolve())


def test_report_parses_and_is_self_contained(demo):
    _, out, _ = demo
    report = _Report()
    report.feed((out / "report.html").read_text())
    report.close()
    assert report.stack == []
    assert report.images and all(src.startswith("data:image/png;base64,") for src in report.images)
    assert not re.search(r"""(src|href)=["'](?!data:)""", (out / "report.html").read_text())


def test_report_shows_points_figures_and_tables(demo):
    _, out, _ = demo
    text = (out / "report.html").read_text()
    report = _Report()
    report.feed(text)
    train_points = [f for f in report.figures if "train" in f["class"].split()]
    test_points = [f for f in report.figures if "test" in f["class"].split()]
    assert len(test_points) >= 3
    assert len(train_points) == len(test_points) * 4 * 2 * 4  # 4 methods, 4 proponents and 4 opponents each
    assert all(f["images"] == 1 for f in train_points)
    assert any("flipped" in f["class"] for f in train_points)
    figures = {f["id"]: f for f in report.figures if f["id"]}
    assert figures["reconstruction"]["images"] == 1 and figures["mislabel-curve"]["images"] == 1
    assert {"summary", "timing", "versions"} <= {k for k, tag in report.ids.items() if tag == "table"}
    for name in ("RepresenterPoints", "RepresenterLJE", "InfluenceFunctions", "TracIn", "torch", "scikit-learn"):
        assert name in text


def test_every_method_finds_flipped_labels(demo):
    _, _, printed = demo
    found = [int(x) for x in re.findall(r"finds (\d+)% of the flipped labels", printed)]
    assert len(found) == 4 and min(found) >= 40, printed  # checking at random finds 10%
    fidelities = [float(x) for x in re.findall(r"fidelity to the model's logits ([0-9.]+)", printed)]
    assert len(fidelities) == 2 and min(fidelities) > 0.8


def test_plots_without_matplotlib_say_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if matplotlib were not installed
    E = Explanation(values=np.array([[1.0, -1.0]]), n_train=2, target=np.array([0]))
    with pytest.raises(ImportError, match=re.escape('pip install "skrep[plot]"')):
        E.plot()
