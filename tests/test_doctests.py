"""The examples in skrep's docstrings run and print what they show."""

import doctest
import importlib
import pkgutil

import pytest

import skrep

MODULES = sorted(m.name for m in pkgutil.walk_packages(skrep.__path__, "skrep."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples of {name} failed (see stdout)"
